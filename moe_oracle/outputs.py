"""Machine-readable results for CI systems: JUnit XML (one testcase per check) and the JSON report."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

__all__ = ["checks", "write_junit", "json_report"]


def _case_name(r: dict) -> str:
    return (f"E{r['E']}-H{r['H']}-I{r['I']}-k{r['topk']} M={r['M']} {r['arch']} {r['gate_mode']} {r['scale_mode']}"
            + "".join(f" {k}={v}" for k, v in r["env"].items()))


def checks(rows, quant, stages, selector) -> list[tuple[str, str, str, str]]:
    """(suite, name, verdict, message) of every check, in report order."""
    out = [("quantizers", f"{c['kind']} {c['fmt']} {c['input_dtype']} {c['requested']}", c["verdict"], c["diagnosis"])
           for c in quant]
    out += [("stages", f"M={r['M']} E/K/N/k={r['E']}/{r['K']}/{r['N']}/{r['topk']} weight={r['mul_routed_weight']}",
             r["verdict"], r["diagnosis"]) for r in stages]
    out += [("moe", _case_name(r), r["verdict"], r.get("error") or "; ".join(r.get("diagnosis", ()))) for r in rows]
    out += [("dispatch", f"M={s['M']} {s['arch']} {s['gate_mode']} env={s['env']}", "PASS" if s["agree"] else "FAIL",
             f"selector {s['selector']}, it {s['impl']}") for s in selector]
    return out


def write_junit(path: Path, impl_name: str, items) -> None:
    """JUnit XML: a testsuite per part, a testcase per check; FAIL is a failure with the diagnosis,
    INTERP (differs only by the Triton interpreter's casts) passes with the reason in system-out."""
    root = ET.Element("testsuites", name=f"moe-oracle {impl_name}")
    for part in dict.fromkeys(s for s, *_ in items):
        mine = [i for i in items if i[0] == part]
        suite = ET.SubElement(root, "testsuite", name=f"moe-oracle.{part}", tests=str(len(mine)),
                              failures=str(sum(v == "FAIL" for _, _, v, _ in mine)), errors="0", skipped="0")
        for _, name, verdict, message in mine:
            case = ET.SubElement(suite, "testcase", classname=f"moe-oracle.{impl_name}.{part}", name=name)
            if verdict == "FAIL":
                ET.SubElement(case, "failure", message=message[:500]).text = message
            elif message:
                ET.SubElement(case, "system-out").text = f"{verdict}: {message}"
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def json_report(meta, rows, quant, stages, selector, passed: int, failed: int) -> str:
    return json.dumps({"meta": meta, "summary": {"passed": passed, "failed": failed}, "cases": rows,
                       "quantizers": quant, "stages": list(stages), "selector": selector}, default=str)
