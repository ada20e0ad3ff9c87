"""AITER's dispatch against the one selector, three ways: ``select_activation_dtype``, AITER's runtime
rule (evaluated from its source: :mod:`moe_oracle.adapters.aiter_dispatch`) and each copy of the rule
in AITER's tests, over a matrix read from the code (M on both sides of every bound, archs, gate
modes, activations, weight dtypes, every environment knob in the spellings users type, set before
import or after it)."""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from dataclasses import dataclass

from moe_ref import select_activation_dtype
from moe_ref.env import ENV_VARS
from moe_ref.selector import ACTIVATIONS, WEIGHT_DTYPES

from .adapters.aiter_dispatch import AiterEvaluator, Case, Located, answer_text, locate
from .adapters.sources import SourceTree

__all__ = ["Matrix", "derive_matrix", "check", "kind", "group_differences", "format_report", "SPELLINGS",
           "selector_answer", "exit_status"]

SPELLINGS = ("1", "0", "", "true", " 1", "01")  # "unset" is the base case
BASE_ARCHS = ("gfx942", "gfx950", "gfx1250")
BASE_ACTIVATIONS = ("Swiglu", "Silu", "Gelu")
GATES = ("SEPARATED", "INTERLEAVE")


@dataclass(frozen=True)
class Matrix:
    Ms: tuple[int, ...]
    archs: tuple[str, ...]
    activations: tuple[str, ...]
    weight_dtypes: tuple[str, ...]
    shuffled: tuple[bool, ...]
    knobs: tuple[str, ...]
    knob_sources: dict  # knob -> where it is named ("runtime", a copy's name, "selector")

    def cases(self):
        """(Case, env, timing): the base cases (no environment), then each knob in each spelling with
        fp4x2 weights, set before import and after it."""
        for M, arch, act, gate, w, sh in itertools.product(self.Ms, self.archs, self.activations, GATES,
                                                           self.weight_dtypes, self.shuffled):
            yield Case(M, arch, act, gate, w, sh), {}, "-"
        for knob, value, timing in itertools.product(self.knobs, SPELLINGS, ("import", "call")):
            for M, arch, act, gate in itertools.product(self.Ms, self.archs, self.activations, GATES):
                yield Case(M, arch, act, gate, "fp4x2", False, ((knob, value),)), {knob: value}, timing


def _functions_of(tree: SourceTree, located: Located) -> list[ast.AST]:
    sites = [located.rule, *([located.keep] if located.keep else []), *located.copies]
    out = []
    for site in sites:
        module = ast.parse(tree.read(site.path))
        out += [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == site.name]
        used = {n.id for f in out for n in ast.walk(f) if isinstance(n, ast.Name)}
        out += [n for n in module.body if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id in used for t in n.targets)]
    return out


