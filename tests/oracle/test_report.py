"""``moe_oracle.report`` pinned directly: every column of the terminal table and of report.md for a passing
row, a row at the rounding step, an infinite margin, a row without err_at_worst and an error row; the
quantizer and stage tables; the quantization cost per path; report.json's keys and the plot's notes."""

from __future__ import annotations

import json
import sys

import pytest

from moe_oracle import report

BASE = dict(E=4, H=64, I=32, topk=2, arch="gfx950", gate_mode="separated", scale_mode="round_up", impl="mine",
            act_dtype="bf16", reported_act_dtype=None, reason="r", poison_sensitive=False, kernel_seconds=0.1,
            rel_err_ref=0.0, max_err_ideal=0.0, bound_max=1.0, nan_out=0, inf_out=0, n_outside=0, max_err_ulps=0.0,
            within_tolerance=True)
PASS = {**BASE, "M": 3, "env": {}, "path": "a16w4", "rule": 2, "bytes_equal": None, "bytes_total": None,
        "err_at_worst": 0.00125, "bound_at_worst": 0.0025, "max_err_ref": 0.0015, "margin": 0.5, "at_rounding_step": False,
        "rel_err_ideal": 0.0123, "quant_cost_rel": 0.00456, "verdict": "PASS", "diagnosis": ["within the bound"]}
STEP = {**PASS, "M": 300, "env": {"AITER_MOE_FORCE_BF16_ACT": "1", "B": "2"}, "path": "a4w4", "rule": 5,
        "bytes_equal": 510, "bytes_total": 512, "margin": 1.0, "at_rounding_step": True, "quant_cost_rel": 0.4,
        "diagnosis": ["first note", "second note"]}
FAIL = {**PASS, "M": 1024, "path": "a8w4", "rule": 1, "bytes_equal": 0, "bytes_total": 64, "margin": float("inf"),
        "quant_cost_rel": 0.05, "verdict": "FAIL", "diagnosis": ["only note"]}
NOWORST = {k: v for k, v in PASS.items() if k != "err_at_worst"}
NOWORST.update(M=7, margin=2.0, verdict="FAIL", max_err_ref=0.75, diagnosis=[])
ERROR = {"E": 4, "H": 64, "I": 32, "topk": 2, "M": 0, "arch": "gfx942", "env": {}, "gate_mode": "interleave",
         "scale_mode": "even", "impl": "mine", "verdict": "FAIL", "error": "it raised", "traceback": "tb"}
QUANT = [{"kind": "quantize_mxfp4", "fmt": "e2m1", "input_dtype": "bfloat16", "requested": "round_up", "bytes_equal": 30,
          "bytes_total": 32, "verdict": "FAIL", "diagnosis": "2 bytes differ"},
         {"kind": "dequant", "fmt": "e4m3", "input_dtype": "uint8", "requested": "-", "bytes_equal": 8, "bytes_total": 8,
          "verdict": "PASS", "diagnosis": "", "unit": "values"}]
STAGES = [{"M": 8, "E": 4, "K": 64, "N": 32, "topk": 2, "mul_routed_weight": True, "max_err": 0.5, "margin": 0.25,
           "verdict": "PASS", "diagnosis": "ok"},
          {"M": 300, "E": 4, "K": 64, "N": 32, "topk": 2, "mul_routed_weight": False, "max_err": 1.5, "margin": 3.5,
           "verdict": "FAIL", "diagnosis": "bad"}]
SELECTOR = [{"M": 64, "arch": "gfx950", "gate_mode": "separated", "env": {"A": "1"}, "selector": "fp4x2", "impl": "bf16",
             "agree": False}]
META = {"impl": "mine", "device": "cpu", "seed": 17, "archs_why": "because"}

