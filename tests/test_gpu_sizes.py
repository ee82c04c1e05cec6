"""helpers.teaching.gpu_sizes: the sizes the notebooks use on a GPU fit a 16 GB T4 and an H100, the
notebooks use them, and the estimates count the arrays the notebooks really hold."""
import ast
import json
import math
import tracemalloc
import types

import numpy as np
import pytest

from helpers import device
from helpers.model.gpt2 import AdamW, FlatBuffer, GPT2, GPT2Config, activation_gradient_shapes, parameter_shapes
from helpers.ops import adamw as adamw_ops, gelu as gelu_ops, layernorm as ln
from helpers.runtime.cuda_source import REPO_ROOT
from helpers.teaching import gpu_sizes

T4, H100 = 15_843_721_216, 85_029_158_912   # free bytes: the devices' whole memory
GPT2_C, GPT2_T, GPT2_V, GPT2_VP = 768, 1024, 50257, 50304
GPT2_DIMS = {"C": GPT2_C, "bench_C": GPT2_C, "T": GPT2_T, "maxT": GPT2_T, "bench_T": GPT2_T, "V": GPT2_V,
             "Vp": GPT2_VP, "OC": 4 * GPT2_C, "NH": 12}

# what each notebook's GPU branch assigns, in gpu_sizes' names
NAMES = {"01_encoder.ipynb": {"B": "B", "T": "T", "C": "C", "V": "V", "maxT": "maxT"},
         "02_layernorm.ipynb": {"B": "B", "T": "T", "C": "C"},
         "03_matmul.ipynb": {"B": "B", "T": "T", "C": "C", "OC": "OC"},
         "04_attention.ipynb": {"B": "B", "T": "T", "C": "C", "NH": "NH"},
         "05_gelu_residual.ipynb": {"B": "B", "T": "T", "C": "C", "BENCH_B": "bench_B",
                                    "BENCH_T": "bench_T", "BENCH_C": "bench_C"},
         "06_classifier.ipynb": {"B": "B", "T": "T", "V": "V", "Vp": "Vp"},
         "07_adamw.ipynb": {"V": "V", "maxT": "maxT", "C": "C", "L": "L"},
         "08_gpt2_model.ipynb": {"config": "config", "B": "B", "T": "T"}}
# the batch each one then gets (notebook 07: its layers), where the notebook's own value does not fit
REDUCED = {T4: {"06_classifier.ipynb": 4}, H100: {}}


