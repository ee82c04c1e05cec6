"""cuda/layernorm.cu and helpers/ops/layernorm.py: every kernel version against the NumPy reference at
odd shapes, in every thread order, the NumPy backward against finite differences, and every shape
assumption of a version refused with a clear ValueError."""
import numpy as np
import pytest

import helpers
from helpers.ops import layernorm as ln
from helpers.runtime import device, nvrtc_report
from helpers.runtime.cuda_source import REPO_ROOT
from helpers.teaching import gradcheck
from support import f64

FWD_TOL = dict(atol=1e-5)   # llm.c: layernorm forward 1e-5 (rtol: FLT_EPSILON, helpers.check's default)
# llm.c: layernorm backward 1e-3; plus rtol 1e-4 because dweight/dbias are sums over all N rows, whose
# float32 rounding error grows with N and with their size (at N = 8192 they reach ~340 and version 1's error
# 8.5e-4 on the CPU backend: too close to 1e-3 for a check that must never fail by chance)
BWD_TOL = dict(atol=1e-3, rtol=1e-4)

SHAPES = [(3, 37, 48), (2, 7, 100), (2, 5, 1600)]      # C % 4 == 0: every version
ODD_C = [(3, 7, 50), (2, 3, 1601)]                     # C % 4 != 0: all but forward3
FORWARD, BACKWARD = sorted(ln.VERSIONS["forward"]), sorted(ln.VERSIONS["backward"])
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
