"""AITER's activation-dtype rule, read from its source at any commit (a checkout, a git commit or a
wheel) and evaluated there with its names bound to the case; AITER is never imported.

Where the rule lives is found, not assumed: starting at ``fused_moe`` in ``aiter/fused_moe.py``, the
functions it reaches by name are searched for the one that computes ``q_dtype_a`` (assigns it without
taking it as a parameter); its body runs up to the last statement that assigns it. The function
reached from there that keeps the activations unquantized (a branch with ``a1 = hidden_states.to(X)``)
gives the override: where such a branch's test holds, the activations are X. The tests' copies of
the rule are the functions under ``op_tests/`` that return an AITER dtype and are named for it or
read the rule's environment knobs. Module-level values are computed as an import computes them, with
the environment of the import; the call sees the environment of the call (:class:`Timing`).
"""

from __future__ import annotations

import ast
import re
from collections import deque
from dataclasses import dataclass

from . import aiter_standins as sx
from .pyeval import Function, Interpreter, Lazy, Raised, Stop, Unbound, Unknown, combine, truth, unknown
from .sources import SourceTree

__all__ = ["Located", "locate", "AiterEvaluator", "Case", "answer_text", "load_dispatch"]

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


def _keep_branches(stmt: ast.stmt) -> list[tuple[ast.expr, ast.expr]]:
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


def _env_names(tree: ast.AST) -> list[str]:
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
            if _keep_branches(stmt):
                keep = Site(ENTRY_FILE, name, funcs[name].lineno, i)
                break
        if keep:
            break
    knobs = _env_names(module)
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
            if returns_dtype and (_COPY_NAME.search(name) or set(_env_names(node)) & set(knobs)):
                copies.append(Site(path, name, node.lineno, activations=_call_guards(test_module, name)))
    return Located(rule, keep, tuple(copies), tuple(knobs))


@dataclass(frozen=True)
class Case:
    """One question to the rule: the call's M, arch, activation (AITER's member name: Swiglu, Silu,
    ...), gate mode (SEPARATED / INTERLEAVE), weight dtype (an AITER dtype name), whether the weights
    carry ``is_shuffled``, and the environment."""

    M: int
    arch: str
    activation: str = "Swiglu"
    gate_mode: str = "SEPARATED"
    weight_dtype: str = "fp4x2"
    shuffled: bool = False
    env: tuple = ()  # sorted (name, value) pairs

    H: int = 2880
    I: int = 2880  # noqa: E741
    E: int = 32
    topk: int = 4


def answer_text(value) -> str | None:
    """A dtype name, None (no answer), ``raises ...`` or ``undecided: needs ...``."""
    if value is None:
        return None
    if isinstance(value, sx.DType):
        return value.name
    if isinstance(value, Raised):
        return value.text()
    if isinstance(value, Unknown):
        return "undecided: needs " + value.text()
    return f"not a dtype: {value!r}"


