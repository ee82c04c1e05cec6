"""The NumPy backend's hot ops, written for speed and memory: the same math as the references in
helpers/ops (tests/test_fast_numpy.py checks them against each other), but in place, without large
temporaries, and spread over the CPU cores in row chunks (NumPy releases the GIL inside its loops).

For the default training config (GPT-2 vocabulary, B*T = 768 rows) the classifier alone touches
768 x 50304 floats, 155 MB, several times per step: that is where a careless NumPy version spends
its time and memory.

One thread plan: THREADS threads of our own share out the elementwise ops and the matrix products
alike, each product block a single-threaded BLAS call (_over_the_cores), so the BLAS's threads never
compete with ours for the cores. The memory-bound ops (AdamW, GELU, the classifier, the norm) go block by
block through the cache.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from ..ops import attention as attention_ops, layernorm as layernorm_ops
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


_scratch_buffers: dict[str, np.ndarray] = {}


def scratch(name: str, n: int) -> np.ndarray:
    """n float32 elements of the buffer `name`, kept between calls: a fresh temporary of a large array
    costs a page fault per 4 KiB every time (NumPy hands large blocks back to the OS when they are freed)."""
    buf = _scratch_buffers.get(name)
    if buf is None or buf.size < n:
        buf = _scratch_buffers[name] = np.empty(n, np.float32)
    return buf[:n]


def zero(flat):
    """flat[...] = 0 over the cores: the gradients of GPT-2 124M are 475 MiB to clear every step, which
    one core's memset does at about half the rate two do."""
    in_row_chunks(lambda lo, hi: flat[lo:hi].fill(0), flat.shape[0], flat.size)


def add_into(dst, src):
    """dst += src (2-D, the same shape), over the cores."""
    def rows(lo, hi):
        dst[lo:hi] += src[lo:hi]
    in_row_chunks(rows, dst.shape[0], dst.size)


def _blas_controllers():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:   # (a dependency; without it the BLAS keeps its own threads)
        return []
    return ThreadpoolController().select(user_api="blas").lib_controllers


#: NumPy's BLAS, whose threads product() sets to one while ours share out a product
_BLAS = _blas_controllers()
MIN_SPLIT = 1 << 21   # multiply-adds below which a product is one BLAS call


@contextmanager
def _blas_on_one_thread():
    """The BLAS single-threaded inside: our threads call it side by side."""
    before = [lib.num_threads for lib in _BLAS]
    for lib in _BLAS:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(_BLAS, before):
            lib.set_num_threads(n)


def _blocks(one, c, a, b, parts: int, bias=None):
    """The calls one(c, a, b, bias) that make the product c = a @ b (or c += a @ b) in `parts` blocks of c's
    rows or of its columns, whichever dimension is longer (bias, a row added to c, is cut with the columns)."""
    M, N = c.shape
    long = M if M >= N else N
    bounds = np.linspace(0, long, min(parts, long) + 1).astype(int)
    if M >= N:
        return [lambda lo=lo, hi=hi: one(c[lo:hi], a[lo:hi], b, bias) for lo, hi in zip(bounds[:-1], bounds[1:])]
    return [lambda lo=lo, hi=hi: one(c[:, lo:hi], a, b[:, lo:hi], None if bias is None else bias[lo:hi])
            for lo, hi in zip(bounds[:-1], bounds[1:])]


def _on_the_cores(calls):
    """Run the calls on our threads at once, the BLAS single-threaded inside each."""
    with _blas_on_one_thread():
        for f in [_pool.submit(call) for call in calls]:
            f.result()


def _split(c, a, b) -> bool:
    return _pool is not None and bool(_BLAS) and a.shape[0] * a.shape[1] * b.shape[1] >= MIN_SPLIT


def _over_the_cores(one, c, a, b, bias=None):
    """one(c, a, b, bias), a product c = a @ b (or c += a @ b), over the cores by our threads: each takes a
    block of c's rows (or of its columns, whichever dimension is longer) with a single-threaded BLAS call.
    One thread plan for the whole step: the BLAS's own threads, left on, keep spinning for a while after
    each product and take the cores from the elementwise ops that follow (the classifier ran at half speed
    after its matmul)."""
    if not _split(c, a, b):
        one(c, a, b, bias)
        return
    _on_the_cores(_blocks(one, c, a, b, THREADS, bias))