def cells(notebook: str) -> list[str]:
    nb = json.loads((REPO_ROOT / "notebooks" / notebook).read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def free_memory(monkeypatch, free):
    """The device reports `free` bytes free (as a GPU of that size would), for fit_batch too."""
    monkeypatch.setattr(device, "memory_info", lambda: (free, free))


@pytest.mark.parametrize("free", [T4, H100], ids=["T4", "H100"])
@pytest.mark.parametrize("notebook", sorted(gpu_sizes.NOTEBOOKS))
def test_the_gpu_sizes_fit_and_keep_gpt2s_dimensions(notebook, free, monkeypatch, capsys):
    free_memory(monkeypatch, free)
    sizes = gpu_sizes.NOTEBOOKS[notebook](free)
    assert 0 < sizes.peak_bytes <= gpu_sizes.FRACTION * free
    preferred = {"07_adamw.ipynb": 12, "08_gpt2_model.ipynb": 4}.get(notebook, 8)
    what = {"05_gelu_residual.ipynb": "BENCH_B", "07_adamw.ipynb": "L"}.get(notebook, "B")
    batch = sizes.L if what == "L" else sizes.bench_B if what == "BENCH_B" else sizes.B
    assert batch == REDUCED[free].get(notebook, preferred) >= 1
    said = capsys.readouterr().out   # fit_batch says what it chose
    assert said.startswith(f"{what}={batch}") and ("halved from" in said) == (batch != preferred)
    # GPT-2's dimensions, whatever the batch (05's T = 37 is its checks' shape; 08 has T = 64)
    dims = {k: v for k, v in vars(sizes).items() if k not in ("peak_bytes", "config")}
    for name, value in dims.items():
        if name in GPT2_DIMS and (notebook, name) not in (("05_gelu_residual.ipynb", "T"),
                                                          ("08_gpt2_model.ipynb", "T")):
            assert value == GPT2_DIMS[name], name
    if notebook == "08_gpt2_model.ipynb":
        assert sizes.config == GPT2Config() and sizes.T == 64


@pytest.mark.parametrize("notebook", sorted(gpu_sizes.NOTEBOOKS))
def test_the_notebooks_gpu_branch_takes_these_sizes_and_reports_the_peak(notebook, monkeypatch, capsys):
    free_memory(monkeypatch, T4)
    expected = gpu_sizes.NOTEBOOKS[notebook](T4)
    capsys.readouterr()
    code = cells(notebook)
    (size_cell,) = [c for c in code if "gpu_sizes." in c and "device.memory_info()[0]" in c]
    gpu = types.SimpleNamespace(name="cupy", memory_info=lambda: (T4, T4), peak_memory=lambda: 2**30)
    ns = {"helpers": types.SimpleNamespace(TINY=False), "device": gpu, "gpu_sizes": gpu_sizes, "np": np,
          "math": math, "GPT2Config": GPT2Config, "parameter_shapes": parameter_shapes,
          "reference": ("torch", "transformers")}
    exec(size_cell, ns)
    for variable, field in NAMES[notebook].items():
        assert ns[variable] == getattr(expected, field), variable
    # the last cell: the measured peak next to the estimate at the sizes the notebook used
    last = code[-1]
    assert "device.peak_memory()" in last and f"gpu_sizes.{gpu_sizes.NOTEBOOKS[notebook].__name__}_peak(" in last
    ns["N_CHECK"] = 4_000_004   # notebook 07's checks on a GPU
    capsys.readouterr()
    exec(last, ns)
    assert capsys.readouterr().out == (f"GPU memory: peak 1.00 GiB measured, {expected.peak_bytes / 2**30:.2f} "
                                       f"GiB estimated (of {T4 / 2**30:.1f} GiB)\n")
    ns["device"] = types.SimpleNamespace(name="cpu", peak_memory=lambda: None)
    exec(last, ns)
    assert capsys.readouterr().out.count("\n") == 1   # one line on the CPU backend


# ------------------------------------------------------------------------------------------------
# The estimates count the arrays: built at a small batch, their bytes summed, and the temporaries of
# the NumPy code the notebooks run on CuPy arrays measured
# ------------------------------------------------------------------------------------------------
class NoElision(np.ndarray):
    """NumPy reuses a temporary it holds alone (`a * b + c` adds c into a * b) when it is a plain
    ndarray of 256 KiB or more; CuPy never does. Arrays of a subclass are never reused, so NumPy then
    holds the temporaries CuPy holds."""


def temporaries(call, *arrays) -> int:
    """Peak bytes that `call(*arrays)` allocates beyond what is alive before, with NumPy arrays that
    behave like CuPy's (host memory, traced by tracemalloc)."""
    views = [a.view(NoElision) if isinstance(a, np.ndarray) else a for a in arrays]
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        call(*views)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        if not tracing:
            tracemalloc.stop()


def notebook_function(notebook: str, name: str, **globals_):
    """The function `name` as a notebook cell defines it, with the notebook's globals it reads."""
    for cell in cells(notebook):
        for node in ast.parse(cell).body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                ns = dict(globals_)
                exec(compile(ast.Module([node], []), notebook, "exec"), ns)
                return ns[name]
    raise LookupError(f"{notebook} defines no function {name}")


def nbytes(*arrays) -> int:
    return sum(int(a.nbytes) for a in arrays)


def test_the_classifier_estimate_counts_notebook_06s_arrays():
    B, T, V, Vp = 1, 256, GPT2_V, GPT2_VP            # GPT-2's vocabulary, one batch of 256 tokens
    N, dloss = B * T, 1.0 / (B * T)
    rng = np.random.default_rng(0)
    logits_d = device.asarray(rng.standard_normal((B, T, Vp), dtype=np.float32))
    targets_d = device.asarray(rng.integers(0, V, size=(B, T)).astype(np.int32))
    rows_d = device.asarray(np.arange(N))
    kept = [logits_d, targets_d, rows_d,
            device.empty((B, T, Vp)), device.empty((B, T)), device.zeros((B, T, Vp)),   # version 1
            device.empty((1, min(N, 8), Vp)),                                           # p_r
            device.empty((B, T)), device.empty((B, T, Vp)), logits_d.copy(), device.empty((B, T)),
            device.empty((B, T)), device.empty((B, T, Vp)), device.empty((B, T)),      # versions 2, 3
            device.empty((B, T)), device.empty((B, T, Vp))]                             # xp_losses...
    xp_classifier = notebook_function("06_classifier.ipynb", "xp_classifier", xp=np, V=V, dloss=dloss)
    temps = temporaries(xp_classifier, np.empty((B, T), np.float32), np.empty((B, T, Vp), np.float32),
                        device.asnumpy(logits_d), device.asnumpy(targets_d))
    assert temps == pytest.approx(2 * N * V * 4, rel=0.01)   # e and e * (dloss / s)
    built = nbytes(*kept) + temps + gpu_sizes.l2_flush_bytes()
    assert built == pytest.approx(gpu_sizes.classifier_peak(B, T, V, Vp), rel=1e-3)


def test_the_attention_estimate_counts_notebook_04s_arrays():
    B, T, C, NH = 1, GPT2_T, GPT2_C, 12               # GPT-2 124M's attention, one sequence
    rng = np.random.default_rng(0)
    qkv_b = device.asarray(rng.standard_normal((B, T, 3 * C), dtype=np.float32))
    xp_attention_forward = notebook_function("04_attention.ipynb", "xp_attention_forward",
                                             device=types.SimpleNamespace(xp=np), np=np, math=math)
    kept = [qkv_b, device.empty((B, T, C)), device.empty((B, T, C))]        # dout_b, out_xp
    for version in (1, 2, 3):
        kept += [device.empty((B, T, C)), device.zeros((B, T, 3 * C))]       # outs, dqkvs
        if version == 1:   # att, and the backward's scratch
            kept += [device.empty((B, NH, T, T)), device.empty((B, NH, T, T))]
        else:              # lse, and the backward's D
            kept += [device.empty((B, NH, T)), device.empty((B, NH, T))]
    temps = temporaries(lambda qkv: xp_attention_forward(qkv, NH), device.asnumpy(qkv_b))
    assert temps == pytest.approx(3 * B * NH * T * T * 4 + 2 * B * T * C * 4, rel=0.01)
    built = nbytes(*kept) + temps + gpu_sizes.l2_flush_bytes()
    assert built == pytest.approx(gpu_sizes.attention_peak(B, T, C, NH), rel=1e-3)


def test_the_adamw_estimate_counts_notebook_07s_arrays():
    V, maxT, C, L = 1001, 64, 128, 2                  # a small GPT-2
    n = gpu_sizes.adamw_parameters(V, maxT, C, L)
    shapes = [(V, C), (maxT, C), (L, C), (L, C), (L, 3 * C, C), (L, 3 * C), (L, C, C), (L, C),
              (L, C), (L, C), (L, 4 * C, C), (L, 4 * C), (L, C, 4 * C), (L, C), (C,), (C,)]
    assert sum(math.prod(s) for s in shapes) == n     # notebook 07's gpt2_param_shapes
    kept = [device.zeros(s) for s in shapes] + [device.zeros(n) for _ in range(9)]   # grads, flat...
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)
    p, g, m, v = (np.full(n, 0.5, np.float32) for _ in range(4))
    temps = temporaries(lambda *a: adamw_ops.adamw_update(*a, 1, **hyper), p, g, m, v)
    assert temps == pytest.approx(6 * n * 4, rel=0.01)
    built = nbytes(*kept) + temps + gpu_sizes.l2_flush_bytes()
    assert built == pytest.approx(gpu_sizes.adamw_peak(V, maxT, C, L, n_check=0), rel=1e-3)


