"""The token + position encoder (cuda/encoder.cu, helpers/ops/encoder.py): every kernel version
against the NumPy reference at odd shapes, race checks, the reference's backward against finite
differences, and every shape assertion of the wrappers. The bf16 versions (VERSIONS lines "bf16: ...")
have their own section at the end."""
from types import SimpleNamespace

import numpy as np
import pytest

import helpers
from helpers import ceil_div
from helpers.ops import encoder
from helpers.runtime import device, nvrtc_report
from helpers.runtime.cuda_source import REPO_ROOT
from helpers.teaching import gradcheck
from support import BF16, check_bf16, f64, oversized

EPS32 = float(np.finfo(np.float32).eps)
FORWARD32 = [v for v, line in encoder.VERSIONS["forward"].items() if not line.startswith("bf16:")]
BACKWARD32 = [v for v, line in encoder.VERSIONS["backward"].items() if not line.startswith("bf16:")]

# (B, T, C, V, maxT): odd sizes; C=20 is a multiple of 4 but not of 8 or 32; V=7 makes every token
# repeat many times; C=50 is not a multiple of 4 (version 1 only in the forward).
SHAPES = [(3, 37, 48, 101, 41), (5, 11, 20, 7, 16), (1, 1, 4, 1, 1)]
ODD_C = (2, 9, 50, 11, 9)


def make_inputs(B, T, C, V, maxT, seed=0):
    rng = np.random.default_rng(seed)
    return SimpleNamespace(
        B=B, T=T, C=C, V=V, maxT=maxT,
        idx=rng.integers(0, V, size=(B, T)).astype(np.int32),
        wte=rng.standard_normal((V, C), dtype=np.float32),
        wpe=rng.standard_normal((maxT, C), dtype=np.float32),
        dout=rng.standard_normal((B, T, C), dtype=np.float32),
        # gradients start non-zero: the backward must accumulate, not overwrite
        dwte=rng.standard_normal((V, C), dtype=np.float32),
        dwpe=rng.standard_normal((maxT, C), dtype=np.float32),
    )


def on_device(p):
    """The same inputs as device arrays (on the CPU backend: the same arrays)."""
    return SimpleNamespace(**{k: device.asarray(v) if isinstance(v, np.ndarray) else v for k, v in vars(p).items()})


def versions_for(shape, direction):
    C = shape[2]
    return [1, 2] if (direction == "backward" or C % 4 == 0) else [1]


# ------------------------------------------------------------------------------------------------
# The NumPy reference
# ------------------------------------------------------------------------------------------------
def test_reference_forward_picks_rows():
    p = make_inputs(2, 3, 5, 4, 6)
    out = encoder.encoder_forward(p.idx, p.wte, p.wpe)
    assert out.shape == (2, 3, 5) and out.dtype == np.float32
    for b in range(2):
        for t in range(3):
            np.testing.assert_array_equal(out[b, t], p.wte[p.idx[b, t]] + p.wpe[t])


def test_reference_backward_adds_every_repeated_token():
    idx = np.array([[2, 2, 2]], np.int32)   # one token three times
    dout = np.ones((1, 3, 2), np.float32)
    dwte, dwpe = np.zeros((3, 2), np.float32), np.zeros((4, 2), np.float32)
    encoder.encoder_backward(dwte, dwpe, dout, idx)
    np.testing.assert_array_equal(dwte[2], [3, 3])   # `dwte[idx] += dout` would give 1
    np.testing.assert_array_equal(dwte[:2], 0)
    np.testing.assert_array_equal(dwpe, [[1, 1], [1, 1], [1, 1], [0, 0]])


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_backward_matches_finite_differences(seed):
    B, T, C, V, maxT = 2, 5, 3, 4, 7   # 10 positions, 4 tokens: repeats for sure
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, size=(B, T)).astype(np.int32)
    wte, wpe = rng.standard_normal((V, C)), rng.standard_normal((maxT, C))
    dout = rng.standard_normal((B, T, C))
    dwte, dwpe = np.zeros((V, C)), np.zeros((maxT, C))
    encoder.encoder_backward(dwte, dwpe, dout, idx)
    assert dwte.dtype == dwpe.dtype == np.float64
    num_wte = gradcheck.numerical_gradient(lambda w: encoder.encoder_forward(idx, w, wpe), wte, dout)
    num_wpe = gradcheck.numerical_gradient(lambda w: encoder.encoder_forward(idx, wte, w), wpe, dout)
    gradcheck.assert_gradient("dwte", dwte, num_wte)
    gradcheck.assert_gradient("dwpe", dwpe, num_wpe)
    assert not num_wpe[T:].any(), "rows of wpe past T get no gradient"


