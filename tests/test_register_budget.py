"""Every kernel fits the register file of every architecture at the block sizes its wrapper launches it
with: registers per thread (from NVRTC, for each architecture) x threads per block, in the units the
hardware allocates (256 registers per warp), at most 64 K per block. Otherwise a GPU refuses the
launch (CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES), which no CPU run would show.

The block sizes are recorded from real launches of every op's wrappers, every version, at small
shapes: whatever the wrappers choose is what is checked."""
import math

import ml_dtypes
import numpy as np
import pytest

from helpers.model.gpt2 import GPT2, GPT2Config
from helpers.model.llama import Llama, LlamaConfig
from helpers.ops import (adamw, attention, classifier, encoder, gelu, global_norm, gqa, kv_cache, layernorm, matmul,
                         residual, rmsnorm, rope, swiglu)
from helpers.ops.common import bf16_versions, float32_versions
from helpers.runtime import device, nvrtc_report

REGISTER_FILE = 65536       # registers per SM, and at most per block, on sm_75 ... sm_120
ALLOCATION_UNIT = 256       # registers are given to a warp in units of 256


def launched_block_sizes():
    """{(file, kernel): largest threads per block} over every launch the wrappers make."""
    seen: dict = {}
    real = device.Function.prepare

    def record(self, grid, block, args, shared_mem=0):
        threads = math.prod(block if isinstance(block, (tuple, list)) else (block,))
        key = (self.module.path.name, self.name)
        seen[key] = max(seen.get(key, 0), threads)
        return real(self, grid, block, args, shared_mem)

    device.Function.prepare = record
    try:
        _launch_every_op()
    finally:
        device.Function.prepare = real
    return seen


