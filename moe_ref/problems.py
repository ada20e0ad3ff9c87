"""Random MoE problems in the public layout (shared by tests, the conformance report and benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

import emulation as em

from .routing import softmax_topk

__all__ = ["MoEProblem", "random_moe_problem"]


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
        """The same problem as torch tensors (hidden as bf16, ids as int32) on ``device``."""
        import torch

        def conv(name, v):
            if v is None:
                return None
            t = torch.from_numpy(np.ascontiguousarray(v))
            if name == "hidden":
                t = t.to(torch.bfloat16)
            elif name == "topk_ids":
                t = t.to(torch.int32)
            return t.to(device)

        return MoEProblem(**{f.name: conv(f.name, getattr(self, f.name)) for f in fields(self)})


def random_moe_problem(rng: np.random.Generator, *, M: int, E: int, H: int, I: int, topk: int,  # noqa: E741
                       with_bias: bool = False, weight_std: float = 1.0, hidden_std: float = 1.0) -> MoEProblem:
    """Gaussian hidden (rounded to bf16), MXFP4-quantized Gaussian weights scaled by 1/sqrt(fan-in),
    routing from random logits through softmax top-k (renormalised)."""
    hidden = em.round_to_bf16((rng.standard_normal((M, H)) * hidden_std).astype(np.float32))
    w1f = (rng.standard_normal((E, 2 * I, H)) * weight_std / np.sqrt(H)).astype(np.float32)
    w2f = (rng.standard_normal((E, H, I)) * weight_std / np.sqrt(I)).astype(np.float32)
    w1, w1_scale = em.quantize_mxfp4(w1f)
    w2, w2_scale = em.quantize_mxfp4(w2f)
    weights, ids = softmax_topk(rng.standard_normal((M, E)).astype(np.float32), topk)
    b1 = (rng.standard_normal((E, 2 * I)) * 0.1).astype(np.float32) if with_bias else None
    b2 = (rng.standard_normal((E, H)) * 0.1).astype(np.float32) if with_bias else None
    return MoEProblem(hidden, w1, w1_scale, w2, w2_scale, weights, ids, b1, b2)
