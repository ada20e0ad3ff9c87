"""fused_moe against the emulated reference: bit-exact on exact inputs, within the derived bound on
random inputs, every activation path reached through the one selector."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

import emulation as em
import moe_kernels as mk
from moe_ref import (
    ACTIVATION_PATHS,
    DECISION_TABLE,
    MoEProblem,
    MoEWeights,
    kernel_tolerance,
    moe_reference,
    random_moe_problem,
    select_activation_dtype,
)
from moe_ref.exact import accumulation_bits

# Ways to reach each (path, gate mode) on a CPU through the selector's inputs (M stays small).
ROUTES = {
    ("a16w4", "separated"): dict(arch="gfx950", env={}),  # rule 3, M < 256
    ("a16w4", "interleave"): dict(arch="gfx950", env={}),  # rule 4, M < 512
    ("a4w4", "separated"): dict(arch="gfx950", env={"GPTOSS_SWIGLU_MXFP4_BF16_BOUND": "0"}),  # rule 3
    ("a4w4", "interleave"): dict(arch="gfx1250", env={}),  # rule 2
    ("a8w4", "separated"): dict(arch="gfx1250", env={"AITER_FORCE_A8W4": "1"}),  # rule 2
    ("a8w4", "interleave"): dict(arch="gfx950", env={"AITER_MOE_BF16_FP8_BOUND": "0"}),  # rule 4
}
PATH_NAMES = ("a16w4", "a4w4", "a8w4")


def _exact_problem(rng, *, M, E, H, I, topk, gate_mode, with_bias) -> MoEProblem:
    """Inputs on which every GEMM is exact in fp32 and SwiGLU's gate saturates at the limit.

    hidden in {1, 1.5, 2, 3} (exact in MXFP4 and MXFP8 with ROUND_UP scales); gate rows of w1
    positive (so gate = sum a_i w_i >= H/2 >= limit: the clamped gate is exactly 7 and sigmoid is
    a constant); up rows with two nonzero weights (|up| < limit, a multiple of 1/8); every weight an
    e2m1 value times 1/4 or 1; dyadic routing weights and biases. The premises are asserted on the
    emulated trace by the test, not assumed.
    """
    hidden = rng.choice(np.float32([1, 1.5, 2, 3]), size=(M, H))
    w1 = np.zeros((E, 2 * I, H), np.float32)
    gate = rng.choice(np.float32([0.5, 1, 1.5, 2]), size=(E, I, H))
    up = np.zeros((E, I, H), np.float32)
    for e in range(E):
        for j in range(I):
            cols = rng.choice(H, 2, replace=False)
            up[e, j, cols] = rng.choice(np.float32([-0.5, 0.5, 1.0, -1.0]), 2)
    if gate_mode == "separated":
        w1[:, :I], w1[:, I:] = gate, up
    else:
        w1[:, 0::2], w1[:, 1::2] = gate, up
    w2 = rng.choice(np.float32([-1.5, -1, -0.5, 0, 0.5, 1, 1.5]), size=(E, H, I)) * np.float32(0.25)
    w1p, w1s = em.quantize_mxfp4(w1)
    w2p, w2s = em.quantize_mxfp4(w2)
    ids = np.stack([rng.choice(E, topk, replace=False) for _ in range(M)]).astype(np.int32)
    weights = rng.choice(np.float32([0.25, 0.5, 0.75]), size=(M, topk))
    b1 = rng.choice(np.float32([-0.25, 0, 0.125]), size=(E, 2 * I)) if with_bias else None
    b2 = rng.choice(np.float32([-0.5, 0, 0.25]), size=(E, H)) if with_bias else None
    return MoEProblem(hidden, w1p, w1s, w2p, w2s, weights, ids, b1, b2)


def _assert_exact_premises(p: MoEProblem, trace, act_dtype, scale_mode, gate_mode, doweight):
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    I = w.I
    for row, (t, k) in enumerate(trace.pairs):
        e = p.topk_ids[t, k]
        assert accumulation_bits(trace.a_q[t:t + 1], w.dequant_w1(e)).max() <= 24, "stage-1 GEMM not exact in fp32"
        assert accumulation_bits(trace.act_q[row:row + 1], w.dequant_w2(e)).max() <= 24, "stage-2 GEMM not exact"
        gate = trace.stage1[row, :I] if gate_mode == "separated" else trace.stage1[row, 0::2]
        assert gate.min() >= 7.0, "gate below the limit: sigmoid would not be a constant"
    # Stage-2 quantization is robust to a 2^-20 relative change of the activation: the kernel's exp
    # and division differ from NumPy's by a few ulp of exp(-11.9) ~ 6.6e-6, so 1 / (1 + e) by at most
    # one ulp and the activation by at most ~2^-22 relative.
    h = trace.act
    q = lambda v: moe_ref_quantize(v, act_dtype, scale_mode)  # noqa: E731
    for factor in (1 - 2.0**-20, 1 + 2.0**-20):
        np.testing.assert_array_equal(q((h * factor).astype(np.float32)), trace.act_q, err_msg="boundary premise")
    # bias adds, routing-weight products and the slot sum (fixed order in kernel and reference) are
    # exact: recomputed in float64 from the same quantized stage-2 inputs, nothing changes.
    out64 = np.zeros(trace.out_f32.shape)
    for row, (t, k) in enumerate(trace.pairs):
        e = p.topk_ids[t, k]
        y = trace.act_q[row].astype(np.float64) @ w.dequant_w2(e).astype(np.float64).T
        if p.bias2 is not None:
            y = y + p.bias2[e]
        out64[t] += y if doweight else y * p.topk_weights[t, k]
    np.testing.assert_array_equal(out64, trace.out_f32, err_msg="stage 2 / routing / slot sum not exact")


def moe_ref_quantize(v, act_dtype, scale_mode):
    from moe_ref import quantize_activation

    return quantize_activation(v, act_dtype, scale_mode)


BIT_EXACT_CASES = [(path, gm, dw, bias, mask, mode)
                   for path in PATH_NAMES for gm in ("separated", "interleave") for dw in (False, True)
                   for bias, mask in ((False, False), (True, True))
                   for mode in (["round_up", "round_down", "ceil", "even"] if path == "a4w4" and not dw else ["round_up"])]


def _run_bit_exact(path, gate_mode, doweight, bias, mask, mode, rng, device, shape, held=False):
    route = {**ROUTES[path, gate_mode], "gate_mode": gate_mode}
    p = _exact_problem(rng, gate_mode=gate_mode, with_bias=bias, **shape)
    expert_mask = (np.arange(shape["E"]) % 3 != 1).astype(np.int32) if mask else None
    pt = p.to_torch(device)
    prepared = mk.prepare_weights(*pt.args()[1:5]) if held else None
    out, run = mk.fused_moe(*pt.args(), **pt.biases(), doweight_stage1=doweight, scale_mode=mode,
                            expert_mask=None if expert_mask is None else torch.from_numpy(expert_mask).to(device),
                            prepared=prepared, return_trace=True, poison=True, **route)
    assert run.plan.path.name == path
    decision = select_activation_dtype(shape["M"], arch=route["arch"], gate_mode=gate_mode, env=route["env"])
    assert run.plan.decision == decision
    ref, trace = moe_reference(*p.args(), **p.biases(), act_dtype=decision.dtype, gate_mode=gate_mode,
                               doweight_stage1=doweight, expert_mask=expert_mask, scale_mode=mode, return_trace=True)
    _assert_exact_premises(p, trace, decision.dtype, mode, gate_mode, doweight)
    np.testing.assert_array_equal(out.float().cpu().numpy().view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("path, gate_mode, doweight, bias, mask, mode", BIT_EXACT_CASES)
def test_bit_exact_on_exact_inputs(path, gate_mode, doweight, bias, mask, mode, rng, device):
    _run_bit_exact(path, gate_mode, doweight, bias, mask, mode, rng, device, dict(M=24, E=4, H=64, I=64, topk=2))


@pytest.mark.gpu
@pytest.mark.parametrize("path, gate_mode, doweight, bias, mask, mode", BIT_EXACT_CASES)
def test_bit_exact_on_exact_inputs_gpu(path, gate_mode, doweight, bias, mask, mode, rng, device):
    _run_bit_exact(path, gate_mode, doweight, bias, mask, mode, rng, device, dict(M=200, E=32, H=256, I=256, topk=4))


def _backend_tiles():
    from moe_kernels import dispatch
    from moe_kernels._tuning import CONFIGS

    backend = dispatch._backend()
    return [e for e in CONFIGS["gpu"] if e.get("backend", backend) == backend]


@pytest.mark.gpu
@pytest.mark.parametrize("tile", range(len(_backend_tiles())))
@pytest.mark.parametrize("path", PATH_NAMES)
def test_bit_exact_at_every_tile_configuration_gpu(tile, path, rng, device, monkeypatch):
    """Each configs.json tile of this GPU's backend (the large-M ones are chosen only past 64 pairs per
    expert, which the shapes above do not reach), forced on one problem: the reference's bits."""
    from moe_kernels._tuning import CONFIGS

    monkeypatch.setitem(CONFIGS, "gpu", [dict(_backend_tiles()[tile], max_pairs_per_expert=None)])
    _run_bit_exact(path, "interleave", False, True, False, "round_up", rng, device,
                   dict(M=200, E=8, H=256, I=192, topk=2))


