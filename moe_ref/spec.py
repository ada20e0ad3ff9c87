"""What one MoE call computes, apart from its tensors and its activation path: one frozen record.

``MoESpec`` holds the call's options (the gated activation, its gate layout, alpha and limit, the MX
scale mode, where the routing weight is applied) and the oracle's conventions (how the intermediate,
the routing weights and the slot results are rounded). It is validated once, here, and read by the
reference (``moe_ref.reference``), the bounded reference, the tolerance (``moe_ref.tolerance``) and the
kernels' plan (``moe_kernels.dispatch``); their keyword arguments are front doors that build it
(``MoESpec.from_options``). The activation path is the other half of a call (``moe_ref.paths``): the
reference is given it, the kernels ask the selector for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import emulation as em
from emulation.validate import check_bool

from .activation import GATED_ACTIVATIONS, SWIGLU_ALPHA, SWIGLU_LIMIT, check_swiglu_params
from .paths import ACTIVATION_PATHS
from .selector import ACTIVATIONS, GATE_MODES

__all__ = ["MoESpec", "INTERMEDIATE_DTYPES", "ROUNDING_DTYPES"]

INTERMEDIATE_DTYPES = (*ACTIVATION_PATHS, "fp32")  # step 4's quantization: a path's, or none (fp32)
ROUNDING_DTYPES = ("fp32", "bf16")  # routing weights and slot results: kept fp32 (the contract) or rounded


@dataclass(frozen=True)
class MoESpec:
    """A call's semantics. ``intermediate_dtype`` None: the path's own quantization of the stage-2 input;
    ``routing_weight_dtype`` / ``slot_dtype`` "bf16": conventions of implementations that round them
    (the oracle's diagnoses), "fp32" the contract. Constructing one validates it (ValueError / TypeError
    naming the field); ``scale_mode`` is normalised to ``emulation.ScaleMode``, alpha and limit to float."""

    activation: str = "swiglu"
    gate_mode: str = "separated"
    alpha: float = SWIGLU_ALPHA
    limit: float = SWIGLU_LIMIT
    scale_mode: em.ScaleMode = em.ScaleMode.ROUND_UP
    doweight_stage1: bool = False
    intermediate_dtype: str | None = None
    routing_weight_dtype: str = "fp32"
    slot_dtype: str = "fp32"

    def __post_init__(self):
        if self.activation not in GATED_ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not computed by the reference or the kernels; "
                             f"expected one of {list(GATED_ACTIVATIONS)} (the selector's rule also knows "
                             f"{sorted(set(ACTIVATIONS) - set(GATED_ACTIVATIONS))})")
        if self.gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode={self.gate_mode!r} is not valid; expected one of {list(GATE_MODES)}")
        alpha, limit = check_swiglu_params(self.alpha, self.limit)
        check_bool(self.doweight_stage1, "doweight_stage1")
        if self.intermediate_dtype is not None and self.intermediate_dtype not in INTERMEDIATE_DTYPES:
            raise ValueError(f"intermediate_dtype={self.intermediate_dtype!r} is not valid; expected None or one of "
                             f"{list(INTERMEDIATE_DTYPES)}")
        for name in ("routing_weight_dtype", "slot_dtype"):
            if getattr(self, name) not in ROUNDING_DTYPES:
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; expected one of {list(ROUNDING_DTYPES)}")
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "scale_mode", em.ScaleMode.parse(self.scale_mode))

    @classmethod
    def from_options(cls, spec: MoESpec | None = None, /, **options) -> MoESpec:
        """The front doors' record: ``spec`` itself, or one built from keyword ``options`` (not both);
        an unknown keyword is a TypeError naming it and the known ones."""
        unknown = sorted(set(options) - set(FIELDS))
        if unknown:
            raise TypeError(f"unexpected option(s) {unknown}; a call's options are {list(FIELDS)}")
        if spec is None:
            return cls(**options)
        if not isinstance(spec, cls):
            raise TypeError(f"spec: expected a MoESpec, got {type(spec).__name__}")
        if options:
            raise TypeError(f"spec and keyword options {sorted(options)} given together; pass one "
                            "(spec.replace(...) changes a spec)")
        return spec

    def replace(self, **changes) -> MoESpec:
        return dataclasses.replace(self, **changes)

    def intermediate(self, act_dtype: str | None) -> str | None:
        """Step 4's quantization on the path ``act_dtype``: ``intermediate_dtype``, else the path's own."""
        return act_dtype if self.intermediate_dtype is None else self.intermediate_dtype


FIELDS = tuple(f.name for f in dataclasses.fields(MoESpec))
