"""Triton kernels for MXFP4 MoE, validated against ``emulation`` and ``moe_ref``."""