@pytest.mark.parametrize("path", PATH_NAMES)
@pytest.mark.parametrize("gate_mode", ["separated", "interleave"])
def test_bit_exact_with_the_weights_as_the_left_operand(path, gate_mode, rng, device, monkeypatch):
    """The left-operand GEMMs (``moe_gemm.weight_mma``: prepared weights, acc^T = W @ X^T; Hopper's tiles)
    under the interpreter: the reference's bits, with H and I not multiples of 64 (the prepared rows'
    zero padding) and several K tiles."""
    from moe_kernels._tuning import CONFIGS

    monkeypatch.setitem(CONFIGS, "interpreter", dict(CONFIGS["interpreter"], block_k=64, w_left=True))
    _run_bit_exact(path, gate_mode, False, True, True, "round_up", rng, device, dict(M=24, E=4, H=160, I=96, topk=2))


@pytest.mark.parametrize("path", PATH_NAMES)
def test_bit_exact_with_held_prepared_weights(path, rng, device, monkeypatch):
    """``fused_moe(prepared=prepare_weights(...))``: the held weights are what the left-operand GEMMs read
    (the reference's bits), and a call whose tiles read the public layout ignores them."""
    from moe_kernels._tuning import CONFIGS

    shape = dict(M=24, E=4, H=160, I=96, topk=2)
    monkeypatch.setitem(CONFIGS, "interpreter", dict(CONFIGS["interpreter"], block_k=64, w_left=True))
    _run_bit_exact(path, "separated", False, True, False, "round_up", rng, device, shape, held=True)
    monkeypatch.setitem(CONFIGS, "interpreter", dict(CONFIGS["interpreter"], w_left=False))
    _run_bit_exact(path, "separated", False, True, False, "round_up", rng, device, shape, held=True)