def derive_matrix(tree: SourceTree, located: Located) -> Matrix:
    """Everything the rule, its override and its copies branch on, with the selector's own values."""
    from .adapters.aiter_locate import env_names

    nodes = _functions_of(tree, located)
    bounds, archs, acts, weights = {256, 512}, set(BASE_ARCHS), list(BASE_ACTIVATIONS), {"fp4x2"}
    sources = defaultdict(list)
    for node in nodes:
        label = getattr(node, "name", "runtime")
        label = "runtime" if label in (located.rule.name, getattr(located.keep, "name", None)) else label
        for name in env_names(node):
            sources[name].append(f"{label} per call" if isinstance(node, ast.FunctionDef)
                                 else "runtime at import (module constant)")
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                if sub.value.strip().isdigit():
                    bounds.add(int(sub.value))
                elif sub.value.startswith("gfx") and sub.value[3:].isalnum():
                    archs.add(sub.value)
            if isinstance(sub, ast.Compare) and any(isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)) for op in sub.ops):
                bounds.update(c.value for c in (sub.left, *sub.comparators)
                              if isinstance(c, ast.Constant) and isinstance(c.value, int) and c.value > 1)
            if isinstance(sub, ast.Attribute) and ast.unparse(sub.value).split(".")[-1] == "ActivationType" \
                    and sub.attr not in acts and sub.attr != "value":
                acts.append(sub.attr)
            if isinstance(sub, ast.Compare) and ast.unparse(sub.left) in ("q_dtype_w", "w1.dtype", "wq_dtype"):
                for c in sub.comparators:
                    weights.update(n.attr for n in ast.walk(c) if isinstance(n, ast.Attribute)
                                   and ast.unparse(n.value) == "dtypes")
    acts += [a for site in located.copies for a in site.activations if a not in acts]  # the copies' guards
    for var in ENV_VARS.values():
        for name in (var.name, var.legacy):
            if name:
                sources[name].append("selector")
    Ms = sorted({0, 1, 8192} | {m for b in bounds if b < 1 << 20 for m in (b - 1, b) if m >= 0})
    shuffled = (False, True) if any("is_shuffled" in ast.unparse(n) for n in nodes) else (False,)
    return Matrix(tuple(Ms), tuple(sorted(archs)), tuple(acts), tuple(sorted(weights)), shuffled,
                  tuple(sorted(sources)), {k: sorted(set(v)) for k, v in sources.items()})


def selector_answer(case: Case, env: dict) -> str | None:
    act = case.activation.lower()
    if act not in ACTIVATIONS:
        return f"n/a: the selector does not know activation {case.activation}"
    if case.weight_dtype not in WEIGHT_DTYPES:
        return f"n/a: the selector does not know weight dtype {case.weight_dtype}"
    try:
        return select_activation_dtype(case.M, arch=case.arch, weight_dtype=case.weight_dtype, activation=act,
                                       gate_mode=case.gate_mode.lower(), env=env).dtype
    except ValueError as exc:
        return f"refuses: {exc}"


def kind(answer: str | None) -> str | None:
    """What is compared: a dtype, "error" (raises / refuses), "undecided", or None (no answer)."""
    if answer is None or answer.startswith("n/a"):
        return None
    if answer.startswith(("raises", "refuses")):
        return "error"
    return "undecided" if answer.startswith("undecided") else answer


def check(tree: SourceTree, located: Located | None = None, matrix: Matrix | None = None,
          progress=None) -> tuple[list[dict], Matrix, Located]:
    """One row per case of the matrix (see :class:`Matrix`)."""
    located = located or locate(tree)
    matrix = matrix or derive_matrix(tree, located)
    evaluators: dict = {}
    rows = []
    for case, env, timing in matrix.cases():
        import_env = env if timing == "import" else {}
        key = tuple(sorted(import_env.items()))
        if key not in evaluators:
            evaluators[key] = AiterEvaluator(tree, located, import_env)
        ev = evaluators[key]
        runtime, call_reads, import_reads = ev.runtime(case, env)  # the knobs this answer read, and when
        copies = {site.name: answer_text(ev.copy(site, case, env)[0])
                  if not site.activations or case.activation in site.activations else None
                  for site in located.copies}
        selector = selector_answer(case, env)
        row = dict(M=case.M, arch=case.arch, gate_mode=case.gate_mode.lower(), activation=case.activation,
                   weight_dtype=case.weight_dtype, shuffled=case.shuffled, env=dict(env), env_timing=timing,
                   selector=selector, runtime=answer_text(runtime), copies=copies,
                   runtime_read={"call": sorted(call_reads), "import": sorted(import_reads)})
        kinds = {kind(a) for a in (selector, row["runtime"], *copies.values())} - {None}
        row["differ"] = len(kinds) > 1
        sel = kind(selector)
        row["disagrees"] = sel is not None and any(kind(a) not in (None, sel) for a in (row["runtime"], *copies.values()))
        rows.append(row)
        if progress:
            progress(len(rows))
    return rows, matrix, located


