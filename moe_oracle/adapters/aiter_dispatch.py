"""AITER's activation-dtype rule (found by :mod:`.aiter_locate`), evaluated from its source at any
commit (a checkout, a git commit or a wheel) with its names bound to the case; AITER is never
imported. Module-level values are computed as an import computes them, with the environment of the
import; the call sees the environment of the call."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from . import aiter_standins as sx
from .aiter_locate import ENTRY_FILE, Located, Site, keep_branches, locate
from .pyeval import Function, Interpreter, Lazy, Raised, Stop, Unbound, Unknown, combine, truth, unknown
from .sources import SourceTree

__all__ = ["ENTRY_FILE", "Located", "locate", "AiterEvaluator", "Case", "answer_text", "load_dispatch"]


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

        def evaluate():
            fn = self._function(rule)
            states = self.interp.call(fn, [], self._args(fn, bound), stop_after=rule.stop)
            return combine([self._after_rule(s, bound) for s in states], states)

        return self._answer(evaluate)

    def _answer(self, evaluate):
        """``evaluate()``'s value (a budget exceeded: unknown; a module that fails to import: its
        exception), with the environment keys read at the call and through module constants."""
        try:
            value = evaluate()
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
        branches = keep_branches(fn.node.body[keep.stop])
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

        def evaluate():
            fn = self._function(site)
            bound = self._bindings(case)
            missing = [p for p in fn.params() if p not in bound and p not in fn.defaults]
            if missing:
                return unknown(why=f"{missing[0]}: parameter of {site.name} ({site.where}) has no binding")
            states = self.interp.call(fn, [], self._args(fn, bound))
            return combine([s.outcome[1] if s.outcome else None for s in states], states)

        return self._answer(evaluate)


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
