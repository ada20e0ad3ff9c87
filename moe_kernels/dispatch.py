"""``fused_moe``: validate, ask the one selector, plan, and run the two grouped GEMMs.

The path is never re-derived here: :func:`plan_moe` calls ``moe_ref.select_activation_dtype`` with
the real M, the arch (detected, or passed) and the ``env`` mapping, and maps its dtype to a path:
bf16 -> a16w4, fp4x2 -> a4w4 (MXFP4 activations, ``quantize_mxfp4``), fp8 -> a8w4 (MXFP8 e4m3fn,
``quantize_mxfp8``). The semantics are ``moe_ref.moe_reference``'s (its module docstring).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton

from emulation.validate import check_mask_values
from moe_ref import (
    ACTIVATION_PATHS,
    GATED_ACTIVATIONS,
    ActivationPath,
    Decision,
    MoESpec,
    detect_arch,
    select_activation_dtype,
)

from . import _runtime
from ._decode import FOLDED_PTX
from ._numerics import SCALE_MODE_IDS, KernelFormat
from ._tuning import CONFIGS
from .moe_gemm import (
    WEIGHT_FORMAT,
    GatedActivation,
    _dequant_rows_kernel,
    _moe_stage1_kernel,
    _moe_stage2_kernel,
    _sum_slots_kernel,
)
from .prepared import PreparedWeights, left_weights
from .quant import quantize_mxfp4, quantize_mxfp8
from .routing import align_pairs

__all__ = ["MoEPlan", "MoERun", "plan_moe", "fused_moe"]

_ACT_IDS = {name: i for i, name in enumerate(GATED_ACTIVATIONS)}  # the kernels' ACT constexpr: swiglu 0, silu 1


def kernel_format(path: ActivationPath) -> KernelFormat:
    """The kernels' F constexpr for the path's MX element format (the bf16 path never reads it: any will do)."""
    return KernelFormat.of(path.element_format or ACTIVATION_PATHS["fp8"].element_format)


@dataclass(frozen=True)
class MoEPlan:
    """What ``fused_moe`` executes: the selector's decision, the path it names, the call's semantics
    (``moe_ref.MoESpec``, validated once), the shapes and the kernel configuration."""

    decision: Decision
    path: ActivationPath  # ACTIVATION_PATHS[decision.dtype]
    spec: MoESpec
    M: int
    E: int
    H: int
    I: int  # noqa: E741
    topk: int
    block_m: int
    block_n1: int
    block_n2: int
    block_k: int
    num_warps: int
    num_stages: int  # software-pipelining depth of the K loop
    w_left: bool  # weights prepared (``moe_kernels.prepared``) and the MMA's left operand (``moe_gemm.weight_mma``)

    @property
    def act_dtype(self) -> str:
        return self.path.act_dtype


@dataclass(frozen=True)
class MoERun:
    """A run's quantized intermediates (rows indexed by the flat pair index t * topk + k)."""

    plan: MoEPlan
    a_q: torch.Tensor  # stage-1 input: bf16 [M, H], fp4x2 [M, H/2] or e4m3fn codes [M, H]
    a_scale: torch.Tensor | None  # e8m0 [M, H/32]
    h_q: torch.Tensor  # stage-1 output: bf16 [M*topk, I], fp4x2 [.., I/2] or codes [.., I]
    h_scale: torch.Tensor | None  # e8m0 [M*topk, I/32]
    h_values: torch.Tensor  # stage-2 input, bf16 [M*topk, I]: the values of h_q (h_q itself on the bf16 path)
    y: torch.Tensor  # stage-2 output per pair, fp32 [M*topk, H] (after bias2 and routing weight)
    live: torch.Tensor  # bool [M, topk]: the pair's expert is in expert_mask


def _check(cond: bool, arg: str, msg) -> None:
    """Raise ValueError naming ``arg``; ``msg`` a string or a callable (formatted only on failure:
    validation runs on every call)."""
    if not cond:
        raise ValueError(f"{arg}: {msg() if callable(msg) else msg}")


