"""Planted-bug implementations: small torch/NumPy quantizers and MoE layers, each with one realistic
bug from the shared catalogue (``tests/mutants/bugs.py``: its name, field failure and the diagnosis
the oracle must give, a substring of its message). A correct one of each kind must pass. The MoE
layers are the emulated reference itself (torch in, torch out) with the bug planted, so that they
run in milliseconds; the same bugs planted in our own tree are the mutants (``tests/mutants``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import emulation as em
from moe_ref import moe_reference, select_activation_dtype

from ..mutants.bugs import BUGS, Bug


@dataclass(frozen=True)
class Planted:
    label: str  # a bug's name in tests/mutants/bugs.py, or a correct implementation's name
    kind: str  # quantize_mxfp4 | quantize_mxfp8 | quantize_fp8_per_token | quantize_fp8_per_tensor | fused_moe
    fn: object

    @property
    def bug(self) -> Bug | None:
        return None if self.label.startswith("correct") else BUGS[self.label]

    @property
    def name(self) -> str:
        return self.label

    @property
    def diagnosis(self) -> str:
        """The substring the oracle's message must contain ("" for the correct ones: they must pass)."""
        return self.bug.diagnosis if self.bug else ""


def _np(x):
    return x.detach().float().cpu().numpy()


def _t(*arrays):
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def _mxfp4(**kw):
    def fn(x, scale_mode="round_up"):
        return _t(*em.quantize_mxfp4(_np(x), scale_mode=kw.get("mode", scale_mode), ties=kw.get("ties", "even")))
    return fn


def _post(fn, edit):
    def wrapped(x, scale_mode="round_up"):
        q, s = fn(x, scale_mode=scale_mode)
        return edit(_np(x), q.numpy().copy(), s.numpy().copy())
    return wrapped


def _scale_plus_one(x, q, s):
    blocks = x.reshape(x.shape[0], -1, 32)
    s2 = np.where(s == 0xFF, s, np.minimum(s.astype(np.int32) + 1, 254)).astype(np.uint8)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = (blocks * np.ldexp(np.float32(1), 127 - s2.astype(np.int32))[..., None]).astype(np.float32)
    return _t(em.pack_fp4x2(em.encode(scaled, "e2m1").reshape(x.shape)), s2)


def _nibbles_swapped(x, q, s):
    return _t((q >> 4) | ((q & 0xF) << 4), s)


def _nan_block_scale_254(x, q, s):
    return _t(q, np.where(s == 0xFF, 0xFE, s).astype(np.uint8))


def _zero_block_scale_127(x, q, s):
    zero = np.abs(x.reshape(x.shape[0], -1, 32)).max(-1) == 0
    return _t(q, np.where(zero, 127, s).astype(np.uint8))


def _truncating(x, scale_mode="round_up"):
    x = _np(x)
    codes, s = em.quantize_mx(x, "e2m1", scale_mode=scale_mode)
    blocks = x.reshape(x.shape[0], -1, 32)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = blocks * np.ldexp(np.float32(1), 127 - s.astype(np.int32))[..., None]
    grid = em.decode(np.arange(8), "e2m1")
    mag = np.abs(scaled)
    idx = (np.searchsorted(grid, np.where(np.isfinite(mag), mag, 0), side="right") - 1).clip(0, 7)  # toward zero
    trunc = (idx | np.where(np.signbit(scaled), 8, 0)).reshape(x.shape).astype(np.uint8)
    finite = np.repeat(s != 0xFF, 32, axis=1)
    return _t(em.pack_fp4x2(np.where(finite, trunc, codes)), s)


def _mxfp8(**kw):
    def fn(x, scale_mode="round_up", fmt="e4m3fn"):
        return _t(*em.quantize_mxfp8(_np(x), fmt=fmt, scale_mode=kw.get("mode", scale_mode), ties=kw.get("ties", "even")))
    return fn


def _per_token(reciprocal=True):
    def fn(x, fmt="e4m3fn"):
        return _t(*em.quantize_fp8_per_token(_np(x), fmt=fmt, reciprocal=reciprocal))
    return fn


def _per_tensor(reciprocal=True):
    def fn(x, fmt="e4m3fn"):
        return _t(*em.quantize_fp8_per_tensor(_np(x), fmt=fmt, reciprocal=reciprocal))
    return fn


def _fake(ties="even", exponent_off=0):
    def fn(x, scale_mode="round_up"):
        codes, scale = em.quantize_mx(_np(x), "e2m1", scale_mode=scale_mode, ties=ties)
        if exponent_off:
            finite = scale != 0xFF
            scale = np.where(finite, np.clip(scale.astype(np.int32) + exponent_off, 0, 254), scale).astype(np.uint8)
            blocks = _np(x).reshape(x.shape[0], -1, 32) * np.ldexp(np.float32(1), 127 - scale.astype(np.int32))[..., None]
            codes = np.where(finite[..., None], em.encode(blocks.astype(np.float32), "e2m1"), 0).reshape(x.shape)
        return torch.from_numpy(em.dequantize_mx(codes, scale, "e2m1")).to(x.dtype)
    return fn