class AiterEvaluator:
    """Evaluates the located rule and copies of ``tree`` for cases; one per import-time environment
    (modules are loaded once, with ``import_env``, and reused for every call)."""

    def __init__(self, tree: SourceTree, located: Located, import_env: dict):
        self.tree, self.located = tree, located
        self._import_env = dict(import_env)
        self.ctx = sx.Context(env=dict(import_env))
        self.enums = {n: sx.AutoEnum(n) for n in sx.ENUM_NAMES}
        self.dtypes = sx.dtypes_namespace()
        self.modules: dict[str, object] = {}
        self.global_reads: set = set()
        self.interp = Interpreter(self._resolve, self._on_global_read)

    # ---- imports ---------------------------------------------------------------------------------
    def _module_path(self, dotted: str) -> str | None:
        base = dotted.replace(".", "/")
        for p in (f"{base}.py", f"{base}/__init__.py"):
            if self.tree.read(p) is not None:
                return p
        return None

    def module(self, path: str):
        if path not in self.modules:
            dotted = path[:-3].replace("/", ".").removesuffix(".__init__")
            env, self.ctx.env = self.ctx.env, dict(self.import_env)
            try:
                self.modules[path] = self.interp.load_module(path, self.tree.read(path), dotted, self.ctx.reads)
            finally:
                self.ctx.env = env
        return self.modules[path]

    @property
    def import_env(self) -> dict:
        return self._import_env

    def _standin(self, name: str):
        if name in sx.ENUM_NAMES:
            return self.enums[name]
        if name in sx.ARCH_FUNCTIONS:
            return lambda: self.ctx.arch
        if name == "dtypes":
            return self.dtypes
        return None

    def _resolve(self, module, dotted: str, name: str | None):
        top = dotted.split(".")[0]
        if top == "os":
            osm = sx.os_module(self.ctx)
            return osm if name is None else getattr(osm, name, unknown(why=f"os.{name}"))
        if top == "torch":
            return sx.torch_module() if name is None else unknown(why=f"from torch import {name}")
        if top != "aiter":
            return unknown(why=f"import {dotted}" + (f".{name}" if name else "") + f" ({module.path})")
        if name is None:
            return _Package(self, dotted if "." not in dotted else top)
        standin = self._standin(name)
        if standin is not None:
            return standin
        return Lazy(lambda: self._from_tree(dotted, name, module.path))

    def _from_tree(self, dotted: str, name: str, importer: str):
        if self._module_path(f"{dotted}.{name}"):
            return _Package(self, f"{dotted}.{name}")
        path = self._module_path(dotted)
        if path is None or dotted == "aiter":  # the package's own top level needs ROCm: never run
            return unknown(why=f"from {dotted} import {name} ({importer})")
        value = self.module(path).globals.get(name)
        return unknown(why=f"{dotted}.{name} ({importer})") if value is None else value

    def _on_global_read(self, module, name):
        self.global_reads |= module.reads.get(name, frozenset())

    # ---- cases -----------------------------------------------------------------------------------
    def _bindings(self, case: Case) -> dict:
        w = sx.DTYPES[case.weight_dtype] if case.weight_dtype in sx.DTYPES else sx.DType(case.weight_dtype)
        pack = 2 if case.weight_dtype in ("fp4x2", "i4x2") else 1
        flags = {"is_shuffled": True} if case.shuffled else {}
        act = self.enums["ActivationType"].member(case.activation)
        gate = self.enums["GateMode"].member(case.gate_mode)
        quant = self.enums["QuantType"].member("per_1x32")
        bf16 = sx.DTYPES["bf16"]
        names = {
            ("M", "token", "tokens", "token_num", "num_tokens"): case.M,
            ("hidden_states",): sx.FakeTensor(bf16, (case.M, case.H)),
            ("moe_out",): sx.FakeTensor(bf16, (case.M, case.H)),
            ("w1",): sx.FakeTensor(w, (case.E, 2 * case.I, case.H // pack), **flags),
            ("w2",): sx.FakeTensor(w, (case.E, case.H, case.I // pack), **flags),
            ("topk_weight", "topk_weights"): sx.FakeTensor(sx.DTYPES["fp32"], (case.M, case.topk)),
            ("topk_ids",): sx.FakeTensor(sx.DTYPES["i32"], (case.M, case.topk)),
            ("topk",): case.topk,
            ("activation", "act_type", "actType"): act,
            ("gate_mode", "gateMode"): gate.value,
            ("quant_type", "q_type", "qType"): quant,
            ("q_dtype_w", "wq_dtype", "WQDType"): w,
            ("aq_dtype", "AQDType"): bf16,  # the activations handed to fused_moe
            ("expert_mask", "a1_scale", "a2_scale", "bias1", "bias2"): None,
            ("doweight_stage1",): False,
            ("arch", "gfx"): case.arch,
        }
        return {n: v for keys, v in names.items() for n in keys}

    def _args(self, fn: Function, bound: dict) -> dict:
        return {p: bound[p] for p in fn.params() if p in bound}

    def _function(self, site: Site) -> Function:
        module = self.module(site.path)
        if module.import_error is not None:
            raise _ImportFailed(module.import_error)
        fn = module.globals.get(site.name)
        if not isinstance(fn, Function):
            raise LookupError(f"{site.where}: {site.name} is not a plain function here")
        return fn

    def _start(self, case: Case, env: dict):
        self.ctx.env, self.ctx.arch = dict(env), case.arch
        self.ctx.reads.clear()
        self.global_reads = set()

    def runtime(self, case: Case, env: dict):
        """AITER's answer for ``case`` with ``env`` at call time: a DType, Raised or Unknown; and the
        environment keys read at call time and through module-level values."""
        rule = self.located.rule
        self._start(case, env)
        bound = self._bindings(case)
        try:
            fn = self._function(rule)
            states = self.interp.call(fn, [], self._args(fn, bound), stop_after=rule.stop)
            answers = [self._after_rule(s, bound) for s in states]
            value = combine(answers, states)
        except Stop as exc:
            value = unknown(why=str(exc))
        except _ImportFailed as exc:
            value = exc.raised
        return value, frozenset(self.ctx.reads), frozenset(self.global_reads)

    def _after_rule(self, state, bound: dict):
        if state.outcome:
            kind, v = state.outcome
            return v if kind == "raise" else unknown(why=f"{self.located.rule.name} returns before q_dtype_a is final")
        q = state.local.get("q_dtype_a", unknown(why="q_dtype_a unset"))
        keep = self.located.keep
        if keep is None or isinstance(q, (Unknown, Raised)):
            return q
        fn = self._function(keep)
        names = {**bound, **state.local}
        states = self.interp.call(fn, [], self._args(fn, names), stop_after=keep.stop - 1, top=False)
        branches = _keep_branches(fn.node.body[keep.stop])
        values = [self._keep_value(s, q, branches, fn) for s in states]
        return combine(values, states)

    def _keep_value(self, state, q, branches, fn):
        if state.outcome:
            kind, v = state.outcome
            return v if kind == "raise" else unknown(why=f"{fn.node.name} returns before its activations are set")
        for test, target in branches:
            t = truth(self.interp.expr(test, state, fn.module))
            if t is None:
                return unknown(self.interp.expr(test, state, fn.module),
                               why=f"{ast.unparse(test)[:120]} ({fn.module.path}:{test.lineno})")
            if t:
                return self.interp.expr(target, state, fn.module)
        return q

    def copy(self, site: Site, case: Case, env: dict):
        """A copy's answer for ``case`` (None: it returns none) and the keys it read."""
        self._start(case, env)
        try:
            fn = self._function(site)
            bound = self._bindings(case)
            missing = [p for p in fn.params() if p not in bound and p not in fn.defaults]
            if missing:
                return unknown(why=f"{missing[0]}: parameter of {site.name} ({site.where}) has no binding"), \
                    frozenset(), frozenset()
            states = self.interp.call(fn, [], self._args(fn, bound))
            values = [s.outcome[1] if s.outcome else None for s in states]
            value = combine(values, states)
        except Stop as exc:
            value = unknown(why=str(exc))
        except _ImportFailed as exc:
            value = exc.raised
        return value, frozenset(self.ctx.reads), frozenset(self.global_reads)


class _ImportFailed(Exception):
    def __init__(self, raised: Raised):
        super().__init__(raised.text())
        self.raised = Raised(raised.kind, f"{raised.message} (at import)", raised.where)


class _Package:
    """``import aiter`` / ``aiter.ops``: attributes are stand-ins, sub-packages, or module globals."""

    def __init__(self, ev: AiterEvaluator, dotted: str):
        self._ev, self._dotted = ev, dotted

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        standin = self._ev._standin(name)
        if standin is not None:
            return standin
        value = self._ev._from_tree(self._dotted, name, self._dotted)
        if isinstance(value, Unknown):
            raise Unbound(f"{self._dotted}.{name}")
        return value


def load_dispatch(root):
    """``select(M, *, arch, gate_mode, env, activation) -> "bf16" | "fp4x2" | "fp8"``: AITER's runtime
    answer from the tree at ``root`` (a folder or a wheel), the environment set before import."""
    from .sources import open_tree

    tree = open_tree(root)
    located = locate(tree)
    cache = {}

    def select(M: int, *, arch: str, gate_mode: str = "separated", env=None, activation: str = "Swiglu"):
        env = dict(env or {})
        key = tuple(sorted(env.items()))
        if key not in cache:
            cache[key] = AiterEvaluator(tree, located, env)
        value, _, _ = cache[key].runtime(Case(M, arch, activation, gate_mode.upper()), env)
        text = answer_text(value)
        if not isinstance(value, sx.DType):
            raise RuntimeError(f"AITER's dispatch ({tree.label}): {text}")
        return text

    return select
