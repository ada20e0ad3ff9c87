"""The bounded-memory reference (``moe_ref.bounded``) and the device products (``moe_ref.products``)
equal the traced reference and its tolerance: the same output bits, the same bound, the same ideal;
on the host exactly, on a torch device (CPU torch here, the GPU under the gpu marker) with the
ideal equal to float64 rounding (its products are summed in another order; the reference's are exact)."""

from __future__ import annotations

import numpy as np
import pytest

import emulation as em
from moe_ref import MoEWeights, kernel_tolerance, moe_reference, random_moe_problem
from moe_ref.bounded import moe_reference_bounded, reference_bytes
from moe_ref.products import DeviceProducts, HostProducts, products_for

torch = pytest.importorskip("torch")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]

VARIANTS = [
    {}, {"intermediate_dtype": "bf16"}, {"intermediate_dtype": "fp32"}, {"routing_weight_dtype": "bf16"},
    {"slot_dtype": "bf16"}, {"scale_mode": "even"}, {"scale_mode": "ceil"}, {"doweight_stage1": True},
]


def _problem(rng, M=24, E=4, H=96, I=64, topk=2):  # noqa: E741
    return random_moe_problem(rng, M=M, E=E, H=H, I=I, topk=topk, with_bias=True, outlier_rows=0.25)


def _traced(p, act_dtype, mma_k, gate_mode, opts):
    kw = dict(gate_mode=gate_mode, **p.biases(), **opts)
    ref, trace = moe_reference(*p.args(), act_dtype=act_dtype, return_trace=True, **kw)
    ideal = moe_reference(*p.args(), act_dtype=None, **kw)
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    bound = kernel_tolerance(trace, w, p.topk_weights, p.topk_ids, act_dtype=opts.get("intermediate_dtype") or act_dtype,
                             gate_mode=gate_mode, scale_mode=opts.get("scale_mode", "round_up"), mma_k=mma_k,
                             slot_dtype=opts.get("slot_dtype", "fp32"), doweight_stage1=opts.get("doweight_stage1", False))
    return ref, ideal, bound


@pytest.mark.parametrize("act_dtype", ["bf16", "fp4x2", "fp8"])
@pytest.mark.parametrize("gate_mode", ["separated", "interleave"])
@pytest.mark.parametrize("mma_k", [None, 16])
@pytest.mark.parametrize("opts", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "contract")
def test_bounded_equals_the_traced_reference_and_its_tolerance(rng, act_dtype, gate_mode, mma_k, opts):
    p = _problem(rng)
    ref, ideal, bound = _traced(p, act_dtype, mma_k, gate_mode, opts)
    got = moe_reference_bounded(*p.args(), act_dtype=act_dtype, mma_k=mma_k, gate_mode=gate_mode, **p.biases(), **opts)
    np.testing.assert_array_equal(got.out.view(np.uint32), ref.view(np.uint32))
    np.testing.assert_array_equal(got.ideal, ideal)
    np.testing.assert_array_equal(got.bound, bound)
    assert (got.bound > 0).any()


def test_bounded_with_an_expert_mask_and_repeated_experts(rng):
    """Masked experts contribute nothing; a token routed twice to one expert is summed twice."""
    p = _problem(rng, M=9, E=3, topk=3)
    ids = p.topk_ids.copy()
    ids[0] = [1, 1, 2]
    mask = np.array([1, 0, 1], np.int32)
    kw = dict(expert_mask=mask, **p.biases())
    ref = moe_reference(p.hidden, p.w1, p.w1_scale, p.w2, p.w2_scale, p.topk_weights, ids, act_dtype="fp4x2", **kw)
    got = moe_reference_bounded(p.hidden, p.w1, p.w1_scale, p.w2, p.w2_scale, p.topk_weights, ids, act_dtype="fp4x2", **kw)
    np.testing.assert_array_equal(got.out, ref)
    assert np.isfinite(got.bound).all()


