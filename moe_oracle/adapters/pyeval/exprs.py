"""Expressions: three-valued where a value is unknown, Python's own semantics where every operand is
known."""

from __future__ import annotations

import ast
import operator

from .values import (
    _BINOPS,
    _CMPOPS,
    _SAFE_BUILTINS,
    _UNOPS,
    Function,
    Lazy,
    Module,
    Raised,
    Unbound,
    Unknown,
    _apply,
    _CodeRaised,
    _has_unknown,
    _real_callable,
    _same,
    _State,
    _unknowns,
    truth,
    unknown,
)


class Expressions:
    """The expression half of :class:`~.Interpreter` (``self.cheap``, ``self._call_value`` are its)."""

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


