"""cuda/layernorm.cu and helpers/ops/layernorm.py: every kernel version against the NumPy reference at
odd shapes, in every thread order, the NumPy backward against finite differences, and every shape
assumption of a version refused with a clear ValueError. The bf16 versions (VERSIONS lines
"bf16: ...") have their own section at the end."""
import numpy as np
import pytest

import helpers
from helpers.ops import layernorm as ln
from helpers.runtime import device, nvrtc_report
from helpers.runtime.cuda_source import REPO_ROOT
from helpers.teaching import gradcheck
from support import BF16, check_bf16, f64

FWD_TOL = dict(atol=1e-5)   # llm.c: layernorm forward 1e-5 (rtol: FLT_EPSILON, helpers.check's default)
# llm.c: layernorm backward 1e-3; plus rtol 1e-4 because dweight/dbias are sums over all N rows, whose
# float32 rounding error grows with N and with their size (at N = 8192 they reach ~340 and version 1's error
# 8.5e-4 on the CPU backend: too close to 1e-3 for a check that must never fail by chance)
BWD_TOL = dict(atol=1e-3, rtol=1e-4)

SHAPES = [(3, 37, 48), (2, 7, 100), (2, 5, 1600)]      # C % 4 == 0: every version
ODD_C = [(3, 7, 50), (2, 3, 1601)]                     # C % 4 != 0: all but forward3
# the float32 versions (the bf16 ones take other arrays: their section at the end)
FORWARD, BACKWARD = ([v for v, line in ln.VERSIONS[step].items() if not line.startswith("bf16:")]
                     for step in ("forward", "backward"))
ANY_C = [v for v in FORWARD if "C % 4" not in ln.VERSIONS["forward"][v]]   # the forwards that take any C
FLOAT4 = [v for v in FORWARD if v not in ANY_C]


def make_inputs(shape, seed=0):
    """x with a different mean and spread per row (as in a residual stream), weight, bias, dout."""
    rng = np.random.default_rng(seed)
    C = shape[-1]
    loc = rng.normal(0, 0.5, size=shape[:-1] + (1,))
    scale = rng.uniform(0.5, 2, size=shape[:-1] + (1,))
    x = (loc + scale * rng.standard_normal(shape)).astype(np.float32)
    weight = (1 + 0.5 * rng.standard_normal(C)).astype(np.float32)
    bias = (0.5 * rng.standard_normal(C)).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    return x, weight, bias, dout


def empty(shape):
    # device.empty(()) fails on the CPU backend (it cannot view a 0-d array as bytes): zeros for a scalar
    return device.empty(shape) if shape else device.zeros(shape)


def run_forward(version, x, weight, bias, **kw):
    out, mean, rstd = empty(x.shape), empty(x.shape[:-1]), empty(x.shape[:-1])
    ln.forward(out, mean, rstd, device.asarray(x), device.asarray(weight), device.asarray(bias), version=version, **kw)
    return out, mean, rstd


def check_forward(version, shape):
    x, weight, bias, _ = make_inputs(shape)
    out, mean, rstd = run_forward(version, x, weight, bias)
    ref_out, ref_mean, ref_rstd = ln.layernorm_forward(*map(f64, (x, weight, bias)))
    helpers.check(f"forward{version} out {shape}", out, ref_out, **FWD_TOL)
    helpers.check(f"forward{version} mean {shape}", mean, ref_mean, **FWD_TOL)
    helpers.check(f"forward{version} rstd {shape}", rstd, ref_rstd, **FWD_TOL)


