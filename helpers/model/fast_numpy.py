"""The NumPy backend's hot ops, written for speed and memory: the same math as the references in
helpers/ops (tests/test_fast_numpy.py checks them against each other), but in place, without large
temporaries, and spread over the CPU cores in row chunks (NumPy releases the GIL inside its loops).

For the default training config (GPT-2 vocabulary, B*T = 768 rows) the classifier alone touches
768 x 50304 floats, 155 MB, several times per step: that is where a careless NumPy version spends
its time and memory.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..runtime.comm import local_size

#: threads of the row chunks: GPT2_NUMPY_THREADS, else the cores, shared by the ranks of an MPI run on this machine
THREADS = max(1, int(os.environ.get("GPT2_NUMPY_THREADS", "0")) or (os.cpu_count() or 1) // local_size())


def _no_huge_page_advice() -> None:
    """NumPy asks Linux for transparent huge pages on every large new allocation (madvise); the kernel then
    zeroes and compacts 2 MiB pages when they are first touched, which made the first training step of
    notebook 09's model take 1.3-1.6 s instead of 0.53 s on a 2-core machine (later steps: no difference,
    the buffers are planned once). Off unless NumPy's own switch, NUMPY_MADVISE_HUGEPAGE, says otherwise."""
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:     # (NumPy 1.x)
        try:
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:
            return
    _set_madvise_hugepage(False)


_no_huge_page_advice()
_pool = ThreadPoolExecutor(THREADS) if THREADS > 1 else None
MIN_PARALLEL = 1 << 16  # elements below which threads cost more than they save

GELU_SCALE = np.float32(np.sqrt(2.0 / np.pi))


