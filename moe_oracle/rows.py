"""The report's rows, typed: each field once, with what it holds. Rows stay plain dicts (JSON-ready,
read by name by the report, the JSON/JUnit outputs and the pytest plugin); these ``TypedDict``s are
their one definition (tests check every row the engine makes against them)."""

from __future__ import annotations

from typing import TypedDict

__all__ = ["Comparison", "CaseColumns", "LayerRow", "ErrorRow"]


class Comparison(TypedDict):
    """An output against its emulated reference, the float64 ideal and the bound (``compare_output``)."""

    max_err_ref: float  # max |out - emulated reference|
    rel_err_ref: float  # the same over max |ideal|
    max_err_ideal: float  # max |out - float64 ideal|
    rel_err_ideal: float
    quant_cost_rel: float  # max |reference - ideal| / max |ideal|: what the path's quantization alone costs
    bound_max: float  # the largest element of the bound
    bound_at_worst: float  # the bound at the element of the largest err / bound
    err_at_worst: float  # the error there
    at_rounding_step: bool  # margin exactly 1 with an error: the one bf16 step the bound grants there
    margin: float  # max(err / bound); PASS needs <= 1 (inf: an error where the bound is 0)
    within_tolerance: bool  # margin <= 1
    nan_out: int  # NaN outputs
    inf_out: int  # infinite outputs
    n_outside: int  # outputs outside the bound
    max_err_ulps: float  # max |out - reference| in bf16 ulps of the reference


class CaseColumns(TypedDict):
    """A layer case's parameters (``moe_oracle.cases.LayerCase.columns``)."""

    E: int
    H: int
    I: int  # noqa: E741
    topk: int
    M: int
    arch: str  # the arch profile the selector was asked with
    env: dict  # the environment it was asked with
    gate_mode: str
    scale_mode: str


class LayerRow(CaseColumns, Comparison):
    """One checked case of a layer (``moe_oracle.layer.check_layer_case``)."""

    impl: str
    path: str  # the judged path's name (a16w4 / a4w4 / a8w4)
    act_dtype: str  # its act dtype
    reported_act_dtype: str | None  # what the implementation said it ran (None: it did not say)
    rule: int  # the selector's rule that decided
    reason: str  # the selector's reason
    bytes_equal: int | None  # stage-1 quantized input bytes equal to the emulation's (None: not exposed)
    bytes_total: int | None
    poison_sensitive: bool  # its output changed between runs over NaN-filled and zeroed memory
    kernel_seconds: float  # wall time of its call
    verdict: str  # PASS / FAIL
    diagnosis: list  # the notes: what it matches, what it read or wrote that it should not


class ErrorRow(CaseColumns):
    """A case that could not be checked: a FAIL naming why (``moe_oracle.engine.error_row``)."""

    impl: str
    verdict: str  # FAIL
    error: str
    traceback: str