def _every_code_and_scale():
    """w1 of one expert whose row r has e8m0 scale r in every block and the 16 e2m1 codes twice:
    every (code, scale) pair of MXFP4, NaN (scale 255) and fp32 overflow (6 * 2^127) included."""
    codes = np.tile(np.arange(16, dtype=np.uint8), (256, 2))  # [256, 32]: H = 32, 2I = 256
    w1 = em.pack_fp4x2(codes)[None]
    w1_scale = np.arange(256, dtype=np.uint8).reshape(1, 256, 1)
    w2 = np.zeros((1, 32, 64), np.uint8)
    w2_scale = np.full((1, 32, 4), 127, np.uint8)
    return MoEWeights.from_arrays(w1, w1_scale, w2, w2_scale)


@pytest.mark.parametrize("device", DEVICES)
def test_device_dequantization_equals_the_emulation_at_every_code_and_scale(device):
    w = _every_code_and_scale()
    got = DeviceProducts(w, device)._matrix(0, "w1", "value").cpu().numpy()
    want = em.dequantize_mxfp4(w.w1[0], w.w1_scale[0]).astype(np.float64)
    assert np.isnan(want).any() and np.isinf(want).any() and (want[want != 0] < 2.0**-126).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))  # NaN payloads are the device's own
    np.testing.assert_array_equal(np.where(np.isnan(got), 0, got).view(np.uint64), np.where(np.isnan(want), 0, want).view(np.uint64))


@pytest.mark.parametrize("device", DEVICES)
def test_device_bit_ranges_equal_the_host_ones(rng, device):
    """Random bytes with zero blocks, zero rows and extreme scales (0, 254, 255): same ranges, same finiteness."""
    packed = rng.integers(0, 256, (2, 64, 32), dtype=np.uint8)
    packed[:, :8, :16] &= 0x88  # zero blocks (signed zeros)
    packed[:, 9] = 0  # a zero row
    scale = rng.integers(0, 256, (2, 64, 2), dtype=np.uint8)
    scale[0] = np.clip(scale[0], 1, 200)  # expert 0 finite, expert 1 with NaN and overflowing blocks
    scale[1, 3, 0], scale[1, 4, 1] = 255, 254
    packed[1, 4, 16:] = 0x77  # codes of 6.0 at scale 2^127: past fp32's range
    w2 = np.zeros((2, 64, 16), np.uint8)
    w = MoEWeights.from_arrays(packed, scale, w2, np.full((2, 64, 1), 127, np.uint8))
    for e in range(2):
        want = MoEWeights.from_arrays(packed.copy(), scale, w2, np.full((2, 64, 1), 127, np.uint8)).bits("w1", e)
        w._bits.clear()
        (low, high), finite = DeviceProducts(w, device).bits("w1", e)
        np.testing.assert_array_equal(low, want[0][0])
        np.testing.assert_array_equal(high, want[0][1])
        assert finite == want[1] == (e == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_device_products_equal_the_host_products(rng, device):
    p = _problem(rng, H=64, I=32)
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    host, dev = HostProducts(w), DeviceProducts(w, device)
    x = em.round_to_bf16(rng.standard_normal((5, 64)).astype(np.float32))
    for e in range(w.E):
        np.testing.assert_array_equal(dev.exact(x, e, "w1"), host.exact(x, e, "w1"))  # exact: any order
        for form in ("value", "abs", "square"):  # float64 sums in another order: within K u64 sum|x F(w)|
            scale = host.matmul(np.abs(x), e, "w1", "abs" if form == "value" else form)
            got, want = dev.matmul(x, e, "w1", form), host.matmul(x, e, "w1", form)
            assert (np.abs(got - want) <= 64 * 2.0**-52 * scale).all()


SMALL, MEDIUM = dict(M=64, E=8, H=256, I=128, topk=4), dict(M=256, E=16, H=1024, I=1024, topk=4)


@pytest.mark.parametrize("device, shape", [("cpu", SMALL), pytest.param("cuda", SMALL, marks=pytest.mark.gpu),
                                           pytest.param("cuda", MEDIUM, marks=pytest.mark.gpu, id="cuda-medium")])
@pytest.mark.parametrize("act_dtype, gate_mode", [("bf16", "separated"), ("fp4x2", "interleave"), ("fp8", "separated")])
def test_device_reference_equals_the_numpy_reference(rng, device, shape, act_dtype, gate_mode):
    """Same output bits and the same bound (the bf16 output rule makes it a multiple of the bf16
    ulp: float64 reassociation in the bound's products does not move it); the ideal to float64."""
    p = _problem(rng, **shape)
    kw = dict(act_dtype=act_dtype, gate_mode=gate_mode, mma_k=16, **p.biases())
    host = moe_reference_bounded(*p.args(), **kw)
    dev = moe_reference_bounded(*p.args(), device=torch.device(device), **kw)
    assert isinstance(products_for(MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale), torch.device(device)),
                      DeviceProducts if device != "cpu" else HostProducts)
    np.testing.assert_array_equal(dev.out.view(np.uint32), host.out.view(np.uint32))
    np.testing.assert_array_equal(dev.bound, host.bound)
    # the ideal's float64 products summed in another order: equal to float64 rounding of its scale
    np.testing.assert_allclose(dev.ideal, host.ideal, rtol=0, atol=1e-12 * np.abs(host.ideal).max())