TABLE = """\
E/H/I/k            M arch    env                        gate       scale      path  rule         bytes     err@w   bound@w   max err  margin   ideal   qcost verdict
--------------------------------------------------------------------------------------------------------------------------------------------------------------------
4/64/32/2        3 gfx950  -                          separated  round_up   a16w4    2             -  1.25e-03  2.50e-03  1.50e-03   0.500 1.2e-02 4.6e-03 PASS
4/64/32/2      300 gfx950  AITER_MOE_FORCE_BF16_ACT=1,B=2 separated  round_up   a4w4     5       510/512  1.25e-03  2.50e-03  1.50e-03  1 step 1.2e-02 4.0e-01 PASS
    - first note
    - second note
4/64/32/2     1024 gfx950  -                          separated  round_up   a8w4     1          0/64  1.25e-03  2.50e-03  1.50e-03     inf 1.2e-02 5.0e-02 FAIL
    - only note
4/64/32/2        7 gfx950  -                          separated  round_up   a16w4    2             -  7.50e-01  2.50e-03  7.50e-01   2.000 1.2e-02 4.6e-03 FAIL
4/64/32/2        0 gfx942  ERROR it raised"""

QUANT_TEXT = """\
quantize_mxfp4           e2m1     bfloat16  round_up       30/32     FAIL  2 bytes differ
dequant                  e4m3     uint8     -               8/8      PASS  """

STAGE_TEXT = """\
M=8     E/K/N/k=4/64/32/2 weight=yes err  5.00e-01 margin     0.25 PASS   ok
M=300   E/K/N/k=4/64/32/2 weight=no  err  1.50e+00 margin      3.5 FAIL   bad"""

MD_ROWS = """\
| E/H/I/topk | M | arch | env | gate | scale | path | rule | bytes equal | err at worst | bound at worst | max err | margin | rel err vs ideal | qcost | verdict | diagnosis |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| 4/64/32/2 | 3 | gfx950 | - | separated | round_up | a16w4 | 2 | - | 0.00125 | 0.0025 | 0.0015 | 0.500 | 0.0123 | 0.00456 | PASS | within the bound |
| 4/64/32/2 | 300 | gfx950 | AITER_MOE_FORCE_BF16_ACT=1,B=2 | separated | round_up | a4w4 | 5 | 510/512 | 0.00125 | 0.0025 | 0.0015 | 1 step | 0.0123 | 0.4 | PASS | first note; second note |
| 4/64/32/2 | 1024 | gfx950 | - | separated | round_up | a8w4 | 1 | 0/64 | 0.00125 | 0.0025 | 0.0015 | inf | 0.0123 | 0.05 | FAIL | only note |
| 4/64/32/2 | 0 | gfx942 | - | interleave | even | | | | | | | | | | FAIL | it raised |

## Quantizers

| quantizer | format | input | scale mode | equal (bytes or values) | verdict | diagnosis |
|---|---|---|---|---|---|---|
| quantize_mxfp4 | e2m1 | bfloat16 | round_up | 30/32 bytes | FAIL | 2 bytes differ |
| dequant | e4m3 | uint8 | - | 8/8 values | PASS |  |

## Its own dispatch against the selector

| M | arch | gate | env | selector | it | agree |
|---|---|---|---|---|---|---|
| 64 | gfx950 | separated | A=1 | fp4x2 | bf16 | False |
"""


def test_terminal_table():
    assert report.format_table([PASS, STEP, FAIL, NOWORST, ERROR]) == TABLE
    head = TABLE.splitlines()[0]
    assert report.format_table([]) == head + "\n" + "-" * len(head)


def test_margin_one_is_a_step_only_when_the_comparison_says_so():
    plain = {**PASS, "margin": 1.0, "at_rounding_step": False}
    assert "   1.000 " in report.format_table([plain]).splitlines()[2]
    flagged_past = {**PASS, "margin": 1.5, "at_rounding_step": True}  # the flag alone never says "1 step"
    assert "   1.500 " in report.format_table([flagged_past]).splitlines()[2]
    unflagged = {k: v for k, v in PASS.items() if k != "at_rounding_step"}
    assert "   0.500 " in report.format_table([unflagged]).splitlines()[2]