def _side_by_side(one, products):
    """Several independent products one(c, a, b) at once, the threads shared equally among them: the matmul
    backward's two (dx and dweight, the same number of multiply-adds) each on its own core of a 2-core
    machine, whole, instead of each cut in two (a whole product packs its operands once and runs a little
    faster). With threads that do not share out evenly, one product after the other."""
    if _pool is None or THREADS % len(products) or not all(_split(*p) for p in products):
        for c, a, b in products:
            _over_the_cores(one, c, a, b)
        return
    _on_the_cores([call for c, a, b in products for call in _blocks(one, c, a, b, THREADS // len(products))])


def product(out, a, b, bias=None):
    """out = a @ b (+ bias, a row, added to each block while it is in the cache), 2-D, over the cores."""
    def one(c, a, b, bias):
        np.matmul(a, b, out=c)
        if bias is not None:
            c += bias
    _over_the_cores(one, out, a, b, bias)


def _find_sgemm():
    """cblas_sgemm of NumPy's own BLAS, through ctypes: it accumulates (C = A B + C), which np.matmul cannot.
    PyPI's NumPy wheels bundle OpenBLAS as scipy-openblas, whose symbols say their integer width; None for
    any other BLAS (then matmul_backward makes each product in scratch and adds it)."""
    import ctypes
    for lib in _BLAS:
        if lib.internal_api != "openblas":
            continue
        blas = ctypes.CDLL(lib.filepath)
        for name, int_t in (("scipy_cblas_sgemm64_", ctypes.c_int64), ("scipy_cblas_sgemm", ctypes.c_int32)):
            fn = getattr(blas, name, None)
            if fn is not None:
                fn.restype = None
                fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, int_t, int_t, int_t, ctypes.c_float,
                               ctypes.c_void_p, int_t, ctypes.c_void_p, int_t, ctypes.c_float, ctypes.c_void_p, int_t]
                return fn
    return None


_SGEMM = _find_sgemm()
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112   # cblas.h's CblasRowMajor, CblasNoTrans, CblasTrans


def _blas_layout(a):
    """(transpose flag, leading dimension) of a float32 2-D array for a row-major cblas call, or None if its
    strides fit neither form (it is then copied)."""
    rows, cols = a.shape
    s0, s1 = a.strides
    if s1 == 4 and s0 % 4 == 0 and s0 // 4 >= max(1, cols):
        return _NO_TRANS, s0 // 4
    if s0 == 4 and s1 % 4 == 0 and s1 // 4 >= max(1, rows):
        return _TRANS, s1 // 4
    return None


def _accumulate_one(c, a, b, bias=None):
    """c += a @ b by one cblas_sgemm call with beta = 1 (a or b copied first if its strides fit no BLAS
    layout)."""
    la, lb = _blas_layout(a), _blas_layout(b)
    if la is None:
        a = np.ascontiguousarray(a)
        la = (_NO_TRANS, a.shape[1])
    if lb is None:
        b = np.ascontiguousarray(b)
        lb = (_NO_TRANS, b.shape[1])
    M, K = a.shape
    N = b.shape[1]
    if M and N:
        _SGEMM(_ROW_MAJOR, la[0], lb[0], M, N, K, 1.0, a.ctypes.data, la[1], b.ctypes.data, lb[1], 1.0,
               c.ctypes.data, c.strides[0] // 4)


def _check_accumulate(c, a, b):
    if c.strides[1] != 4 or c.dtype != np.float32 or a.dtype != np.float32 or b.dtype != np.float32:
        raise ValueError("gemm_accumulate takes float32 arrays and a c whose rows are contiguous")


def gemm_accumulate(c, a, b):
    """c += a @ b in place (float32, 2-D; a and b may be transposed views), by cblas_sgemm with beta = 1:
    no temporary, no second pass over c. Over the cores (_over_the_cores)."""
    _check_accumulate(c, a, b)
    _over_the_cores(_accumulate_one, c, a, b)


def matmul_forward(out, x, weight, bias):
    """out = x @ weight^T + bias, written into out: one product of all the rows (N, C) @ (C, OC), over the
    cores (product(), which adds the bias to each block while it is in the cache). NumPy would make one
    product per leading index of a 3-D x: at B=4, T=64, C=768, four 64-row products run at half the speed
    of one of 256 rows."""
    OC, C = weight.shape
    product(out.reshape(-1, OC), x.reshape(-1, C), weight.T, bias)


#: rows of dweight per product in matmul_backward: the classifier's (50304, 768) gradient is added in
#: blocks of 4096 rows (12 MiB of scratch) instead of through a 154 MiB temporary
DW_BLOCK_ROWS = 4096


def matmul_backward(dx, dweight, dbias, dout, x, weight):
    """The reference's accumulation: dx += dout @ weight, dweight += dout^T @ x, dbias += the column sums of
    dout. With NumPy's OpenBLAS, cblas_sgemm accumulates in place (gemm_accumulate); with another BLAS each
    product is made into scratch kept between calls and added in place over the cores, dweight's in blocks of
    DW_BLOCK_ROWS rows."""
    OC, C = weight.shape
    d2, x2 = dout.reshape(-1, OC), x.reshape(-1, C)
    N = d2.shape[0]
    if dbias is not None:
        dbias += d2.sum(axis=0)
    if _SGEMM is not None:   # the BLAS accumulates into dx and dweight itself, the two side by side
        products = [(dx.reshape(N, C), d2, weight), (dweight, d2.T, x2)]
        for p in products:
            _check_accumulate(*p)
        _side_by_side(_accumulate_one, products)
        return
    partial = scratch("matmul dx", N * C).reshape(N, C)
    product(partial, d2, weight)
    add_into(dx.reshape(N, C), partial)
    for lo in range(0, OC, DW_BLOCK_ROWS):
        hi = min(OC, lo + DW_BLOCK_ROWS)
        partial = scratch("matmul dweight", (hi - lo) * C).reshape(hi - lo, C)
        product(partial, d2[:, lo:hi].T, x2)
        add_into(dweight[lo:hi], partial)


def residual_forward(out, a, b):
    np.add(a, b, out=out)


def _tanh(u, out):
    """tanh through exp, which NumPy vectorises for float32: tanh(u) = 1 - 2 / (exp(2u) + 1)."""
    np.multiply(u, 2, out=out)
    np.exp(out, out=out)
    out += 1
    np.divide(2, out, out=out)
    np.subtract(1, out, out=out)
    return out


#: elements of a block of GELU's passes (forward and backward): the block's half-dozen rows of scratch stay
#: in the core's cache, and no temporary the size of the activation is made (a fresh one costs a page
#: fault per 4 KiB)
GELU_BLOCK = 1 << 15


def _in_cached_blocks(fn, n_rows: int, n_cols: int, scratch_rows: int):
    """fn(lo, hi, scratch) over [0, n_rows) in blocks of about GELU_BLOCK elements, shared out over
    the cores; scratch is (scratch_rows, rows of the block, n_cols) float32, one per core's share."""
    rows_per_block = max(1, GELU_BLOCK // max(1, n_cols))

    def share(lo, hi):
        scratch = np.empty((scratch_rows, min(rows_per_block, hi - lo), n_cols), np.float32)
        for a in range(lo, hi, rows_per_block):
            b = min(hi, a + rows_per_block)
            fn(a, b, scratch[:, :b - a])
    in_row_chunks(share, n_rows, n_rows * n_cols)


def gelu_forward(out, x):
    """GPT-2's GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), into out, block by block."""
    xf, of = x.reshape(-1, x.shape[-1]), out.reshape(-1, out.shape[-1])

    def rows(lo, hi, scratch):
        a, o, u = xf[lo:hi], of[lo:hi], scratch[0]
        np.multiply(a, a, out=u)
        u *= np.float32(0.044715)
        u += 1
        u *= a
        u *= GELU_SCALE                  # u = sqrt(2/pi) (x + 0.044715 x^3)
        _tanh(u, o)
        o += 1
        o *= a
        o *= np.float32(0.5)
    _in_cached_blocks(rows, xf.shape[0], xf.shape[1], 1)


def gelu_backward(dx, dout, x):
    """dx += dout * gelu'(x), gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2),
    block by block."""
    xf, df, gf = x.reshape(-1, x.shape[-1]), dout.reshape(-1, dout.shape[-1]), dx.reshape(-1, dx.shape[-1])

    def rows(lo, hi, scratch):
        a = xf[lo:hi]
        a2, th, sech2 = scratch
        np.multiply(a, a, out=a2)
        np.multiply(a2, np.float32(0.044715), out=th)
        th += 1
        th *= a
        th *= GELU_SCALE
        _tanh(th, th)                    # tanh u
        du = a2                          # du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2), in a2's memory
        du *= np.float32(3 * 0.044715)
        du += 1
        du *= GELU_SCALE
        np.multiply(th, th, out=sech2)
        np.subtract(1, sech2, out=sech2)
        sech2 *= a
        sech2 *= du
        sech2 *= np.float32(0.5)         # 0.5 x sech^2(u) du/dx
        th += 1
        th *= np.float32(0.5)            # 0.5 (1 + tanh u)
        th += sech2
        th *= df[lo:hi]
        gf[lo:hi] += th
    _in_cached_blocks(rows, xf.shape[0], xf.shape[1], 3)


#: rows of the classifier done together: 4 rows of GPT-2's 50304 columns are 0.8 MiB, so the five passes
#: over them read the cache, not memory
CLASSIFIER_BLOCK_ROWS = 4


def classifier(losses, dlogits, logits, targets, V, dloss):
    """The fused classifier of notebook 06 in NumPy: softmax over the first V columns, the loss, and
    dlogits = (probs - onehot) * dloss written into dlogits (no probability array is ever made). Each
    core takes a share of the rows, a few rows at a time."""
    Vp = logits.shape[-1]
    lf, df = logits.reshape(-1, Vp), dlogits.reshape(-1, Vp)
    tf, loss_f = targets.reshape(-1), losses.reshape(-1)
    scale = np.float32(dloss)

    def rows(lo, hi):
        for a in range(lo, hi, CLASSIFIER_BLOCK_ROWS):   # five passes over the block: max, subtract, exp, sum, scale
            b = min(hi, a + CLASSIFIER_BLOCK_ROWS)
            d = df[a:b]
            m = lf[a:b, :V].max(axis=1, keepdims=True)
            np.subtract(lf[a:b], m, out=d)
            d[:, V:] = -np.inf               # the padded columns take no part (exp(-inf) = 0)
            np.exp(d, out=d)
            s = d.sum(axis=1, keepdims=True)  # (NumPy sums pairwise: float32 is accurate enough here)
            r = np.arange(a, b)
            loss_f[a:b] = np.log(s[:, 0]) - (lf[r, tf[a:b]] - m[:, 0])   # -log softmax at the target
            d *= scale / s
            d[r - a, tf[a:b]] -= scale
    in_row_chunks(rows, lf.shape[0], lf.size)


#: elements of a block of AdamW: its arrays' blocks stay in cache through the update's passes. The fastest
#: of 2^14 .. 2^18 on the 2-core test machine (smaller blocks pay NumPy's per-call cost more often, larger
#: ones fall out of cache): 239 ms at 124M parameters against 281 for 2^16 and 602 for 2^14
ADAMW_BLOCK = 1 << 17


def adamw(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, grad_scale):
    """AdamW in place: the reference's update, rearranged into 13 passes over a block (14 with a gradient scale) instead of 17, chunked
    over the cores and, within a chunk, block by block in one scratch row (no temporary the size of a
    tensor, no page faults; every element goes through the same operations whatever the blocks, so the
    same bits). The rearrangement, exact in real numbers:
        m += (1 - beta1) (g - m)                     (= beta1 m + (1 - beta1) g)
        v += (1 - beta2) (g^2 - v)
        p  = p (1 - lr wd) - step * m / (sqrt(v) + eps sqrt(c2)),   step = lr sqrt(c2) / c1
    the last because m_hat / (sqrt(v_hat) + eps) = (sqrt(c2) / c1) m / (sqrt(v) + eps sqrt(c2)). Each line
    rounds a few times in float32 where the reference rounds a few others: tests/test_fast_numpy.py holds
    both to the float64 update within a bound of the same order."""
    c1, c2 = 1 - beta1 ** t, 1 - beta2 ** t
    step = np.float32(lr * math.sqrt(c2) / c1)
    eps_v = np.float32(eps * math.sqrt(c2))
    keep = np.float32(1 - lr * weight_decay)
    a1, a2, scale = np.float32(1 - beta1), np.float32(1 - beta2), np.float32(grad_scale)
    n = param.size

    def chunk(lo, hi):
        scratch = np.empty((2, min(ADAMW_BLOCK, hi - lo)), np.float32)
        for a in range(lo, hi, ADAMW_BLOCK):
            b = min(hi, a + ADAMW_BLOCK)
            p, g, mm, vv = param[a:b], grad[a:b], m[a:b], v[a:b]
            h = scratch[1, :b - a]
            if grad_scale != 1:                     # (a multiplication by 1 changes nothing: skipped)
                g = np.multiply(g, scale, out=scratch[0, :b - a])
            np.subtract(g, mm, out=h)
            h *= a1
            mm += h                                 # m
            np.multiply(g, g, out=h)
            h -= vv
            h *= a2
            vv += h                                 # v
            np.sqrt(vv, out=h)
            h += eps_v
            np.divide(mm, h, out=h)
            h *= step
            if weight_decay:
                p *= keep
            p -= h
    in_row_chunks(chunk, n, n)


#: elements of a block of norm_squared
NORM_BLOCK = 1 << 16


def norm_squared(flat) -> float:
    """sum(flat^2): each block's dot product with itself in float32 by the BLAS (one pass, single-threaded
    so its order is fixed), the blocks' sums added in float64 with math.fsum (correctly rounded: the result
    does not depend on how the blocks are shared among the cores), over the cores. All terms are positive,
    so a block's relative error is at most its length times float32's unit roundoff, whatever order the
    BLAS adds in: a clipping coefficient needs far less (tests/test_fast_numpy.py checks the bound)."""
    n = flat.size
    parts = np.zeros(-(-n // NORM_BLOCK))

    def blocks(lo, hi):
        for i in range(lo, hi):
            block = flat[i * NORM_BLOCK:(i + 1) * NORM_BLOCK]
            parts[i] = np.dot(block, block)
    with _blas_on_one_thread():
        in_row_chunks(blocks, parts.size, n)
    return math.fsum(parts)


def attention_forward(out, att, qkv, n_head):
    """The reference (helpers.ops.attention) one sequence at a time, the sequences shared out over the cores
    with a single-threaded BLAS: the reference's math on each sequence, with temporaries of one sequence's
    (NH, T, T) scores instead of the whole batch's (12.6 MB each at L4 C128, B=12, T=256)."""
    def sequences(lo, hi):
        for b in range(lo, hi):
            o, p = attention_ops.attention_forward(qkv[b:b + 1], n_head)
            out[b:b + 1], att[b:b + 1] = o, p
    with _blas_on_one_thread():
        in_row_chunks(sequences, qkv.shape[0], qkv.size)


def attention_backward(dqkv, dout, qkv, att, n_head):
    """The reference's backward one sequence at a time, over the cores, as attention_forward."""
    def sequences(lo, hi):
        for b in range(lo, hi):
            attention_ops.attention_backward(dqkv[b:b + 1], dout[b:b + 1], qkv[b:b + 1], None, n_head,
                                             att=att[b:b + 1])
    with _blas_on_one_thread():
        in_row_chunks(sequences, qkv.shape[0], qkv.size)


def layernorm_forward(out, mean, rstd, x, weight, bias):
    """The reference (helpers.ops.layernorm) on the cores' shares of the rows: each row's numbers as the
    reference computes them."""
    C = x.shape[-1]
    xf, of, mf, rf = x.reshape(-1, C), out.reshape(-1, C), mean.reshape(-1), rstd.reshape(-1)

    def rows(lo, hi):
        of[lo:hi], mf[lo:hi], rf[lo:hi] = layernorm_ops.layernorm_forward(xf[lo:hi], weight, bias)
    in_row_chunks(rows, xf.shape[0], xf.size)


def layernorm_backward(dx, dweight, dbias, dout, x, weight, mean, rstd):
    """The reference's backward on the cores' shares of the rows; each share's sums for dweight and dbias
    are added in the order of the shares (the same result for the same number of threads)."""
    C = x.shape[-1]
    xf, df, gf = x.reshape(-1, C), dout.reshape(-1, C), dx.reshape(-1, C)
    mf, rf = mean.reshape(-1), rstd.reshape(-1)
    parts = {}

    def rows(lo, hi):
        pw, pb = np.zeros(C, dweight.dtype), np.zeros(C, dbias.dtype)
        layernorm_ops.layernorm_backward(gf[lo:hi], pw, pb, df[lo:hi], xf[lo:hi], weight, mf[lo:hi], rf[lo:hi])
        parts[lo] = pw, pb
    in_row_chunks(rows, xf.shape[0], xf.size)
    for lo in sorted(parts):
        dweight += parts[lo][0]
        dbias += parts[lo][1]
