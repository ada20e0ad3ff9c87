"""AITER's own activation-dtype choice for MXFP4 MoE, read from the wheel's ``aiter/fused_moe.py`` and
evaluated there: the condition under which ``fused_moe_2stages`` keeps the activations in bf16
(``a1 = hidden_states.to(dtype)``), else the dtype ``fused_moe_`` derives (``q_dtype_a``). The code is
AITER's, executed with its names bound to plain values (the ROCm top level is never imported); a name
the condition needs and the adapter does not know makes the answer an error, never a guess."""

from __future__ import annotations

import ast
import functools
import types
from pathlib import Path

__all__ = ["load_dispatch"]


def _function(tree: ast.Module, name: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise LookupError(f"aiter/fused_moe.py has no function {name}")


def _bf16_condition(fn: ast.FunctionDef) -> ast.expr:
    """The test of the ``if`` whose body sets ``a1 = hidden_states.to(...)`` (activations kept as is)."""
    for node in ast.walk(fn):
        if isinstance(node, ast.If):
            for stmt in node.body:
                if (isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "a1" for t in stmt.targets)
                        and isinstance(stmt.value, ast.Call) and ast.unparse(stmt.value).startswith("hidden_states.to")):
                    return node.test
    raise LookupError("fused_moe_2stages: no branch keeping the activations unquantized (a1 = hidden_states.to(...))")


def _q_dtype_a(fn: ast.FunctionDef) -> list[ast.stmt]:
    """The statements of ``fused_moe_`` that assign ``q_dtype_a`` (in order)."""
    found = [s for s in fn.body if isinstance(s, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "q_dtype_a"
                                                                       for t in s.targets)]
    if not found:
        raise LookupError("fused_moe_: no assignment of q_dtype_a")
    return found


@functools.cache
def load_dispatch(root: Path):
    """``select(M, *, arch, gate_mode, env) -> "bf16" | "fp4x2" | "fp8"`` from the wheel at ``root``."""
    import torch

    source = (root / "aiter" / "fused_moe.py").read_text()
    tree = ast.parse(source)
    cond = compile(ast.Expression(_bf16_condition(_function(tree, "fused_moe_2stages"))), "aiter/fused_moe.py", "eval")
    qa = compile(ast.Module(_q_dtype_a(_function(tree, "fused_moe_")), []), "aiter/fused_moe.py", "exec")
    fp4x2 = getattr(torch, "float4_e2m1fn_x2", torch.uint8)
    dtypes = types.SimpleNamespace(bf16=torch.bfloat16, fp16=torch.float16, fp4x2=fp4x2, fp8=torch.float8_e4m3fn,
                                   fp32=torch.float32)
    quant = types.SimpleNamespace(per_1x32="per_1x32", No="No", per_Token="per_Token", per_Tensor="per_Tensor",
                                  per_1x128="per_1x128")
    act = types.SimpleNamespace(Swiglu="Swiglu", Silu="Silu", Gelu="Gelu")
    names = {fp4x2: "fp4x2", torch.bfloat16: "bf16", torch.float8_e4m3fn: "fp8", torch.float8_e4m3fnuz: "fp8"}

    def select(M: int, *, arch: str, gate_mode: str = "separated", env=None, activation: str = "Swiglu"):
        import os

        from ..implementation import applied_env

        w1 = types.SimpleNamespace(dtype=fp4x2, shape=(1, 1, 1))
        scope = {"quant_type": quant.per_1x32, "QuantType": quant, "dtype": torch.bfloat16, "dtypes": dtypes,
                 "w1": w1, "activation": act.Swiglu if activation == "Swiglu" else activation,
                 "ActivationType": act, "torch": torch, "token_num": M, "M": M, "os": os,
                 "get_gfx": lambda: arch}
        with applied_env(env):
            exec(qa, scope)  # noqa: S102 - AITER's own statements, from the wheel
            keeps_bf16 = eval(cond, scope)  # noqa: S307
        return "bf16" if keeps_bf16 else names.get(scope["q_dtype_a"], str(scope["q_dtype_a"]))

    return select
