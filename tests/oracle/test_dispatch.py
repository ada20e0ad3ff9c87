"""AITER's dispatch read from source trees in AITER's shape, written here: the rule in different
functions at different "commits", an import-time constant, a test copy that misses a knob, a
substring-membership env test, an unbindable name, a git history built in a temp folder, and the
pinned wheel. Nothing of AITER's own code is copied: these trees are ours, in its layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from moe_oracle import dispatch_check as dc
from moe_oracle.adapters.aiter_dispatch import AiterEvaluator, Case, answer_text, locate
from moe_oracle.adapters.sources import git_tree, open_tree
from moe_oracle.dispatch_history import history

ROOT = Path(__file__).resolve().parents[2]

HEADER = '''
import os
import torch
from aiter import ActivationType, QuantType, dtypes
from aiter.jit.utils.chip_info import get_gfx
from aiter.ops.flydsl.moe_common import GateMode
'''

# "commit 1": the rule inside fused_moe_, the bound read at call time, the fp8 bound default 256
RULE_IN_FUSED_MOE = HEADER + '''
_SWIGLU_BOUND = int(os.environ.get("GPTOSS_SWIGLU_MXFP4_BF16_BOUND", "256"))


def fused_moe(hidden_states, w1, w2, topk_weight, topk_ids, activation=ActivationType.Silu.value,
              quant_type=QuantType.No.value, gate_mode=GateMode.SEPARATED.value):
    return fused_moe_(hidden_states, w1, w2, topk_weight, topk_ids, activation=activation,
                      quant_type=quant_type, gate_mode=gate_mode)


def fused_moe_(hidden_states, w1, w2, topk_weight, topk_ids, activation=ActivationType.Silu.value,
               quant_type=QuantType.No.value, gate_mode=GateMode.SEPARATED.value):
    activation = ActivationType(activation)
    quant_type = QuantType(quant_type)
    gate_mode = GateMode(gate_mode)
    M, topk = topk_ids.shape
    q_dtype_a = w1.dtype
    bf16_fp8_bound = int(os.environ.get("AITER_BF16_FP8_MOE_BOUND", "256"))
    force = os.environ.get("AITER_MOE_FORCE_BF16_ACT", "0") == "1"
    if quant_type == QuantType.per_1x32:
        if activation == ActivationType.Swiglu and gate_mode == GateMode.SEPARATED:
            q_dtype_a = dtypes.bf16 if force or M < _SWIGLU_BOUND else dtypes.fp4x2
        elif activation == ActivationType.Swiglu or gate_mode == GateMode.INTERLEAVE:
            if force or get_gfx() != "gfx950" or M < bf16_fp8_bound:
                q_dtype_a = dtypes.bf16
            else:
                q_dtype_a = dtypes.fp8
        else:
            q_dtype_a = dtypes.fp4x2
    if get_gfx() == "gfx1250":
        if os.environ.get("AITER_FORCE_A8W4", "0") in ("1"):
            q_dtype_a = dtypes.fp8
        else:
            q_dtype_a = dtypes.fp4x2
    return fused_moe_2stages(hidden_states, w1, w2, topk, activation=activation, quant_type=quant_type,
                             q_dtype_a=q_dtype_a, gate_mode=gate_mode)


def fused_moe_2stages(hidden_states, w1, w2, topk, activation=None, quant_type=None, q_dtype_a=None,
                      gate_mode=None):
    metadata = get_2stage_cfgs(q_dtype_a)
    is_shuffled = getattr(w1, "is_shuffled", False)
    dtype = hidden_states.dtype
    if not metadata.prequant:
        a1 = hidden_states
    elif quant_type == QuantType.per_1x32 and (
        q_dtype_a in [dtypes.bf16] and activation == ActivationType.Swiglu
        or (q_dtype_a in [dtypes.fp4x2] and metadata.ksplit > 1 and is_shuffled)
    ):
        a1 = hidden_states.to(dtype)
    else:
        a1 = quantize(hidden_states, q_dtype_a)
    return a1


def get_2stage_cfgs(q_dtype_a):
    return lookup_tuned_config(q_dtype_a)
'''

# "commit 2": the same rule moved into _fused_moe_impl, fused_moe_ only forwards
RULE_IN_IMPL = RULE_IN_FUSED_MOE.replace("def fused_moe_(", "def _fused_moe_impl(").replace(
    "def fused_moe(", '''def fused_moe_(hidden_states, w1, w2, topk_weight, topk_ids, activation=ActivationType.Silu.value,
               quant_type=QuantType.No.value, gate_mode=GateMode.SEPARATED.value):
    return _fused_moe_impl(hidden_states, w1, w2, topk_weight, topk_ids, activation=activation,
                           quant_type=quant_type, gate_mode=gate_mode)


def fused_moe(''').replace("return fused_moe_(hidden_states", "return _fused_moe_impl(hidden_states")

# the tests' copy: knows the bounds (reads both at call time), not the force flag, not gfx1250
COPY = '''
import os
import aiter
from aiter import dtypes
from aiter.jit.utils.chip_info import get_gfx


def _runtime_swiglu_mxfp4_q_dtype_a(token, act_type, gate_mode, q_type, aq_dtype, wq_dtype):
    if act_type != aiter.ActivationType.Swiglu:
        return None
    if q_type != aiter.QuantType.per_1x32 or wq_dtype != dtypes.fp4x2:
        return None
    if str(gate_mode).lower() == "separated":
        bound = int(os.environ.get("GPTOSS_SWIGLU_MXFP4_BF16_BOUND", "256"))
        return dtypes.bf16 if token < bound else dtypes.fp4x2
    bound = int(os.environ.get("AITER_BF16_FP8_MOE_BOUND", "256"))
    return dtypes.bf16 if get_gfx() != "gfx950" or token < bound else dtypes.fp8
'''


def write_tree(root: Path, fused_moe: str, copy: str | None = COPY) -> Path:
    (root / "aiter").mkdir(parents=True, exist_ok=True)
    (root / "aiter" / "__init__.py").write_text("")
    (root / "aiter" / "fused_moe.py").write_text(textwrap.dedent(fused_moe))
    if copy is not None:
        (root / "op_tests").mkdir(exist_ok=True)
        (root / "op_tests" / "test_moe_2stage.py").write_text(textwrap.dedent(copy))
    return root


def _runtime(tree, case, env=None, import_env=None):
    ev = AiterEvaluator(tree, locate(tree), import_env or {})
    return answer_text(ev.runtime(case, env or {})[0])


@pytest.mark.parametrize("source, function", [(RULE_IN_FUSED_MOE, "fused_moe_"), (RULE_IN_IMPL, "_fused_moe_impl")])
def test_the_rule_is_found_wherever_it_lives_and_evaluated(tmp_path, source, function):
    tree = open_tree(write_tree(tmp_path, source))
    located = locate(tree)
    assert located.rule.name == function and located.keep.name == "fused_moe_2stages"
    assert [s.name for s in located.copies] == ["_runtime_swiglu_mxfp4_q_dtype_a"]
    assert _runtime(tree, Case(255, "gfx950")) == "bf16"
    assert _runtime(tree, Case(256, "gfx950")) == "fp4x2"
    assert _runtime(tree, Case(256, "gfx950", gate_mode="INTERLEAVE")) == "fp8"
    assert _runtime(tree, Case(8192, "gfx942", gate_mode="INTERLEAVE")) == "bf16"
    assert _runtime(tree, Case(8192, "gfx950", activation="Silu")) == "fp4x2"


def test_import_time_constant_sees_only_the_environment_of_the_import(tmp_path):
    tree = open_tree(write_tree(tmp_path, RULE_IN_FUSED_MOE))
    env = {"GPTOSS_SWIGLU_MXFP4_BF16_BOUND": "1024"}
    assert _runtime(tree, Case(512, "gfx950"), env=env, import_env=env) == "bf16"  # set before import
    assert _runtime(tree, Case(512, "gfx950"), env=env) == "fp4x2"  # set after import: the constant kept 256
    env = {"AITER_BF16_FP8_MOE_BOUND": "1024"}  # read per call: both timings see it
    for import_env in (env, {}):
        assert _runtime(tree, Case(512, "gfx950", gate_mode="INTERLEAVE"), env=env, import_env=import_env) == "bf16"


def test_an_import_that_raises_is_the_answer_of_every_call(tmp_path):
    tree = open_tree(write_tree(tmp_path, RULE_IN_FUSED_MOE))
    env = {"GPTOSS_SWIGLU_MXFP4_BF16_BOUND": "true"}
    text = _runtime(tree, Case(1, "gfx950", activation="Silu"), env=env, import_env=env)
    assert text.startswith("raises ValueError") and "(at import)" in text and "aiter/fused_moe.py:" in text
    assert _runtime(tree, Case(1, "gfx950", activation="Silu"), env=env) == "fp4x2"  # set after import: ignored


def test_substring_membership_takes_the_empty_string_as_set(tmp_path):
    tree = open_tree(write_tree(tmp_path, RULE_IN_FUSED_MOE))
    assert _runtime(tree, Case(1, "gfx1250"), env={"AITER_FORCE_A8W4": ""}) == "fp8"
    assert _runtime(tree, Case(1, "gfx1250"), env={"AITER_FORCE_A8W4": " 1"}) == "fp4x2"
    assert dc.selector_answer(Case(1, "gfx1250"), {"AITER_FORCE_A8W4": ""}).startswith("refuses")


def test_a_name_that_cannot_be_bound_is_named_with_its_line_never_guessed(tmp_path):
    """Shuffled fp4x2 weights: the override needs the tuned config's ksplit; unshuffled ones do not."""
    tree = open_tree(write_tree(tmp_path, RULE_IN_FUSED_MOE))
    assert _runtime(tree, Case(512, "gfx950")) == "fp4x2"
    text = _runtime(tree, Case(512, "gfx950", shuffled=True))
    assert text.startswith("undecided: needs") and "lookup_tuned_config" in text and "aiter/fused_moe.py:" in text
    assert _runtime(tree, Case(1, "gfx950", shuffled=True)) == "bf16"  # decided without the config