def _validate(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, bias1, bias2, expert_mask):
    named = dict(hidden=hidden, w1=w1, w1_scale=w1_scale, w2=w2, w2_scale=w2_scale, topk_weights=topk_weights,
                 topk_ids=topk_ids, bias1=bias1, bias2=bias2, expert_mask=expert_mask)
    for name, t in named.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    devices = {str(t.device) for t in named.values() if t is not None}
    _check(len(devices) == 1, "inputs", lambda: f"all tensors must be on one device, got {sorted(devices)}")
    _check(hidden.dtype == torch.bfloat16 and hidden.dim() == 2, "hidden",
           lambda: f"expected a 2-D torch.bfloat16 tensor [M, H], got {hidden.dtype} {list(hidden.shape)}")
    for name in ("w1", "w1_scale", "w2", "w2_scale"):
        t = named[name]
        _check(t.dtype == torch.uint8 and t.dim() == 3, name,
               lambda t=t: f"expected a 3-D torch.uint8 tensor, got {t.dtype} {list(t.shape)}")
        _check(t.stride(-1) == 1, name, "the last dimension must be contiguous (public layout, packed along K)")
    M, H = hidden.shape
    E, two_i, h_half = w1.shape
    I = two_i // 2  # noqa: E741
    _check(H % 32 == 0, "hidden", lambda: f"H={H} is not a multiple of 32 (one e8m0 scale per 32 values)")
    _check(two_i % 2 == 0 and I % 32 == 0, "w1", lambda: f"2*I={two_i}: I must be a multiple of 32")
    _check(h_half * 2 == H, "w1", lambda: f"expected shape [E, 2*I, H/2={H // 2}], got {list(w1.shape)}")
    for name, shape in (("w1_scale", (E, 2 * I, H // 32)), ("w2", (E, H, I // 2)), ("w2_scale", (E, H, I // 32))):
        _check(tuple(named[name].shape) == shape, name,
               lambda shape=shape, t=named[name]: f"expected shape {list(shape)}, got {list(t.shape)}")
    _check(topk_ids.dim() == 2 and topk_ids.shape[0] == M, "topk_ids", lambda: f"expected shape [M={M}, topk], got {list(topk_ids.shape)}")
    _check(topk_ids.dtype in _ID_DTYPES, "topk_ids",
           lambda: f"expected an integer tensor (int8/16/32/64 or uint8), got {topk_ids.dtype}")
    _check(topk_weights.dtype == torch.float32 and topk_weights.shape == topk_ids.shape, "topk_weights",
           lambda: f"expected float32 {list(topk_ids.shape)}, got {topk_weights.dtype} {list(topk_weights.shape)}")
    for name, shape in (("bias1", (E, 2 * I)), ("bias2", (E, H))):
        b = named[name]
        if b is not None:
            _check(b.dtype == torch.float32 and tuple(b.shape) == shape, name,
                   lambda shape=shape, b=b: f"expected float32 {list(shape)}, got {b.dtype} {list(b.shape)}")
    if expert_mask is not None:
        _check(tuple(expert_mask.shape) == (E,), "expert_mask", lambda: f"expected shape [{E}], got {list(expert_mask.shape)}")
        if expert_mask.dtype != torch.bool and expert_mask.is_cuda and torch.cuda.is_current_stream_capturing():
            torch._assert_async(((expert_mask == 0) | (expert_mask == 1)).all(), "expert_mask: entries must be 0 or 1")
        elif expert_mask.dtype != torch.bool:  # [E] values: one small host sync, only for a numeric mask
            check_mask_values(expert_mask.detach().cpu().numpy())
    return M, E, H, I, topk_ids.shape[1]


_ID_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _check_ids(topk_ids, E, defer: bool) -> bool:
    """The expert ids' range check. On the host it is immediate; for a CUDA tensor it would be a host
    sync that stalls the caller until the GPU catches up, so with ``defer`` it is left to the
    alignment kernel, which counts the ids out of range as it drops them (``routing``): ``fused_moe``
    copies that count to pinned memory and reads it once the kernels are queued
    (``_PendingIdCheck``). Under CUDA-graph capture it is a device assert. True: left to the alignment."""
    if not topk_ids.numel():
        return False
    if topk_ids.is_cuda and torch.cuda.is_current_stream_capturing():  # no host sync in a CUDA graph
        torch._assert_async(((topk_ids >= 0) & (topk_ids < E)).all(), f"topk_ids: expert ids must lie in [0, {E - 1}]")
        return False
    if topk_ids.is_cuda and defer:
        return True
    _raise_if_ids_out_of_range(topk_ids, E)
    return False


def _raise_if_ids_out_of_range(topk_ids, E) -> None:
    lo, hi = torch.stack(torch.aminmax(topk_ids)).tolist()  # one host sync
    _check(lo >= 0 and hi < E, "topk_ids", lambda: f"expert ids must lie in [0, {E - 1}], got [{lo}, {hi}]")


@dataclass(frozen=True)
class _PendingIdCheck:
    """A range check queued on the device (``_check_ids``): ``finish`` waits for it alone."""

    topk_ids: torch.Tensor
    E: int
    out_of_range: torch.Tensor  # pinned int32, filled by the device
    done: torch.cuda.Event

    @classmethod
    def queue(cls, topk_ids, E, out_of_range_on_device) -> _PendingIdCheck:
        """Copy the alignment's count of bad ids to the host behind the kernels that make it."""
        count = torch.empty((), dtype=torch.int32, pin_memory=True)
        count.copy_(out_of_range_on_device, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return cls(topk_ids, E, count, done)

    def finish(self) -> None:
        self.done.synchronize()
        if bool(self.out_of_range):
            _raise_if_ids_out_of_range(self.topk_ids, self.E)


_CONFIG_KEYS = ("block_m", "block_n1", "block_n2", "block_k", "num_warps", "num_stages", "w_left")


def _backend() -> str:
    """configs.json's name for the GPU backend this process runs on ("hip" on ROCm, else "cuda")."""
    return "hip" if torch.version.hip else "cuda"


@functools.cache
def _ptx_decode(device: torch.device) -> bool:
    """Whether the GEMMs decode weights with their PTX (``moe_gemm.load_mxfp4_rows_bf16``): NVIDIA
    GPUs with bf16x2 arithmetic (sm_80 and later); the interpreter and ROCm use the portable decode."""
    return (not _runtime.INTERPRET and device.type == "cuda" and _backend() == "cuda"
            and torch.cuda.get_device_capability(device) >= (8, 0))


def _config(M: int, E: int, topk: int, interpret: bool = False, H: int | None = None,
            I: int | None = None, backend: str | None = None,  # noqa: E741
            left: bool = True) -> tuple[int, int, int, int, int, int, bool]:
    """(BLOCK_M, BLOCK_N stage 1, BLOCK_N stage 2, BLOCK_K, num_warps, num_stages, w_left) from ``configs.json``:
    the first "gpu" entry whose bucket holds M * topk / E pairs per expert and whose optional H, I and
    backend match (not ``left``: and that reads the public weights). Stage 1 holds two accumulators (gate
    and up), hence its narrower tile.
    """
    if interpret:
        return tuple(CONFIGS["interpreter"][k] for k in _CONFIG_KEYS)
    backend = backend or _backend()
    pairs_per_expert = max(1, M * topk // max(E, 1))
    for entry in CONFIGS["gpu"]:
        fits = entry["max_pairs_per_expert"] is None or pairs_per_expert <= entry["max_pairs_per_expert"]
        fits = fits and (left or not entry["w_left"])
        if fits and entry.get("H", H) == H and entry.get("I", I) == I and entry.get("backend", backend) == backend:
            return tuple(entry[k] for k in _CONFIG_KEYS)
    raise LookupError(f"configs.json has no gpu entry for M={M}, E={E}, topk={topk}, H={H}, I={I}, {backend}")


def config_name(config) -> str:
    """A tile configuration's short name (variant names, benchmark tables): bm16n32x32k128w4s3, and "L"
    where the weights are the MMA's left operand."""
    block_m, block_n1, block_n2, block_k, warps, stages, w_left = config
    return f"bm{block_m}n{block_n1}x{block_n2}k{block_k}w{warps}s{stages}" + ("L" if w_left else "")


def plan_moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, bias1=None, bias2=None,
             expert_mask=None, arch=None, env=None, prepared: PreparedWeights | None = None,
             spec: MoESpec | None = None, **options) -> MoEPlan:
    """Validate the call and return the plan ``fused_moe`` would execute (selector decision included)."""
    plan, _ = _plan(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, bias1=bias1, bias2=bias2,
                    expert_mask=expert_mask, arch=arch, env=env, prepared=prepared,
                    spec=MoESpec.from_options(spec, **options), defer_ids=False)
    return plan


def _plan(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, bias1, bias2, expert_mask, arch, env,
          prepared, spec: MoESpec, defer_ids: bool):
    """(plan, whether the ids' range check is left to the alignment) - ``plan_moe``, with the check
    deferred where ``defer_ids``. Tiles that read prepared weights only where they are held or made
    once (``prepared``, or an eager call): a CUDA graph capture of public weights reads them as they are."""
    _check(spec == spec.replace(intermediate_dtype=None, routing_weight_dtype="fp32", slot_dtype="fp32"), "spec",
           "the kernels compute the contract: intermediate_dtype None, routing_weight_dtype and slot_dtype 'fp32'")
    M, E, H, I, topk = _validate(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, bias1, bias2,
                                 expert_mask)
    if prepared is not None:
        if not isinstance(prepared, PreparedWeights):
            raise TypeError(f"prepared: expected moe_kernels.PreparedWeights (prepare_weights), got "
                            f"{type(prepared).__name__}")
        prepared.check(w1, w1_scale, w2, w2_scale)
    ids_deferred = _check_ids(topk_ids, E, defer_ids)
    decision = select_activation_dtype(M, arch=detect_arch() if arch is None else arch, weight_dtype="fp4x2",
                                       activation=spec.activation, gate_mode=spec.gate_mode, quant_type="per_1x32",
                                       env=env)
    capturing = hidden.is_cuda and torch.cuda.is_current_stream_capturing()
    config = _config(M, E, topk, _runtime.INTERPRET, H, I, left=prepared is not None or not capturing)
    return MoEPlan(decision, ACTIVATION_PATHS[decision.dtype], spec, M, E, H, I, topk, *config), ids_deferred


def _dequantize_rows(q: torch.Tensor, scale: torch.Tensor, path: ActivationPath, K: int) -> torch.Tensor:
    """Exact bf16 values [R, K] of MX rows (fp4x2 or e4m3 codes with e8m0 scales)."""
    R = q.shape[0]
    out = torch.empty((R, K), dtype=torch.bfloat16, device=q.device)
    if R:  # the interpreter pays per program: large tiles there
        block_r, block_k = (128, min(1024, triton.next_power_of_2(K))) if _runtime.INTERPRET else (16, 128)
        block_k = max(32, min(block_k, triton.next_power_of_2(K)))
        _dequant_rows_kernel[(triton.cdiv(R, block_r), triton.cdiv(K, block_k))](
            q, scale, out.view(torch.int16), R, K, q.stride(0), scale.stride(0), out.stride(0), KIND=path.kind,
            BLOCK_R=block_r, BLOCK_K=block_k, F=kernel_format(path), num_warps=4)
    return out


def _alloc(shape, dtype, device, poison):
    t = torch.empty(shape, dtype=dtype, device=device)
    if poison:
        t.fill_(float("nan") if dtype.is_floating_point else -1 if dtype.is_signed else 255)
    return t


@_runtime.interpreter_quiet
def fused_moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, bias1=None, bias2=None, expert_mask=None,
              arch=None, env=None, prepared: PreparedWeights | None = None, return_trace=False, poison=False,
              spec: MoESpec | None = None, **options):
    """MoE forward with MXFP4 weights -> [M, H] bf16 on the inputs' device.

    The call's options are a ``moe_ref.MoESpec`` (``spec``) or its fields as keywords (``options``:
    activation, gate_mode, alpha, limit, scale_mode, doweight_stage1; the oracle's conventions
    intermediate_dtype, routing_weight_dtype and slot_dtype must keep their contract values).
    The activation path is the one ``moe_ref.select_activation_dtype`` chooses (see :func:`plan_moe`).
    ``prepared``: the layer's weights held in the left-operand layout (``prepare_weights(w1, w1_scale,
    w2, w2_scale)``; same results, faster GEMMs on Hopper; what a CUDA graph should capture).
    ``return_trace=True`` returns ``(out, MoERun)`` with the quantized intermediates; ``poison=True``
    fills every buffer the kernels write with NaN / 0xFF first (a testing aid).
    """
    spec = MoESpec.from_options(spec, **options)
    plan, ids_deferred = _plan(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, bias1=bias1, bias2=bias2,
                               expert_mask=expert_mask, arch=arch, env=env, prepared=prepared, spec=spec,
                               defer_ids=True)
    pending = None  # the deferred range check, queued behind the alignment that counts the bad ids
    origin = hidden.device
    dev = _runtime.launch_device(hidden)
    to = lambda t: None if t is None else t.to(dev)  # noqa: E731
    hidden, w1, w1_scale, w2, w2_scale, topk_weights, ids_in = map(
        to, (hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids))
    # a user's slices and transposes are normal: the routing kernels read ids and weights as flat rows;
    # int64 ids are saturated into [-1, E] first, so that no bad id wraps into range as an int32
    wide = ids_in.dtype == torch.int64
    topk_ids = (ids_in.clamp(-1, plan.E) if wide else ids_in).to(torch.int32).contiguous()
    topk_weights = topk_weights.contiguous()
    bias1, bias2, expert_mask = to(bias1), to(bias2), to(expert_mask)
    M, E, H, I, topk = plan.M, plan.E, plan.H, plan.I, plan.topk  # noqa: E741
    # None: all live (ids clamped: out-of-range ones are dropped by the alignment and then reported)
    live = None if expert_mask is None else (expert_mask != 0)[topk_ids.to(torch.int64).clamp(0, E - 1)]

    path = plan.path
    if not path.is_mx:
        a_q, a_scale = hidden.contiguous(), None
    elif path.packed:
        a_q, a_scale = quantize_mxfp4(hidden, scale_mode=spec.scale_mode)
    else:
        a_q, a_scale = quantize_mxfp8(hidden, fmt=path.element_format, scale_mode=spec.scale_mode)
    n_pairs = M * topk
    h_vals = _alloc((n_pairs, I), torch.int16, dev, poison)  # the stage-2 input: bf16 values of the quantized h
    store_codes = return_trace and path.is_mx  # the MX codes and scales themselves, for the trace
    h_q = _alloc((n_pairs, I // 2 if path.packed else I), torch.uint8, dev, poison) if store_codes else None
    h_scale = _alloc((n_pairs, I // 32), torch.uint8, dev, poison) if store_codes else None
    y = _alloc((n_pairs, H), torch.float32, dev, poison)
    if n_pairs:
        sorted_ids, expert_ids, n_blocks, out_of_range = align_pairs(topk_ids, live, plan.block_m, E)
        if ids_deferred:
            pending = _PendingIdCheck.queue(ids_in, E, out_of_range)
        tw = topk_weights.contiguous().reshape(-1)
        dummy = tw  # stands for an absent bias (HAS_BIAS=False: never read)
        h_q_arg, h_scale_arg = (h_q, h_scale) if store_codes else (h_vals, h_vals)  # STORE_CODES=False: never written
        w1_k, s1_k, w2_k, s2_k, folded = (left_weights(w1, w1_scale, w2, w2_scale, prepared) if plan.w_left
                                          else (w1, w1_scale, w2, w2_scale, False))
        w1_k, s1_k, w2_k, s2_k = (t.to(dev) for t in (w1_k, s1_k, w2_k, s2_k))  # held host tensors on a GPU: a copy
        w_ptx = (FOLDED_PTX if folded else 1) if _ptx_decode(dev) else 0  # folded: prepared weights, bytes <= 128
        common = dict(INTERPRET=_runtime.INTERPRET, BLOCK_M=plan.block_m, BLOCK_K=plan.block_k,
                      num_warps=plan.num_warps, num_stages=plan.num_stages, W=WEIGHT_FORMAT, W_PTX=w_ptx,
                      W_LEFT=plan.w_left)
        if n_blocks:
            a_in = _dequantize_rows(a_q, a_scale, path, H) if path.is_mx else a_q
            grid1 = (n_blocks * triton.cdiv(I, plan.block_n1),)  # column tiles fastest (moe_gemm.program_block)
            _moe_stage1_kernel[grid1](
                a_in, w1_k, s1_k, dummy if bias1 is None else bias1.contiguous(), tw, sorted_ids,
                expert_ids, h_vals, h_q_arg, h_scale_arg, n_pairs, topk, H, I,
                a_in.stride(0), w1_k.stride(0), w1_k.stride(1), s1_k.stride(0),
                s1_k.stride(1), h_vals.stride(0), h_q_arg.stride(0), h_scale_arg.stride(0),
                OUT_KIND=path.kind, STORE_CODES=store_codes, INTERLEAVED=spec.gate_mode == "interleave",
                ACT=GatedActivation(_ACT_IDS[spec.activation], spec.alpha, spec.limit), HAS_BIAS=bias1 is not None,
                DOWEIGHT=spec.doweight_stage1, MODE=SCALE_MODE_IDS[spec.scale_mode], BLOCK_N=plan.block_n1,
                F=kernel_format(path), **common)
            grid2 = (n_blocks * triton.cdiv(H, plan.block_n2),)
            h_in = h_vals.view(torch.bfloat16)
            _moe_stage2_kernel[grid2](
                h_in, w2_k, s2_k, dummy if bias2 is None else bias2.contiguous(), tw, sorted_ids,
                expert_ids, y, n_pairs, H, I,
                h_in.stride(0), w2_k.stride(0), w2_k.stride(1), s2_k.stride(0),
                s2_k.stride(1), y.stride(0),
                HAS_BIAS=bias2 is not None, WEIGHT_HERE=not spec.doweight_stage1, BLOCK_N=plan.block_n2, **common)
    out = torch.empty((M, H), dtype=torch.bfloat16, device=dev)
    if M:
        block_t, block_h = (64, 512) if _runtime.INTERPRET else (4, 256)
        _sum_slots_kernel[(triton.cdiv(M, block_t), triton.cdiv(H, block_h))](
            y, y if live is None else live, out.view(torch.int16), M, H, topk, HAS_MASK=live is not None,
            BLOCK_T=block_t, BLOCK_H=block_h, num_warps=4)
    if pending is not None:
        pending.finish()
    out = out.to(origin)
    if return_trace:
        h_view = h_q if path.is_mx else h_vals.view(torch.bfloat16)
        live = torch.ones((M, topk), dtype=torch.bool, device=dev) if live is None else live
        return out, MoERun(plan, a_q, a_scale, h_view, h_scale, h_vals.view(torch.bfloat16), y, live)
    return out