def test_held_weights_are_checked_against_the_call():
    """Held weights made from other tensors, or from tensors written since, are refused by name: the
    GEMMs would read other weights than the call's."""
    p = random_moe_problem(np.random.default_rng(5), M=4, E=4, H=64, I=64, topk=2).to_torch()
    args = list(p.args())
    route = dict(arch="gfx950", env={})
    with pytest.raises(TypeError, match=r"^prepared: expected moe_kernels.PreparedWeights \(prepare_weights\), got tuple"):
        mk.fused_moe(*args, prepared=(args[1], args[3]), **route)
    other = mk.prepare_weights(args[1].clone(), *args[2:5])
    with pytest.raises(ValueError, match=r"^prepared: not made from this call's w1, or w1 was written since"):
        mk.plan_moe(*args, prepared=other, **route)
    held = mk.prepare_weights(*args[1:5])
    mk.plan_moe(*args, prepared=held, **route)  # accepted
    args[4][0, 0, 0] = 127  # w2_scale written in place
    with pytest.raises(ValueError, match=r"^prepared: not made from this call's w2_scale, or w2_scale was written"):
        mk.fused_moe(*args, prepared=held, **route)
    with pytest.raises(TypeError, match=r"^w2: expected a torch.uint8 tensor"):
        mk.prepare_weights(args[1], args[2], args[3].to(torch.int16), args[4])
    with pytest.raises(TypeError, match=r"^w1_scale: expected a torch.uint8 tensor of e8m0 bytes, got torch.float32"):
        mk.prepare_weights(args[1], args[2].float(), args[3], args[4])


def test_a_graph_capture_of_public_weights_takes_the_tiles_that_read_them():
    """configs.json entries with ``w_left`` read prepared weights; where none are held, a CUDA graph
    capture must read the public weights as they are at each replay: ``_config(left=False)`` skips them."""
    from moe_kernels import dispatch
    from moe_kernels._tuning import CONFIGS

    tiles = dict(block_m=16, block_n1=64, block_n2=128, block_k=128, num_warps=4, num_stages=3)
    left, staged = dict(tiles, w_left=True), dict(tiles, w_left=False, block_k=64)
    entries = [dict(e, backend="cuda", max_pairs_per_expert=None) for e in (left, staged)]
    saved = CONFIGS["gpu"]
    CONFIGS["gpu"] = entries
    try:
        assert dispatch._config(64, 8, 2, backend="cuda")[-1] is True
        assert dispatch._config(64, 8, 2, backend="cuda", left=False) == tuple(staged[k] for k in dispatch._CONFIG_KEYS)
    finally:
        CONFIGS["gpu"] = saved
    for M in (1, 8, 64, 256, 1024, 4096, 8192, 65536):  # configs.json itself: every bucket has a tile for captures
        for backend in ("cuda", "hip"):
            assert dispatch._config(M, 128, 4, backend=backend, left=False)[-1] is False