def test_three_way_table_groups_every_difference_by_cause(tmp_path):
    tree = open_tree(write_tree(tmp_path, RULE_IN_FUSED_MOE))
    rows, matrix, located = dc.check(tree)
    assert {"AITER_MOE_FORCE_BF16_ACT", "AITER_BF16_FP8_MOE_BOUND", "GPTOSS_SWIGLU_MXFP4_BF16_BOUND",
            "AITER_MOE_BF16_FP8_BOUND", "AITER_FORCE_A8W4"} <= set(matrix.knobs)
    assert {255, 256, 511, 512} <= set(matrix.Ms) and "gfx1250" in matrix.archs and matrix.shuffled == (False, True)
    assert matrix.knob_sources["GPTOSS_SWIGLU_MXFP4_BF16_BOUND"] == [
        "_runtime_swiglu_mxfp4_q_dtype_a per call", "runtime at import (module constant)", "selector"]
    assert matrix.knob_sources["AITER_MOE_BF16_FP8_BOUND"] == ["selector"]  # AITER never reads the selector's name
    separated = next(r for r in rows if r["M"] == 256 and r["activation"] == "Swiglu" and not r["env"]
                     and r["gate_mode"] == "separated" and r["arch"] == "gfx950" and not r["shuffled"])
    assert separated["runtime_read"] == {"call": ["AITER_BF16_FP8_MOE_BOUND", "AITER_MOE_FORCE_BF16_ACT"],
                                         "import": ["GPTOSS_SWIGLU_MXFP4_BF16_BOUND"]}  # gfx950: not A8W4
    row = next(r for r in rows if r["M"] == 300 or (r["M"] == 256 and r["arch"] == "gfx950" and r["gate_mode"] ==
                                                   "interleave" and r["activation"] == "Swiglu" and not r["env"]))
    assert (row["selector"], row["runtime"], row["copies"]["_runtime_swiglu_mxfp4_q_dtype_a"]) == ("bf16", "fp8", "fp8")
    assert row["disagrees"] and set(row) >= {"M", "arch", "gate_mode", "activation", "weight_dtype", "env",
                                             "env_timing", "selector", "runtime", "copies"}
    forced = [r for r in rows if r["env"] == {"AITER_MOE_FORCE_BF16_ACT": "1"} and r["M"] == 8192
              and r["activation"] == "Swiglu" and r["gate_mode"] == "separated" and r["arch"] == "gfx950"]
    assert {(r["selector"], r["runtime"], r["copies"]["_runtime_swiglu_mxfp4_q_dtype_a"]) for r in forced} == \
        {("bf16", "bf16", "fp4x2")}  # the copy misses the force flag
    groups = dc.group_differences(rows)
    assert sum(g["cases"] for g in groups) == sum(r["differ"] for r in rows)
    text = dc.format_report(rows, matrix, located, tree.label)
    assert "AITER_MOE_FORCE_BF16_ACT='1' (set after import)" in text and text.splitlines()[-1].endswith(
        f"{sum(r['disagrees'] for r in rows)} where the runtime or a copy disagrees with the selector")
    assert dc.exit_status(rows) == 1 and dc.exit_status([dict(r, disagrees=False) for r in rows]) == 0


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