def test_the_layernorm_and_gelu_estimates_count_their_references_temporaries():
    B, T, C = 1, GPT2_T, GPT2_C
    rows = B * T * C * 4
    x, w = np.ones((B, T, C), np.float32), np.ones(C, np.float32)
    mean, rstd = np.zeros((B, T), np.float32), np.ones((B, T), np.float32)
    forward = temporaries(ln.layernorm_forward, x, w, w)
    backward = temporaries(ln.layernorm_backward, np.zeros_like(x), np.zeros_like(w), np.zeros_like(w),
                           x, x, w, mean, rstd)
    assert (round(forward / rows), round(backward / rows)) == (4, 5)
    stats, scratch = 2 * B * T * 4, min(B * T, 256) * 2 * C * 4
    at_forward = 3 * rows + stats + forward               # x_d, dout_d, out_d (cell 50)
    at_backward = 4 * rows + stats + scratch + backward   # and dx_d, scratch (cell 51)
    assert gpu_sizes.layernorm_peak(B, T, C) - gpu_sizes.l2_flush_bytes() == pytest.approx(
        max(at_forward, at_backward), rel=1e-3)
    bench = B * T * 4 * C                                            # GELU elements
    gelu = temporaries(gelu_ops.gelu_backward, np.zeros(bench, np.float32), np.ones(bench, np.float32),
                       np.ones(bench, np.float32))
    arrays = [np.empty(bench, np.float32) for _ in range(4)] + [np.empty(B * T * C, np.float32)] * 6
    assert (gpu_sizes.gelu_residual_peak(B, T, C) - gpu_sizes.gelu_residual_peak(0, T, C)
            == pytest.approx(nbytes(*arrays) + gelu, rel=1e-3))
    assert round(gelu / (bench * 4)) == 7


def test_the_model_estimate_counts_notebook_08s_buffers():
    config, B, T = GPT2Config(vocab_size=1001, block_size=64, n_layer=2, n_head=4, n_embd=64), 2, 24
    models = []
    for trained in (False, True):   # cuda_model, and the model train_ours trains
        model = GPT2(config, backend="cuda", seed=None)
        model._plan(B, T)
        model.zero_grad()
        buffers = [model.params, model.acts, model.grads,
                   FlatBuffer(activation_gradient_shapes(model.acts.shapes), model.xp)]
        if trained:
            opt = AdamW(model)
            buffers += [opt.m, opt.v]
        models.append(sum(b.memory.nbytes for b in buffers))
    assert sum(models) == gpu_sizes.gpt2_model_peak(config, B, T)