def _dequant(edit=None):
    def fn(codes_fp4x2, scale_e8m0):
        packed, scale = codes_fp4x2.numpy(), scale_e8m0.numpy()
        if edit == "nibbles":
            packed = (packed >> 4) | ((packed & 0xF) << 4)
        values = em.dequantize_mxfp4(packed, scale)
        rows = np.repeat(scale, 32, axis=1)
        if edit == "flush":
            values[rows == 0] = 0.0 * values[rows == 0]
        if edit == "inf":
            values[rows == 0xFF] = np.inf
        return torch.from_numpy(values)
    return fn


QUANTIZERS = [
    Planted("correct mxfp4", "quantize_mxfp4", _mxfp4()),
    Planted("ties away", "quantize_mxfp4", _mxfp4(ties="away")),
    Planted("ROUND_DOWN where ROUND_UP is asked", "quantize_mxfp4", _mxfp4(mode="round_down")),
    Planted("CEIL instead of ROUND_UP", "quantize_mxfp4", _mxfp4(mode="ceil")),
    Planted("scale exponent off by one", "quantize_mxfp4", _post(_mxfp4(), _scale_plus_one)),
    Planted("nibbles swapped", "quantize_mxfp4", _post(_mxfp4(), _nibbles_swapped)),
    Planted("NaN block scale 0xFE", "quantize_mxfp4", _post(_mxfp4(), _nan_block_scale_254)),
    Planted("zero block scale 127", "quantize_mxfp4", _post(_mxfp4(), _zero_block_scale_127)),
    Planted("truncation", "quantize_mxfp4", _truncating),
    Planted("correct mxfp8", "quantize_mxfp8", _mxfp8()),
    Planted("mxfp8 ties away", "quantize_mxfp8", _mxfp8(ties="away")),
    Planted("correct per-token fp8", "quantize_fp8_per_token", _per_token()),
    Planted("per-token x / s", "quantize_fp8_per_token", _per_token(reciprocal=False)),
    Planted("correct per-tensor fp8", "quantize_fp8_per_tensor", _per_tensor()),
    Planted("per-tensor x / s", "quantize_fp8_per_tensor", _per_tensor(reciprocal=False)),
    Planted("correct fake quant", "quantize_dequantize_mxfp4", _fake()),
    Planted("fake quant ties toward zero", "quantize_dequantize_mxfp4", _fake(ties="zero")),
    Planted("fake quant scale exponent off by one", "quantize_dequantize_mxfp4", _fake(exponent_off=1)),
    Planted("correct dequant", "dequantize_mxfp4", _dequant()),
    Planted("dequant flushes scale 0x00", "dequantize_mxfp4", _dequant("flush")),
    Planted("dequant 0xFF as inf", "dequantize_mxfp4", _dequant("inf")),
    Planted("dequant nibbles swapped", "dequantize_mxfp4", _dequant("nibbles")),
]


def _rows_in_storage(t) -> int:
    """How many rows of ``t``'s row stride its storage holds from its offset (what an unmasked load can reach
    without faulting; past the allocation a real kernel reads whatever lies there: here, nothing)."""
    room = t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()
    return (room - t.shape[-1]) // t.stride(-2) + 1