@functools.lru_cache(maxsize=4)
def _problem_and_references(seed: int, shape: tuple, gate_mode: str):
    """One random problem and its emulated references on every path (shared by the paths' tests)."""
    p = random_moe_problem(np.random.default_rng([seed, *dict(shape).values()]), with_bias=True, **dict(shape))
    refs = {d: moe_reference(*p.args(), **p.biases(), act_dtype=d, gate_mode=gate_mode, return_trace=True)
            for d in ("bf16", "fp4x2", "fp8")}
    return p, refs


def _run_random(path, gate_mode, rng, device, shape, seed=None):
    route = {**ROUTES[path, gate_mode], "gate_mode": gate_mode}
    if seed is None:  # a fresh problem for this test
        seed = int(rng.integers(1 << 31))
    p, refs = _problem_and_references(seed, tuple(shape.items()), gate_mode)
    pt = p.to_torch(device)
    out, run = mk.fused_moe(*pt.args(), **pt.biases(), return_trace=True, poison=True, **route)
    act = run.plan.act_dtype
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    ref, trace = refs[act]
    mma_k = 16 if out.is_cuda else None  # tensor cores: 16 products per fp32 accumulation step
    bound = kernel_tolerance(trace, w, p.topk_weights, p.topk_ids, act_dtype=act, gate_mode=gate_mode, mma_k=mma_k)
    diff = np.abs(out.float().cpu().numpy().astype(np.float64) - ref)
    print(f"{act}: max |diff| {diff.max():.4g}, max bound {bound.max():.4g}, median bound {np.median(bound):.3g}")
    assert np.all(diff <= bound), f"max excess {(diff - bound).max():.3g}"
    for other, (ref_other, _) in refs.items():
        if other != act:  # a kernel that silently ran another path would break the bound: on many outputs
            outside = np.abs(ref_other.astype(np.float64) - ref) > bound
            print(f"  {act} vs {other}: {outside.mean():.0%} of outputs outside the bound")
            assert outside.mean() > 0.05 and outside.sum() >= 100, \
                f"{act} vs {other}: only {outside.mean():.0%} ({outside.sum()}) of outputs outside the bound"
    return diff, bound


@pytest.mark.parametrize("path", PATH_NAMES)
@pytest.mark.parametrize("gate_mode", ["separated", "interleave"])
def test_random_inputs_within_the_derived_bound(path, gate_mode, rng, device):
    _run_random(path, gate_mode, rng, device, dict(M=40, E=4, H=128, I=64, topk=2))


@pytest.mark.gpu
@pytest.mark.parametrize("path", PATH_NAMES)
@pytest.mark.parametrize("gate_mode", ["separated", "interleave"])
@pytest.mark.parametrize("M", [1, 64])
def test_random_inputs_within_the_derived_bound_gpu(path, gate_mode, M, rng, device, base_seed):
    # one problem per (M, gate mode), shared by the three paths' tests (the references cost minutes)
    _run_random(path, gate_mode, rng, device, dict(M=M, E=32, H=2880, I=2880, topk=4), seed=base_seed)


# ---- options and multi-tile shapes -------------------------------------------------------------

MULTI_TILE = dict(M=48, E=4, H=352, I=160, topk=2)  # K loops of 3 and 2 tiles of 128 (the interpreter's), last ones partial


@pytest.mark.parametrize("path", PATH_NAMES)
@pytest.mark.parametrize("alpha, limit", [(1.0, 3.0), (1.702, 7.0)])
def test_alpha_limit_and_multi_tile_k_within_the_bound(path, alpha, limit, rng, device):
    """SwiGLU's alpha and limit reach the kernel (outlier tokens push gate and up past the limit), and
    K loops of several tiles with a partial last one; with non-default options the default options'
    reference lies outside the bound on many outputs (so the test sees a kernel that ignores them)."""
    gate_mode = "separated"
    route = {**ROUTES[path, gate_mode], "gate_mode": gate_mode}
    p = random_moe_problem(rng, with_bias=True, **MULTI_TILE)
    hidden = p.hidden.copy()
    hidden[::2] *= 4  # half the tokens 4x larger (exact): about 4% of gate/up past the limit, whatever the seed
    p = dataclasses.replace(p, hidden=hidden)
    out, run = mk.fused_moe(*p.to_torch(device).args(), **p.to_torch(device).biases(), alpha=alpha, limit=limit,
                            return_trace=True, poison=True, **route)
    act = run.plan.act_dtype
    assert run.plan.path.name == path
    ref, trace = moe_reference(*p.args(), **p.biases(), act_dtype=act, alpha=alpha, limit=limit, return_trace=True)
    assert (np.abs(trace.stage1) > limit).mean() > 0.02, "the draw never reaches the limit"
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    bound = kernel_tolerance(trace, w, p.topk_weights, p.topk_ids, act_dtype=act, limit=limit,
                             mma_k=16 if out.is_cuda else None)
    diff = np.abs(out.float().cpu().numpy().astype(np.float64) - ref)
    assert np.all(diff <= bound), f"max excess {(diff - bound).max():.3g}"
    if (alpha, limit) != (1.702, 7.0):
        default = moe_reference(*p.args(), **p.biases(), act_dtype=act)
        assert (np.abs(default.astype(np.float64) - ref) > bound).mean() > 0.05


