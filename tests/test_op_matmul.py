"""cuda/matmul.cu and helpers/ops/matmul.py: every kernel version against the NumPy reference at odd
shapes, race checks, the NumPy backward against finite differences, and the shape assertions.

Tolerance: a float32 sum of K terms in any order (with or without FMA) is within
K * 2^-24 * sum|terms| of the exact sum, and the float64 reference is exact to float32's eyes. So each
check uses atol = (K + 1) * 2^-24 * (max over elements of sum|terms|) (the +1: the bias, or the
gradient's old value) and rtol = 0: never a false alarm, whatever order a kernel sums in. A bug that
drops or doubles one product errs by about sum|terms| / K, about 1 / (K^2 * 2^-24) times the bound:
~7000x at K = 48. The exact test on small integers closes the remaining gap.

The bf16 versions (4, 5) are checked below the float32 ones, with the tolerance derived there
(bf16_tolerance)."""
import ml_dtypes
import numpy as np
import pytest

import helpers
from helpers import device
from helpers.ops import matmul as mm
from helpers.runtime.cuda_source import CUDA_DIR
from helpers.teaching import gradcheck
from support import f64

# (N, C, OC): B*T = 3*37 with GPT-2's qkv projection shape at C=48, a shape where nothing is a
# multiple of 16 (partial tiles everywhere, C not a multiple of the k-step), and shapes that are
# not multiples of 4, which only versions 1 and 2 accept.
SHAPES_ALL = [(3 * 37, 48, 3 * 48), (2 * 19, 20, 36), (1, 4, 4), (130, 132, 8)]
SHAPES_ODD = [(3 * 37, 48, 101), (2 * 19, 33, 7), (5, 1, 3)]


FLOAT32_VERSIONS = [v for v in sorted(mm.VERSIONS["forward"]) if v not in mm.BF16_VERSIONS]
BF16_VERSIONS = list(mm.BF16_VERSIONS)


def shapes_for(version):
    return SHAPES_ALL + (SHAPES_ODD if version != 3 else [])


def on_device(*arrays):
    return [device.asarray(a) for a in arrays]


def make_inputs(N, C, OC, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C), dtype=np.float32)
    weight = (0.5 * rng.standard_normal((OC, C))).astype(np.float32)
    bias = rng.standard_normal(OC).astype(np.float32)
    dout = rng.standard_normal((N, OC), dtype=np.float32)
    return x, weight, bias, dout


@pytest.fixture(scope="module", autouse=True)
def compiled():
    mm.module()  # compile once, before the first timed test