def test_token_buckets_are_stable_and_complete():
    idx = np.array([[5, 1, 5], [1, 9, 5]], np.int32)
    token, start, pos = encoder.token_buckets(idx)
    assert token.tolist() == [1, 5, 9]
    assert start.tolist() == [0, 2, 5, 6]
    assert pos.tolist() == [1, 3, 0, 2, 5, 4]   # within a token: increasing positions
    assert token.dtype == start.dtype == pos.dtype == np.int32


# ------------------------------------------------------------------------------------------------
# Kernels against the reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES + [ODD_C], ids=str)
def test_forward_kernels_match_reference(shape):
    p = make_inputs(*shape)
    ref = encoder.encoder_forward(p.idx, p.wte, p.wpe)
    for version in versions_for(shape, "forward"):
        out = device.empty((p.B, p.T, p.C))
        encoder.forward(out, device.asarray(p.idx), device.asarray(p.wte), device.asarray(p.wpe), version=version)
        helpers.check(f"encoder_forward{version} {shape}", out, ref, atol=1e-5, rtol=1e-5)
        # one IEEE float32 addition per element, the same as NumPy's: identical bits
        assert np.array_equal(device.asnumpy(out), ref)


@pytest.mark.parametrize("shape", SHAPES + [ODD_C], ids=str)
def test_backward_kernels_match_reference(shape):
    p = make_inputs(*shape)
    ref_dwte, ref_dwpe = p.dwte.copy(), p.dwpe.copy()
    encoder.encoder_backward(ref_dwte, ref_dwpe, p.dout, p.idx)
    for version in versions_for(shape, "backward"):
        # copies: on the CPU backend device.asarray returns the NumPy array itself
        dwte, dwpe = device.asarray(p.dwte.copy()), device.asarray(p.dwpe.copy())
        encoder.backward(dwte, dwpe, device.asarray(p.dout), device.asarray(p.idx), version=version)
        helpers.check(f"encoder_backward{version} dwte {shape}", dwte, ref_dwte, atol=1e-5, rtol=1e-5)
        helpers.check(f"encoder_backward{version} dwpe {shape}", dwpe, ref_dwpe, atol=1e-5, rtol=1e-5)
        if version == 2:
            # the same additions in the same order as np.add.at and the b-loop of the reference
            assert np.array_equal(device.asnumpy(dwte), ref_dwte)
            assert np.array_equal(device.asnumpy(dwpe), ref_dwpe)


@pytest.mark.parametrize("shape", [SHAPES[0], ODD_C], ids=str)
def test_without_positions_wpe_none_is_the_token_rows_alone(shape):
    """Llama has no learned positions: wpe = None (NULL in the kernel) adds nothing, dwpe = None writes
    nothing, every version, with the same bits as the reference."""
    p = make_inputs(*shape)
    assert np.array_equal(encoder.encoder_forward(p.idx, p.wte, None), p.wte[p.idx])
    for version in versions_for(shape, "forward"):
        out = device.empty((p.B, p.T, p.C))
        encoder.forward(out, device.asarray(p.idx), device.asarray(p.wte), None, version=version)
        assert np.array_equal(device.asnumpy(out), p.wte[p.idx]), version
    ref = p.dwte.copy()
    encoder.encoder_backward(ref, None, p.dout, p.idx)
    for version in versions_for(shape, "backward"):
        dwte = device.asarray(p.dwte.copy())
        launches = encoder.launches("backward", dwte, None, device.asarray(p.dout), device.asarray(p.idx),
                                    version=version)
        assert not any("dwpe" in launch.name for launch in launches)
        for launch in launches:
            launch()
        helpers.check(f"encoder_backward{version} dwte, no wpe {shape}", dwte, ref, atol=1e-5, rtol=1e-5)
    for launch in encoder.launches("forward", device.empty((p.B, p.T, p.C)), device.asarray(p.idx),
                                   device.asarray(p.wte), None, version=1):
        device.racecheck(*launch)