def test_quantizer_and_stage_tables():
    assert report.format_quantizers(QUANT) == QUANT_TEXT
    assert report.format_stages(STAGES) == STAGE_TEXT
    assert report.format_quantizers([]) == "" and report.format_stages([]) == ""


def test_quant_cost_by_path_is_the_largest_per_path_and_skips_errors():
    rows = [PASS, {**PASS, "quant_cost_rel": 0.001}, {**PASS, "quant_cost_rel": 0.009}, STEP, ERROR]
    assert report.quant_cost_by_path(rows) == {"a16w4": 0.009, "a4w4": 0.4}
    assert report.quant_cost_by_path([{**PASS, "quant_cost_rel": 0.0}]) == {"a16w4": 0.0}
    assert report.quant_cost_by_path([]) == {}


def test_report_files(tmp_path):
    said = []
    files = report.write(tmp_path / "out", [PASS, STEP, FAIL, ERROR], QUANT, SELECTOR, META, STAGES, say=said.append)
    out = tmp_path / "out"
    assert files == [out / "report.json", out / "report.md", out / "margin_vs_M.png"] and said == []
    assert (out / "margin_vs_M.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "report.json").read_text())
    assert data == json.loads(json.dumps({"meta": META, "cases": [PASS, STEP, FAIL, ERROR], "quantizers": QUANT,
                                          "stages": STAGES, "selector": SELECTOR}, default=str))
    assert (out / "report.json").read_text().startswith('{\n "meta": {\n  "impl"')  # indent=1
    md = (out / "report.md").read_text()
    head = ["# moe-oracle conformance report", "", "- implementation: mine", "- device: cpu",
            "- cases: 4 MoE, 2 quantizer; failed: 3", "- seed: 17", "- archs: because", "",
            report.LEGEND.replace("\n", " "), "",
            "Quantization cost per path (emulated reference vs float64 ideal, max relative): "
            "a16w4 0.00456, a4w4 0.4, a8w4 0.05", ""]
    assert md.startswith("\n".join(head) + "\n" + MD_ROWS)
    assert md[len("\n".join(head) + "\n" + MD_ROWS):] == (
        "\n## MoE GEMM stage\n\n| M | E/K/N/topk | routed weight | max err | margin | verdict | diagnosis |\n"
        "|---|---|---|---|---|---|---|\n| 8 | 4/64/32/2 | True | 0.5 | 0.25 | PASS | ok |\n"
        "| 300 | 4/64/32/2 | False | 1.5 | 3.5 | FAIL | bad |\n")


def test_report_md_without_sections(tmp_path):
    said = []
    report.write(tmp_path, [PASS], [], [], META, say=said.append)
    md = (tmp_path / "report.md").read_text()
    assert "- cases: 1 MoE, 0 quantizer; failed: 0" in md
    assert "## Quantizers" not in md and "## Its own dispatch" not in md and "## MoE GEMM stage" not in md
    assert md.endswith("| PASS | within the bound |\n")
    report.write(tmp_path / "q", [], QUANT[1:], [], META, say=said.append)
    md = (tmp_path / "q" / "report.md").read_text()
    assert "| E/H/I/topk |" not in md and "- cases: 0 MoE, 1 quantizer; failed: 0" in md
    assert "(emulated reference vs float64 ideal, max relative): \n" in md
    assert said == ["no case with M > 0: no plot written"]
    assert not (tmp_path / "q" / "margin_vs_M.png").exists()


@pytest.mark.parametrize("rows", [[], [ERROR], [{**PASS, "M": 0}]])
def test_no_plot_without_a_case_of_positive_M(tmp_path, rows):
    said = []
    files = report.write(tmp_path, rows, [], [], META, say=said.append)
    assert said == ["no case with M > 0: no plot written"] and len(files) == 2


def test_no_plot_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    said = []
    files = report.write(tmp_path, [PASS], [], [], META, say=said.append)
    assert said == ["matplotlib is not installed (pip install 'moe-oracle[plot]'): no plot written"]
    assert files == [tmp_path / "report.json", tmp_path / "report.md"]


def test_the_plot_draws_every_group_and_the_cap(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn, lines, texts = [], [], []
    scatter, axhline, text = matplotlib.axes.Axes.scatter, matplotlib.axes.Axes.axhline, matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", lambda self, x, y, **kw: drawn.append((list(x), list(y), kw))
                        or scatter(self, x, y, **kw))
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", lambda self, y, **kw: lines.append(y) or axhline(self, y, **kw))
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda self, x, y, s, **kw: texts.append((x, y, s))
                        or text(self, x, y, s, **kw))
    rows = [PASS, {**PASS, "M": 64, "margin": 0.0}, STEP, FAIL, ERROR]
    report.write(tmp_path, rows, [], [], META, say=lambda s: pytest.fail(s))
    # groups sorted by (path, arch): a16w4, a4w4, a8w4, offset side by side around M
    assert [d[2]["label"] for d in drawn] == ["a16w4 @ gfx950", "a4w4 @ gfx950", "a8w4 @ gfx950"]
    assert drawn[0][0] == [3 * 0.94, 64 * 0.94] and drawn[1][0] == [300.0] and drawn[2][0] == [1024 * 1.06]
    assert drawn[0][1] == [0.5, 1e-6] and drawn[1][1] == [1.0] and drawn[2][1] == [report.CAP]  # margin 0 and inf clipped
    assert [d[2]["marker"] for d in drawn] == ["o", "s", "D"]
    assert [d[2]["edgecolors"] for d in drawn] == ["C0", "C1", "C2"]
    assert lines == [report.CAP, 1.0, 1e-6]
    assert texts == [(3, report.CAP / 2, f">= {report.CAP:g} (or error where the bound is 0)"),
                     (3, 1.15, "bound (fails above)"), (3, 1e-6 * 1.3, "exact (error 0)")]
    lines.clear()
    report.write(tmp_path, [PASS], [], [], META, say=lambda s: pytest.fail(s))
    assert lines == [1.0, 1e-6]  # no cap line without a margin at the cap