@pytest.mark.parametrize("path, mode", [("a4w4", m) for m in ("round_up", "round_down", "ceil", "even")]
                         + [("a8w4", m) for m in ("round_up", "even")])
def test_stage1_input_bytes_follow_the_scale_mode(path, mode, rng, device):
    """The stage-1 quantizer inside fused_moe gets the call's scale mode: its codes and scales are the
    emulation's bytes for that mode (on data where the modes disagree)."""
    route = {**ROUTES[path, "separated"], "gate_mode": "separated"}
    p = random_moe_problem(rng, M=16, E=4, H=256, I=64, topk=2)
    _, run = mk.fused_moe(*p.to_torch(device).args(), scale_mode=mode, return_trace=True, poison=True, **route)
    x = p.hidden.astype(np.float32)
    fmt = "e2m1" if path == "a4w4" else "e4m3fn"
    codes, scale = em.quantize_mxfp4(x, scale_mode=mode) if path == "a4w4" else em.quantize_mxfp8(x, scale_mode=mode)
    np.testing.assert_array_equal(run.a_q.cpu().numpy(), codes)
    np.testing.assert_array_equal(run.a_scale.cpu().numpy(), scale)
    another = "ceil" if mode != "ceil" else "round_up"
    assert not np.array_equal(scale, em.quantize_mx(x, fmt, scale_mode=another)[1]), "a draw where the modes agree"


# ---- every rule of the decision table reached by a kernel run --------------------------------

RULE_CASES = [  # (M, arch, gate_mode, activation, env): kernels run on small shapes on the CPU
    (255, "gfx950", "separated", "swiglu", {}),  # rule 3 -> bf16 (M < 256)
    (256, "gfx950", "separated", "swiglu", {}),  # rule 3 -> fp4x2 at the default bound
    (300, "gfx950", "separated", "swiglu", {"AITER_MOE_FORCE_BF16_ACT": "1"}),  # rule 3 forced -> bf16
    (511, "gfx950", "interleave", "swiglu", {}),  # rule 4 -> bf16 (M < 512)
    (512, "gfx950", "interleave", "swiglu", {}),  # rule 4 -> fp8 at the default bound
    (600, "gfx942", "interleave", "swiglu", {}),  # rule 4 -> bf16 (not gfx950)
    (600, "gfx950", "interleave", "swiglu", {"AITER_MOE_FORCE_BF16_ACT": "1"}),  # rule 4 forced -> bf16
    (40, "gfx950", "interleave", "swiglu", {"AITER_BF16_FP8_MOE_BOUND": "16"}),  # rule 4, legacy bound -> fp8
    (8, "gfx1250", "separated", "swiglu", {}),  # rule 2 -> fp4x2
    (8, "gfx1250", "separated", "swiglu", {"AITER_FORCE_A8W4": "1"}),  # rule 2 -> fp8
    (8, "gfx950", "separated", "silu", {}),  # rule 5 -> fp4x2
    (8, "gfx950", "interleave", "silu", {}),  # rule 4 via interleave -> bf16
]
KERNEL_RULES = {1, 6}  # rules for other weight dtypes: fused_moe takes MXFP4 weights only