def test_exact_gemm_takes_the_slow_path_where_float64_is_not_enough(rng):
    """An fp32 row spanning 64 bits: the integer path, equal on host and device to ``exact_matmul_f32``."""
    from moe_ref.exact import accumulation_bits, exact_matmul_f32

    p = _problem(rng, H=64, I=32)
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    x = np.zeros((2, 64), np.float32)
    x[:, 0], x[:, 1] = 1.0, 2.0**-40 * (1 + 2.0**-23)
    x[1, 2:] = rng.standard_normal(62)
    assert (accumulation_bits(x, w.dequant("w1", 0)) > 53).any()
    want = exact_matmul_f32(x, w.dequant("w1", 0))
    np.testing.assert_array_equal(HostProducts(w).exact(x, 0, "w1"), want)
    np.testing.assert_array_equal(DeviceProducts(w, "cpu").exact(x, 0, "w1"), want)


def test_reference_bytes_grow_with_the_pairs_not_the_layer():
    small = reference_bytes(64, 256, 7168, 2048, 8, device=True, frozen_weights=True)
    assert reference_bytes(64, 256, 7168, 2048, 8, device=False, frozen_weights=True) > small  # one expert's matrices
    # DeepSeek-V3, M=4096, the oracle's frozen layer: < 4 GiB on a device
    assert reference_bytes(4096, 256, 7168, 2048, 8, device=True, frozen_weights=True) < 4 * 2**30
    assert reference_bytes(64, 256, 7168, 2048, 8, device=True) > small  # unfrozen: the layer is copied


@pytest.mark.parametrize("M, E, H, I, topk", [(7, 3, 64, 96, 2), (5, 64, 256, 128, 2), (25, 8, 64, 96, 2), (300, 4, 1024, 512, 8),
                                              (64, 256, 7168, 2048, 8)])