def test_backward2_with_a_host_copy_of_idx():
    p = make_inputs(3, 37, 48, 101, 41)
    ref_dwte, ref_dwpe = p.dwte.copy(), p.dwpe.copy()
    encoder.encoder_backward(ref_dwte, ref_dwpe, p.dout, p.idx)
    dwte, dwpe = device.asarray(p.dwte.copy()), device.asarray(p.dwpe.copy())
    encoder.backward(dwte, dwpe, device.asarray(p.dout), device.asarray(p.idx), idx_host=p.idx.copy())
    assert np.array_equal(device.asnumpy(dwte), ref_dwte) and np.array_equal(device.asnumpy(dwpe), ref_dwpe)


def test_solution_of_the_exercise():
    path = REPO_ROOT / "notebooks" / "solutions" / "01_encoder_forward_row.cu"
    fn = device.load_module(path).get_function("encoder_forward_row")
    for shape in (SHAPES[0], ODD_C):
        p = make_inputs(*shape)
        out = device.empty((p.B, p.T, p.C))
        args = (out, device.asarray(p.idx), device.asarray(p.wte), device.asarray(p.wpe), p.B, p.T, p.C)
        fn((ceil_div(p.B * p.T, 64),), (64,), args)
        helpers.check(f"encoder_forward_row {shape}", out, encoder.encoder_forward(p.idx, p.wte, p.wpe))
        device.racecheck(fn, (ceil_div(p.B * p.T, 64),), (64,), args)
    rows = nvrtc_report.compile_report([path])
    assert rows and all(not r.spills for r in rows)


# ------------------------------------------------------------------------------------------------
# Races and determinism
# ------------------------------------------------------------------------------------------------
RACE_SHAPE = (3, 37, 48, 101, 41)
REPEATS = (4, 64, 8, 3, 64)   # 256 positions, 3 tokens: each token about 85 times


def launch_args(p, version, direction):
    """The launches that version makes, from the op's own `launches` (what the wrappers run)."""
    d = on_device(p)
    if direction == "forward":
        return encoder.launches("forward", device.empty((p.B, p.T, p.C)), d.idx, d.wte, d.wpe, version=version)
    return encoder.launches("backward", d.dwte, d.dwpe, d.dout, d.idx, version=version)


@pytest.mark.parametrize("shape", [RACE_SHAPE, REPEATS], ids=str)
@pytest.mark.parametrize("version", FORWARD32)
def test_forward_is_race_free(version, shape):
    for launch in launch_args(make_inputs(*shape), version, "forward"):
        device.racecheck(*launch)


@pytest.mark.parametrize("shape", [RACE_SHAPE, REPEATS], ids=str)
def test_backward2_gives_the_same_bits_in_every_order(shape):
    for launch in launch_args(make_inputs(*shape), 2, "backward"):
        device.racecheck(*launch)   # no tolerance: bit-identical


def atomic_sum_tolerance(p):
    """How far two orders of float32 atomicAdd may differ, from the data.

    Summing k terms one after the other, in any order, is within (k-1)*u*sum|terms| of the exact
    sum to first order (u = eps/2, the unit roundoff; the start value counts as a term), so two
    orders differ by at most twice that; 2*(k-1)*eps*sum|terms| also covers the higher orders.
    Take the worst output: the most repeated token for dwte, B terms for dwpe."""
    counts = np.bincount(p.idx.reshape(-1), minlength=p.V)
    abs_dwte = np.abs(p.dwte).copy()
    np.add.at(abs_dwte, p.idx, np.abs(p.dout))
    abs_dwpe = np.abs(p.dwpe[:p.T]) + np.abs(p.dout).sum(axis=0)
    k = max(int(counts.max()), p.B) + 1
    return 2 * (k - 1) * EPS32 * max(float(abs_dwte.max()), float(abs_dwpe.max()))


@pytest.mark.parametrize("shape", [RACE_SHAPE, REPEATS], ids=str)
def test_backward1_atomics_agree_within_rounding(shape):
    # float atomicAdd adds in the order the threads run: the bits may differ, the sums may not.
    p = make_inputs(*shape)
    atol = atomic_sum_tolerance(p)   # a worst-case bound: 2.0e-3 for REPEATS, whose sums are about 10
    assert atol < 1e-2
    for launch in launch_args(p, 1, "backward"):
        device.racecheck(*launch, atol=atol, rtol=0)


def test_backward1_is_not_deterministic_with_repeated_tokens():
    for launch in launch_args(make_inputs(*REPEATS), 1, "backward"):
        with pytest.raises(device.RaceError, match="encoder_backward1"):
            device.racecheck(*launch)