def test_history_walks_the_commits_that_changed_the_rule_or_a_copy(tmp_path):
    repo = tmp_path / "repo"
    write_tree(repo, RULE_IN_FUSED_MOE, copy=None)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "rule in fused_moe_")
    write_tree(repo, RULE_IN_FUSED_MOE)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "tests copy the rule")
    (repo / "README").write_text("x")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "unrelated")
    write_tree(repo, RULE_IN_IMPL.replace('"AITER_BF16_FP8_MOE_BOUND", "256"', '"AITER_BF16_FP8_MOE_BOUND", "512"'))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "move the rule, bound 512")
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=repo, capture_output=True,
                           text=True).stdout.strip()
    entries = history(repo, first)
    assert [e["subject"] for e in entries] == ["rule in fused_moe_", "tests copy the rule", "move the rule, bound 512"]
    assert entries[0]["copies"] == [] and entries[1]["copies"] == ["_runtime_swiglu_mxfp4_q_dtype_a"]
    assert entries[1]["runtime_changed"] == 0 and entries[1]["copies_changed"]["_runtime_swiglu_mxfp4_q_dtype_a"] > 0
    assert entries[2]["rule"].startswith("_fused_moe_impl") and entries[2]["runtime_changed"] > 0
    assert any("gfx950 Swiglu interleave" in c and "fp8 -> bf16" in c for c in entries[2]["runtime_changes"])
    assert entries[2]["runtime_vs_copies"] > entries[1]["runtime_vs_copies"] > 0
    assert git_tree(repo, "HEAD").read("aiter/fused_moe.py") == (repo / "aiter" / "fused_moe.py").read_text()


