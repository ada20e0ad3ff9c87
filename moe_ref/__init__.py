"""The one activation-dtype selector and the reference MoE (float64 ideal and emulated-quantized)."""

from .activation import (
    GATED_ACTIVATIONS,
    SWIGLU_ALPHA,
    SWIGLU_LIMIT,
    check_swiglu_params,
    gated_activation,
    split_gate_up,
)
from .paths import ACTIVATION_PATHS, ActivationPath, activation_path
from .problems import MoEProblem, random_moe_problem
from .reference import MoETrace, MoEWeights, moe_reference, quantize_activation
from .routing import moe_align_block_size, softmax_topk
from .selector import (
    ACT_DTYPES,
    ACTIVATIONS,
    DECISION_TABLE,
    GATE_MODES,
    QUANT_TYPES,
    WEIGHT_DTYPES,
    Decision,
    detect_arch,
    format_decision_table,
    select_activation_dtype,
)
from .spec import MoESpec
from .tolerance import kernel_tolerance

__all__ = [
    "ACTIVATION_PATHS", "ActivationPath", "activation_path", "ACT_DTYPES", "ACTIVATIONS", "DECISION_TABLE", "Decision", "GATE_MODES", "MoEProblem", "MoESpec", "MoETrace",
    "MoEWeights", "QUANT_TYPES", "GATED_ACTIVATIONS", "check_swiglu_params", "SWIGLU_ALPHA", "SWIGLU_LIMIT", "WEIGHT_DTYPES", "detect_arch",
    "format_decision_table", "gated_activation", "kernel_tolerance", "moe_align_block_size", "moe_reference",
    "quantize_activation", "random_moe_problem", "select_activation_dtype", "softmax_topk", "split_gate_up",
]