def _launch_every_op():
    rng = np.random.default_rng(0)
    d = lambda *shape: device.asarray(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
    B, T, C, NH, V = 2, 8, 32, 2, 40
    idx = device.asarray(rng.integers(0, V, (B, T)).astype(np.int32))
    for v in float32_versions(encoder.VERSIONS["forward"]):
        encoder.forward(device.empty((B, T, C)), idx, d(V, C), d(T, C), version=v)
    for v in float32_versions(encoder.VERSIONS["backward"]):
        encoder.backward(device.zeros((V, C)), device.zeros((T, C)), d(B, T, C), idx, version=v)
    x, w, b = d(B, T, C), d(C), d(C)
    out, mean, rstd = device.empty((B, T, C)), device.empty((B, T)), device.empty((B, T))
    for v in float32_versions(layernorm.VERSIONS["forward"]):
        layernorm.forward(out, mean, rstd, x, w, b, version=v)
    for v in float32_versions(layernorm.VERSIONS["backward"]):
        layernorm.backward(device.zeros((B, T, C)), device.zeros(C), device.zeros(C), d(B, T, C), x, w, mean,
                           rstd, version=v)
    for v in float32_versions(matmul.VERSIONS["forward"]):
        matmul.forward(device.empty((B * T, 4 * C)), d(B * T, C), d(4 * C, C), d(4 * C), version=v)
    for v in float32_versions(matmul.VERSIONS["backward"]):
        matmul.backward(device.zeros((B * T, C)), device.zeros((4 * C, C)), device.zeros(4 * C), d(B * T, 4 * C),
                        d(B * T, C), d(4 * C, C), version=v)
    qkv = d(B, T, 3 * C)
    for v in float32_versions(attention.VERSIONS["forward"]):
        aux = dict(att=device.empty((B, NH, T, T))) if v == 1 else dict(lse=device.empty((B, NH, T)))
        out = device.empty((B, T, C))
        attention.forward(out, qkv, NH, version=v, **aux)
        attention.backward(device.zeros((B, T, 3 * C)), d(B, T, C), qkv, out, NH, version=v, **aux)
    for v in float32_versions(gelu.VERSIONS["forward"]):
        gelu.forward(device.empty(B * T * C), d(B * T * C), version=v)
        gelu.backward(device.zeros(B * T * C), d(B * T * C), d(B * T * C), version=v)
        residual.forward(device.empty(B * T * C), d(B * T * C), d(B * T * C), version=v)
        residual.backward(device.zeros(B * T * C), device.zeros(B * T * C), d(B * T * C), version=v)
    Vp = 48
    logits, targets = d(B, T, Vp), device.asarray(rng.integers(0, V, (B, T)).astype(np.int32))
    probs = device.empty((B, T, Vp))
    for v in float32_versions(classifier.VERSIONS["forward"]):
        classifier.forward(device.empty((B, T)), device.empty((B, T, Vp)), logits, targets, V, 0.1, version=v,
                           probs=probs)
    for v in float32_versions(adamw.VERSIONS["update"]):
        adamw.update(d(64), d(64), device.zeros(64), device.zeros(64), 1, 1e-3, 0.9, 0.95, 1e-8, 0.1, version=v)
    for v in float32_versions(global_norm.VERSIONS["forward"]):
        global_norm.squared_norm([d(100), d(64)] if v < 3 else [d(96), d(64)], version=v)
    k_cache, v_cache = device.zeros((NH, T, C // NH)), device.zeros((NH, T, C // NH))
    kv_cache.forward(device.empty((1, 1, C)), k_cache, v_cache, d(1, 1, 3 * C), 0)
    # the bf16 versions (mixed precision: notebook 13); hs = C / NH = 16 and Vp = 48, multiples of 8
    BF = ml_dtypes.bfloat16
    h = lambda *shape: device.asarray(rng.standard_normal(shape).astype(BF))  # noqa: E731
    encoder.forward(device.empty((B, T, C), BF), idx, h(V, C), h(T, C), version=3)
    encoder.backward(device.zeros((V, C)), device.zeros((T, C)), h(B, T, C), idx, version=3)
    xh, wh = h(B, T, C), h(C)
    layernorm.forward(device.empty((B, T, C), BF), mean, rstd, xh, wh, h(C), version=4)
    layernorm.backward(device.zeros((B, T, C), BF), device.zeros(C), device.zeros(C), h(B, T, C), xh, wh, mean,
                       rstd, version=3)
    n = B * T * C
    gelu.forward(device.empty(n, BF), h(n), version=3)
    gelu.backward(device.zeros(n, BF), h(n), h(n), version=3)
    residual.forward(device.empty(n, BF), h(n), h(n), version=3)
    residual.backward(device.zeros(n, BF), device.zeros(n, BF), h(n), version=3)
    qkv_bf, out_bf, lse = h(B, T, 3 * C), device.empty((B, T, C), BF), device.empty((B, NH, T))
    attention.forward(out_bf, qkv_bf, NH, version=4, lse=lse)
    attention.backward(device.zeros((B, T, 3 * C), BF), h(B, T, C), qkv_bf, out_bf, NH, version=4, lse=lse)
    classifier.forward(device.empty((B, T)), device.empty((B, T, Vp), BF), h(B, T, Vp), targets, V, 0.1, version=4)
    kv_cache.forward(device.empty(C, BF), device.zeros((NH, T, C // NH), BF), device.zeros((NH, T, C // NH), BF),
                     h(3 * C), 0, version=2)
    for v in bf16_versions(matmul.VERSIONS["forward"]):  # bf16 x, weight, bias, out, dout, dx; float32 dweight, dbias
        if v == 5 and not matmul.wmma_available():
            continue  # no bf16 tensor cores here (sm_75): the wrapper refuses version 5
        matmul.forward(device.zeros((B * T, 4 * C), BF), h(B * T, C), h(4 * C, C), h(4 * C), version=v)
        matmul.backward(device.zeros((B * T, C), BF), device.zeros((4 * C, C)), device.zeros(4 * C),
                        h(B * T, 4 * C), h(B * T, C), h(4 * C, C), version=v)
    adamw.update(device.zeros(64, BF), d(64), device.zeros(64), device.zeros(64), 1, 1e-3, 0.9, 0.95, 1e-8, 0.1,
                 version=3, master=d(64), seed=1)
    # Llama's ops
    rstd = device.empty((B, T))
    for v in float32_versions(rmsnorm.VERSIONS["forward"]):
        rmsnorm.forward(device.empty((B, T, C)), rstd, x, w, version=v)
    for v in float32_versions(rmsnorm.VERSIONS["backward"]):
        rmsnorm.backward(device.zeros((B, T, C)), device.zeros(C), d(B, T, C), x, w, rstd, version=v)
    for v in float32_versions(swiglu.VERSIONS["forward"]):
        swiglu.forward(device.empty((B, T, 4 * C)), d(B, T, 8 * C), version=v)
        swiglu.backward(device.zeros((B, T, 8 * C)), d(B, T, 4 * C), d(B, T, 8 * C), version=v)
    cos, sin = (device.asarray(table) for table in rope.frequencies(16, T))    # hs = 16: every version
    for v in float32_versions(rope.VERSIONS["forward"]):
        rope.forward(device.empty((B, T, 64)), d(B, T, 64), cos, sin, NH, 1, version=v)     # W = (2 + 2*1) * 16
        rope.backward(device.zeros((B, T, 64)), d(B, T, 64), cos, sin, NH, 1, version=v)
    NKV, hs = 1, C // NH                          # G = 2 query heads per key/value head
    gqkv = d(B, T, (NH + 2 * NKV) * hs)
    for v in float32_versions(gqa.VERSIONS["forward"]):
        aux = dict(att=device.empty((B, NH, T, T))) if v == 1 else dict(lse=device.empty((B, NH, T)))
        out = device.empty((B, T, NH * hs))
        gqa.forward(out, gqkv, NH, NKV, version=v, **aux)
        gqa.backward(device.zeros(gqkv.shape), d(B, T, NH * hs), gqkv, out, NH, NKV, version=v, **aux)
    for v in float32_versions(gqa.VERSIONS["decode"]):
        gqa.decode(device.empty(NH * hs), device.zeros((NKV, T, hs)), device.zeros((NKV, T, hs)),
                   d((NH + 2 * NKV) * hs), 0, NH, version=v)
    # and the models, which pick their own versions
    models = [GPT2(GPT2Config(vocab_size=V, block_size=T, n_layer=1, n_head=NH, n_embd=C), backend="cuda", seed=0),
              Llama(LlamaConfig(vocab_size=V, block_size=T, n_layer=1, n_head=4, n_kv_head=2, n_embd=C,
                                intermediate_size=48), backend="cuda", seed=0)]
    if device.compute_capability() is None or device.compute_capability() >= (8, 0):   # bf16 needs sm_80
        models.append(GPT2(GPT2Config(vocab_size=V, block_size=T, n_layer=1, n_head=NH, n_embd=C), backend="cuda",
                           seed=0, dtype="bf16"))
    for model in models:
        model.forward(device.asnumpy(idx), device.asnumpy(idx))
        model.backward()
        list(model.generate(np.array([1, 2]), 2, temperature=0))


def registers_per_block(registers: int, threads: int) -> int:
    warps = -(-threads // 32)
    per_warp = -(-registers * 32 // ALLOCATION_UNIT) * ALLOCATION_UNIT
    return warps * per_warp


def test_every_launched_kernel_fits_the_register_file_of_every_architecture():
    launched = launched_block_sizes()
    assert len(launched) >= 40, f"only {len(launched)} kernels were launched: {sorted(launched)}"
    files = sorted({f for f, _ in launched})
    rows = nvrtc_report.compile_report(files, nvrtc_report.supported(nvrtc_report.ALL_ARCHS))
    registers = {(r.file.rpartition("/")[2], r.kernel, r.arch): r.registers for r in rows}
    archs = sorted({r.arch for r in rows})
    assert {"sm_75", "sm_80", "sm_90"} <= set(archs)
    problems = []
    for (file, kernel), threads in sorted(launched.items()):
        for arch in archs:
            regs = registers.get((file, kernel, arch))
            assert regs is not None, f"{file}: {kernel} was launched but NVRTC reports no kernel of that name"
            need = registers_per_block(regs, threads)
            if need > REGISTER_FILE:
                problems.append(f"{file}: {kernel} on {arch}: {regs} registers x {threads} threads = {need} > "
                                f"{REGISTER_FILE}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("registers, threads, expected", [(32, 1024, 32768), (33, 1024, 40960), (255, 256, 65536),
                                                          (64, 33, 4096)])
def test_register_allocation_arithmetic(registers, threads, expected):
    assert registers_per_block(registers, threads) == expected
