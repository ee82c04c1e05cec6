"""The sizes each notebook uses on a GPU, and the most GPU memory it then holds at once.

Every notebook picks its sizes in a cell near the top: small ones in tiny mode (the tests) and on the
CPU backend (an emulator), GPT-2's own on a GPU. GPT-2's dimensions stay (C = 768, V = 50257 padded to
Vp = 50304, T = 1024 where a notebook uses it); a GPU with less memory gets a smaller batch: B halves
from the notebook's value until the notebook's peak fits in FRACTION (60 %) of the free memory, the
choice `device.fit_batch` makes and prints. Notebook 07 has no batch: there the number of layers L
halves (its arrays hold all of GPT-2's parameters, about 0.5 GB each).

For each notebook, `name(free_bytes)` returns the sizes its GPU branch uses and `peak_bytes`, and
`name_peak(...)` counts that peak at any sizes. The counts come from reading every cell that runs on
the GPU ("cell N": the notebook's N-th cell, counting from 0): the device arrays alive at the same
time, and the temporaries the array library creates where a notebook runs NumPy code on CuPy arrays
(CuPy, unlike NumPy, never reuses a temporary: `a * b + c` holds a * b and the sum at once). Arrays
of a few MB at most at GPT-2's sizes (the odd-shaped checks, the norms' partial sums) are left out.
Once a notebook has timed a kernel on a GPU, `device.flush_l2` keeps a buffer of twice the L2 cache:
`l2_flush_bytes`, counted. The notebooks print the measured peak (`device.peak_memory()`) next to
the estimate in their last cell.

Not here: notebook 00 (vectors of N = 10,000,019 floats, five alive at most: 0.2 GB, and no batch to
choose), and 09 and 10 (training and sampling, sized by helpers.train's and helpers.model.generate's own
configs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..runtime import device
from ..model.gpt2 import FlatBuffer, GPT2Config, activation_gradient_shapes, activation_shapes, parameter_shapes

FRACTION = 0.6   # of the free memory; the rest: the CUDA context, cuBLAS, NVRTC, fragmentation
F = 4            # bytes of a float32 (and of an int32)


def l2_flush_bytes() -> int:
    """What device.flush_l2 keeps allocated once a kernel has been timed on a GPU: a buffer twice the
    L2 cache (8 MiB on a T4, 100 MiB on an H100). 0 on the CPU backend, which flushes nothing."""
    if device.name != "cupy":
        return 0
    l2 = int(device.xp.cuda.runtime.getDeviceProperties(0).get("l2CacheSize", 1 << 22))
    return 2 * max(l2, 1 << 20)


def _fit(preferred: int, peak, free_bytes: int, what: str = "B") -> int:
    """The batch device.fit_batch chooses, halving from `preferred`, for a peak of peak(batch) bytes."""
    # Each moment of a notebook holds a fixed part plus a part per batch item, so the peak (the
    # largest moment) grows no faster than the chord from 1 to `preferred`, which is fit_batch's
    # line fixed + batch * per_item; the two agree where one moment is the largest at every batch,
    # as at GPT-2's sizes.
    per_item = -(-(peak(preferred) - peak(1)) // max(preferred - 1, 1))
    fixed = peak(1) - per_item
    # fit_batch reads the device's free memory itself: scale its fraction so that its budget is
    # FRACTION * free_bytes (the same fraction when free_bytes is device.memory_info()[0])
    device_free = device.memory_info()[0] or free_bytes
    return device.fit_batch(preferred, per_item, fixed, fraction=FRACTION * free_bytes / device_free,
                            what=what)


# ------------------------------------------------------------------------------------------------
# 01 · The encoder
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderSizes:
    B: int
    T: int
    C: int
    V: int
    maxT: int
    peak_bytes: int


def encoder_peak(B: int, T: int, C: int, V: int, maxT: int) -> int:
    tables = (V + maxT) * C * F               # wte_d and wpe_d; or one pair dwte_d, dwpe_d
    # dout_d, out_d; idx_d and the token buckets bp_d (B * T), bt_d and bs_d (one per distinct token)
    batch = (2 * B * T * C + 2 * B * T + 2 * min(V, B * T)) * F
    # cells 55 and 56 zero a new pair dwte_d, dwpe_d while the previous pair is still alive
    rezero = 3 * tables + batch
    # cell 56 on a GPU, timed: CuPy's wte_d[idx_d] + wpe_d[:T], the gathered rows and their sum
    library = 2 * tables + batch + 2 * B * T * C * F + l2_flush_bytes()
    return max(rezero, library)


def encoder(free_bytes: int) -> EncoderSizes:
    """Notebook 01's benchmark: GPT-2 124M's tables, B sequences of 1024 tokens (8 if they fit)."""
    T, C, V, maxT = 1024, 768, 50257, 1024
    B = _fit(8, lambda b: encoder_peak(b, T, C, V, maxT), free_bytes)
    return EncoderSizes(B, T, C, V, maxT, encoder_peak(B, T, C, V, maxT))


# ------------------------------------------------------------------------------------------------
# 02 · Layer normalisation
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayernormSizes:
    B: int
    T: int
    C: int
    peak_bytes: int


def layernorm_peak(B: int, T: int, C: int) -> int:
    rows = B * T * C * F          # one (B, T, C) float32 array
    stats = 2 * B * T * F         # mean_d, rstd_d
    # cell 50: x_d, dout_d, out_d, and the reference layernorm_forward on CuPy arrays, which holds
    # xc, xhat, xhat * weight and out at once (the checks before hold 3 rows at most)
    forward = 3 * rows + stats + 4 * rows
    # cell 51: dx_d and scratch (the partial sums of backward2, 256 rows at most) too, and the
    # reference layernorm_backward: xhat, dxhat and, in the expression of dx, three more at once
    backward = 4 * rows + stats + min(B * T, 256) * 2 * C * F + 5 * rows
    return max(forward, backward) + l2_flush_bytes()


def layernorm(free_bytes: int) -> LayernormSizes:
    """Notebook 02's benchmark: B sequences of 1024 tokens (8 if they fit) of GPT-2's C = 768."""
    T, C = 1024, 768
    B = _fit(8, lambda b: layernorm_peak(b, T, C), free_bytes)
    return LayernormSizes(B, T, C, layernorm_peak(B, T, C))


# ------------------------------------------------------------------------------------------------
# 03 · Matmul
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatmulSizes:
    B: int
    T: int
    C: int
    OC: int
    peak_bytes: int


def matmul_peak(B: int, T: int, C: int, OC: int) -> int:
    N = B * T
    x, w, out = N * C * F, OC * C * F, N * OC * F      # (N, C), (OC, C) and (N, OC) float32
    inputs = x + w + OC * F + out                       # x_d, w_d, b_d, dout_d (cell 47)
    # cells 47 and 48: a new out_d while the previous one is alive; or out_d and the result of
    # xp.matmul(x_d, w_d.T) before xp.add writes it into out_d
    forward = inputs + 2 * out
    # cell 49: out_d, and the gradients dx_d, dw_d, db_d
    backward = inputs + out + x + w + OC * F
    # cell 54 (bf16, tensor cores) frees the gradients first: out_d and the bf16 copies of x, w, b and out,
    # half of x + w + out, stay within the forward's (N >= 2C) and the backward's peak

    return max(forward, backward) + l2_flush_bytes()


def matmul(free_bytes: int) -> MatmulSizes:
    """Notebook 03's benchmark: the MLP's first layer (C -> 4C) on B sequences of 1024 tokens."""
    T, C, OC = 1024, 768, 4 * 768
    B = _fit(8, lambda b: matmul_peak(b, T, C, OC), free_bytes)
    return MatmulSizes(B, T, C, OC, matmul_peak(B, T, C, OC))


# ------------------------------------------------------------------------------------------------
# 04 · Attention
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionSizes:
    B: int
    T: int
    C: int
    NH: int
    peak_bytes: int


def attention_peak(B: int, T: int, C: int, NH: int) -> int:
    M = B * NH * T * T * F        # one (B, NH, T, T) float32 matrix
    row = B * T * C * F           # one (B, T, C) array
    lse = B * NH * T * F          # one (B, NH, T) array
    # cell 47, kept to the end: qkv_b (3 rows), dout_b, out_xp, and for each of the 3 versions its
    # output and its dqkv (3 rows)
    kept = (3 + 1 + 1 + 3 * (1 + 3)) * row
    # version 1's att and its backward's scratch (kept by bwd_launches); versions 2 and 3: lse and
    # the D scratch of their backward
    kept += 2 * M + 4 * lse
    # xp_attention_forward on CuPy arrays (timed in cell 48): scores, e and att at once, and
    # att @ v with its reshaped copy
    temps = 3 * M + 2 * row
    return kept + temps + l2_flush_bytes()


def attention(free_bytes: int) -> AttentionSizes:
    """Notebook 04's benchmark: GPT-2 124M's 12 heads of 64, B sequences of 1024 tokens."""
    T, C, NH = 1024, 768, 12
    B = _fit(8, lambda b: attention_peak(b, T, C, NH), free_bytes)
    return AttentionSizes(B, T, C, NH, attention_peak(B, T, C, NH))


# ------------------------------------------------------------------------------------------------
# 05 · GELU and the residual connection
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GeluResidualSizes:
    B: int            # the checks' shape
    T: int
    C: int
    bench_B: int      # the benchmark's
    bench_T: int
    bench_C: int
    peak_bytes: int


def gelu_residual_peak(bench_B: int, bench_T: int, bench_C: int, B: int = 3, T: int = 37,
                       C: int = 768) -> int:
    gelu = bench_B * bench_T * 4 * bench_C * F    # one benchmark array of GELU (4C wide)
    res = bench_B * bench_T * bench_C * F         # one benchmark array of the residual
    # the checks' arrays, alive to the end: x_d, dout_d, dx_d (4C wide); a_d, b_d, dres_d, out_d,
    # da_d, db_d
    checks = (3 * 4 * C + 6 * C) * B * T * F
    # cell 38: xb, gb, dxb, outb and ab, bb, db_, rout, rda, rdb
    bench = 4 * gelu + 6 * res
    # the reference gelu_backward timed on CuPy arrays: gelu_derivative holds u, tanh_u, du_dx, its
    # first term and three arrays of its second term at once
    temps = 7 * gelu
    return checks + bench + temps + l2_flush_bytes()


def gelu_residual(free_bytes: int) -> GeluResidualSizes:
    """Notebook 05: checks at (3, 37, 768); the benchmark at B sequences of 1024 tokens of C = 768."""
    B, T, C, bench_T, bench_C = 3, 37, 768, 1024, 768
    bench_B = _fit(8, lambda b: gelu_residual_peak(b, bench_T, bench_C, B, T, C), free_bytes,
                   what="BENCH_B")
    return GeluResidualSizes(B, T, C, bench_B, bench_T, bench_C,
                             gelu_residual_peak(bench_B, bench_T, bench_C, B, T, C))


# ------------------------------------------------------------------------------------------------
# 06 · The classifier
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassifierSizes:
    B: int
    T: int
    V: int
    Vp: int
    peak_bytes: int


def classifier_peak(B: int, T: int, V: int, Vp: int) -> int:
    N = B * T
    logits = N * Vp * F           # one (B, T, Vp) float32 array
    # kept to the end: logits_d, probs_d, dlogits1_d, dlogits2_d, buf_d, dlogits3_d, xp_dlogits
    kept = 7 * logits
    # and targets_d, six (B, T) losses arrays, rows_d (int64) and p_r (min(N, 8) rows of Vp)
    kept += 7 * N * F + 8 * (N if N <= 512 else 256) + min(N, 8) * Vp * F
    # xp_classifier on CuPy arrays (cell 46): e = xp.exp(z - m) and e * (dloss / s), two (B, T, V)
    # arrays at once, next to m, s and the int64 indices b, t
    library = 2 * N * V * F + 2 * N * F + 2 * N * 8
    # cell 48: the exercise's 3 x 7 rows of logits and dlogits, and their losses and targets
    exercise = 2 * 21 * Vp * F + 2 * 21 * F
    return kept + max(library, exercise) + l2_flush_bytes()


def classifier(free_bytes: int) -> ClassifierSizes:
    """Notebook 06: llm.c's GPT-2 124M training batch, B = 8 sequences of 1024 tokens if they fit,
    over the vocabulary of 50257 tokens padded to 50304."""
    T, V, Vp = 1024, 50257, 50304
    B = _fit(8, lambda b: classifier_peak(b, T, V, Vp), free_bytes)
    return ClassifierSizes(B, T, V, Vp, classifier_peak(B, T, V, Vp))


# ------------------------------------------------------------------------------------------------
# 07 · AdamW and the global norm
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdamwSizes:
    V: int
    maxT: int
    C: int
    L: int
    peak_bytes: int


def adamw_parameters(V: int, maxT: int, C: int, L: int) -> int:
    """GPT-2's parameter count (notebook 07's N): the embeddings, L layers, the final layernorm."""
    return V * C + maxT * C + L * (12 * C * C + 13 * C) + 2 * C


def adamw_peak(V: int, maxT: int, C: int, L: int, n_check: int = 4_000_004) -> int:
    p = adamw_parameters(V, maxT, C, L) * F       # one float32 array of all the parameters
    # kept from cells 35 to 49: grads (the 16 tensors), flat, p_d, g_d, m_d, v_d and bench_p,
    # bench_g, bench_m, bench_v
    kept = 10 * p
    # cell 49: the reference adamw_update timed on CuPy arrays: g, m_hat, v_hat and three more at
    # once (in the parameter update); xp.linalg.norm(flat) needs only one (flat * flat)
    step = kept + 6 * p
    # cells 16 and 20, before any timing: run_adamw at N_CHECK parameters (4,000,004 on a GPU):
    # p_d, m_d, v_d and a gradient
    check = 4 * n_check * F
    return max(step + l2_flush_bytes(), check)


def adamw(free_bytes: int) -> AdamwSizes:
    """Notebook 07: GPT-2 124M's parameters, with L = 12 layers if they fit (fewer if not)."""
    V, maxT, C = 50257, 1024, 768
    L = _fit(12, lambda n: adamw_peak(V, maxT, C, n), free_bytes, what="L")
    return AdamwSizes(V, maxT, C, L, adamw_peak(V, maxT, C, L))