@pytest.mark.parametrize("version", FLOAT32_VERSIONS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward_matches_reference(version, with_bias):
    for N, C, OC in shapes_for(version):
        x, weight, bias, _ = make_inputs(N, C, OC)
        bias = bias if with_bias else None
        ref = mm.matmul_forward(*map(f64, (x, weight)), None if bias is None else bias.astype(np.float64))
        out = device.empty((N, OC))
        mm.forward(out, device.asarray(x), device.asarray(weight),
                   None if bias is None else device.asarray(bias), version=version)
        helpers.check(f"matmul_forward{version} {N}x{C}x{OC}", out, ref, atol=mm.forward_atol(x, weight, bias), rtol=0)


@pytest.mark.parametrize("version", FLOAT32_VERSIONS)
def test_forward_takes_batched_x(version):
    """x (B, T, C) -> out (B, T, OC): the kernels see N = B*T rows."""
    B, T, C, OC = 3, 37, 48, 144
    x, weight, bias, _ = make_inputs(B * T, C, OC, seed=1)
    x = x.reshape(B, T, C)
    out = device.empty((B, T, OC))
    mm.forward(out, *map(device.asarray, (x, weight, bias)), version=version)
    helpers.check(f"matmul_forward{version} (B, T, C)", out, mm.matmul_forward(*map(f64, (x, weight, bias))),
                  atol=mm.forward_atol(x, weight, bias), rtol=0)


@pytest.mark.parametrize("version", FLOAT32_VERSIONS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_backward_accumulates_and_matches_reference(version, with_bias):
    for N, C, OC in shapes_for(version):
        x, weight, _, dout = make_inputs(N, C, OC, seed=2)
        rng = np.random.default_rng(3)
        dx0 = rng.standard_normal((N, C), dtype=np.float32)     # gradients already holding values:
        dw0 = rng.standard_normal((OC, C), dtype=np.float32)    # the kernels must add to them
        db0 = rng.standard_normal(OC).astype(np.float32)
        ref_dx, ref_dw, ref_db = map(f64, (dx0, dw0, db0))
        mm.matmul_backward(ref_dx, ref_dw, ref_db if with_bias else None, *map(f64, (dout, x, weight)))
        dx, dw, db = device.asarray(dx0.copy()), device.asarray(dw0.copy()), device.asarray(db0.copy())
        mm.backward(dx, dw, db if with_bias else None, device.asarray(dout), device.asarray(x),
                    device.asarray(weight), version=version)
        atol_dx, atol_dw, atol_db = mm.backward_atols(dout, x, weight, dx0, dw0, db0)
        helpers.check(f"backward{version} dx {N}x{C}x{OC}", dx, ref_dx, atol=atol_dx, rtol=0)
        helpers.check(f"backward{version} dweight {N}x{C}x{OC}", dw, ref_dw, atol=atol_dw, rtol=0)
        if with_bias:
            helpers.check(f"backward{version} dbias {N}x{C}x{OC}", db, ref_db, atol=atol_db, rtol=0)
        else:
            assert np.array_equal(device.asnumpy(db), db0), "dbias=None must leave the bias gradient alone"


def test_sums_of_small_integers_are_exact():
    """Integers in {-2..2}: every partial sum is an integer far below 2^24, exact in float32 in any
    order, so every version must give exactly the reference: a dropped or doubled product shows."""
    N, C, OC = 3 * 37, 48, 144
    rng = np.random.default_rng(4)
    x, weight, dout = (rng.integers(-2, 3, size=s).astype(np.float32) for s in ((N, C), (OC, C), (N, OC)))
    bias = rng.integers(-2, 3, size=OC).astype(np.float32)
    ref = mm.matmul_forward(*map(f64, (x, weight, bias)))
    ref_dx, ref_dw, ref_db = np.zeros((N, C)), np.zeros((OC, C)), np.zeros(OC)
    mm.matmul_backward(ref_dx, ref_dw, ref_db, *map(f64, (dout, x, weight)))
    for version in FLOAT32_VERSIONS:
        out = device.empty((N, OC))
        mm.forward(out, *map(device.asarray, (x, weight, bias)), version=version)
        assert np.array_equal(device.asnumpy(out), ref), f"forward{version} is not exact on integers"
        dx, dw, db = device.zeros((N, C)), device.zeros((OC, C)), device.zeros(OC)
        mm.backward(dx, dw, db, *map(device.asarray, (dout, x, weight)), version=version)
        for name, got, want in (("dx", dx, ref_dx), ("dweight", dw, ref_dw), ("dbias", db, ref_db)):
            assert np.array_equal(device.asnumpy(got), want), f"backward{version} {name} is not exact on integers"


# ------------------------------------------------------------------------------------------------
# Races: no float atomics anywhere, so every thread order must give identical bits (atol = rtol = 0)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", FLOAT32_VERSIONS)
def test_racecheck_forward(version):
    N, C, OC = (2 * 19, 20, 36) if version == 3 else (2 * 19, 33, 37)
    x, weight, bias, _ = make_inputs(N, C, OC)
    [launch] = mm.launches("forward", device.empty((N, OC)), *map(device.asarray, (x, weight, bias)), version=version)
    device.racecheck(*launch)


@pytest.mark.parametrize("version", FLOAT32_VERSIONS)
def test_racecheck_backward(version):
    N, C, OC = (2 * 19, 20, 36) if version == 3 else (2 * 19, 33, 37)
    x, weight, _, dout = make_inputs(N, C, OC)
    grads = device.zeros((N, C)), device.zeros((OC, C)), device.zeros(OC)
    for launch in mm.launches("backward", *grads, *map(device.asarray, (dout, x, weight)), version=version):
        device.racecheck(*launch)


def test_racecheck_catches_a_missing_barrier(tmp_path):
    """The check is not vacuous: forward2 without its second __syncthreads() is caught."""
    src = (CUDA_DIR / "matmul.cu").read_text()
    marker = "        __syncthreads();  // everyone is done with the tile before the next step overwrites it\n"
    assert src.count(marker) == 1
    broken = tmp_path / "matmul_broken.cu"
    broken.write_text(src.replace(marker, ""))
    fn = device.load_module(broken, backend="cpu").get_function("matmul_forward2")
    N, C, OC = 16, 48, 16
    x, weight, bias, _ = make_inputs(N, C, OC)
    with pytest.raises(device.RaceError, match="matmul_forward2"):
        device.racecheck(fn, (1, 1), (16, 16), (np.zeros((N, OC), np.float32), x, weight, bias, N, C, OC, 1))


# ------------------------------------------------------------------------------------------------
# The NumPy backward against finite differences (float64)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 4, 3), (2, 3, 7)])
def test_numpy_backward_matches_finite_differences(shape):
    N, C, OC = shape
    rng = np.random.default_rng(5)
    x, weight, bias, dout = (rng.standard_normal(s) for s in ((N, C), (OC, C), (OC,), (N, OC)))
    dx, dweight, dbias = np.zeros_like(x), np.zeros_like(weight), np.zeros_like(bias)
    mm.matmul_backward(dx, dweight, dbias, dout, x, weight)
    gradcheck.assert_gradient("dx", dx, gradcheck.numerical_gradient(lambda v: mm.matmul_forward(v, weight, bias), x, dout))
    gradcheck.assert_gradient("dweight", dweight,
                              gradcheck.numerical_gradient(lambda v: mm.matmul_forward(x, v, bias), weight, dout))
    gradcheck.assert_gradient("dbias", dbias,
                              gradcheck.numerical_gradient(lambda v: mm.matmul_forward(x, weight, v), bias, dout))


def test_numpy_backward_accumulates_and_takes_batched_shapes():
    rng = np.random.default_rng(6)
    x, weight, dout = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal((2, 3, 5))
    dx, dweight, dbias = np.ones_like(x), np.ones_like(weight), np.ones(5)
    mm.matmul_backward(dx, dweight, dbias, dout, x, weight)
    assert np.allclose(dx, 1 + dout @ weight)
    assert np.allclose(dweight, 1 + np.einsum("bto,btc->oc", dout, x))
    assert np.allclose(dbias, 1 + dout.sum(axis=(0, 1)))
    dx2 = np.zeros_like(x)
    mm.matmul_backward(dx2, np.zeros_like(weight), None, dout, x, weight)  # dbias may be None
    assert np.allclose(dx2, dout @ weight)


def test_reference_is_dtype_generic():
    x, weight, bias, _ = make_inputs(4, 8, 3)
    assert mm.matmul_forward(x, weight, bias).dtype == np.float32
    assert mm.matmul_forward(*map(f64, (x, weight, bias))).dtype == np.float64


# ------------------------------------------------------------------------------------------------
# Shape assertions: a clear ValueError, never a silent wrong answer
# ------------------------------------------------------------------------------------------------
def test_version3_needs_C_multiple_of_4():
    x, weight, bias, dout = on_device(*make_inputs(10, 50, 8))
    with pytest.raises(ValueError, match=r"matmul_forward3 loads float4: C must be a multiple of 4, got C=50 \(use version 1 or 2\)"):
        mm.forward(device.empty((10, 8)), x, weight, bias, version=3)
    with pytest.raises(ValueError, match=r"matmul_backward3 loads float4: C must be a multiple of 4, got C=50"):
        mm.backward(device.xp.zeros_like(x), device.xp.zeros_like(weight), device.xp.zeros_like(bias), dout, x, weight, version=3)


def test_version3_needs_OC_multiple_of_4():
    x, weight, bias, dout = on_device(*make_inputs(10, 48, 101))
    with pytest.raises(ValueError, match=r"matmul_forward3 .* OC must be a multiple of 4, got OC=101"):
        mm.forward(device.empty((10, 101)), x, weight, bias, version=3)
    with pytest.raises(ValueError, match=r"matmul_backward3 .* OC must be a multiple of 4, got OC=101"):
        mm.backward(device.xp.zeros_like(x), device.xp.zeros_like(weight), None, dout, x, weight, version=3)


def test_version3_needs_16_byte_alignment():
    x, weight, bias, _ = make_inputs(11, 48, 8)
    x_shifted = device.empty(11 * 48 + 1)[1:].reshape(11, 48)  # starts 4 bytes past an aligned address
    x_shifted[...] = device.asarray(x)
    weight_d, bias_d = device.asarray(weight), device.asarray(bias)
    with pytest.raises(ValueError, match=r"matmul_forward3 loads float4: `x` must start at a 16-byte aligned address"):
        mm.forward(device.empty((11, 8)), x_shifted, weight_d, bias_d, version=3)
    out = device.empty((11, 8))
    mm.forward(out, x_shifted, weight_d, bias_d, version=2)  # versions 1 and 2 do not care
    helpers.check("matmul_forward2, shifted x", out, mm.matmul_forward(*map(f64, (x, weight, bias))),
                  atol=mm.forward_atol(x, weight, bias), rtol=0)


@pytest.mark.parametrize("version", FLOAT32_VERSIONS)
def test_mismatched_shapes_are_refused(version):
    x, weight, bias, dout = on_device(*make_inputs(6, 8, 12))
    with pytest.raises(ValueError, match=r"`x` must have shape \(\.\.\., C\) with C=8"):
        mm.forward(device.empty((6, 12)), x[:, :4].copy(), weight, bias, version=version)
    with pytest.raises(ValueError, match=r"`out` must have shape \(6, 12\), got \(6, 13\)"):
        mm.forward(device.empty((6, 13)), x, weight, bias, version=version)
    with pytest.raises(ValueError, match=r"`bias` must have shape \(12,\), got \(11,\)"):
        mm.forward(device.empty((6, 12)), x, weight, bias[:11].copy(), version=version)
    with pytest.raises(ValueError, match=r"`weight` must have 2 dimensions"):
        mm.forward(device.empty((6, 12)), x, weight.reshape(-1), bias, version=version)
    with pytest.raises(ValueError, match=r"`dout` must have shape \(6, 12\), got \(6, 11\)"):
        mm.backward(device.xp.zeros_like(x), device.xp.zeros_like(weight), None, dout[:, :11].copy(), x, weight, version=version)
    with pytest.raises(ValueError, match=r"`dweight` must have shape \(12, 8\)"):
        mm.backward(device.xp.zeros_like(x), device.zeros((8, 12)), None, dout, x, weight, version=version)


def test_unknown_version_is_refused():
    x, weight, bias, dout = on_device(*make_inputs(6, 8, 12))
    with pytest.raises(ValueError, match=r"matmul.forward: no version 6; the versions are \[1, 2, 3, 4, 5\]"):
        mm.forward(device.empty((6, 12)), x, weight, bias, version=6)
    with pytest.raises(ValueError, match=r"matmul.backward: no version 0; the versions are \[1, 2, 3, 4, 5\]"):
        mm.backward(device.xp.zeros_like(x), device.xp.zeros_like(weight), None, dout, x, weight, version=0)


def test_a_float64_array_is_refused():
    x, weight, bias, _ = make_inputs(6, 8, 12)
    with pytest.raises(ValueError, match="matmul_forward2: `x` must be float32, got float64"):
        mm.forward(device.empty((6, 12)), device.asarray(x.astype(np.float64)), device.asarray(weight),
                   device.asarray(bias), version=2)


def test_exercise_solution_2x2():
    """notebooks/solutions/03_matmul_2x2.cu, the notebook's exercise, at odd shapes, race-free."""
    path = CUDA_DIR.parent / "notebooks" / "solutions" / "03_matmul_2x2.cu"
    fn = device.load_module(path).get_function("matmul_forward_2x2")
    for N, C, OC in [(3 * 37, 48, 101), (2 * 19, 33, 37)]:
        x, weight, bias, _ = make_inputs(N, C, OC)
        out = device.empty((N, OC))
        grid = (helpers.ceil_div(OC, 32), helpers.ceil_div(N, 32))
        fn(grid, (16, 16), (out, *map(device.asarray, (x, weight, bias)), N, C, OC, 1))
        helpers.check(f"matmul_forward_2x2 {N}x{C}x{OC}", out, mm.matmul_forward(*map(f64, (x, weight, bias))),
                      atol=mm.forward_atol(x, weight, bias), rtol=0)
    device.racecheck(fn, grid, (16, 16), (device.empty((N, OC)), x, weight, bias, N, C, OC, 1))


# ------------------------------------------------------------------------------------------------
# The bf16 versions (4: SIMT register tiles, 5: tensor cores through WMMA)
# ------------------------------------------------------------------------------------------------
BF16 = ml_dtypes.bfloat16
U_BF16 = 2.0 ** -8  # bf16 keeps 8 significant bits: rounding to nearest errs by at most 2^-8 relatively

# (N, C, OC), C and OC multiples of 8 (16-byte loads of 8 bf16): N = 48, C = 40 (not a multiple of the
# k-steps, 16 and 32) and N = 48, C = 32, OC = 80 (a partial 64-wide tile of version 5); an odd N with
# one row tile; N, OC past one 128x128 tile and C past four of version 5's k-steps; one row of 8.
BF16_SHAPES = [(48, 40, 24), (48, 32, 80), (37, 40, 24), (130, 136, 136), (1, 8, 8)]


def bf16_inputs(N, C, OC, seed=0):
    """make_inputs rounded to bf16 (what the bf16 versions store), as host arrays."""
    return tuple(a.astype(BF16) for a in make_inputs(N, C, OC, seed))


def require_wmma(version):
    """Version 5 runs where matmul.cu compiled with bf16 tensor cores; elsewhere its refusal is tested."""
    if version == 5 and not mm.wmma_available():
        with pytest.raises(ValueError) as refusal:  # the wrapper's reason, e.g. no <mma.h> in the CPU backend yet
            mm.forward(*(device.zeros(s, BF16) for s in ((8, 8), (8, 8), (8, 8))), None, version=5)
        pytest.skip(str(refusal.value))


def fp32_factor(version):
    """How many float32 roundings (in units of 2^-24) each addition of the sums may cost. Version 4 adds in
    IEEE float32, to nearest: 1. Tensor cores (version 5) add their products in float32 with a rounding
    NVIDIA does not specify (measurements find truncation: up to one ulp, 2^-23 relatively): 2."""
    return 2.0 if version == 5 else 1.0


def bf16_tolerance(fp32_atol, version):
    """(atol, rtol) for a bf16 output against the float64 reference of the bf16 inputs (upcast: exact).

    The products of two bf16 (8 significant bits each) are exact in float32, so the float32 result s of the
    kernel is within A = fp32_factor * (K + 1) * 2^-24 * max sum|terms| of the exact ref (the float32
    bound of the module docstring; fp32_atol is it for factor 1). Storing rounds s once to bf16:
    |bf16(s) - s| <= 2^-8 |s| <= 2^-8 (|ref| + A). So |out - ref| <= A (1 + 2^-8) + 2^-8 |ref|: atol
    A (1 + 2^-8), rtol 2^-8. For out += (dx) the old value is one more term of the sum (in A) and the
    sum is rounded once as well. A dropped or doubled product (a term of size ~|x| |w|, ~0.5 here)
    exceeds 2^-8 |ref| (~0.015 at K = 48) many times over, and the integer test is exact."""
    A = fp32_factor(version) * fp32_atol
    return A * (1 + U_BF16), U_BF16


@pytest.mark.parametrize("version", BF16_VERSIONS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_bf16_forward_matches_reference(version, with_bias):
    require_wmma(version)
    for N, C, OC in BF16_SHAPES:
        x, weight, bias, _ = bf16_inputs(N, C, OC)
        bias = bias if with_bias else None
        ref = mm.matmul_forward(f64(x), f64(weight), None if bias is None else f64(bias))
        out = device.zeros((N, OC), BF16)
        mm.forward(out, device.asarray(x), device.asarray(weight), None if bias is None else device.asarray(bias),
                   version=version)
        assert out.dtype == BF16
        atol, rtol = bf16_tolerance(mm.forward_atol(f64(x), f64(weight), None if bias is None else f64(bias)), version)
        helpers.check(f"matmul_forward{version} {N}x{C}x{OC}", out, ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("version", BF16_VERSIONS)
def test_bf16_forward_takes_batched_x(version):
    require_wmma(version)
    B, T, C, OC = 3, 13, 48, 144
    x, weight, bias, _ = bf16_inputs(B * T, C, OC, seed=1)
    x = x.reshape(B, T, C)
    out = device.zeros((B, T, OC), BF16)
    mm.forward(out, *map(device.asarray, (x, weight, bias)), version=version)
    atol, rtol = bf16_tolerance(mm.forward_atol(f64(x).reshape(-1, C), f64(weight), f64(bias)), version)
    helpers.check(f"matmul_forward{version} (B, T, C)", out, mm.matmul_forward(*map(f64, (x, weight, bias))),
                  atol=atol, rtol=rtol)


@pytest.mark.parametrize("version", BF16_VERSIONS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_bf16_backward_accumulates_and_matches_reference(version, with_bias):
    """dx is bf16 (+=: the old bf16 value converted, the sum rounded once); dweight and dbias float32 (+=),
    checked with the float32 bounds (times fp32_factor)."""
    require_wmma(version)
    for N, C, OC in BF16_SHAPES:
        x, weight, _, dout = bf16_inputs(N, C, OC, seed=2)
        rng = np.random.default_rng(3)
        dx0 = rng.standard_normal((N, C)).astype(BF16)            # gradients already holding values
        dw0 = rng.standard_normal((OC, C), dtype=np.float32)
        db0 = rng.standard_normal(OC).astype(np.float32)
        ref_dx, ref_dw, ref_db = map(f64, (dx0, dw0, db0))
        mm.matmul_backward(ref_dx, ref_dw, ref_db if with_bias else None, *map(f64, (dout, x, weight)))
        dx, dw, db = device.asarray(dx0.copy()), device.asarray(dw0.copy()), device.asarray(db0.copy())
        mm.backward(dx, dw, db if with_bias else None, device.asarray(dout), device.asarray(x),
                    device.asarray(weight), version=version)
        assert (dx.dtype, dw.dtype, db.dtype) == (BF16, np.float32, np.float32)
        atol_dx, atol_dw, atol_db = mm.backward_atols(*map(f64, (dout, x, weight, dx0)), dw0, db0)
        atol, rtol = bf16_tolerance(atol_dx, version)
        helpers.check(f"backward{version} dx {N}x{C}x{OC}", dx, ref_dx, atol=atol, rtol=rtol)
        helpers.check(f"backward{version} dweight {N}x{C}x{OC}", dw, ref_dw, atol=fp32_factor(version) * atol_dw,
                      rtol=0)
        if with_bias:  # the same kernel for both versions: IEEE float32 sums
            helpers.check(f"backward{version} dbias {N}x{C}x{OC}", db, ref_db, atol=atol_db, rtol=0)
        else:
            assert np.array_equal(device.asnumpy(db), db0), "dbias=None must leave the bias gradient alone"


@pytest.mark.parametrize("version", BF16_VERSIONS)
def test_bf16_sums_of_small_integers_round_once(version):
    """Integers in {-3..7}: every product and partial sum is an integer below 2^24, exact in float32 in
    any order (tensor cores included), so the float32 result is the exact one and each bf16 output must be
    ml_dtypes' rounding of it, bit for bit. The sums average 4 per product (~190 for the forward, ~580 for
    dx) and bf16 holds integers exactly only up to 256, so many outputs do round: a kernel that rounded
    twice, or added in bf16, shows. dweight and dbias (float32) are exact."""
    require_wmma(version)
    N, C, OC = 3 * 37, 48, 144
    rng = np.random.default_rng(4)
    x, weight, dout, dx0 = (rng.integers(-3, 8, size=s).astype(BF16) for s in ((N, C), (OC, C), (N, OC), (N, C)))
    bias = rng.integers(-3, 8, size=OC).astype(BF16)
    ref = mm.matmul_forward(*map(f64, (x, weight, bias)))
    ref_dx, ref_dw, ref_db = f64(dx0), np.zeros((OC, C)), np.zeros(OC)
    mm.matmul_backward(ref_dx, ref_dw, ref_db, *map(f64, (dout, x, weight)))
    for exact in (ref, ref_dx):  # the rounding is exercised
        assert np.mean(exact.astype(BF16).astype(np.float64) != exact) > 0.1

    out = device.zeros((N, OC), BF16)
    mm.forward(out, *map(device.asarray, (x, weight, bias)), version=version)
    assert np.array_equal(device.asnumpy(out).view(np.uint16), ref.astype(BF16).view(np.uint16)), \
        f"forward{version} is not the bf16 rounding of the exact sums"
    dx, dw, db = device.asarray(dx0.copy()), device.zeros((OC, C)), device.zeros(OC)
    mm.backward(dx, dw, db, *map(device.asarray, (dout, x, weight)), version=version)
    assert np.array_equal(device.asnumpy(dx).view(np.uint16), ref_dx.astype(BF16).view(np.uint16)), \
        f"backward{version} dx is not the bf16 rounding of dx0 + the exact sums"
    for name, got, want in (("dweight", dw, ref_dw), ("dbias", db, ref_db)):
        assert np.array_equal(device.asnumpy(got), want), f"backward{version} {name} is not exact on integers"


@pytest.mark.parametrize("version", BF16_VERSIONS)
def test_bf16_racecheck(version):
    """No float atomics: every launch gives identical bits in every thread order."""
    require_wmma(version)
    N, C, OC = 37, 40, 72
    x, weight, bias, dout = (device.asarray(a) for a in bf16_inputs(N, C, OC))
    [launch] = mm.launches("forward", device.zeros((N, OC), BF16), x, weight, bias, version=version)
    device.racecheck(*launch)
    [launch] = mm.launches("forward", device.zeros((N, OC), BF16), x, weight, None, version=version)
    device.racecheck(*launch)
    grads = device.zeros((N, C), BF16), device.zeros((OC, C)), device.zeros(OC)
    launches = mm.launches("backward", *grads, dout, x, weight, version=version)
    assert [l.name for l in launches] == [f"matmul_backward{version}_dx", f"matmul_backward{version}_dweight",
                                          "matmul_backward4_dbias"]
    for launch in launches:
        device.racecheck(*launch)


# The refusals: every check of the bf16 versions' assumptions, with its message
@pytest.mark.parametrize("version", BF16_VERSIONS)
def test_bf16_versions_need_C_and_OC_multiples_of_8(version):
    for N, C, OC, what in ((10, 36, 8, "C"), (10, 44, 8, "C"), (10, 48, 12, "OC")):
        x, weight, bias, dout = (device.asarray(a) for a in bf16_inputs(N, C, OC))
        value = C if what == "C" else OC
        message = (rf"matmul_forward{version} loads 8 bf16 \(16 bytes\) at a time: {what} must be a multiple of 8, "
                   rf"got {what}={value} \(use a float32 version")
        with pytest.raises(ValueError, match=message):
            mm.forward(device.zeros((N, OC), BF16), x, weight, bias, version=version)
        with pytest.raises(ValueError, match=rf"matmul_backward{version} loads 8 bf16 .* {what} must be a multiple of 8"):
            mm.backward(device.zeros((N, C), BF16), device.zeros((OC, C)), device.zeros(OC), dout, x, weight,
                        version=version)


@pytest.mark.parametrize("version", BF16_VERSIONS)
def test_bf16_versions_need_16_byte_alignment(version):
    N, C, OC = 11, 48, 16
    x, weight, bias, dout = bf16_inputs(N, C, OC)

    def shifted(a, by):  # a copy of `a` that starts `by` bf16 (2 bytes each) past an aligned address
        view = device.zeros(a.size + by, BF16)[by:].reshape(a.shape)
        view[...] = device.asarray(a)
        return view

    weight_d, bias_d, dout_d = device.asarray(weight), device.asarray(bias), device.asarray(dout)
    for by in (1, 4):  # 2 and 8 bytes off: one bf16, and half a 16-byte group
        with pytest.raises(ValueError, match=rf"matmul_forward{version} loads 16 bytes at a time: `x` must start at a "
                                             rf"16-byte aligned address, but it starts {2 * by} bytes past one"):
            mm.forward(device.zeros((N, OC), BF16), shifted(x, by), weight_d, bias_d, version=version)
    with pytest.raises(ValueError, match=rf"matmul_forward{version} loads 16 bytes .* `bias` must start"):
        mm.forward(device.zeros((N, OC), BF16), device.asarray(x), weight_d, shifted(bias, 1), version=version)
    with pytest.raises(ValueError, match=rf"matmul_backward{version} loads 16 bytes .* `dx` must start"):
        mm.backward(shifted(np.zeros((N, C), BF16), 1), device.zeros((OC, C)), None, dout_d, device.asarray(x),
                    weight_d, version=version)
    dw_shifted = device.zeros(OC * C + 1)[1:].reshape(OC, C)  # float32, 4 bytes off: its float4 stores would fault
    with pytest.raises(ValueError, match=rf"matmul_backward{version} loads 16 bytes .* `dweight` must start"):
        mm.backward(device.zeros((N, C), BF16), dw_shifted, None, dout_d, device.asarray(x), weight_d, version=version)


@pytest.mark.parametrize("version", BF16_VERSIONS)
def test_bf16_versions_take_bf16_activations_and_float32_parameter_gradients(version):
    N, C, OC = 6, 8, 16
    x, weight, bias, dout = (device.asarray(a) for a in bf16_inputs(N, C, OC))
    x32 = device.asarray(make_inputs(N, C, OC)[0])
    with pytest.raises(ValueError, match=rf"matmul_forward{version}: `x` must be bfloat16, got float32 \(use a bf16 "
                                         rf"version's float32 counterpart, or \.astype\(ml_dtypes\.bfloat16\)\)"):
        mm.forward(device.zeros((N, OC), BF16), x32, weight, bias, version=version)
    with pytest.raises(ValueError, match=rf"matmul_forward{version}: `out` must be bfloat16, got float32"):
        mm.forward(device.zeros((N, OC)), x, weight, bias, version=version)
    with pytest.raises(ValueError, match=rf"matmul_forward{version}: `bias` must be bfloat16, got float32"):
        mm.forward(device.zeros((N, OC), BF16), x, weight, device.zeros(OC), version=version)
    with pytest.raises(ValueError, match=rf"matmul_backward{version}: `dx` must be bfloat16, got float32"):
        mm.backward(device.zeros((N, C)), device.zeros((OC, C)), None, dout, x, weight, version=version)
    with pytest.raises(ValueError, match=rf"matmul_backward{version}: `dweight` must be float32, got bfloat16 \(a bf16 "
                                         rf"array: the bf16 versions take it"):
        mm.backward(device.zeros((N, C), BF16), device.zeros((OC, C), BF16), None, dout, x, weight, version=version)
    with pytest.raises(ValueError, match=rf"matmul_backward{version}: `dbias` must be float32, got bfloat16"):
        mm.backward(device.zeros((N, C), BF16), device.zeros((OC, C)), device.zeros(OC, BF16), dout, x, weight,
                    version=version)
    with pytest.raises(ValueError, match=rf"matmul_backward{version}: `dout` must have shape \(6, 16\), got \(6, 8\)"):
        mm.backward(device.zeros((N, C), BF16), device.zeros((OC, C)), None, dout[:, :8].copy(), x, weight,
                    version=version)


@pytest.mark.parametrize("version", FLOAT32_VERSIONS)
def test_float32_versions_refuse_bf16_arrays(version):
    x, weight, bias, _ = bf16_inputs(6, 8, 12)
    with pytest.raises(ValueError, match=rf"matmul_forward{version}: `x` must be float32, got bfloat16 \(a bf16 array: "
                                         rf"the bf16 versions take it"):
        mm.forward(device.empty((6, 12)), *map(device.asarray, (x, weight, bias)), version=version)


def test_version5_is_refused_without_tensor_cores():
    """Where matmul.cu compiled without bf16 tensor cores (sm_75, or a CPU backend without <mma.h>), version
    5 says so and names version 4 instead of launching kernels that would trap."""
    if mm.wmma_available():
        pytest.skip("this backend has bf16 tensor cores: version 5 runs (tested above)")
    x, weight, bias, dout = (device.asarray(a) for a in bf16_inputs(16, 16, 16))
    with pytest.raises(ValueError, match=r"matmul_forward5 runs on bf16 tensor cores \(WMMA\), but .*; use version 4"):
        mm.forward(device.zeros((16, 16), BF16), x, weight, bias, version=5)
    with pytest.raises(ValueError, match=r"matmul_backward5 runs on bf16 tensor cores"):
        mm.backward(device.zeros((16, 16), BF16), device.zeros((16, 16)), None, dout, x, weight, version=5)