def test_error_rows_anywhere_do_not_end_the_tables():
    table = report.format_table([ERROR, PASS]).splitlines()
    assert table[2].endswith("ERROR it raised") and table[3].startswith("4/64/32/2        3 gfx950")
    md = report._markdown([ERROR, PASS], [], [], META)
    assert "| FAIL | it raised |\n| 4/64/32/2 | 3 |" in md


def test_quant_cost_is_the_max_not_the_last():
    rows = [{**PASS, "quant_cost_rel": 0.009}, {**PASS, "quant_cost_rel": 0.001}, {**STEP, "quant_cost_rel": 0.2},
            {**STEP, "quant_cost_rel": 0.1}]
    assert report.quant_cost_by_path(rows) == {"a16w4": 0.009, "a4w4": 0.2}


def test_report_files_in_a_new_nested_folder_with_any_meta(tmp_path):
    out = tmp_path / "a" / "b" / "report"
    meta = {**META, "config": tmp_path / "cfg.json"}  # a Path: written as its text
    report.write(out, [PASS], [], [], meta, say=lambda s: None)
    assert json.loads((out / "report.json").read_text())["meta"]["config"] == str(tmp_path / "cfg.json")


class _Recorder:
    """Every drawing call the plot makes, with its arguments (the chart's specification)."""

    def __init__(self, monkeypatch):
        import matplotlib.axes
        import matplotlib.figure
        import matplotlib.pyplot as plt

        self.calls = []
        for name in ("scatter", "axhline", "text", "set_xscale", "set_yscale", "set_xlabel", "set_ylabel", "set_title",
                     "legend"):
            self._wrap(monkeypatch, matplotlib.axes.Axes, name)
        self._wrap(monkeypatch, matplotlib.figure.Figure, "savefig")
        self._wrap(monkeypatch, matplotlib.figure.Figure, "tight_layout")
        real_subplots, real_close = plt.subplots, plt.close
        monkeypatch.setattr(plt, "subplots", lambda *a, **kw: self.calls.append(("subplots", a, kw)) or
                            real_subplots(*a, **kw))
        monkeypatch.setattr(plt, "close", lambda fig=None: self.calls.append(("close", (type(fig).__name__,), {}))
                            or real_close(fig))

    def _wrap(self, monkeypatch, cls, name):
        real = getattr(cls, name)

        def spy(obj, *a, **kw):
            self.calls.append((name, tuple(str(x) if name == "savefig" else x for x in a), kw))
            return real(obj, *a, **kw)

        monkeypatch.setattr(cls, name, spy)


