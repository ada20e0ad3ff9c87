"""OpenAI's triton_kernels (what vLLM runs gpt-oss on): ``downcast_to_mxfp`` as MXFP4/MXFP8 quantizers
and ``matmul_ogs`` with fused SwiGLU as a whole MoE layer (bf16 activations, MXFP4 weights in its
Hopper value/scale layouts), in the contract's signatures and layouts.

Where to find it: ``MOE_ORACLE_TRITON_KERNELS_PATH`` (a folder holding ``triton_kernels/``, or the vLLM
wheel, whose ``vllm/third_party/triton_kernels`` is extracted once), else an importable
``triton_kernels``, else the copy in an installed vLLM. Tested with the copy vendored in the vLLM 0.33.0 wheel, on an H200 (triton 3.6);
under the CPU interpreter of triton 3.9 it does not run (its kernels raise there).
"""

from __future__ import annotations

import functools
import sys

from moe_ref import SWIGLU_ALPHA, SWIGLU_LIMIT

from ..implementation import Implementation, LayerResult, Quantizer
from ._loader import PeerUnavailable, locate

__all__ = ["implementation", "prepare_layer", "package_root", "TESTED_VERSION", "PeerUnavailable"]

TESTED_VERSION = "triton_kernels vendored in vllm 0.33.0"


@functools.cache
def package_root():
    """The folder holding ``triton_kernels/``, put on ``sys.path`` (its files import ``triton_kernels.*``):
    ``MOE_ORACLE_TRITON_KERNELS_PATH`` (a folder, or the vLLM wheel), an importable triton_kernels, else
    the copy in an installed vLLM."""
    import os

    if os.environ.get("MOE_ORACLE_TRITON_KERNELS_PATH", "").endswith(".whl"):
        root = locate("triton_kernels", "MOE_ORACLE_TRITON_KERNELS_PATH", inner="vllm/third_party")
    else:
        try:
            root = locate("triton_kernels", "MOE_ORACLE_TRITON_KERNELS_PATH")
        except PeerUnavailable:
            try:
                root = locate("vllm", "MOE_ORACLE_VLLM_PATH") / "vllm" / "third_party"
            except PeerUnavailable:
                raise PeerUnavailable("triton_kernels is not installed, nor vLLM (which vendors it); set "
                                      "MOE_ORACLE_TRITON_KERNELS_PATH") from None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


@functools.cache
def _modules():
    import importlib

    root = package_root()
    try:
        names = ("numerics_details.mxfp", "matmul_ogs", "routing", "tensor", "tensor_details.layout", "numerics",
                 "swiglu", "matmul_ogs_details.opt_flags")
        return {n: importlib.import_module(f"triton_kernels.{n}") for n in names}
    except Exception as exc:  # noqa: BLE001
        raise PeerUnavailable(f"cannot import triton_kernels from {root}: {type(exc).__name__}: {exc}") from exc


def _interleaved(w, gate_mode):
    """Rows of a [E, 2I, ...] stage-1 tensor in triton_kernels' layout: gate and up interleaved."""
    import torch

    if gate_mode == "interleave" or w is None:
        return w
    half = w.shape[1] // 2
    return torch.stack([w[:, :half], w[:, half:]], dim=2).reshape(w.shape)


def _swizzled(m, w, w_scale):
    """Our [E, N, K/2] fp4x2 + [E, N, K/32] e8m0 -> its Hopper value and scale layouts (K on dim 1)."""
    import torch

    tensor, layout = m["tensor"], m["tensor_details.layout"]
    value_layout, value_opts = layout.make_default_matmul_mxfp4_w_layout(mx_axis=1)
    scale_layout, scale_opts = layout.make_default_matmul_mxfp4_w_scale_layout(mx_axis=1, num_warps=8)
    if torch.cuda.get_device_capability()[0] == 9:
        m["matmul_ogs_details.opt_flags"].update_opt_flags_constraints({"split_k": 1})
        w_scale = torch.nn.functional.pad(w_scale, (0, -w_scale.shape[-1] % 4))  # K/32 to 0 mod 4 (as vLLM does)
    w = tensor.convert_layout(tensor.wrap_torch_tensor(w.transpose(-2, -1), dtype=tensor.FP4), value_layout, **value_opts)
    s = tensor.convert_layout(tensor.wrap_torch_tensor(w_scale.transpose(-2, -1)), scale_layout, **scale_opts)
    return w, s


def _routing(m, topk_ids, topk_weights, E):
    import torch

    M, topk = topk_ids.shape
    words = (E + 31) // 32
    bits = torch.zeros((M, words * 32), dtype=torch.bool, device=topk_ids.device)
    bits.scatter_(1, topk_ids.long(), True)
    packed = (bits.view(M, words, 32).to(torch.int64) << torch.arange(32, device=bits.device)).sum(-1)
    packed = packed.to(torch.uint32) if hasattr(torch, "uint32") else packed.to(torch.int32)
    bitmatrix = m["tensor"].Bitmatrix(packed, shape=[M, words * 32], shape_max=[M, None], scratchpad=None)
    return m["routing"].routing_from_bitmatrix(bitmatrix, topk_weights, topk_ids.to(torch.int16), E, topk)