@pytest.mark.parametrize("shape", SHAPES + ODD_C)
@pytest.mark.parametrize("version", ANY_C)
def test_forward_any_c(version, shape):
    check_forward(version, shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("version", FLOAT4)
def test_forward_float4(version, shape):
    check_forward(version, shape)


def test_forward_on_2d_and_1d_inputs():
    x, weight, bias, _ = make_inputs((5, 64))
    for version in FORWARD:
        for xs in (x, x[0]):   # (N, C) and a single row (C,)
            out, mean, rstd = run_forward(version, np.ascontiguousarray(xs), weight, bias)
            ref = ln.layernorm_forward(*map(f64, (xs, weight, bias)))
            for got, want in zip((out, mean, rstd), ref):
                helpers.check(f"forward{version} {xs.shape}", got, want, **FWD_TOL)


@pytest.mark.parametrize("block_size", [32, 64, 96, 1024])
@pytest.mark.parametrize("version", FORWARD[1:])   # version 1 has one thread per row, no block_size to choose
def test_forward_block_sizes(version, block_size):
    x, weight, bias, _ = make_inputs((3, 11, 200))
    out, _, _ = run_forward(version, x, weight, bias, block_size=block_size)
    helpers.check(f"forward{version} block {block_size}", out, ln.layernorm_forward(*map(f64, (x, weight, bias)))[0], **FWD_TOL)


def run_backward(version, shape, seed=1, **kw):
    """Kernel and reference gradients, both accumulated onto the same nonzero starting values."""
    x, weight, bias, dout = make_inputs(shape, seed)
    _, mean, rstd = ln.layernorm_forward(x, weight, bias)   # float32, as saved by a forward pass
    rng = np.random.default_rng(seed + 100)
    dx0 = rng.standard_normal(shape).astype(np.float32)
    dw0, db0 = rng.standard_normal((2, shape[-1])).astype(np.float32)
    ref = list(map(f64, (dx0, dw0, db0)))   # copies, made before the kernel (on the CPU backend asarray does not copy)
    dx, dw, db = device.asarray(dx0), device.asarray(dw0), device.asarray(db0)
    ln.backward(dx, dw, db, *(device.asarray(a) for a in (dout, x, weight, mean, rstd)), version=version, **kw)
    ln.layernorm_backward(*ref, *map(f64, (dout, x, weight, mean, rstd)))
    return (dx, dw, db), ref


def check_backward(version, shape, **kw):
    got, ref = run_backward(version, shape, **kw)
    for name, g, r in zip(("dx", "dweight", "dbias"), got, ref):
        helpers.check(f"backward{version} {name} {shape}", g, r, **BWD_TOL)


@pytest.mark.parametrize("shape", SHAPES + ODD_C)
@pytest.mark.parametrize("version", BACKWARD)
def test_backward(version, shape):
    check_backward(version, shape)


@pytest.mark.parametrize("num_blocks", [1, 4, 200])   # many rows per block ... blocks with no row
def test_backward2_num_blocks(num_blocks):
    check_backward(2, (3, 37, 48), num_blocks=num_blocks)


def test_backward2_block_sizes():
    for block_size in (32, 96, 1024):
        check_backward(2, (2, 5, 100), block_size=block_size)


def test_backward2_at_the_largest_c():
    check_backward(2, (1, 2, ln.BACKWARD2_MAX_C))


# ------------------------------------------------------------------------------------------------
# Every thread order gives the same bits (float atomics: the same values up to rounding)
# ------------------------------------------------------------------------------------------------
def device_args(shape):
    x, weight, bias, dout = make_inputs(shape)
    _, mean, rstd = ln.layernorm_forward(x, weight, bias)
    N, C = int(np.prod(shape[:-1])), shape[-1]
    x, dout, mean, rstd = x.reshape(N, C), dout.reshape(N, C), mean.reshape(N), rstd.reshape(N)   # N rows
    return N, C, [device.asarray(a) for a in (x, weight, bias, dout, mean, rstd)]


@pytest.mark.parametrize("version, C", [(v, 50) for v in ANY_C] + [(v, 48) for v in FLOAT4])
def test_racecheck_forward(version, C):
    N, C, (x, w, b, _, _, _) = device_args((3, 37, C))
    out, mean, rstd = device.empty((N, C)), device.empty(N), device.empty(N)
    for launch in ln.launches("forward", out, mean, rstd, x, w, b, version=version, block_size=64):
        device.racecheck(*launch)


def test_racecheck_backward1_needs_a_tolerance():
    # Float atomicAdd: the rows add into dweight/dbias in the order the threads run, and float
    # addition is not associative, so the last bits depend on the order: exact comparison fails,
    # comparison to within a few float32 roundings of the sums passes.
    N, C, (x, w, _, dout, mean, rstd) = device_args((3, 37, 50))
    dx, dw, db = device.zeros((N, C)), device.zeros(C), device.zeros(C)
    [launch] = ln.launches("backward", dx, dw, db, dout, x, w, mean, rstd, version=1, block_size=64)
    with pytest.raises(device.RaceError, match="dweight|dbias"):
        device.racecheck(*launch)
    device.racecheck(*launch, atol=1e-5, rtol=1e-5)


def test_racecheck_backward2_is_exact():
    N, C, (x, w, _, dout, mean, rstd) = device_args((3, 37, 50))
    dx, dw, db = device.zeros((N, C)), device.zeros(C), device.zeros(C)
    partials, reduce = ln.launches("backward", dx, dw, db, dout, x, w, mean, rstd, version=2, block_size=64,
                                   num_blocks=8)
    device.racecheck(*partials)
    partials()   # the reduction reads the partial sums
    device.racecheck(*reduce)


# ------------------------------------------------------------------------------------------------
# The exercise's reference solution (notebook 02, section "Your turn")
# ------------------------------------------------------------------------------------------------
SOLUTION = REPO_ROOT / "notebooks" / "solutions" / "02_layernorm_welford.cu"


@pytest.mark.parametrize("shape", [(3, 37, 48), (2, 3, 1601), (1, 1, 5)])
def test_welford_solution(shape):
    fn = device.load_module(SOLUTION).get_function("layernorm_forward_welford")
    x, weight, bias, _ = make_inputs(shape)
    N, C = int(np.prod(shape[:-1])), shape[-1]
    out, mean, rstd = device.empty(shape), device.empty(shape[:-1]), device.empty(shape[:-1])
    args = (out, mean, rstd, device.asarray(x), device.asarray(weight), device.asarray(bias), N, C, 1e-5)
    fn((helpers.ceil_div(N, 4),), (128,), args)
    for name, got, want in zip(("out", "mean", "rstd"), (out, mean, rstd), ln.layernorm_forward(*map(f64, (x, weight, bias)))):
        helpers.check(f"welford {name} {shape}", got, want, **FWD_TOL)
    device.racecheck(fn, (helpers.ceil_div(N, 4),), (128,), args)


def test_welford_solution_compiles_for_the_gpu():
    rows = nvrtc_report.compile_report([SOLUTION])
    assert rows and all(not r.spills for r in rows)


# ------------------------------------------------------------------------------------------------
# bf16 storage (mixed precision): forward version 4, backward version 3
# ------------------------------------------------------------------------------------------------
BF16_SHAPES = [(3, 37, 48), (2, 7, 104), (2, 5, 1600), (1, 1, 8)]   # C % 8 == 0 (1600: GPT-2 XL's C)


def test_bf16_versions():
    assert [v for v, line in ln.VERSIONS["forward"].items() if line.startswith("bf16:")] == [ln.BF16_FORWARD] == [4]
    assert [v for v, line in ln.VERSIONS["backward"].items() if line.startswith("bf16:")] == [ln.BF16_BACKWARD] == [3]


def bf16_inputs(shape, seed=0):
    """make_inputs rounded to bf16: x, weight, bias, dout (what the bf16 model stores)."""
    return tuple(a.astype(BF16) for a in make_inputs(shape, seed))


def run_forward_bf16(x, weight, bias, **kw):
    out, mean, rstd = device.empty(x.shape, BF16), empty(x.shape[:-1]), empty(x.shape[:-1])
    ln.forward(out, mean, rstd, device.asarray(x), device.asarray(weight), device.asarray(bias), version=4, **kw)
    return out, mean, rstd


def check_forward_bf16(shape, **kw):
    """out is bf16, rounded once from float32 (check_bf16 with the float32 forwards' FWD_TOL); mean and
    rstd are float32 statistics of the bf16 x, within FWD_TOL of the float64 ones."""
    x, weight, bias, _ = bf16_inputs(shape)
    out, mean, rstd = run_forward_bf16(x, weight, bias, **kw)
    assert out.dtype == BF16 and mean.dtype == rstd.dtype == np.float32
    ref_out, ref_mean, ref_rstd = ln.layernorm_forward(*map(f64, (x, weight, bias)))
    check_bf16(f"forward4 out {shape}", out, ref_out, rtol=float(np.finfo(np.float32).eps), **FWD_TOL)
    helpers.check(f"forward4 mean {shape}", mean, ref_mean, **FWD_TOL)
    helpers.check(f"forward4 rstd {shape}", rstd, ref_rstd, **FWD_TOL)


@pytest.mark.parametrize("shape", BF16_SHAPES + [(64,), (5, 64)], ids=str)
def test_bf16_forward(shape):
    check_forward_bf16(shape)


@pytest.mark.parametrize("block_size", [32, 96, 1024])
def test_bf16_forward_block_sizes(block_size):
    check_forward_bf16((3, 11, 200), block_size=block_size)


def run_backward_bf16(shape, seed=1, **kw):
    """The bf16 backward and the float64 reference, from the same bf16 dx and float32 dweight, dbias."""
    x, weight, bias, dout = bf16_inputs(shape, seed)
    _, mean, rstd = ln.layernorm_forward(*(a.astype(np.float32) for a in (x, weight, bias)))   # float32 statistics
    rng = np.random.default_rng(seed + 100)
    dx0 = rng.standard_normal(shape).astype(BF16)
    dw0, db0 = rng.standard_normal((2, shape[-1])).astype(np.float32)
    ref = list(map(f64, (dx0, dw0, db0)))
    dx, dw, db = device.asarray(dx0.copy()), device.asarray(dw0.copy()), device.asarray(db0.copy())
    ln.backward(dx, dw, db, *(device.asarray(a) for a in (dout, x, weight, mean, rstd)), version=3, **kw)
    ln.layernorm_backward(*ref, *map(f64, (dout, x, weight, mean, rstd)))
    return (dx, dw, db), ref


def check_backward_bf16(shape, **kw):
    """dx (bf16, +=): the float32 result within the float32 backwards' BWD_TOL, rounded once
    (check_bf16); dweight and dbias stay float32, sums over rows as in version 2: BWD_TOL."""
    (dx, dw, db), (ref_dx, ref_dw, ref_db) = run_backward_bf16(shape, **kw)
    assert dx.dtype == BF16 and dw.dtype == db.dtype == np.float32
    check_bf16(f"backward3 dx {shape}", dx, ref_dx, **BWD_TOL)
    helpers.check(f"backward3 dweight {shape}", dw, ref_dw, **BWD_TOL)
    helpers.check(f"backward3 dbias {shape}", db, ref_db, **BWD_TOL)


@pytest.mark.parametrize("shape", BF16_SHAPES, ids=str)
def test_bf16_backward(shape):
    check_backward_bf16(shape)


@pytest.mark.parametrize("num_blocks", [1, 4, 200])   # many rows per block ... blocks with no row
def test_bf16_backward_num_blocks(num_blocks):
    check_backward_bf16((3, 37, 48), num_blocks=num_blocks)


def test_bf16_backward_block_sizes_and_the_largest_c():
    for block_size in (32, 96, 1024):
        check_backward_bf16((2, 5, 104), block_size=block_size)
    check_backward_bf16((1, 2, ln.BACKWARD2_MAX_C))
    assert ln.BACKWARD2_MAX_C % 8 == 0


def test_bf16_backward_sums_dweight_in_version_2s_order():
    """The same partial sums per block and the same reduction as version 2, on the bf16 inputs
    converted to float32: dweight and dbias have the same bits (dx differs only by its rounding)."""
    shape = (3, 37, 48)
    x, weight, bias, dout = bf16_inputs(shape)
    _, mean, rstd = ln.layernorm_forward(*(a.astype(np.float32) for a in (x, weight, bias)))
    grads = {}
    for version, cast in ((2, lambda a: a.astype(np.float32)), (3, lambda a: a)):
        dx, dw, db = device.zeros(shape, BF16 if version == 3 else np.float32), device.zeros(48), device.zeros(48)
        ln.backward(dx, dw, db, *(device.asarray(cast(a)) for a in (dout, x, weight)), device.asarray(mean),
                    device.asarray(rstd), version=version, block_size=32)
        grads[version] = (device.asnumpy(dx), device.asnumpy(dw), device.asnumpy(db))
    assert np.array_equal(grads[2][1], grads[3][1]) and np.array_equal(grads[2][2], grads[3][2])


def bf16_device_args(shape):
    x, weight, bias, dout = bf16_inputs(shape)
    _, mean, rstd = ln.layernorm_forward(*(a.astype(np.float32) for a in (x, weight, bias)))
    N, C = int(np.prod(shape[:-1])), shape[-1]
    x, dout, mean, rstd = x.reshape(N, C), dout.reshape(N, C), mean.reshape(N), rstd.reshape(N)
    return N, C, [device.asarray(a) for a in (x, weight, bias, dout, mean, rstd)]


def test_bf16_racecheck():
    """Both bf16 versions, every launch, in every thread order, bit for bit (no atomics)."""
    N, C, (x, w, b, dout, mean, rstd) = bf16_device_args((3, 37, 48))
    [forward] = ln.launches("forward", device.empty((N, C), BF16), device.empty(N), device.empty(N), x, w, b,
                            version=4, block_size=64)
    device.racecheck(*forward)
    dx, dw, db = device.zeros((N, C), BF16), device.zeros(C), device.zeros(C)
    partials, reduce = ln.launches("backward", dx, dw, db, dout, x, w, mean, rstd, version=3, block_size=32,
                                   num_blocks=8)
    assert (partials.name, reduce.name) == ("layernorm_backward3", "layernorm_backward2_reduce")
    device.racecheck(*partials)
    partials()   # the reduction reads the partial sums
    device.racecheck(*reduce)


def test_bf16_refusals():
    N, C, (x, w, b, dout, mean, rstd) = bf16_device_args((2, 3, 20))   # C = 20: a multiple of 4, not of 8
    with pytest.raises(ValueError, match=r"layernorm_forward4 loads 8 bf16 at a time \(16 bytes\): C must be a "
                                         r"multiple of 8, got C=20 \(use float32 arrays and a version that takes "
                                         r"any C\)"):
        ln.forward(device.empty((N, C), BF16), device.empty(N), device.empty(N), x, w, b, version=4)
    with pytest.raises(ValueError, match=r"layernorm_backward3 loads 8 bf16 at a time .* got C=20"):
        ln.backward(device.zeros((N, C), BF16), device.zeros(C), device.zeros(C), dout, x, w, mean, rstd, version=3)
    N, C, (x, w, b, dout, mean, rstd) = bf16_device_args((2, 3, 16))
    view = device.asarray(np.zeros(N * C + 8, BF16))[4:4 + N * C].reshape(N, C)   # 8 bytes past an aligned address
    assert view.flags.c_contiguous
    with pytest.raises(ValueError, match=r"layernorm_forward4 loads 16 bytes at a time: `x` must start at a 16-byte "
                                         r"aligned address, but it starts 8 bytes past one"):
        ln.forward(device.empty((N, C), BF16), device.empty(N), device.empty(N), view, w, b, version=4)
    with pytest.raises(ValueError, match=r"layernorm_backward3 loads 16 bytes at a time: `dx` must start"):
        ln.backward(view, device.zeros(C), device.zeros(C), dout, x, w, mean, rstd, version=3)
    with pytest.raises(ValueError, match=r"layernorm_forward4 reduces with full-warp shuffles: block_size must be a "
                                         r"multiple of 32, got 48"):
        ln.forward(device.empty((N, C), BF16), device.empty(N), device.empty(N), x, w, b, version=4, block_size=48)
    big = ln.BACKWARD2_MAX_C + 8
    xb = device.zeros((1, big), BF16)
    with pytest.raises(ValueError, match=fr"layernorm_backward3 keeps each block's .* C must be at most "
                                         fr"{ln.BACKWARD2_MAX_C}, got C={big} \(use version 1 on float32 arrays\)"):
        ln.backward(device.zeros((1, big), BF16), device.zeros(big), device.zeros(big), xb, xb,
                    device.zeros(big, BF16), device.zeros(1), device.zeros(1), version=3)


def test_bf16_and_float32_versions_refuse_each_others_arrays():
    N, C, (x, w, b, dout, mean, rstd) = bf16_device_args((2, 3, 16))
    out32, out16, stat = device.empty((N, C)), device.empty((N, C), BF16), device.empty(N)
    for v in FORWARD:
        with pytest.raises(ValueError, match=fr"layernorm_forward{v}: `x` must be float32, got bfloat16 \(a bf16 "
                                             r"array: the bf16 versions take it"):
            ln.forward(out32, stat, stat, x, w, b, version=v)
    for v in BACKWARD:
        with pytest.raises(ValueError, match=fr"layernorm_backward{v}: `x` must be float32, got bfloat16"):
            ln.backward(device.zeros((N, C)), device.zeros(C), device.zeros(C), dout, x, w, mean, rstd, version=v)
    x32 = device.asarray(device.asnumpy(x).astype(np.float32))
    with pytest.raises(ValueError, match=r"layernorm_forward4: `x` must be bfloat16, got float32"):
        ln.forward(out16, stat, stat, x32, w, b, version=4)
    with pytest.raises(ValueError, match=r"layernorm_forward4: `mean` must be float32, got bfloat16"):
        ln.forward(out16, device.empty(N, BF16), stat, x, w, b, version=4)
    with pytest.raises(ValueError, match=r"layernorm_forward4: `bias` must be bfloat16, got float32"):
        ln.forward(out16, stat, stat, x, w, device.zeros(C), version=4)
    with pytest.raises(ValueError, match=r"layernorm_backward3: `dweight` must be float32, got bfloat16"):
        ln.backward(device.zeros((N, C), BF16), device.zeros(C, BF16), device.zeros(C), dout, x, w, mean, rstd,
                    version=3)
    with pytest.raises(ValueError, match=r"layernorm_backward3: `dout` must be bfloat16, got float32"):
        ln.backward(device.zeros((N, C), BF16), device.zeros(C), device.zeros(C), device.zeros((N, C)), x, w, mean,
                    rstd, version=3)