def test_reference_bytes_are_the_buffers_they_name(M, E, H, I, topk):  # noqa: E741
    """The estimate, term by term, as the sizes of the buffers its docstring names (an int of bytes):
    the [P, H] fp32 stage-2 rows and five [M, H] float64 results; the layer's packed weights (not when
    frozen); (low, high) int64 bit ranges per weight row of every expert; on the host, 8 float64
    intermediates [pairs, 2I + H] of the busiest expert (4x the mean, at most P), one expert's matrices
    as three float64 and two fp32 copies, and the dequantized experts kept (capped at the cache plus one
    expert's w1). The shapes cross each clamp: the busiest expert at P, at 4 pairs (P < E), at 4x a
    rounded-up mean (P not a multiple of E) and an exact one; a small layer
    whose dequantized experts all fit the cache and DeepSeek-V3's, which does not."""
    from moe_ref.weights import DEQUANT_CACHE_BYTES

    def nbytes(shape, dtype):
        return np.empty(0, dtype).itemsize * int(np.prod(shape))

    P = M * topk
    rows = nbytes((P, H), np.float32) + 5 * nbytes((M, H), np.float64)
    layer = sum(nbytes(shape, np.uint8) for shape in ((E, 2 * I, H // 2), (E, 2 * I, H // 32),
                                                      (E, H, I // 2), (E, H, I // 32)))
    bit_ranges = nbytes((E, 2 * I + H, 2), np.int64)
    busiest = min(P, 4 * max(1, -(-P // E)))
    pairs = 8 * nbytes((busiest, 2 * I + H), np.float64)
    matrices = sum(k * nbytes(shape, dtype) for shape in ((2 * I, H), (H, I)) for k, dtype in ((3, np.float64),
                                                                                               (2, np.float32)))
    dequant = min(E * nbytes((3 * I, H), np.float32), DEQUANT_CACHE_BYTES + nbytes((2 * I, H), np.float32))
    device = rows + bit_ranges
    for frozen in (True, False):
        got = reference_bytes(M, E, H, I, topk, device=True, frozen_weights=frozen)
        assert type(got) is int and got == device + (0 if frozen else layer)
        got = reference_bytes(M, E, H, I, topk, device=False, frozen_weights=frozen)
        assert type(got) is int and got == device + (0 if frozen else layer) + pairs + matrices + dequant


@pytest.mark.parametrize("M, E, H, I, topk", [(64, 8, 256, 128, 2), (8, 32, 1024, 512, 4), (300, 128, 256, 256, 4),
                                              (1, 8, 2048, 1024, 2), (2000, 2, 64, 64, 2), (1, 4, 64, 32, 1)])
def test_reference_bytes_bound_the_measured_peak(M, E, H, I, topk):  # noqa: E741
    """The worker budget's estimate is an upper bound of what a first reference on a layer allocates
    (tracemalloc: NumPy's buffers; the layer's dequantized experts and its copy of the weights included),
    and not a gross one (within 3x); with unfrozen inputs, which the layer copies, and frozen ones."""
    import tracemalloc

    from moe_ref import weights as weights_module

    p = random_moe_problem(np.random.default_rng(M + E), M=M, E=E, H=H, I=I, topk=topk)
    for act_dtype, frozen in (("bf16", False), ("fp4x2", False), ("fp4x2", True)):
        for arr in (p.w1, p.w1_scale, p.w2, p.w2_scale):
            arr.setflags(write=not frozen)
        weights_module._WEIGHTS_CACHE.clear()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            moe_reference_bounded(*p.args(), act_dtype=act_dtype)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        estimate = reference_bytes(M, E, H, I, topk, device=False, frozen_weights=frozen)
        assert peak <= estimate <= 3 * peak, (act_dtype, frozen, peak, estimate)


def test_the_device_computes_both_passes(rng, monkeypatch):
    """``device`` reaches the bound's pass and the ideal's: each gets the device's products (torch on the
    CPU here, named "cpu:0"; None or "cpu" would be NumPy's)."""
    import moe_ref.bounded as bounded

    seen = []
    real = bounded.forward

    def spy(call, act_dtype, products=None, *rest, **kw):
        seen.append((act_dtype, type(products).__name__))
        return real(call, act_dtype, products, *rest, **kw)

    monkeypatch.setattr(bounded, "forward", spy)
    p = _problem(rng, M=6)
    moe_reference_bounded(*p.args(), act_dtype="fp8", device="cpu:0")
    assert seen == [("fp8", "DeviceProducts"), (None, "DeviceProducts")]
    seen.clear()
    moe_reference_bounded(*p.args(), act_dtype="fp8", device="cpu")
    assert seen == [("fp8", "HostProducts"), (None, "HostProducts")]


@pytest.mark.parametrize("act_dtype, words", [
    (None, "act_dtype: expected an emulated path ('bf16', 'fp4x2', 'fp8'); the ideal comes with it"),
    ("fp16", "act_dtype='fp16' is not valid; expected None or one of ['bf16', 'fp4x2', 'fp8']"),
])
def test_the_path_is_checked_first(rng, act_dtype, words):
    p = _problem(rng, M=2)
    with pytest.raises(ValueError) as info:
        moe_reference_bounded(*p.args(), act_dtype=act_dtype)
    assert str(info.value) == words


def test_an_unknown_product_form_is_refused(rng):
    """The products know three forms of the weight (value, |w|, w^2); any other name is an error, not w^2."""
    from moe_ref.products import FORMS, HostProducts

    p = random_moe_problem(rng, M=2, E=2, H=32, I=32, topk=1)
    host = HostProducts(MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale))
    assert FORMS == ("value", "abs", "square")
    with pytest.raises(ValueError, match=r"form='squared' is not valid; expected one of \['value', 'abs', 'square'\]"):
        host.matmul(np.ones((1, 32)), 0, "w1", "squared")
