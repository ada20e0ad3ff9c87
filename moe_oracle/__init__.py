"""moe-oracle's engine: check any implementation of MXFP4 MoE kernels against the emulation and the
reference (quantizer bytes, MoE outputs within the derived bound, the activation-path choice), with a
diagnosis of what differs. ``moe-oracle verify`` is its CLI; ``moe_oracle.pytest_plugin`` its pytest
fixtures. Importing it needs NumPy (and torch to run a check), never our Triton kernels."""

from .api import QuantizerCheck, assert_conforms, check_moe, check_quantizer
from .config import VerifyConfig, load_config
from .implementation import Implementation, LayerResult, Quantizer, as_implementation

__all__ = ["Implementation", "LayerResult", "Quantizer", "QuantizerCheck", "VerifyConfig", "as_implementation",
           "assert_conforms", "check_moe", "check_quantizer", "load_config"]
