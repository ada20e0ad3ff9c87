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
import enum

from .exprs import Expressions
from .values import (
    _BINOPS,
    MAX_PATHS,
    MAX_STEPS,
    NESTED_PATHS,
    NESTED_STEPS,
    Function,
    Lazy,
    Module,
    Raised,
    Stop,
    Unbound,
    Unknown,
    _apply,
    _assigned_names,
    _CodeRaised,
    _handler,
    _has_unknown,
    _receivers,
    _State,
    combine,
    truth,
    unknown,
)

__all__ = ["Unknown", "Raised", "Unbound", "Lazy", "Function", "Module", "Interpreter", "Stop", "truth", "combine",
           "unknown"]


class Interpreter(Expressions):
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