@pytest.mark.skipif(device.name != "cpu", reason="the CPU backend's guard pages catch the bad token id")
def test_a_token_id_past_the_table_is_an_out_of_bounds_read():
    p = make_inputs(2, 5, 8, 7, 5)
    p.idx[1, 3] = p.V   # one past the last row of wte: the wrapper does not check values
    with pytest.raises(device.KernelError, match="out-of-bounds read of `wte`"):
        encoder.forward(device.empty((2, 5, 8)), p.idx, p.wte, p.wpe, version=1)


# ------------------------------------------------------------------------------------------------
# Shape assertions
# ------------------------------------------------------------------------------------------------
def test_forward2_needs_c_multiple_of_4():
    p = on_device(make_inputs(*ODD_C))
    with pytest.raises(ValueError, match=r"encoder_forward2 loads float4: C must be a multiple of 4, got C=50"):
        encoder.forward(device.empty((p.B, p.T, p.C)), p.idx, p.wte, p.wpe, version=2)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_wrappers_refuse_wrong_shapes_and_dtypes(direction):
    p = on_device(make_inputs(2, 5, 8, 7, 5))

    def call(idx=p.idx, table=None, pos=None, activ=None, version=2):
        if direction == "forward":
            activ = device.empty((2, 5, 8)) if activ is None else activ
            encoder.forward(activ, idx, p.wte if table is None else table, p.wpe if pos is None else pos, version)
        else:
            activ = p.dout if activ is None else activ
            encoder.backward(p.dwte if table is None else table, p.dwpe if pos is None else pos, activ, idx, version)

    tname, pname, aname = ("wte", "wpe", "out") if direction == "forward" else ("dwte", "dwpe", "dout")
    with pytest.raises(ValueError, match=r"`idx` must be int32, got int64"):
        call(idx=p.idx.astype(np.int64))
    with pytest.raises(ValueError, match=r"`idx` must have 2 dimensions, got shape \(10,\)"):
        call(idx=p.idx.reshape(-1))
    with pytest.raises(ValueError, match=fr"`{tname}` must be float32, got float64"):
        call(table=p.wte.astype(np.float64))
    with pytest.raises(ValueError, match=fr"`{aname}` must be \(B, T, C\) = \(2, 5, 8\) .* got \(2, 5, 9\)"):
        call(activ=device.zeros((2, 5, 9)))
    with pytest.raises(ValueError, match=fr"`{tname}` \(7, 8\) and `{pname}` \(5, 4\) must have the same number of channels"):
        call(pos=device.zeros((5, 4)))
    with pytest.raises(ValueError, match=fr"idx has T=5 positions but `{pname}` has only 4 rows"):
        call(pos=device.zeros((4, 8)))
    with pytest.raises(ValueError, match=fr"`{aname}` must be C-contiguous"):
        call(activ=device.zeros((2, 8, 5)).transpose(0, 2, 1))
    with pytest.raises(ValueError, match=r"no version 4; the versions are \[1, 2, 3\]"):
        call(version=4)


def test_wrappers_refuse_sizes_past_32_bit_indexing():
    big = oversized((2**22, 512))   # the shape of a too-large table (allocating 8 GiB would prove nothing more)
    p = on_device(make_inputs(1, 2, 512, 7, 4))
    with pytest.raises(ValueError, match=r"32-bit ints: V\*C = 2,147,483,648 must be below 2\^31"):
        encoder.forward(device.empty((1, 2, 512)), p.idx, big, p.wpe, version=1)


def test_backward_refuses_a_host_idx_of_the_wrong_shape():
    h = make_inputs(2, 5, 8, 7, 5)
    p = on_device(h)
    with pytest.raises(ValueError, match=r"`idx_host` must be the host copy of idx, shape \(2, 5\), got \(10,\)"):
        encoder.backward(p.dwte, p.dwpe, p.dout, p.idx, idx_host=h.idx.reshape(-1))


# ------------------------------------------------------------------------------------------------
# bf16 storage (mixed precision): forward version 3, backward version 3
# ------------------------------------------------------------------------------------------------
U32 = 2.0**-24       # float32's
BF16_FORWARD = [v for v in encoder.VERSIONS["forward"] if v not in FORWARD32]
BF16_BACKWARD = [v for v in encoder.VERSIONS["backward"] if v not in BACKWARD32]
# C a multiple of 8 (the bf16x8 loads): 48, 24, 8; V = 7 and 3 make tokens repeat
BF16_SHAPES = [(3, 37, 48, 101, 41), (5, 11, 24, 7, 16), (1, 1, 8, 1, 1), REPEATS]


