"""Evaluate a peer's own Python source with some of its names bound and the rest unknown.

A peer's dispatch code is run statement by statement from its syntax tree, never imported: names the
caller binds (stand-ins for torch dtypes, the environment, the arch) have values; every other name is
an :class:`Unknown` that remembers what it is and where it was needed (``file:line``). Conditions are
three-valued (Kleene): ``unknown and False`` is False, so an answer that does not depend on an unknown
is still exact. An ``if`` on an unknown condition explores both branches; a result that differs
between them stays unknown, naming the condition. Nothing is guessed: a value is either what the
peer's code computes from the bound names, or unknown with its reasons.

A real exception raised by the peer's code on known values (``int("")``) is an outcome of its own
(:class:`Raised`). Loops are not run (names they assign become unknown); ``try`` runs its body and the
handler that matches a raised exception; decorators are ignored; imports bind through ``resolve``.
"""

from __future__ import annotations

import ast
import builtins
import enum
import functools
import operator
from dataclasses import dataclass, field

__all__ = ["Unknown", "Raised", "Unbound", "Lazy", "Function", "Module", "Interpreter", "Stop", "truth", "combine"]

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


class Interpreter:
    """Runs syntax trees over states. ``resolve(module, dotted, name)`` binds an import (``name`` None:
    ``import dotted``); ``on_global_read(module, name)`` is told of every module-level name read."""

    def __init__(self, resolve, on_global_read=None):
        self.resolve = resolve
        self.on_global_read = on_global_read or (lambda module, name: None)
        self.steps = 0
        self.depth = 0
        self.cheap = False  # inside a boolean operator's first pass: deferred calls are not run

    def load_module(self, path: str, source: str, dotted: str, reads: set) -> Module:
        """Run a module's top level as an import would. ``reads`` is the set the environment stand-in
        adds the keys it is asked for to: each global remembers those read while it was computed."""
        module = Module(path, {"__name__": dotted, "__file__": path})
        for stmt in ast.parse(source, filename=path).body:
            reads.clear()
            self.steps = 0
            try:
                states = self.run([stmt], [_State(module.globals)], module)
            except Stop as exc:
                states = [_State(module.globals)]
                for name in _assigned_names(stmt):
                    module.globals[name] = unknown(why=str(exc))
            if all(st.outcome and st.outcome[0] == "raise" for st in states):
                module.import_error = states[0].outcome[1]
                break
            if len(states) > 1 or states[0].local is not module.globals:
                merged = {k: combine([st.local.get(k, unknown(why=f"{k} unset on a path")) for st in states], states)
                          for k in set().union(*(st.local for st in states))}
                module.globals.clear()
                module.globals.update(merged)
            for name in _assigned_names(stmt) | ({stmt.name} if hasattr(stmt, "name") else set()):
                module.reads[name] = frozenset(reads)
        return module

    # ---- statements ------------------------------------------------------------------------------
    def run(self, stmts, states: list[_State], module: Module) -> list[_State]:
        for stmt in stmts:
            nxt = []
            for st in states:
                nxt.extend([st] if st.outcome else self._stmt(stmt, st, module))
            cap = NESTED_PATHS if self.depth else MAX_PATHS
            if len(nxt) > cap:
                raise Stop(f"more than {cap} paths at {module.path}:{stmt.lineno}")
            states = nxt
        return states

    def _stmt(self, node, st: _State, module: Module) -> list[_State]:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise Stop(f"more than {MAX_STEPS} statements evaluated (at {module.path}:{node.lineno})")
        try:
            return self._stmt_inner(node, st, module)
        except _CodeRaised as exc:
            st.outcome = ("raise", exc.raised)
            return [st]

    def _stmt_inner(self, node, st, module):
        where = f"{module.path}:{node.lineno}"
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            if node.value is None:
                return [st]
            value = self._deferred(node, st, module, where)
            if value is None:
                value = self.expr(node.value, st, module)
            if isinstance(node, ast.AugAssign):
                old = self.expr(node.target, st, module) if not isinstance(node.target, ast.Name) else \
                    self._name(node.target.id, st, module, where)
                value = _apply(_BINOPS[type(node.op)], old, value, where)
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                self._assign(target, value, st, module, where)
            return [st]
        if isinstance(node, ast.If):
            test = self.expr(node.test, st, module)
            t = truth(test)
            if t is not None:
                return self.run(node.body if t else node.orelse, [st], module)
            cond = f"{ast.unparse(node.test)} ({where})"
            reasons = frozenset({cond}) | (test.why if isinstance(test, Unknown) else frozenset())
            return (self.run(node.body, [st.fork(reasons)], module)
                    + self.run(node.orelse, [st.fork(reasons)], module))
        if isinstance(node, ast.Return):
            st.outcome = ("return", None if node.value is None else self.expr(node.value, st, module))
            return [st]
        if isinstance(node, ast.Raise):
            kind = ast.unparse(node.exc.func if isinstance(node.exc, ast.Call) else node.exc) if node.exc else "raise"
            st.outcome = ("raise", Raised(kind, ast.unparse(node.exc) if node.exc else "", where))
            return [st]
        if isinstance(node, ast.Assert):
            if truth(self.expr(node.test, st, module)) is False:
                st.outcome = ("raise", Raised("AssertionError", ast.unparse(node.test), where))
            return [st]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            st.local[node.name] = Function(node, module, self._defaults(node, st, module))
            return [st]
        if isinstance(node, ast.ClassDef):
            st.local[node.name] = self._class(node, st, module, where)
            return [st]
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            self._import(node, st, module)
            return [st]
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            for name in _assigned_names(node):
                st.local[name] = unknown(why=f"{name}: assigned in a loop ({where})")
            self._forget_mutated(node, st, where)
            return [st]
        if isinstance(node, ast.Expr):
            self._forget_mutated(node, st, where)
            return [st]
        if isinstance(node, (ast.With, ast.AsyncWith)):
            return self.run(node.body, [st], module)
        if isinstance(node, ast.Try):
            out = []
            for s in self.run(node.body, [st], module):
                handler = _handler(node, s)
                if handler is not None:
                    s.outcome = None
                    if handler.name:
                        s.local[handler.name] = unknown(why=f"{handler.name}: the exception ({where})")
                    out.extend(self.run(handler.body, [s], module))
                else:
                    out.extend(self.run(node.orelse, [s], module) if not s.outcome else [s])
            return self.run(node.finalbody, out, module) if node.finalbody else out
        if isinstance(node, ast.Match):
            for name in _assigned_names(node):
                st.local[name] = unknown(why=f"{name}: assigned in a match ({where})")
            return [st]
        return [st]  # Expr, Pass, Global, Nonlocal, Delete, Break, Continue: no effect on the values read

    def _deferred(self, node, st, module, where):
        """``x = f(...)`` with ``f`` a function of the peer: its arguments now, the call when ``x`` is
        read (most such values are never needed by the dispatch)."""
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call)):
            return None
        f = self.expr(node.value.func, st, module)
        if not isinstance(f, Function) or any(isinstance(a, ast.Starred) for a in node.value.args) \
                or any(kw.arg is None for kw in node.value.keywords):
            return None
        args = [self.expr(a, st, module) for a in node.value.args]
        kwargs = {kw.arg: self.expr(kw.value, st, module) for kw in node.value.keywords}
        return Lazy(lambda: self._call_value(f, args, kwargs, where))

    @staticmethod
    def _forget_mutated(node, st, where):
        """Plain containers a method call may have changed (``lst.append(x)``) become unknown."""
        for name, method in _receivers(node):
            if isinstance(st.local.get(name), (list, dict, set)):
                st.local[name] = unknown(why=f"{name}: changed by {name}.{method}() ({where})")

    def _assign(self, target, value, st, module, where):
        if isinstance(target, ast.Name):
            st.local[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            items = None
            if not isinstance(value, Unknown):
                try:
                    items = list(value)
                except Exception:  # noqa: BLE001
                    items = None
            for i, t in enumerate(target.elts):
                sub = items[i] if items is not None and len(items) == len(target.elts) else \
                    unknown(value, why=f"{ast.unparse(t)}: unpacked from {ast.unparse(target)} ({where})")
                self._assign(t, sub, st, module, where)
        elif isinstance(target, ast.Subscript):
            obj = self.expr(target.value, st, module)
            key = self.expr(target.slice, st, module)
            if not _has_unknown(obj) and not _has_unknown(key):
                try:
                    obj[key] = value
                except Exception:  # noqa: BLE001 - a stand-in that does not take items: no value tracked
                    pass
        # attribute targets: objects are not tracked

    def _defaults(self, node, st, module) -> dict:
        a = node.args
        pos = [*a.posonlyargs, *a.args]
        out = {p.arg: self.expr(d, st, module) for p, d in zip(pos[len(pos) - len(a.defaults):], a.defaults)}
        out.update({p.arg: self.expr(d, st, module) for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
        return out

    def _class(self, node, st, module, where):
        bases = [ast.unparse(b) for b in node.bases]
        if any(b.split(".")[-1] in ("Enum", "IntEnum", "StrEnum") for b in bases):
            members = {}
            for s in node.body:
                if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name):
                    v = self.expr(s.value, st, module)
                    if not _has_unknown(v):
                        members[s.targets[0].id] = v
            kind = str if "str" in bases else int if "int" in bases or "IntEnum" in bases else None
            return enum.Enum(node.name, members, type=kind) if members else unknown(why=f"class {node.name} ({where})")
        return unknown(why=f"class {node.name} ({where})")

    def _import(self, node, st, module):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name if alias.asname else alias.name.split(".")[0]
                st.local[alias.asname or top] = self.resolve(module, top if not alias.asname else alias.name, None)
            return
        base = node.module or ""
        if node.level:
            pkg = module.path[:-3].replace("/", ".").split(".")
            pkg = pkg[: len(pkg) - node.level] if not module.path.endswith("__init__.py") else \
                pkg[: len(pkg) - node.level]
            base = ".".join([*pkg, *([base] if base else [])])
        for alias in node.names:
            if alias.name == "*":
                continue
            st.local[alias.asname or alias.name] = self.resolve(module, base, alias.name)

    # ---- calls -----------------------------------------------------------------------------------
    def call(self, fn: Function, args: list, kwargs: dict, *, stop_after: int | None = None,
             top: bool = True) -> list[_State]:
        """Run ``fn``'s body with its parameters bound (missing ones unknown); ``stop_after``: only the
        body's statements up to that index. Returns the paths' states."""
        local = {}
        names = fn.params()
        for name, v in zip(names, args):
            local[name] = v
        for name in names:
            if name in kwargs:
                local[name] = kwargs[name]
            elif name not in local:
                local[name] = fn.defaults.get(name, unknown(why=f"{name}: parameter of {fn.node.name} ({fn.where})"))
        body = fn.node.body if stop_after is None else fn.node.body[: stop_after + 1]
        if top:
            self.steps = 0
        return self.run(body, [_State(local)], fn.module)

    def _call_value(self, fn: Function, args, kwargs, where):
        outer = self.steps
        self.steps = MAX_STEPS - NESTED_STEPS if self.steps < MAX_STEPS - NESTED_STEPS else self.steps
        self.depth += 1
        try:
            states = self.call(fn, args, kwargs, top=False)
        except Stop as exc:
            self.steps = outer
            self.depth -= 1
            return unknown(why=f"{fn.node.name}(): {exc} ({where})")
        self.steps = outer
        self.depth -= 1
        results = []
        for s in states:
            if s.outcome and s.outcome[0] == "raise":
                results.append(s.outcome[1])
            else:
                results.append(s.outcome[1] if s.outcome else None)
        value = combine(results, states)
        if isinstance(value, Raised) or (any(isinstance(r, Raised) for r in results) and not isinstance(value, Unknown)):
            # inside a nested call, a raise may come from what the stand-ins do not model: not trusted
            raised = next(r for r in results if isinstance(r, Raised))
            return unknown(why=f"{fn.node.name}() {raised.text()} (called at {where})")
        return value

    # ---- expressions -----------------------------------------------------------------------------
    def _name(self, name, st, module, where):
        if name in st.local:
            v = st.local[name]
        elif name in module.globals:
            v = module.globals[name]
            self.on_global_read(module, name)
        elif name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        else:
            return unknown(why=f"{name} ({where})")
        if isinstance(v, Lazy):
            if self.cheap and not v.done:
                return unknown(why=f"{name} (not computed yet)")
            v = v.value()
            st.local[name] = v
        return v

    def expr(self, node, st: _State, module: Module):
        where = f"{module.path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self._name(node.id, st, module, where)
        if isinstance(node, ast.Attribute):
            obj = self.expr(node.value, st, module)
            if isinstance(obj, Unknown):
                return obj
            try:
                return getattr(obj, node.attr)
            except (Unbound, AttributeError):
                return unknown(why=f"{ast.unparse(node)} ({where})")
        if isinstance(node, ast.BoolOp):
            return self._boolop(node, st, module)
        if isinstance(node, ast.UnaryOp):
            v = self.expr(node.operand, st, module)
            if isinstance(node.op, ast.Not):
                t = truth(v)
                return _unknowns(v) if t is None else not t
            return _apply(_UNOPS[type(node.op)], v, None, where, unary=True)
        if isinstance(node, ast.BinOp):
            return _apply(_BINOPS[type(node.op)], self.expr(node.left, st, module),
                          self.expr(node.right, st, module), where)
        if isinstance(node, ast.Compare):
            left = self.expr(node.left, st, module)
            for op, comp in zip(node.ops, node.comparators):
                right = self.expr(comp, st, module)
                r = _apply(_CMPOPS[type(op)], left, right, where)
                if truth(r) is False:
                    return r
                if isinstance(r, Unknown):
                    return r
                left = right
            return r
        if isinstance(node, ast.IfExp):
            test = self.expr(node.test, st, module)
            t = truth(test)
            if t is not None:
                return self.expr(node.body if t else node.orelse, st, module)
            a, b = self._guarded(node.body, st, module), self._guarded(node.orelse, st, module)
            if _same(a, b):
                return a
            return unknown(test, a, b, why=f"{ast.unparse(node.test)} ({where})")
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = [self.expr(e, st, module) for e in node.elts if not isinstance(e, ast.Starred)]
            if any(isinstance(e, ast.Starred) for e in node.elts):
                return unknown(why=f"{ast.unparse(node)} ({where})")
            if isinstance(node, ast.Set):
                return _unknowns(*items) if _has_unknown(items) else set(items)
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.Dict):
            keys = [self.expr(k, st, module) if k is not None else None for k in node.keys]
            vals = [self.expr(v, st, module) for v in node.values]
            if None in keys or _has_unknown(keys):
                return unknown(*keys, why=f"dict ({where})")
            return dict(zip(keys, vals))
        if isinstance(node, ast.Subscript):
            obj, key = self.expr(node.value, st, module), self.expr(node.slice, st, module)
            return _apply(operator.getitem, obj, key, where)
        if isinstance(node, ast.Slice):
            parts = [None if p is None else self.expr(p, st, module) for p in (node.lower, node.upper, node.step)]
            return _unknowns(*parts) if _has_unknown(parts) else slice(*parts)
        if isinstance(node, ast.Call):
            return self._call_expr(node, st, module, where)
        if isinstance(node, ast.JoinedStr):
            parts = [self.expr(v.value if isinstance(v, ast.FormattedValue) else v, st, module) for v in node.values]
            return _unknowns(*parts) if _has_unknown(parts) else "".join(str(p) for p in parts)
        if isinstance(node, ast.NamedExpr):
            v = self.expr(node.value, st, module)
            st.local[node.target.id] = v
            return v
        return unknown(why=f"{type(node).__name__} expression {ast.unparse(node)[:60]} ({where})")

    def _guarded(self, node, st, module):
        """An operand Python may not have evaluated: its exception makes it unknown, not an outcome."""
        try:
            return self.expr(node, st, module)
        except _CodeRaised as exc:
            return unknown(why=exc.raised.text())

    def _boolop(self, node, st, module):
        is_and = isinstance(node.op, ast.And)
        if len(node.values) > 1 and not self.cheap:
            # first without running deferred calls: an operand that decides (False for and, True for
            # or) decides in three-valued logic whatever the unknown ones before it turn out to be
            self.cheap = True
            try:
                for operand in node.values:
                    v = self._guarded(operand, st, module)
                    t = truth(v)
                    if t is not None and t is not is_and:
                        return v
                    if t is None:
                        continue
            finally:
                self.cheap = False
        pending = []
        v = None
        for operand in node.values:
            v = self._guarded(operand, st, module) if pending else self.expr(operand, st, module)
            t = truth(v)
            if t is None:
                pending.append(v)
            elif t is not is_and:  # decides: False for and, True for or
                return v
        return _unknowns(*pending) if pending else v

    def _call_expr(self, node, st, module, where):
        f = self.expr(node.func, st, module)
        args = []
        for a in node.args:
            if isinstance(a, ast.Starred):
                return unknown(why=f"*{ast.unparse(a.value)} ({where})")
            args.append(self.expr(a, st, module))
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                return unknown(why=f"**{ast.unparse(kw.value)} ({where})")
            kwargs[kw.arg] = self.expr(kw.value, st, module)
        if isinstance(f, Unknown):
            return f
        if isinstance(f, Function):
            return self._call_value(f, args, kwargs, where)
        if _has_unknown(args) or _has_unknown(kwargs):
            return _unknowns(*args, *kwargs.values())
        try:
            return f(*args, **kwargs)
        except Unbound:
            return unknown(why=f"{ast.unparse(node)[:80]} ({where})")
        except Exception as exc:  # noqa: BLE001
            if _real_callable(f):
                raise _CodeRaised(Raised(type(exc).__name__, str(exc), where)) from None
            return unknown(why=f"{ast.unparse(node)[:80]} ({where})")


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
