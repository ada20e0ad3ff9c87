"""moe-oracle's engine: check any implementation of MXFP4 MoE kernels against the emulation and the
reference (quantizer bytes, MoE outputs within the derived bound, the activation-path choice), with a
diagnosis of what differs. ``moe-oracle verify`` is its CLI; ``moe_oracle.pytest_plugin`` its pytest
fixtures. Importing it needs NumPy (and torch to run a check), never our Triton kernels."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("moe-oracle")
except PackageNotFoundError:  # run from a checkout that is not installed
    __version__ = "0+unknown"

from .api import MoECheck, QuantizerCheck, assert_conforms, check_moe, check_quantizer  # noqa: E402
from .config import VerifyConfig, load_config  # noqa: E402
from .implementation import Implementation, LayerResult, Quantizer, as_implementation

__all__ = ["Implementation", "LayerResult", "MoECheck", "Quantizer", "QuantizerCheck", "VerifyConfig", "as_implementation",
           "assert_conforms", "check_moe", "check_quantizer", "load_config"]