def prepare_layer(w1, w1_scale, w2, w2_scale, *, gate_mode="separated", bias1=None, bias2=None):
    """The layer in its layouts, done once (the swizzle is a load-time step in vLLM too): a callable
    ``(hidden, topk_weights, topk_ids, alpha=, limit=) -> out [M, H] bf16`` that runs its routing and its
    two ``matmul_ogs`` (what ``benchmarks/bench_moe.py`` times)."""
    m = _modules()
    import torch

    mo, numerics = m["matmul_ogs"], m["numerics"]
    E, two_i, _ = w1.shape
    H = w2.shape[1]
    w1v, w1s = _swizzled(m, _interleaved(w1, gate_mode), _interleaved(w1_scale, gate_mode))
    w2v, w2s = _swizzled(m, w2, w2_scale)
    pc1 = mo.PrecisionConfig(weight_scale=w1s, flex_ctx=mo.FlexCtx(rhs_data=numerics.InFlexData()))
    pc2 = mo.PrecisionConfig(weight_scale=w2s, flex_ctx=mo.FlexCtx(rhs_data=numerics.InFlexData()))
    b1 = _interleaved(bias1, gate_mode)

    def run(hidden, topk_weights, topk_ids, *, alpha=SWIGLU_ALPHA, limit=SWIGLU_LIMIT):
        M, topk = topk_ids.shape
        routing_data, gather, scatter = _routing(m, topk_ids, topk_weights.float(), E)
        act = mo.FusedActivation(mo.FnSpecs("swiglu", m["swiglu"].swiglu_fn, ("alpha", "limit")), (alpha, limit), 2)
        inter = torch.empty((1, M * topk, two_i // 2), dtype=torch.bfloat16, device=hidden.device)
        out = torch.empty((1, M, H), dtype=torch.bfloat16, device=hidden.device)
        mo.matmul_ogs(hidden, w1v, b1, routing_data, gather_indx=gather, precision_config=pc1, fused_activation=act,
                      y=inter)
        mo.matmul_ogs(inter.view(M * topk, two_i // 2), w2v, bias2, routing_data, scatter_indx=scatter,
                      precision_config=pc2, gammas=routing_data.gate_scal, y=out)
        return out.view(M, H)

    return run


def _probe_interpreter(mxfp) -> None:
    """Under the Triton interpreter its kernels may not run: try one, and say what it did (one line)."""
    from ..interpreter import interpreter_active

    if not interpreter_active():
        return
    import torch

    try:
        mxfp.downcast_to_mxfp(torch.ones((32, 32), dtype=torch.bfloat16), torch.uint8, axis=1)
    except Exception as exc:  # noqa: BLE001 - measured here, reported in one line
        raise PeerUnavailable(f"its Triton kernels do not run under this triton interpreter (downcast_to_mxfp raised "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}); its torch references are "
                              f"--impl triton-kernels-torch") from None


def implementation() -> Implementation:
    m = _modules()
    import torch

    mxfp = m["numerics_details.mxfp"]
    _probe_interpreter(mxfp)

    def _mode(scale_mode):
        return {"round_up": mxfp.DequantScaleRoundingMode.ROUND_UP,
                "round_down": mxfp.DequantScaleRoundingMode.ROUND_DOWN}[scale_mode]

    def downcast_mxfp4(x, scale_mode="round_up"):
        return mxfp.downcast_to_mxfp(x, torch.uint8, axis=1, DEQUANT_SCALE_ROUNDING_MODE=_mode(scale_mode))

    def downcast_mxfp8(x, scale_mode="round_up"):
        return mxfp.downcast_to_mxfp(x, torch.float8_e4m3fn, axis=1, DEQUANT_SCALE_ROUNDING_MODE=_mode(scale_mode))

    def fused_moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, gate_mode="separated", bias1=None,
                  bias2=None, alpha=SWIGLU_ALPHA, limit=SWIGLU_LIMIT):
        layer = prepare_layer(w1, w1_scale, w2, w2_scale, gate_mode=gate_mode, bias1=bias1, bias2=bias2)
        return LayerResult(layer(hidden, topk_weights, topk_ids, alpha=alpha, limit=limit), act_dtype="bf16")

    return Implementation(
        "triton-kernels", fused_moe=fused_moe, version=TESTED_VERSION, fixed_path="bf16",
        note=f"OpenAI triton_kernels ({TESTED_VERSION}): matmul_ogs + fused SwiGLU, bf16 activations (a16w4) only",
        extra_quantizers=(
            Quantizer("downcast_to_mxfp[fp4]", "quantize_mxfp4", downcast_mxfp4, ("round_up", "round_down"),
                      input_dtypes=("bfloat16",)),
            Quantizer("downcast_to_mxfp[fp8]", "quantize_mxfp8", downcast_mxfp8, ("round_up", "round_down"),
                      input_dtypes=("bfloat16",)),
        ),
    )