def _cli(*argv, **env):
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "moe_oracle", "verify", *argv], capture_output=True, text=True,
                          env=full, timeout=600)


def test_cli_dispatch_exit_status_report_and_usage_errors(tmp_path):
    tree = write_tree(tmp_path / "aiter-tree", RULE_IN_FUSED_MOE)
    done = _cli("--impl", "aiter", "--only", "dispatch", "--out", str(tmp_path / "out"), MOE_ORACLE_AITER_PATH=str(tree))
    assert done.returncode == 1, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert f"{sum(r['disagrees'] for r in report['dispatch'])} disagree with the selector" in last
    assert report["rule_function"] == "fused_moe_" and report["dispatch"][0]["env_timing"] in ("-", "import", "call")
    assert "| cause |" in (tmp_path / "out" / "report.md").read_text()
    assert _cli("--impl", "ours", "--only", "dispatch").returncode == 2
    missing = _cli("--impl", "aiter", "--only", "dispatch", MOE_ORACLE_AITER_PATH=str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "MOE_ORACLE_AITER_PATH" in missing.stderr
    assert _cli("--impl", "aiter", "--only", "dispatch", "--aiter-repo", str(tree)).returncode == 2  # no --since


def test_the_pinned_wheel_keeps_bf16_for_swiglu_at_every_M():
    """amd-aiter 0.1.7.post2.dev18 (the test session's pin) predates the M bounds and every knob."""
    from moe_oracle.adapters._loader import locate as locate_peer

    tree = open_tree(locate_peer("aiter", "MOE_ORACLE_AITER_PATH"))
    rows, matrix, located = dc.check(tree)
    assert located.rule.name == "fused_moe_" and located.copies == ()
    swiglu = [r for r in rows if r["activation"] == "Swiglu" and not r["env"] and r["weight_dtype"] == "fp4x2"
              and r["arch"] in ("gfx942", "gfx950")]
    assert {r["runtime"] for r in swiglu} == {"bf16"}
    assert any(r["disagrees"] and r["M"] >= 256 for r in swiglu)


def test_a_copy_called_only_under_an_activation_guard_answers_for_that_activation_only(tmp_path):
    guarded = COPY + '''

def _runtime_situv2_mxfp4_q_dtype_a(q_type, wq_dtype):
    return dtypes.fp8 if os.environ.get("AITER_SITUV2_A8W4", "0") == "1" else dtypes.bf16


def run_case(actType, qType, WQDType):
    if actType == aiter.ActivationType.Situv2:
        return _runtime_situv2_mxfp4_q_dtype_a(qType, WQDType)
'''
    tree = open_tree(write_tree(tmp_path, RULE_IN_FUSED_MOE, copy=guarded))
    sites = {s.name: s for s in locate(tree).copies}
    assert sites["_runtime_situv2_mxfp4_q_dtype_a"].activations == ("Situv2",)
    assert sites["_runtime_swiglu_mxfp4_q_dtype_a"].activations == ()
    rows, matrix, _ = dc.check(tree)
    assert "Situv2" in matrix.activations
    by_act = {r["activation"]: r["copies"]["_runtime_situv2_mxfp4_q_dtype_a"] for r in rows if not r["env"]}
    assert by_act["Swiglu"] is None and by_act["Situv2"] == "bf16"
    situ = [r for r in rows if r["activation"] == "Situv2" and not r["env"]]
    assert all(r["selector"].startswith("n/a: the selector does not know activation Situv2") for r in situ)