# ------------------------------------------------------------------------------------------------
# 08 · The whole model
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gpt2ModelSizes:
    config: GPT2Config
    B: int
    T: int
    peak_bytes: int


def _flat_bytes(shapes: dict) -> int:
    """Bytes of a float32 helpers.model.layout.FlatBuffer of these shapes (each view starts at a multiple of
    256 bytes)."""
    align = FlatBuffer.ALIGN_BYTES
    return sum(-(-math.prod(s) * F // align) * align for s in shapes.values())


def gpt2_model_peak(config: GPT2Config, B: int, T: int, reference: bool = True) -> int:
    params = _flat_bytes(parameter_shapes(config))
    acts = activation_shapes(config, B, T, attention_version=3)   # the cuda backend's attention
    activations, gradients = _flat_bytes(acts), _flat_bytes(activation_gradient_shapes(acts))
    # cuda_model (cells 12 and 14): its parameters and activations; when Hugging Face's GPT-2 is
    # there to compare with (as on Colab), its gradients and the activations' gradients too
    model = params + activations + (params + gradients if reference else 0)
    # the model train_ours trains (cell 16), meanwhile: all of those and AdamW's m and v
    trained = 4 * params + activations + gradients
    return model + trained


def gpt2_model(free_bytes: int, reference: bool = True) -> Gpt2ModelSizes:
    """Notebook 08: GPT-2 124M on B sequences of 64 tokens (4 if they fit). `reference`: whether
    Hugging Face's GPT-2 is installed (the notebook then also runs cuda_model's backward)."""
    config, T = GPT2Config(), 64
    B = _fit(4, lambda b: gpt2_model_peak(config, b, T, reference), free_bytes)
    return Gpt2ModelSizes(config, B, T, gpt2_model_peak(config, B, T, reference))


NOTEBOOKS = {"01_encoder.ipynb": encoder, "02_layernorm.ipynb": layernorm, "03_matmul.ipynb": matmul,
             "04_attention.ipynb": attention, "05_gelu_residual.ipynb": gelu_residual,
             "06_classifier.ipynb": classifier, "07_adamw.ipynb": adamw, "08_gpt2_model.ipynb": gpt2_model}