def exit_status(rows: list[dict]) -> int:
    return 1 if any(r["disagrees"] for r in rows) else 0


def _ms(values) -> str:
    values = sorted(set(values))
    return ", ".join(str(v) for v in values) if len(values) <= 4 else f"{values[0]}..{values[-1]} ({len(values)} values)"


def group_differences(rows: list[dict]) -> list[dict]:
    """Rows where any two answers differ, grouped by cause: the environment (knob, spelling, when
    set), activation, gate mode, weights, and the answers; M and archs are collected per group."""
    groups: dict = {}
    for r in rows:
        if not r["differ"]:
            continue
        env = ", ".join(f"{k}={v!r}" for k, v in r["env"].items())
        cause = f"{env} ({'set before import' if r['env_timing'] == 'import' else 'set after import'})" if env \
            else "environment unset"
        key = (cause, _short(r["selector"]), _short(r["runtime"]), tuple((k, _short(v)) for k, v in r["copies"].items()))
        g = groups.setdefault(key, dict(cause=cause, selector=r["selector"], runtime=r["runtime"], copies=r["copies"],
                                        activations=set(), gates=set(), weights=set(), Ms=set(), archs=set(), cases=0))
        g["activations"].add(r["activation"])
        g["gates"].add(r["gate_mode"])
        g["weights"].add(r["weight_dtype"] + (" shuffled" if r["shuffled"] else ""))
        g["Ms"].add(r["M"])
        g["archs"].add(r["arch"])
        g["cases"] += 1
    return sorted(groups.values(), key=lambda g: (g["cause"] != "environment unset", g["cause"], min(g["Ms"])))


def _short(answer: str | None, width: int = 60) -> str:
    if answer is None:
        return "no answer"
    return answer if len(answer) <= width else answer[: width - 3] + "..."


def format_report(rows: list[dict], matrix: Matrix, located: Located, label: str, *, markdown: bool = False,
                  limit: int | None = None) -> str:
    copies = [s.name for s in located.copies]
    lines = [f"AITER dispatch at {label}: the rule is {located.rule.name} ({located.rule.where})"
             + (f", the activations-kept override in {located.keep.name} ({located.keep.where})" if located.keep else "")
             + (f"; copies: {', '.join(f'{s.name} ({s.where})' for s in located.copies)}" if copies else "; no copies"),
             "knobs: " + "; ".join(f"{k} [{', '.join(v)}]" for k, v in matrix.knob_sources.items()),
             f"matrix: M {list(matrix.Ms)}; archs {list(matrix.archs)}; activations {list(matrix.activations)}; "
             f"gates {[g.lower() for g in GATES]}; weights {list(matrix.weight_dtypes)}; shuffled {list(matrix.shuffled)}; "
             f"spellings {[*SPELLINGS, 'unset']} set before / after import"]
    groups = group_differences(rows)
    head = ["cause", "activation", "gate", "weights", "M", "arch", "cases", "selector", "runtime", *copies]
    body = [[g["cause"], ", ".join(sorted(g["activations"])), ", ".join(sorted(g["gates"])),
             ", ".join(sorted(g["weights"])), _ms(g["Ms"]), ", ".join(sorted(g["archs"])), str(g["cases"]),
             _short(g["selector"]), _short(g["runtime"]), *[_short(g["copies"].get(c)) for c in copies]]
            for g in groups]
    if limit is not None and len(body) > limit:
        body = body[:limit] + [["...", f"{len(groups) - limit} more groups in report.md / report.json"]
                               + [""] * (len(head) - 2)]
    if markdown:
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        lines += ["", "  ".join(h.ljust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    n_bad = sum(r["disagrees"] for r in rows)
    lines += ["", f"{len(rows)} cases, {sum(r['differ'] for r in rows)} where two answers differ "
                  f"({len(groups)} groups); {n_bad} where the runtime or a copy disagrees with the selector"]
    return "\n".join(lines)