def _layer(bug=None):
    """A fused_moe-shaped layer: the emulated reference on the selector's path, with ``bug`` planted."""

    def fused_moe(hidden, w1, w1_scale, w2, w2_scale, topk_weights, topk_ids, *, gate_mode="separated", bias1=None,
                  bias2=None, scale_mode="round_up", arch="gfx950", env=None):
        M = hidden.shape[0]
        if bug == "hidden row stride assumed":  # a kernel with stride_am = H hard-coded
            hidden = torch.as_strided(hidden, hidden.shape, (hidden.shape[1], 1), hidden.storage_offset())
        env_seen = {} if bug == "env ignored" else env
        bound = 257 if bug == "bound <= instead of <" else None
        dtype = select_activation_dtype(M if bound is None or M != 256 else 255, arch=arch, gate_mode=gate_mode,
                                        env=env_seen).dtype
        if bug == "never quantizes":
            dtype = "bf16"
        kw = dict(gate_mode=gate_mode, bias1=bias1, bias2=bias2,
                  scale_mode="round_up" if bug == "scale mode ignored" else scale_mode)
        tw = topk_weights * topk_weights if bug == "routing weight applied twice" else topk_weights
        inter = "bf16" if bug == "intermediate not quantized" and dtype != "bf16" else None
        if bug == "gate and up swapped":
            half = w1.shape[1] // 2
            w1, w1_scale = torch.cat([w1[:, half:], w1[:, :half]], 1), torch.cat([w1_scale[:, half:], w1_scale[:, :half]], 1)
            if bias1 is not None:
                kw["bias1"] = torch.cat([bias1[:, half:], bias1[:, :half]], 1)
        conv = {"routing_weight_dtype": "bf16"} if bug == "routing weights in bf16" else {}
        conv.update({"slot_dtype": "bf16"} if bug == "slots summed in bf16" else {})
        out = moe_reference(hidden, w1, w1_scale, w2, w2_scale, tw, topk_ids, act_dtype=dtype, intermediate_dtype=inter,
                            **conv, **kw)
        if bug == "reads padding":  # a padded slot of weight 0 read from an uninitialised buffer: 0 * NaN = NaN
            pad = torch.empty(out.shape, dtype=torch.float32)
            out = (out.float() + 0.0 * pad).to(torch.bfloat16)
        if bug == "reads past the last token":  # an amax over the BLOCK_M=16 tile, rows past M unmasked
            tile = torch.as_strided(hidden, (min(-(-M // 16) * 16, _rows_in_storage(hidden)), hidden.shape[1]),
                                    hidden.stride(), hidden.storage_offset())
            out = (out.float() + 0.0 * tile.float().abs().amax()).to(torch.bfloat16)
        if bug == "writes its input":
            hidden.mul_(1.0)
            hidden[0, 0] = hidden[0, 0] + 1
        return out

    return fused_moe


LAYERS = [
    Planted("correct layer", "fused_moe", _layer()),
    Planted("env ignored", "fused_moe", _layer("env ignored")),
    Planted("bound <= instead of <", "fused_moe", _layer("bound <= instead of <")),
    Planted("never quantizes", "fused_moe", _layer("never quantizes")),
    Planted("intermediate not quantized", "fused_moe", _layer("intermediate not quantized")),
    Planted("routing weight applied twice", "fused_moe", _layer("routing weight applied twice")),
    Planted("gate and up swapped", "fused_moe", _layer("gate and up swapped")),
    Planted("reads padding", "fused_moe", _layer("reads padding")),
    Planted("routing weights in bf16", "fused_moe", _layer("routing weights in bf16")),
    Planted("slots summed in bf16", "fused_moe", _layer("slots summed in bf16")),
    Planted("scale mode ignored", "fused_moe", _layer("scale mode ignored")),
    Planted("writes its input", "fused_moe", _layer("writes its input")),
    Planted("hidden row stride assumed", "fused_moe", _layer("hidden row stride assumed")),
    Planted("reads past the last token", "fused_moe", _layer("reads past the last token")),
]


def _stage(bug=None):
    """A moe_gemm_stage: out[t, k] = hidden[t] . dequant(w[e]).T (x weight); ``bug`` planted."""

    def stage(hidden, w, w_scale, topk_weights, topk_ids, *, mul_routed_weight, out=None):
        M, topk = topk_ids.shape
        N, K = w.shape[1], hidden.shape[1]
        out = torch.empty((M, topk, N), dtype=torch.bfloat16) if out is None else out
        for e in torch.unique(topk_ids).tolist():
            ws = w_scale[e]
            if bug == "scale row read past its end":  # the last K tile (BLOCK_K=128) loads its scales unmasked
                n_s = -(-K // 128) * 4
                fits = ws.storage_offset() + (N - 1) * ws.stride(0) + n_s <= ws.untyped_storage().nbytes()
                ws = torch.as_strided(ws, (N, n_s), ws.stride(), ws.storage_offset()) if fits else ws
            scale = torch.from_numpy(np.repeat(em.decode(ws.numpy(), "e8m0"), 32, axis=1)).double()
            codes = torch.from_numpy(em.decode(em.unpack_fp4x2(w[e].numpy()), "e2m1")).double()
            a = torch.zeros((M, scale.shape[1]), dtype=torch.float64)
            a[:, :K] = hidden.double()  # the tile's K tail is zero-padded: 0 x (codes x scale)
            wd = torch.zeros_like(scale)
            wd[:, :K] = codes
            g = (a @ (wd * scale).T).float()
            t, k = torch.nonzero(topk_ids == e, as_tuple=True)
            slot = g[t] * topk_weights[t, k][:, None] if mul_routed_weight else g[t]
            out[t, k] = slot.to(torch.bfloat16)
        return out

    return stage


STAGES = [
    Planted("correct stage", "moe_gemm_stage", _stage()),
    Planted("scale row read past its end", "moe_gemm_stage", _stage("scale row read past its end")),
]
