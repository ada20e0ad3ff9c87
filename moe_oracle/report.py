"""The report: a terminal table with a legend, report.md, report.json and the margin plot."""

from __future__ import annotations

import json
from pathlib import Path

CAP = 1e4  # margins above (inf: an error where the bound is 0) are drawn on this line

__all__ = ["LEGEND", "format_table", "format_quantizers", "quant_cost_by_path", "write"]

LEGEND = """\
Legend: path a16w4 = bf16 activations, a4w4 = MXFP4 (fp4x2) activations, a8w4 = MXFP8 e4m3fn activations,
all with MXFP4 weights. rule = the selector's rule that decided (python -m moe_ref prints the table).
bytes = stage-1 quantized input bytes equal to the emulation's (n/N; '-' where the implementation does
not expose them). The worst element is the one of the largest err / bound: err@w = |out - emulated
reference| there and bound@w = the derived tolerance there (accumulation order only, NUMERICS.md section
11); max err = the largest |out - reference| anywhere (it may sit where the bound is larger).
margin = max(err / bound): PASS needs margin <= 1 and every byte equal. "1 step": margin exactly 1, the
output took the other bf16 rounding where the fp32 interval of every allowed order holds a rounding
boundary, the one step the bound grants there (a kernel whose fp32 sum differs in its last bits lands
there by design). inf: an error where the bound is 0 (no allowed order can change that output: it must
be equal). ideal = max relative error to the float64 ideal; qcost = the same for the emulated reference
itself: what the path's quantization costs, not the kernel (a4w4's ~0.3-0.5 is the format's)."""


def _env_text(env: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in env.items()) or "-"


def _margin_text(r) -> str:
    if r.get("at_rounding_step") and r["margin"] == 1.0:
        return "1 step"
    return "inf" if r["margin"] == float("inf") else f"{r['margin']:.3f}"


def _err_at_worst(r) -> float:
    return r.get("err_at_worst", r["max_err_ref"])


def _bytes_text(r) -> str:
    return "-" if r["bytes_total"] is None else f"{r['bytes_equal']}/{r['bytes_total']}"


def format_table(rows: list[dict]) -> str:
    head = (f"{'E/H/I/k':14s} {'M':>5s} {'arch':7s} {'env':26s} {'gate':10s} {'scale':10s} {'path':5s} {'rule':>4s} "
            f"{'bytes':>13s} {'err@w':>9s} {'bound@w':>9s} {'max err':>9s} {'margin':>7s} {'ideal':>7s} {'qcost':>7s} "
            f"verdict")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['E']}/{r['H']}/{r['I']}/{r['topk']:<4} {r['M']:5d} {r['arch']:7s} ERROR {r['error']}")
            continue
        lines.append(
            f"{r['E']}/{r['H']}/{r['I']}/{r['topk']:<4} {r['M']:5d} {r['arch']:7s} {_env_text(r['env']):26s} "
            f"{r['gate_mode']:10s} {r['scale_mode']:10s} {r['path']:5s} {r['rule']:4d} {_bytes_text(r):>13s} "
            f"{_err_at_worst(r):9.2e} {r['bound_at_worst']:9.2e} {r['max_err_ref']:9.2e} {_margin_text(r):>7s} "
            f"{r['rel_err_ideal']:7.1e} "
            f"{r['quant_cost_rel']:7.1e} {r['verdict']}")
        if r["verdict"] != "PASS" or len(r["diagnosis"]) > 1:
            lines += [f"    - {d}" for d in r["diagnosis"]]
    return "\n".join(lines)


def format_quantizers(checks: list[dict]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{c['kind']:24s} {c['fmt']:8s} {c['input_dtype']:9s} {c['requested']:10s} "
                     f"{c['bytes_equal']:>6d}/{c['bytes_total']:<6d} {c['verdict']}  {c['diagnosis']}")
    return "\n".join(lines)


def format_stages(stages: list[dict]) -> str:
    lines = []
    for r in stages:
        lines.append(f"M={r['M']:<5d} E/K/N/k={r['E']}/{r['K']}/{r['N']}/{r['topk']} weight={'yes' if r['mul_routed_weight'] else 'no ':3s} "
                     f"err {r['max_err']:9.2e} margin {r['margin']:8.3g} {r['verdict']:6s} {r['diagnosis']}")
    return "\n".join(lines)


def quant_cost_by_path(rows: list[dict]) -> dict:
    """Per path: the largest relative error of the emulated reference to the ideal (the format's cost)."""
    cost = {}
    for r in rows:
        if "error" not in r:
            cost[r["path"]] = max(cost.get(r["path"], 0.0), r["quant_cost_rel"])
    return cost