def test_bf16_versions_are_the_last_of_each_step():
    assert BF16_FORWARD == [3] and BF16_BACKWARD == [3]


def bf16_inputs(shape, seed=0):
    """make_inputs with the tables and dout rounded to bf16 (the gradients dwte, dwpe stay float32)."""
    p = make_inputs(*shape, seed=seed)
    p.wte, p.wpe, p.dout = (a.astype(BF16) for a in (p.wte, p.wpe, p.dout))
    return p


def bits(a):
    return device.asnumpy(a).view(np.uint16)


@pytest.mark.parametrize("shape", BF16_SHAPES, ids=str)
@pytest.mark.parametrize("with_wpe", [True, False])
def test_bf16_forward_is_the_rounded_float32_sum(shape, with_wpe):
    """out = bf16(float32(wte) + float32(wpe)): the kernel's one float32 addition is NumPy's (IEEE), and
    to_bf16 rounds to nearest even as ml_dtypes does, so the bits are equal. Against the float64 sum:
    the float32 addition is within U32*|ref| (atol 0), the rounding to bf16 adds U_BF16 relative:
    |out - ref| <= U_BF16*|ref| + (1 + U_BF16)*U32*|ref| (check_bf16)."""
    p = bf16_inputs(shape)
    d = on_device(p)
    wpe, wpe32 = (d.wpe, p.wpe.astype(np.float32)) if with_wpe else (None, None)
    out = device.empty((p.B, p.T, p.C), BF16)
    encoder.forward(out, d.idx, d.wte, wpe, version=3)
    assert out.dtype == BF16
    want = encoder.encoder_forward(p.idx, p.wte.astype(np.float32), wpe32).astype(BF16)
    assert np.array_equal(bits(out), want.view(np.uint16))
    ref = encoder.encoder_forward(p.idx, f64(p.wte), f64(p.wpe) if with_wpe else None)
    check_bf16(f"encoder_forward3 {shape}", out, ref, atol=0.0, rtol=U32)


@pytest.mark.parametrize("shape", BF16_SHAPES, ids=str)
@pytest.mark.parametrize("with_wpe", [True, False])
def test_bf16_backward_is_version_2_on_the_upcast_dout(shape, with_wpe):
    """dwte and dwpe stay float32 and receive float32(dout) in version 2's order: the same bits as the
    float32 reference (np.add.at and the b-loop) on dout converted to float32, which is exact. Against
    float64: each output is a sum of k terms (its start value and the k-1 rows added to it) added one
    after the other in float32, within (k-1)*U32*sum|terms| (to first order; 2x covers the rest)."""
    p = bf16_inputs(shape, seed=1)
    dout32 = p.dout.astype(np.float32)
    ref_dwte, ref_dwpe = p.dwte.copy(), p.dwpe.copy() if with_wpe else None
    encoder.encoder_backward(ref_dwte, ref_dwpe, dout32, p.idx)
    dwte, dwpe = device.asarray(p.dwte.copy()), device.asarray(p.dwpe.copy()) if with_wpe else None
    launches = encoder.launches("backward", dwte, dwpe, device.asarray(p.dout), device.asarray(p.idx), version=3)
    assert [launch.name for launch in launches] == (["encoder_backward3_dwpe"] if with_wpe else []) + [
        "encoder_backward3_dwte"]
    for launch in launches:
        launch()
    assert dwte.dtype == np.float32 and np.array_equal(device.asnumpy(dwte), ref_dwte)
    if with_wpe:
        assert np.array_equal(device.asnumpy(dwpe), ref_dwpe)
    ref64 = f64(p.dwte)
    encoder.encoder_backward(ref64, None, f64(p.dout), p.idx)
    k = int(np.bincount(p.idx.reshape(-1)).max()) + 1
    abs_sum = np.abs(p.dwte).astype(np.float64)
    np.add.at(abs_sum, p.idx, np.abs(f64(p.dout)))
    helpers.check(f"encoder_backward3 dwte {shape}", dwte, ref64, atol=2 * (k - 1) * U32 * float(abs_sum.max()), rtol=0)


def test_bf16_backward_with_a_host_copy_of_idx():
    p = bf16_inputs(RACE_SHAPE)
    ref_dwte, ref_dwpe = p.dwte.copy(), p.dwpe.copy()
    encoder.encoder_backward(ref_dwte, ref_dwpe, p.dout.astype(np.float32), p.idx)
    d = on_device(p)
    encoder.backward(d.dwte, d.dwpe, d.dout, d.idx, version=3, idx_host=p.idx.copy())
    assert np.array_equal(device.asnumpy(d.dwte), ref_dwte) and np.array_equal(device.asnumpy(d.dwpe), ref_dwpe)