@pytest.mark.parametrize("M, arch, gate_mode, activation, env", RULE_CASES)
def test_the_path_that_ran_is_the_selector_decision(M, arch, gate_mode, activation, env, rng, device):
    p = random_moe_problem(rng, M=M, E=4, H=32, I=32, topk=1)
    pt = p.to_torch(device)
    out, run = mk.fused_moe(*pt.args(), gate_mode=gate_mode, activation=activation, arch=arch, env=env,
                            return_trace=True)
    decision = select_activation_dtype(M, arch=arch, gate_mode=gate_mode, activation=activation, env=env)
    assert run.plan.decision == decision and run.plan.path is ACTIVATION_PATHS[decision.dtype]
    expected_a_dtype = {"bf16": torch.bfloat16, "fp4x2": torch.uint8, "fp8": torch.uint8}[decision.dtype]
    assert run.a_q.dtype == expected_a_dtype
    assert run.a_q.shape[1] == (p.hidden.shape[1] // 2 if decision.dtype == "fp4x2" else p.hidden.shape[1])
    ref = moe_reference(*p.args(), act_dtype=decision.dtype, gate_mode=gate_mode, activation=activation)
    w = MoEWeights.from_arrays(p.w1, p.w1_scale, p.w2, p.w2_scale)
    _, trace = moe_reference(*p.args(), act_dtype=decision.dtype, gate_mode=gate_mode, activation=activation,
                             return_trace=True)
    bound = kernel_tolerance(trace, w, p.topk_weights, p.topk_ids, act_dtype=decision.dtype, gate_mode=gate_mode,
                             activation=activation)
    assert np.all(np.abs(out.float().numpy() - ref) <= bound)


def test_kernel_rule_coverage_is_complete():
    """Meta-test: every rule of the decision table is reached by RULE_CASES (or is for other weights)."""
    reached = {select_activation_dtype(M, arch=a, gate_mode=g, activation=act, env=env).rule
               for M, a, g, act, env in RULE_CASES}
    overrides = {(select_activation_dtype(M, arch=a, gate_mode=g, activation=act, env=env).rule,
                  select_activation_dtype(M, arch=a, gate_mode=g, activation=act, env=env).override)
                 for M, a, g, act, env in RULE_CASES}
    assert reached | KERNEL_RULES == {r.number for r in DECISION_TABLE}
    for rule in DECISION_TABLE:
        if rule.number not in KERNEL_RULES:
            wanted = {(rule.number, o.kind) for o in rule.overrides} | {(rule.number, None)}
            assert wanted <= overrides, f"rule {rule.number}: not every outcome reached by a kernel test"


def test_m_zero_returns_empty(rng):
    p = random_moe_problem(rng, M=0, E=4, H=32, I=32, topk=2)
    out = mk.fused_moe(*p.to_torch().args(), arch="gfx950", env={})
    assert out.shape == (0, 32) and out.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "change, match",
    [(dict(hidden=lambda t: t.float()), "hidden: expected a 2-D torch.bfloat16"),
     (dict(w1=lambda t: t[:, :, :-1]), "w1"), (dict(w2_scale=lambda t: t[:, :, :1].contiguous()), "w2_scale"),
     (dict(w1=lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)), "w1: the last dimension"),
     (dict(topk_ids=lambda t: t + 4), r"topk_ids: expert ids must lie in \[0, 3\]"),
     (dict(topk_ids=lambda t: t.float()), "topk_ids"), (dict(topk_weights=lambda t: t.double()), "topk_weights"),
     (dict(hidden=lambda t: t[:, :16]), "hidden"), (dict(hidden=lambda t: t.numpy() if False else "x"), "hidden")],
)
def test_bad_input_names_the_argument(change, match, rng):
    p = random_moe_problem(rng, M=4, E=4, H=64, I=64, topk=2).to_torch()
    kw = dict(zip(["hidden", "w1", "w1_scale", "w2", "w2_scale", "topk_weights", "topk_ids"], p.args()))
    for name, fn in change.items():
        kw[name] = fn(kw[name])
    with pytest.raises((ValueError, TypeError), match=match):
        mk.fused_moe(*kw.values(), arch="gfx950", env={})