def _markdown(rows, quant, selector, meta) -> str:
    n_fail = sum(r.get("verdict") != "PASS" for r in rows) + sum(c["verdict"] != "PASS" for c in quant)
    lines = ["# moe-oracle conformance report", "", f"- implementation: {meta['impl']}", f"- device: {meta['device']}",
             f"- cases: {len(rows)} MoE, {len(quant)} quantizer; failed: {n_fail}", f"- seed: {meta['seed']}",
             f"- archs: {meta['archs_why']}", "", LEGEND.replace("\n", " "), "",
             "Quantization cost per path (emulated reference vs float64 ideal, max relative): "
             + ", ".join(f"{p} {c:.3g}" for p, c in sorted(quant_cost_by_path(rows).items())), ""]
    if rows:
        lines += ["| E/H/I/topk | M | arch | env | gate | scale | path | rule | bytes equal | err at worst | "
                  "bound at worst | max err | margin | rel err vs ideal | qcost | verdict | diagnosis |",
                  "|" + "---|" * 17]
        for r in rows:
            shape = f"{r['E']}/{r['H']}/{r['I']}/{r['topk']}"
            if "error" in r:
                lines.append(f"| {shape} | {r['M']} | {r['arch']} | {_env_text(r['env'])} | {r['gate_mode']} | "
                             f"{r['scale_mode']} | | | | | | | | | | FAIL | {r['error']} |")
                continue
            lines.append(
                f"| {shape} | {r['M']} | {r['arch']} | {_env_text(r['env'])} | {r['gate_mode']} | {r['scale_mode']} | "
                f"{r['path']} | {r['rule']} | {_bytes_text(r)} | {_err_at_worst(r):.3g} | {r['bound_at_worst']:.3g} | "
                f"{r['max_err_ref']:.3g} | {_margin_text(r)} | {r['rel_err_ideal']:.3g} | {r['quant_cost_rel']:.3g} | "
                f"{r['verdict']} | {'; '.join(r['diagnosis'])} |")
    if quant:
        lines += ["", "## Quantizers", "", "| quantizer | format | input | scale mode | equal (bytes or values) | verdict | diagnosis |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {c['kind']} | {c['fmt']} | {c['input_dtype']} | {c['requested']} | {c['bytes_equal']}/"
                  f"{c['bytes_total']} {c.get('unit', 'bytes')} | {c['verdict']} | {c['diagnosis']} |" for c in quant]
    if selector:
        lines += ["", "## Its own dispatch against the selector", "", "| M | arch | gate | env | selector | it | agree |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['M']} | {s['arch']} | {s['gate_mode']} | {_env_text(s['env'])} | {s['selector']} | {s['impl']} | "
                  f"{s['agree']} |" for s in selector]
    return "\n".join(lines) + "\n"


def _plot(rows, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'moe-oracle[plot]'): no plot written"
    rows = [r for r in rows if "error" not in r and r["M"] > 0]
    if not rows:
        return "no case with M > 0: no plot written"
    fig, ax = plt.subplots(figsize=(8, 4.5))
    floor = 1e-6  # margin 0 (exact agreement) is drawn on this line
    groups = sorted({(r["path"], r["arch"]) for r in rows})
    markers = "osD^v<>ph*"
    for i, (path_name, arch) in enumerate(groups):
        sel = [r for r in rows if (r["path"], r["arch"]) == (path_name, arch)]
        offset = 1.0 + 0.06 * (i - (len(groups) - 1) / 2)  # side by side, none hidden under another
        ax.scatter([r["M"] * offset for r in sel], [min(max(r["margin"], floor), CAP) for r in sel], marker=markers[i % 10],
                   facecolors="none", edgecolors=f"C{i % 10}", label=f"{path_name} @ {arch}")
    if any(r["margin"] >= CAP for r in rows):
        ax.axhline(CAP, color="grey", lw=0.5, ls=":")
        ax.text(min(r["M"] for r in rows), CAP / 2, f">= {CAP:g} (or error where the bound is 0)", fontsize=7, color="grey")
    ax.axhline(1.0, color="red", lw=1)
    ax.text(min(r["M"] for r in rows), 1.15, "bound (fails above)", fontsize=7, color="red")
    ax.axhline(floor, color="grey", lw=0.5, ls=":")
    ax.text(min(r["M"] for r in rows), floor * 1.3, "exact (error 0)", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("M (tokens; groups drawn side by side)")
    ax.set_ylabel("margin = max(error / bound)")
    ax.set_title(f"{rows[0]['impl']}: error against the derived bound, per case ({len(rows)} cases)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write(out: Path, rows, quant, selector, meta, stages=(), say=print) -> list[Path]:
    """report.json, report.md and margin_vs_M.png under ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.json", out / "report.md"]
    files[0].write_text(json.dumps({"meta": meta, "cases": rows, "quantizers": quant, "stages": list(stages),
                                    "selector": selector}, indent=1, default=str))
    text = _markdown(rows, quant, selector, meta)
    if stages:
        text += ("\n## MoE GEMM stage\n\n| M | E/K/N/topk | routed weight | max err | margin | verdict | diagnosis |\n"
                 "|---|---|---|---|---|---|---|\n" + "".join(
                     f"| {r['M']} | {r['E']}/{r['K']}/{r['N']}/{r['topk']} | {r['mul_routed_weight']} | {r['max_err']:.3g} | "
                     f"{r['margin']:.3g} | {r['verdict']} | {r['diagnosis']} |\n" for r in stages))
    files[1].write_text(text)
    note = _plot(rows, out / "margin_vs_M.png")
    if note is None:
        files.append(out / "margin_vs_M.png")
    else:
        say(note)
    return files