def in_row_chunks(fn, n_rows: int, size: int):
    """fn(lo, hi) over [0, n_rows) in one chunk per core (or one call for small work)."""
    if _pool is None or size < MIN_PARALLEL or n_rows < 2:
        fn(0, n_rows)
        return
    bounds = np.linspace(0, n_rows, min(THREADS, n_rows) + 1).astype(int)
    for f in [_pool.submit(fn, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]:
        f.result()


def matmul_forward(out, x, weight, bias):
    """out = x @ weight^T + bias, written into out (BLAS uses every core by itself)."""
    np.matmul(x, weight.T, out=out)
    if bias is not None:
        out += bias


def _tanh(u, out):
    """tanh through exp, which NumPy vectorises for float32: tanh(u) = 1 - 2 / (exp(2u) + 1)."""
    np.multiply(u, 2, out=out)
    np.exp(out, out=out)
    out += 1
    np.divide(2, out, out=out)
    np.subtract(1, out, out=out)
    return out


def gelu_forward(out, x):
    """GPT-2's GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), into out."""
    xf, of = x.reshape(-1, x.shape[-1]), out.reshape(-1, out.shape[-1])

    def rows(lo, hi):
        a, o = xf[lo:hi], of[lo:hi]
        u = a * a
        u *= np.float32(0.044715)
        u += 1
        u *= a
        u *= GELU_SCALE                  # u = sqrt(2/pi) (x + 0.044715 x^3)
        _tanh(u, o)
        o += 1
        o *= a
        o *= np.float32(0.5)
    in_row_chunks(rows, xf.shape[0], xf.size)


def gelu_backward(dx, dout, x):
    """dx += dout * gelu'(x), gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
    xf, df, gf = x.reshape(-1, x.shape[-1]), dout.reshape(-1, dout.shape[-1]), dx.reshape(-1, dx.shape[-1])

    def rows(lo, hi):
        a = xf[lo:hi]
        a2 = a * a
        u = a2 * np.float32(0.044715)
        u += 1
        u *= a
        u *= GELU_SCALE
        th = _tanh(u, u)                 # tanh u, in u's memory
        du = a2                          # du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2), in a2's memory
        du *= np.float32(3 * 0.044715)
        du += 1
        du *= GELU_SCALE
        sech2 = 1 - th * th
        sech2 *= a
        sech2 *= du
        sech2 *= np.float32(0.5)         # 0.5 x sech^2(u) du/dx
        th += 1
        th *= np.float32(0.5)            # 0.5 (1 + tanh u)
        th += sech2
        th *= df[lo:hi]
        gf[lo:hi] += th
    in_row_chunks(rows, xf.shape[0], xf.size)


def classifier(losses, dlogits, logits, targets, V, dloss):
    """The fused classifier of notebook 06 in NumPy: softmax over the first V columns, the loss, and
    dlogits = (probs - onehot) * dloss written into dlogits (no probability array is ever made)."""
    Vp = logits.shape[-1]
    lf, df = logits.reshape(-1, Vp), dlogits.reshape(-1, Vp)
    tf, loss_f = targets.reshape(-1), losses.reshape(-1)

    def rows(lo, hi):                   # five passes over the rows: max, subtract, exp, sum, scale
        d = df[lo:hi]
        m = lf[lo:hi, :V].max(axis=1, keepdims=True)
        np.subtract(lf[lo:hi], m, out=d)
        d[:, V:] = -np.inf               # the padded columns take no part (exp(-inf) = 0)
        np.exp(d, out=d)
        s = d.sum(axis=1, keepdims=True)  # (NumPy sums pairwise: float32 is accurate enough here)
        r = np.arange(lo, hi)
        loss_f[lo:hi] = np.log(s[:, 0]) - (lf[r, tf[lo:hi]] - m[:, 0])   # -log softmax at the target
        d *= np.float32(dloss) / s
        d[r - lo, tf[lo:hi]] -= np.float32(dloss)
    in_row_chunks(rows, lf.shape[0], lf.size)


_adamw_scratch = [np.empty((2, 0), np.float32)]


def _scratch(n: int) -> np.ndarray:
    """Two float32 rows of at least n, kept between steps: a fresh temporary of a large tensor costs a page
    fault per 4 KiB every step (and NumPy gives large blocks back to the OS when they are freed)."""
    if _adamw_scratch[0].shape[1] < n:
        _adamw_scratch[0] = np.empty((2, n), np.float32)
    return _adamw_scratch[0]


def adamw(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, grad_scale):
    """AdamW in place (the reference's math), chunked over the cores, in a scratch buffer kept between
    steps (the same operations in the same order as with temporaries: the same bits)."""
    c1, c2 = 1 - beta1 ** t, 1 - beta2 ** t
    n = param.size
    scratch = _scratch(n)

    def chunk(lo, hi):
        p, gr, mm, vv = param[lo:hi], grad[lo:hi], m[lo:hi], v[lo:hi]
        g, h = scratch[0, lo:hi], scratch[1, lo:hi]
        np.multiply(gr, np.float32(grad_scale), out=g)
        mm *= np.float32(beta1)
        np.multiply(g, np.float32(1 - beta1), out=h)
        mm += h
        g *= g
        vv *= np.float32(beta2)
        np.multiply(g, np.float32(1 - beta2), out=h)
        vv += h
        np.divide(vv, np.float32(c2), out=g)
        np.sqrt(g, out=g)
        g += np.float32(eps)                          # sqrt(v_hat) + eps
        np.divide(mm, g, out=g)
        g *= np.float32(1 / c1)                       # m_hat / (sqrt(v_hat) + eps)
        if weight_decay:
            np.multiply(p, np.float32(weight_decay), out=h)
            g += h
        g *= np.float32(lr)
        p -= g
    in_row_chunks(chunk, n, n)


def norm_squared(flat) -> float:
    """sum(flat^2), accumulated in float64 chunk by chunk (no float64 copy of the whole buffer)."""
    parts = []

    def chunk(lo, hi):
        c = flat[lo:hi]
        parts.append(float(np.dot(c.astype(np.float64), c.astype(np.float64))))
    step = 1 << 20
    for lo in range(0, flat.size, step):
        chunk(lo, min(flat.size, lo + step))
    return float(sum(parts))