@pytest.mark.gpu
@pytest.mark.parametrize("M", [4, 200])  # 8 / 400 pairs: the one-program and the torch alignment
@pytest.mark.parametrize("masked", [False, True])
def test_out_of_range_ids_raise_on_the_gpu(M, masked, rng, device):
    """On a GPU the range check is queued with the kernels (no host sync before them) and raised once
    they are queued: still the ValueError naming topk_ids, and the CUDA context stays usable."""
    p = random_moe_problem(rng, M=M, E=4, H=64, I=64, topk=2).to_torch(device)
    kw = dict(zip(["hidden", "w1", "w1_scale", "w2", "w2_scale", "topk_weights", "topk_ids"], p.args()))
    good = mk.fused_moe(*kw.values(), arch="gfx950", env={})
    mask = torch.tensor([1, 0, 1, 1], dtype=torch.int32, device=device) if masked else None
    # int64 ids are saturated before their int32 alignment: 2^32 + 1 must not wrap to expert 1
    for bad, dtype in ((-1, torch.int32), (4, torch.int32), (1000, torch.int32), (-1, torch.int64),
                       (2**32 + 1, torch.int64)):
        ids = kw["topk_ids"].to(dtype, copy=True)  # the good ids stay as they are, for the last call
        ids[M // 2, 1] = bad
        with pytest.raises(ValueError, match=r"topk_ids: expert ids must lie in \[0, 3\]"):
            mk.fused_moe(*{**kw, "topk_ids": ids}.values(), arch="gfx950", env={}, expert_mask=mask)
    again = mk.fused_moe(*kw.values(), arch="gfx950", env={})
    assert torch.equal(good.view(torch.int16), again.view(torch.int16))


def _check_stage2_input(path, rng, device, shape):
    route = {**ROUTES[path, "separated"], "gate_mode": "separated"}
    pt = random_moe_problem(rng, **shape).to_torch(device)
    traced, run = mk.fused_moe(*pt.args(), return_trace=True, poison=True, **route)
    fast = mk.fused_moe(*pt.args(), poison=True, **route)
    assert run.plan.path.name == path
    assert torch.equal(fast.view(torch.int16), traced.view(torch.int16)), "storing the codes changed the result"
    got = run.h_values.float().cpu().numpy()
    if path == "a16w4":
        np.testing.assert_array_equal(got.view(np.uint32), run.h_q.float().cpu().numpy().view(np.uint32))
        return
    codes, scale = run.h_q.cpu().numpy(), run.h_scale.cpu().numpy()
    want = em.dequantize_mxfp4(codes, scale) if path == "a4w4" else em.dequantize_mxfp8(codes, scale)
    want = np.where(np.abs(want) < 2.0**-126, np.copysign(0.0, want), want).astype(np.float32)  # documented flush
    assert np.isfinite(want).all() and (np.abs(want) > 0).mean() > 0.25, "a degenerate draw"
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("path", PATH_NAMES)
def test_stage2_input_is_the_value_of_the_stage1_codes(path, rng, device):
    """Stage 1 stores the stage-2 input as the bf16 values of its quantized codes (the codes only for a
    trace): those values are the emulation's dequantization of the codes, and a call without a trace
    (no codes stored) gives the same bits."""
    _check_stage2_input(path, rng, device, dict(M=24, E=4, H=64, I=128, topk=2))


@pytest.mark.gpu
@pytest.mark.parametrize("path", PATH_NAMES)
def test_stage2_input_is_the_value_of_the_stage1_codes_gpu(path, rng, device):
    _check_stage2_input(path, rng, device, dict(M=200, E=8, H=256, I=384, topk=4))  # M < 256: a16w4 is reachable


@pytest.mark.gpu
@pytest.mark.parametrize("w_left", [False, True], ids=["staged", "left-operand"])
@pytest.mark.parametrize("path", PATH_NAMES)
def test_cuda_graph_replay_equals_eager(path, w_left, rng, device, monkeypatch):
    """fused_moe captured in a CUDA graph (no host sync inside; the id check is a device assert) and
    replayed on new inputs copied into the captured buffers, weights included: the eager call's bits.
    With the left-operand tiles first in configs.json, a capture of public weights takes the tiles that
    read them (a replay must see new weights), so the eager call it equals is one without left tiles;
    with held prepared weights (``w_left``'s second half) the capture reads those, and replays on new
    activations equal eager calls with the same held weights."""
    from moe_kernels._tuning import CONFIGS

    staged = [e for e in CONFIGS["gpu"] if not e.get("w_left")]
    if w_left:
        monkeypatch.setitem(CONFIGS, "gpu", [e for e in CONFIGS["gpu"] if e.get("w_left")] + staged)
    shape = dict(M=64, E=8, H=256, I=128, topk=2)
    route = {**ROUTES[path, "interleave"], "gate_mode": "interleave"}
    static = random_moe_problem(rng, **shape).to_torch(device)
    args = list(static.args())
    with monkeypatch.context() as m:  # compile outside the capture: the tiles that read public weights
        m.setitem(CONFIGS, "gpu", staged)
        mk.fused_moe(*args, **route)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mk.fused_moe(*args, **route)
    for _ in range(2):
        fresh = random_moe_problem(rng, **shape).to_torch(device)
        for buf, new in zip(args, fresh.args()):
            buf.copy_(new)
        graph.replay()
        with monkeypatch.context() as m:
            m.setitem(CONFIGS, "gpu", staged)
            want = mk.fused_moe(*fresh.args(), **route)
        torch.cuda.synchronize()
        assert torch.equal(out.view(torch.int16), want.view(torch.int16))
    if w_left:
        held = mk.prepare_weights(*args[1:5])
        assert mk.plan_moe(*args, prepared=held, **route).w_left
        mk.fused_moe(*args, prepared=held, **route)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = mk.fused_moe(*args, prepared=held, **route)
        for _ in range(2):
            fresh = random_moe_problem(rng, **shape).to_torch(device)
            for i in (0, 5, 6):  # hidden, topk_weights, topk_ids: the weights stay
                args[i].copy_(fresh.args()[i])
            graph.replay()
            want = mk.fused_moe(*args, prepared=held, **route)
            torch.cuda.synchronize()
            assert torch.equal(out.view(torch.int16), want.view(torch.int16))


def test_h_not_multiple_of_32_and_bad_env(rng):
    p = random_moe_problem(rng, M=4, E=4, H=64, I=32, topk=2).to_torch()
    with pytest.raises(ValueError, match="AITER_MOE_FORCE_BF16_ACT='yes please'"):
        mk.fused_moe(*p.args(), arch="gfx950", env={"AITER_MOE_FORCE_BF16_ACT": "yes please"})
    hidden = torch.zeros(4, 48, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="multiple of 32"):
        mk.fused_moe(hidden, *p.args()[1:], arch="gfx950", env={})


_ALIGN_SHAPES = [(1, 8, 2, 16), (37, 8, 3, 16), (200, 32, 4, 64), (5, 128, 4, 16), (64, 128, 4, 16)]
_SMALL_PAIRS = 256  # moe_kernels.routing.SMALL_PAIRS (asserted below): the one-program range


@pytest.mark.parametrize("M, E, topk, block_m, impl",
                         [(*shape, impl) for shape in _ALIGN_SHAPES for impl in ("one_program", "torch")
                          if impl == "torch" or shape[0] * shape[2] <= _SMALL_PAIRS])
@pytest.mark.parametrize("masked, bad_ids", [(None, False), (False, False), (True, False), (None, True), (True, True)])
@pytest.mark.parametrize("where", ["interpreter", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_device_alignment_equals_moe_ref(M, E, topk, block_m, masked, bad_ids, impl, where, rng, device):
    """fused_moe's sync-free alignment (both implementations) holds moe_ref.moe_align_block_size's
    blocks, then -1 blocks; masked None: no expert mask (no live tensor), False: all live. bad_ids:
    some ids outside [0, E) (fused_moe raises for them after its kernels are queued): those pairs are
    not placed, as if they belonged to an extra, masked expert E."""
    from moe_kernels import routing
    from moe_ref import moe_align_block_size

    assert routing.SMALL_PAIRS == _SMALL_PAIRS

    ids = torch.from_numpy(rng.integers(0, E, (M, topk)).astype(np.int32))
    mask = torch.from_numpy((rng.random(E) < 0.6).astype(np.int32)) if masked else None
    live = None if masked is None else torch.ones((M, topk), dtype=torch.bool) if mask is None else (mask != 0)[ids.long()]
    ref_ids, ref_mask = ids, mask
    if bad_ids:
        bad = torch.from_numpy(rng.random((M, topk)) < 0.2)
        ids = torch.where(bad, torch.from_numpy(rng.choice([-1, E, E + 7, -(2**31)], (M, topk)).astype(np.int32)), ids)
        ref_ids = torch.where(bad, E, ids)
        ref_mask = torch.cat([torch.ones(E, dtype=torch.int32) if mask is None else mask, torch.zeros(1, dtype=torch.int32)])
    n_blocks = -(-(M * topk + (block_m - 1) * min(E, M * topk)) // block_m)
    align = routing._align_one_program if impl == "one_program" else routing._align_torch
    sorted_ids, expert_ids, out_of_range = align(ids.to(device), None if live is None else live.to(device), block_m,
                                                 E, n_blocks)
    sorted_ids, expert_ids = sorted_ids.cpu(), expert_ids.cpu()
    assert int(out_of_range) == int(((ids < 0) | (ids >= E)).sum())  # what fused_moe's deferred check reads
    want_sorted, want_experts, padded = moe_align_block_size(ref_ids, block_m, E + bad_ids, expert_mask=ref_mask)
    n_real = int(padded) // block_m
    assert n_blocks >= n_real and sorted_ids.shape == (n_blocks * block_m,)
    np.testing.assert_array_equal(sorted_ids[: int(padded)].numpy(), np.asarray(want_sorted))
    np.testing.assert_array_equal(expert_ids[:n_real].numpy(), np.asarray(want_experts))
    assert (expert_ids[n_real:] == -1).all() and (sorted_ids[int(padded):] == M * topk).all()
