"""Where AITER's activation-dtype rule lives in a source tree, found from the code, not assumed.

Starting at ``fused_moe`` in ``aiter/fused_moe.py``, the functions it reaches by name are searched for
the one that computes ``q_dtype_a`` (assigns it without taking it as a parameter); its body runs up to
the last statement that assigns it. The function reached from there that keeps the activations
unquantized (a branch with ``a1 = hidden_states.to(X)``) gives the override. The tests' copies of the
rule are the functions under ``op_tests/`` that return an AITER dtype and are named for it or read the
rule's environment knobs; a copy whose every call sits under ``if ... == ActivationType.X`` answers for
those activations only.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from dataclasses import dataclass

from .sources import SourceTree

__all__ = ["ENTRY_FILE", "ENTRY_FUNCTION", "Site", "Located", "locate", "keep_branches", "env_names"]

ENTRY_FILE, ENTRY_FUNCTION = "aiter/fused_moe.py", "fused_moe"
_COPY_NAME = re.compile(r"q_dtype_a|aq_dtype|act\w*_dtype", re.IGNORECASE)


@dataclass(frozen=True)
class Site:
    """A function of the tree: file, name, line; ``stop``: the body's last statement index to run;
    ``activations``: for a copy whose every call in its tests sits under ``if <act> == ActivationType.X``,
    those X (it answers for them only); empty: no such guard."""

    path: str
    name: str
    line: int
    stop: int | None = None
    activations: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Located:
    rule: Site
    keep: Site | None  # the function with the a1 = hidden_states.to(X) branches; stop: statements before them
    copies: tuple[Site, ...]
    knob_names: tuple[str, ...]  # environment variables named in the rule's file (os.environ / getenv reads)


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _called_names(fn: ast.AST) -> list[str]:
    out = []
    for sub in ast.walk(fn):
        if isinstance(sub, ast.Call):
            f = sub.func
            out.append(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    return out


def _reachable(funcs: dict, start: str) -> list[str]:
    seen, order, todo = {start}, [], deque([start])
    while todo:
        name = todo.popleft()
        order.append(name)
        for callee in _called_names(funcs[name]):
            if callee in funcs and callee not in seen:
                seen.add(callee)
                todo.append(callee)
    return order


def _assigns(node: ast.AST, name: str) -> bool:
    return any(isinstance(s, ast.Name) and s.id == name and isinstance(s.ctx, ast.Store) for s in ast.walk(node))


def _params(fn: ast.FunctionDef) -> set[str]:
    a = fn.args
    return {p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)}


def keep_branches(stmt: ast.stmt) -> list[tuple[ast.expr, ast.expr]]:
    """(test, X) of each branch of the if/elif chain ``stmt`` whose body sets ``a1 = hidden_states.to(X)``."""
    out, node = [], stmt
    while isinstance(node, ast.If):
        for s in node.body:
            if (isinstance(s, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "a1" for t in s.targets)
                    and isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Attribute)
                    and s.value.func.attr == "to" and ast.unparse(s.value.func.value) == "hidden_states"
                    and len(s.value.args) == 1):
                out.append((node.test, s.value.args[0]))
        node = node.orelse[0] if len(node.orelse) == 1 else None
    return out


def env_names(tree: ast.AST) -> list[str]:
    names = []
    for sub in ast.walk(tree):
        if isinstance(sub, ast.Call) and ast.unparse(sub.func) in ("os.environ.get", "os.getenv") and sub.args \
                and isinstance(sub.args[0], ast.Constant) and isinstance(sub.args[0].value, str):
            names.append(sub.args[0].value)
        if isinstance(sub, ast.Subscript) and ast.unparse(sub.value) == "os.environ" \
                and isinstance(sub.slice, ast.Constant) and isinstance(sub.slice.value, str):
            names.append(sub.slice.value)
    return list(dict.fromkeys(names))


def _call_guards(module: ast.Module, name: str) -> tuple[str, ...]:
    """The activations ``X`` of ``== ActivationType.X`` tests that guard every call of ``name``."""
    found, unguarded = set(), False

    def visit(node, guards):
        nonlocal unguarded
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name:
            acts = {c.attr for g in guards for c in ast.walk(g) if isinstance(c, ast.Attribute)
                    and ast.unparse(c.value).split(".")[-1] == "ActivationType"}
            found.update(acts)
            unguarded |= not acts
        for field, value in ast.iter_fields(node):
            children = value if isinstance(value, list) else [value]
            extra = [node.test] if isinstance(node, ast.If) and field == "body" else []
            for child in children:
                if isinstance(child, ast.AST):
                    visit(child, guards + extra)

    visit(module, [])
    return () if unguarded or not found else tuple(sorted(found))


def locate(tree: SourceTree) -> Located:
    """Where the rule, the override and the copies are in ``tree``; LookupError naming what is missing."""
    source = tree.read(ENTRY_FILE)
    if source is None:
        raise LookupError(f"{tree.label}: no {ENTRY_FILE}")
    module = ast.parse(source, filename=ENTRY_FILE)
    funcs = _functions(module)
    order = _reachable(funcs, ENTRY_FUNCTION) if ENTRY_FUNCTION in funcs else list(funcs)
    rules = [n for n in order if "q_dtype_a" not in _params(funcs[n]) and _assigns(funcs[n], "q_dtype_a")]
    if not rules:
        raise LookupError(f"{tree.label}: no function reached from {ENTRY_FUNCTION} ({ENTRY_FILE}) computes q_dtype_a")
    fn = funcs[rules[0]]
    stop = max(i for i, s in enumerate(fn.body) if _assigns(s, "q_dtype_a"))
    rule = Site(ENTRY_FILE, fn.name, fn.lineno, stop)
    keep = None
    for name in _reachable(funcs, fn.name):
        for i, stmt in enumerate(funcs[name].body):
            if keep_branches(stmt):
                keep = Site(ENTRY_FILE, name, funcs[name].lineno, i)
                break
        if keep:
            break
    knobs = env_names(module)
    copies = []
    for path in tree.containing("op_tests/", ["q_dtype_a", *knobs]):
        text = tree.read(path)
        try:
            test_module = ast.parse(text, filename=path)
        except SyntaxError:
            continue
        for name, node in _functions(test_module).items():
            returns_dtype = any(isinstance(r, ast.Return) and r.value is not None and "dtypes." in ast.unparse(r.value)
                                for r in ast.walk(node))
            if returns_dtype and (_COPY_NAME.search(name) or set(env_names(node)) & set(knobs)):
                copies.append(Site(path, name, node.lineno, activations=_call_guards(test_module, name)))
    return Located(rule, keep, tuple(copies), tuple(knobs))