@pytest.mark.parametrize("shape", [RACE_SHAPE, REPEATS], ids=str)
def test_bf16_launches_are_race_free(shape):
    """Every launch of both bf16 versions, in every thread order, bit for bit (no atomics)."""
    d = on_device(bf16_inputs(shape))
    launches = (encoder.launches("forward", device.empty((d.B, d.T, d.C), BF16), d.idx, d.wte, d.wpe, version=3) +
                encoder.launches("forward", device.empty((d.B, d.T, d.C), BF16), d.idx, d.wte, None, version=3) +
                encoder.launches("backward", d.dwte, d.dwpe, d.dout, d.idx, version=3))
    assert len(launches) == 4
    for launch in launches:
        device.racecheck(*launch)


def test_bf16_versions_refuse_what_they_cannot_load():
    p = bf16_inputs((2, 5, 20, 7, 5))   # C = 20: a multiple of 4, not of 8
    d = on_device(p)
    with pytest.raises(ValueError, match=r"encoder_forward3 loads 8 bf16 at a time \(16 bytes\): C must be a multiple "
                                         r"of 8, got C=20 \(use float32 arrays and version 1, which takes any C\)"):
        encoder.forward(device.empty((2, 5, 20), BF16), d.idx, d.wte, d.wpe, version=3)
    with pytest.raises(ValueError, match=r"encoder_backward3 loads 8 bf16 at a time \(16 bytes\): C must be a "
                                         r"multiple of 8, got C=20"):
        encoder.backward(d.dwte, d.dwpe, d.dout, d.idx, version=3)
    # a view that starts 2 bytes (one bf16) past an aligned address
    q = bf16_inputs((2, 5, 8, 7, 5))
    d = on_device(q)
    base = device.asarray(np.zeros(7 * 8 + 8, BF16))
    wte = base[1:1 + 7 * 8].reshape(7, 8)
    assert wte.flags.c_contiguous
    with pytest.raises(ValueError, match=r"encoder_forward3 loads 16 bytes at a time: `wte` must start at a 16-byte "
                                         r"aligned address, but it starts 2 bytes past one"):
        encoder.forward(device.empty((2, 5, 8), BF16), d.idx, wte, d.wpe, version=3)
    dwte = device.zeros(7 * 8 + 4)[1:1 + 7 * 8].reshape(7, 8)   # float32, 4 bytes past
    with pytest.raises(ValueError, match=r"encoder_backward3 loads 16 bytes at a time: `dwte` must start"):
        encoder.backward(dwte, d.dwpe, d.dout, d.idx, version=3)


def test_bf16_and_float32_versions_refuse_each_others_arrays():
    p = bf16_inputs((2, 5, 8, 7, 5))
    d = on_device(p)
    out = device.empty((2, 5, 8), BF16)
    with pytest.raises(ValueError, match=r"encoder_forward2: `wte` must be float32, got bfloat16 \(a bf16 array: the "
                                         r"bf16 versions take it"):
        encoder.forward(device.empty((2, 5, 8)), d.idx, d.wte, d.wpe, version=2)
    with pytest.raises(ValueError, match=r"encoder_forward3: `wpe` must be bfloat16, got float32"):
        encoder.forward(out, d.idx, d.wte, device.asarray(make_inputs(2, 5, 8, 7, 5).wpe), version=3)
    with pytest.raises(ValueError, match=r"encoder_forward3: `out` must be bfloat16, got float32"):
        encoder.forward(device.empty((2, 5, 8)), d.idx, d.wte, d.wpe, version=3)
    with pytest.raises(ValueError, match=r"encoder_backward2: `dout` must be float32, got bfloat16"):
        encoder.backward(d.dwte, d.dwpe, d.dout, d.idx, version=2)
    with pytest.raises(ValueError, match=r"encoder_backward3: `dwte` must be float32, got bfloat16"):
        encoder.backward(device.zeros((7, 8), BF16), d.dwpe, d.dout, d.idx, version=3)
    with pytest.raises(ValueError, match=r"encoder_backward3: `dout` must be bfloat16, got float32"):
        encoder.backward(d.dwte, d.dwpe, device.asarray(make_inputs(2, 5, 8, 7, 5).dout), d.idx, version=3)
