"""The values of an evaluation: unknowns, raised outcomes, functions and modules of the peer, paths'
states, and the tables of the Python operators it applies to known values."""

from __future__ import annotations

import ast
import builtins
import functools
import operator
from dataclasses import dataclass, field

MAX_PATHS = 64
MAX_STEPS = 20000
NESTED_STEPS = 1500  # a call inside the evaluated function: past this (or NESTED_PATHS) its value is unknown
NESTED_PATHS = 8


class Unbound(Exception):
    """Raised by a stand-in for an attribute or call it does not model: the value becomes unknown."""


class Stop(Exception):
    """The evaluation gave up (too many paths or steps): the result is unknown for that reason."""


@dataclass(frozen=True)
class Unknown:
    """A value the evaluation could not bind; ``why``: the names or conditions, each with ``file:line``."""

    why: frozenset

    def __bool__(self):  # an unknown must never be read as a truth value by accident
        raise TypeError("Unknown has no truth value; use truth()")

    def text(self) -> str:
        return "; ".join(sorted(self.why))


def unknown(*vals, why: str | None = None) -> Unknown:
    reasons = set() if why is None else {why}
    for v in vals:
        reasons |= v.why if isinstance(v, Unknown) else set()
    return Unknown(frozenset(reasons))


def _has_unknown(v, depth: int = 2) -> bool:
    if isinstance(v, Unknown):
        return True
    if depth and isinstance(v, (tuple, list, set, frozenset)):
        return any(_has_unknown(x, depth - 1) for x in v)
    if depth and isinstance(v, dict):
        return any(_has_unknown(x, depth - 1) for x in (*v.keys(), *v.values()))
    return False


def _unknowns(*vals) -> Unknown:
    reasons = set()

    def walk(v, depth=2):
        if isinstance(v, Unknown):
            reasons.update(v.why)
        elif depth and isinstance(v, (tuple, list, set, frozenset)):
            for x in v:
                walk(x, depth - 1)
        elif depth and isinstance(v, dict):
            for x in (*v.keys(), *v.values()):
                walk(x, depth - 1)

    for v in vals:
        walk(v)
    return Unknown(frozenset(reasons))


@dataclass(frozen=True)
class Raised:
    """The peer's code raises ``kind``(``message``) at ``where`` for these inputs."""

    kind: str
    message: str
    where: str

    def text(self) -> str:
        return f"raises {self.kind}: {self.message} ({self.where})"


class _CodeRaised(Exception):
    def __init__(self, raised: Raised):
        super().__init__(raised.text())
        self.raised = raised


def truth(v) -> bool | None:
    """True / False, or None where the value is unknown (or its truth cannot be had)."""
    if isinstance(v, Unknown) or _has_unknown(v, 1):
        return None
    try:
        return bool(v)
    except Exception:  # noqa: BLE001 - a stand-in without a truth value
        return None


class Lazy:
    """A binding resolved on first read (an import whose module is loaded only if the name is used)."""

    def __init__(self, thunk):
        self._thunk, self._done, self._value = thunk, False, None

    @property
    def done(self) -> bool:
        return self._done

    def value(self):
        if not self._done:
            self._value, self._done = self._thunk(), True
        return self._value


@dataclass
class Module:
    path: str
    globals: dict
    reads: dict = field(default_factory=dict)  # global name -> environment keys read while computing it
    import_error: Raised | None = None  # the top level raises (on every path): importing it fails


@dataclass
class Function:
    node: ast.FunctionDef
    module: Module
    defaults: dict  # parameter name -> default value (evaluated at definition, as Python does)

    @property
    def where(self) -> str:
        return f"{self.module.path}:{self.node.lineno}"

    def params(self) -> list[str]:
        a = self.node.args
        return [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]


@dataclass
class _State:
    local: dict
    assumed: frozenset = frozenset()
    outcome: tuple | None = None  # ("return", value) or ("raise", Raised)

    def fork(self, reasons) -> _State:
        return _State(dict(self.local), self.assumed | reasons, self.outcome)


_SAFE_BUILTINS = {n: getattr(builtins, n) for n in (
    "int", "float", "str", "bool", "len", "getattr", "hasattr", "isinstance", "min", "max", "abs", "tuple", "list",
    "dict", "set", "frozenset", "any", "all", "sorted", "range", "round", "divmod", "repr", "type", "enumerate",
    "zip", "reversed", "sum", "ValueError", "TypeError", "KeyError", "RuntimeError", "AssertionError",
    "NotImplementedError", "Exception", "AttributeError", "ImportError", "ModuleNotFoundError", "print")}
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
           ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.BitOr: operator.or_,
           ast.BitAnd: operator.and_, ast.BitXor: operator.xor, ast.MatMult: operator.matmul}
_CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
           ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_UNOPS = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}


def _real_callable(f) -> bool:
    """Builtins and methods of plain values: their exceptions are the peer's code raising."""
    return isinstance(f, (type(len), type("".join))) or f in _SAFE_BUILTINS.values()


def combine(values: list, states: list[_State]):
    """One value for several paths: their common value, else unknown naming the conditions that split them."""
    first = values[0]
    if all(_same(first, v) for v in values[1:]):
        return first
    return Unknown(frozenset().union(*(s.assumed for s in states)) | _unknowns(*values).why)


def _same(a, b) -> bool:
    if isinstance(a, Unknown) or isinstance(b, Unknown):
        return a == b
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001
        return a is b



def _apply(op, a, b, where, unary=False):
    if _has_unknown(a) or (not unary and _has_unknown(b)):
        return _unknowns(a, b)
    try:
        return op(a) if unary else op(a, b)
    except Unbound:
        return unknown(why=f"an operation on stand-ins ({where})")
    except Exception as exc:  # noqa: BLE001 - plain values: the peer's code raises
        raise _CodeRaised(Raised(type(exc).__name__, str(exc), where)) from None


def _handler(node: ast.Try, st: _State):
    if not (st.outcome and st.outcome[0] == "raise"):
        return None
    kind = st.outcome[1].kind.split(".")[-1]
    for h in node.handlers:
        names = [] if h.type is None else [ast.unparse(e).split(".")[-1] for e in
                                           (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type])]
        if not names or kind in names or "Exception" in names or "BaseException" in names:
            return h
    return None


@functools.lru_cache(maxsize=65536)
def _receivers(node) -> tuple:
    """(name, method) of every ``name.method(...)`` call inside ``node`` (nodes hash by identity)."""
    return tuple((sub.func.value.id, sub.func.attr) for sub in ast.walk(node) if isinstance(sub, ast.Call)
                 and isinstance(sub.func, ast.Attribute) and isinstance(sub.func.value, ast.Name))


@functools.lru_cache(maxsize=65536)
def _assigned_names(node) -> frozenset:
    return frozenset(sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store))
