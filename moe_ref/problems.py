"""Random MoE problems in the public layout (shared by tests, the conformance report and benchmarks)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import numpy as np

import emulation as em
from emulation.validate import check_bool, check_finite_number, check_int

from .routing import softmax_topk

__all__ = ["MoEProblem", "random_moe_problem", "random_routed_tokens"]


@dataclass(frozen=True)
class MoEProblem:
    hidden: np.ndarray  # [M, H] float32 holding bf16 values
    w1: np.ndarray
    w1_scale: np.ndarray
    w2: np.ndarray
    w2_scale: np.ndarray
    topk_weights: np.ndarray
    topk_ids: np.ndarray
    bias1: np.ndarray | None = None
    bias2: np.ndarray | None = None

    def args(self):
        return (self.hidden, self.w1, self.w1_scale, self.w2, self.w2_scale, self.topk_weights, self.topk_ids)

    def biases(self) -> dict:
        return {"bias1": self.bias1, "bias2": self.bias2}

    def to_torch(self, device="cpu") -> MoEProblem:
        """The same problem as torch tensors (hidden as bf16, ids as int32) on ``device``; read-only arrays
        (a frozen layer) are copied for a CPU device (the tensors must not alias them), not for a GPU."""
        import torch

        on_cpu = torch.device(device).type == "cpu"

        def conv(name, v):
            if v is None:
                return None
            v = np.array(v) if on_cpu and not v.flags.writeable else np.ascontiguousarray(v)
            with warnings.catch_warnings():  # a read-only array on its way to the device: nothing writes it
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(v)
            if name == "hidden":
                t = t.to(torch.bfloat16)
            elif name == "topk_ids":
                t = t.to(torch.int32)
            return t.to(device)

        return MoEProblem(**{f.name: conv(f.name, getattr(self, f.name)) for f in fields(self)})


_E2M1_RMS = float(np.sqrt(np.mean(em.decode(np.arange(8), "e2m1").astype(np.float64) ** 2)))


def _random_mxfp4(rng: np.random.Generator, shape, rms: float):
    """Packed fp4x2 [.., K/2] and e8m0 scales [.., K/32] whose values have about the given rms."""
    *lead, k = shape
    packed = rng.integers(0, 256, size=(*lead, k // 2), dtype=np.uint8)
    center = int(np.round(np.log2(rms / _E2M1_RMS))) + 127
    scale = (center + rng.integers(-1, 2, size=(*lead, k // 32))).astype(np.uint8)
    return packed, scale


def random_moe_problem(rng: np.random.Generator, *, M: int, E: int, H: int, I: int, topk: int,  # noqa: E741
                       with_bias: bool = False, weight_std: float = 1.0, hidden_std: float = 1.0,
                       outlier_rows: float = 0.0) -> MoEProblem:
    """Gaussian hidden (rounded to bf16); MXFP4 weights drawn directly as uniform e2m1 codes with e8m0
    block scales around weight_std / (rms code value * sqrt(fan-in)) (+-1 binade per block), so that
    gpt-oss-sized problems are drawn in moments; routing from random logits through softmax top-k.

    ``outlier_rows``: the fraction of tokens whose hidden row is 4x larger (activation outliers), so
    that gate and up reach past the SwiGLU limit (at std 1 they stay below 7); drawn last, so 0 keeps
    the streams of earlier releases."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    M, E, topk = check_int(M, "M", minimum=0), check_int(E, "E", minimum=1), check_int(topk, "topk", minimum=1)
    H, I = check_int(H, "H", minimum=32, multiple_of=32), check_int(I, "I", minimum=32, multiple_of=32)  # noqa: E741
    if topk > E:
        raise ValueError(f"topk={topk} is not valid for E={E} experts; expected topk <= E")
    check_bool(with_bias, "with_bias")
    if not 0.0 <= check_finite_number(outlier_rows, "outlier_rows") <= 1.0:
        raise ValueError(f"outlier_rows={outlier_rows!r} is not valid; expected a fraction in [0, 1]")
    hidden = _hidden(rng, M, H, hidden_std)
    w1, w1_scale = _random_mxfp4(rng, (E, 2 * I, H), weight_std / np.sqrt(H))
    w2, w2_scale = _random_mxfp4(rng, (E, H, I), weight_std / np.sqrt(I))
    weights, ids = softmax_topk(rng.standard_normal((M, E)).astype(np.float32), topk)
    b1 = (rng.standard_normal((E, 2 * I)) * 0.1).astype(np.float32) if with_bias else None
    b2 = (rng.standard_normal((E, H)) * 0.1).astype(np.float32) if with_bias else None
    return MoEProblem(_outliers(rng, hidden, outlier_rows), w1, w1_scale, w2, w2_scale, weights, ids, b1, b2)


def random_routed_tokens(rng: np.random.Generator, *, M: int, E: int, H: int, topk: int, hidden_std: float = 1.0,
                         outlier_rows: float = 0.0, zero_weight_rows: float = 0.0):
    """(hidden [M, H], topk_weights, topk_ids) drawn as :func:`random_moe_problem` draws them, without the
    weights: tokens for a layer drawn once (a real model's layer is gigabytes; its M sweep shares it).
    ``zero_weight_rows``: that fraction of the tokens get routing weight 0 on every slot (a serving
    engine's padded tokens: routed, computed, weighted to nothing), drawn after everything else."""
    M, E, topk = check_int(M, "M", minimum=0), check_int(E, "E", minimum=1), check_int(topk, "topk", minimum=1)
    H = check_int(H, "H", minimum=32, multiple_of=32)
    if topk > E:
        raise ValueError(f"topk={topk} is not valid for E={E} experts; expected topk <= E")
    if not 0.0 <= check_finite_number(outlier_rows, "outlier_rows") <= 1.0:
        raise ValueError(f"outlier_rows={outlier_rows!r} is not valid; expected a fraction in [0, 1]")
    if not 0.0 <= check_finite_number(zero_weight_rows, "zero_weight_rows") <= 1.0:
        raise ValueError(f"zero_weight_rows={zero_weight_rows!r} is not valid; expected a fraction in [0, 1]")
    hidden = _hidden(rng, M, H, hidden_std)
    weights, ids = softmax_topk(rng.standard_normal((M, E)).astype(np.float32), topk)
    hidden = _outliers(rng, hidden, outlier_rows)
    if zero_weight_rows:
        weights[rng.random(M) < zero_weight_rows] = 0.0
    return hidden, weights, ids


def _hidden(rng, M: int, H: int, std: float) -> np.ndarray:
    return em.round_to_bf16((rng.standard_normal((M, H)) * std).astype(np.float32))


def _outliers(rng, hidden: np.ndarray, fraction: float) -> np.ndarray:
    """``fraction`` of the rows 4x larger (exact: a power of two), drawn last."""
    if not fraction:
        return hidden
    big = rng.random(hidden.shape[0]) < fraction
    return np.where(big[:, None], hidden * np.float32(4), hidden).astype(np.float32)