def test_the_plot_specification(tmp_path, monkeypatch):
    rec = _Recorder(monkeypatch)
    rows = [{**PASS, "M": 1}, {**PASS, "M": 64, "margin": 0.0}, STEP, {**FAIL, "margin": report.CAP},
            {**ERROR, "M": 5}]  # an error row with M > 0 is left out, not read
    report.write(tmp_path, rows, [], [], META, say=lambda s: pytest.fail(s))
    png = str(tmp_path / "margin_vs_M.png")
    scatter_kw = dict(facecolors="none")
    want = [
        ("subplots", (), {"figsize": (8, 4.5)}),
        ("scatter", ([1 * 0.94, 64 * 0.94], [0.5, 1e-6]),
         {"marker": "o", **scatter_kw, "edgecolors": "C0", "label": "a16w4 @ gfx950"}),
        ("scatter", ([300.0], [1.0]), {"marker": "s", **scatter_kw, "edgecolors": "C1", "label": "a4w4 @ gfx950"}),
        ("scatter", ([1024 * 1.06], [report.CAP]), {"marker": "D", **scatter_kw, "edgecolors": "C2",
                                                    "label": "a8w4 @ gfx950"}),
        ("axhline", (report.CAP,), {"color": "grey", "lw": 0.5, "ls": ":"}),  # a margin at the cap draws its line
        ("text", (1, report.CAP / 2, f">= {report.CAP:g} (or error where the bound is 0)"), {"fontsize": 7,
                                                                                             "color": "grey"}),
        ("axhline", (1.0,), {"color": "red", "lw": 1}),
        ("text", (1, 1.15, "bound (fails above)"), {"fontsize": 7, "color": "red"}),
        ("axhline", (1e-6,), {"color": "grey", "lw": 0.5, "ls": ":"}),
        ("text", (1, 1e-6 * 1.3, "exact (error 0)"), {"fontsize": 7, "color": "grey"}),
        ("set_xscale", ("log",), {}), ("set_yscale", ("log",), {}),
        ("set_xlabel", ("M (tokens; groups drawn side by side)",), {}),
        ("set_ylabel", ("margin = max(error / bound)",), {}),
        ("set_title", ("mine: error against the derived bound, per case (4 cases)",), {}),
        ("legend", (), {"fontsize": 7, "ncol": 2}),
        ("tight_layout", (), {}),
        ("savefig", (png,), {"dpi": 120}),
        ("close", ("Figure",), {}),
    ]
    got = [(n, tuple(list(x) if isinstance(x, list) else x for x in a), kw) for n, a, kw in rec.calls]
    assert got == want


def test_markers_and_colours_cycle_past_ten_groups(tmp_path, monkeypatch):
    rec = _Recorder(monkeypatch)
    archs = [f"sm{80 + i}" for i in range(12)]
    rows = [{**PASS, "arch": a} for a in archs]
    report.write(tmp_path, rows, [], [], META, say=lambda s: pytest.fail(s))
    drawn = [kw for n, _, kw in rec.calls if n == "scatter"]
    assert [kw["marker"] for kw in drawn] == list("osD^v<>ph*") + ["o", "s"]
    assert [kw["edgecolors"] for kw in drawn] == [f"C{i % 10}" for i in range(12)]
