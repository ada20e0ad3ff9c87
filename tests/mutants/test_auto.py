"""The mutation tool's own bookkeeping: what counts as equivalent, flaky, untriaged; the committed
table is the README's."""

from __future__ import annotations

import json

import pytest

from tests.mutants import auto

DIFF = """--- moe_ref/selector.py
+++ moe_ref/selector.py
@@ -1,3 +1,3 @@
     x = 1
-    return a < b
+    return a <= b
"""


def test_the_edit_is_the_added_lines():
    assert auto.changed_lines(DIFF) == ["return a <= b"]


def test_an_equivalent_entry_holds_only_for_the_same_edit():
    status = {"m.x__mutmut_1": "survived", "m.x__mutmut_2": "survived", "m.x__mutmut_3": "killed",
              "m.x__mutmut_4": "no tests"}
    diffs = {name: DIFF for name in status}
    entries = {"m.x__mutmut_1": {"edit": ["return a <= b"], "reason": "r"},
               "m.x__mutmut_2": {"edit": ["return a >= b"], "reason": "stale: the mutant now makes another edit"},
               "m.x__mutmut_3": {"edit": ["return a <= b"], "reason": "a kill stays a kill"},
               "m.x__mutmut_4": {"edit": ["return a <= b"], "reason": "uncovered, reasoned"}}
    got = auto.triage(status, diffs, entries)
    assert got == {"m.x__mutmut_1": "equivalent", "m.x__mutmut_2": "survived", "m.x__mutmut_3": "killed",
                   "m.x__mutmut_4": "equivalent"}


def test_an_entry_follows_its_mutant_when_the_numbers_shift():
    """mutmut numbers a function's mutants in order: an edit elsewhere in it renumbers them. The entry
    holds where the function and the edit pick out one entry and one open mutant, and is re-keyed."""
    status = {"m.x__mutmut_7": "survived", "m.y__mutmut_7": "survived", "m.z__mutmut_1": "survived",
              "m.z__mutmut_2": "survived", "m.w__mutmut_3": "killed"}
    diffs = {name: DIFF for name in status}
    entries = {"m.x__mutmut_5": {"edit": ["return a <= b"], "reason": "moved from 5 to 7"},
               "m.v__mutmut_7": {"edit": ["return a <= b"], "reason": "another function's"},
               "m.z__mutmut_9": {"edit": ["return a <= b"], "reason": "two open mutants make this edit"},
               "m.w__mutmut_1": {"edit": ["return a <= b"], "reason": "a kill stays a kill"}}
    assert auto.renumbered(status, diffs, entries) == {"m.x__mutmut_7": "m.x__mutmut_5"}
    assert auto.triage(status, diffs, entries) == {**status, "m.x__mutmut_7": "equivalent"}
    entries["m.x__mutmut_6"] = {"edit": ["return a <= b"], "reason": "two entries: which one is it?"}
    assert auto.renumbered(status, diffs, entries) == {} and auto.triage(status, diffs, entries) == status


def test_renumbered_entries_are_re_keyed(tmp_path, monkeypatch):
    path = tmp_path / "equivalent.json"
    path.write_text(json.dumps({"m.x__mutmut_5": {"edit": ["e"], "reason": "r"}, "m.y__mutmut_1": {"edit": ["f"],
                                                                                                  "reason": "s"}}))
    monkeypatch.setattr(auto, "EQUIVALENT", path)
    auto.renumber_entries({"m.x__mutmut_7": "m.x__mutmut_5"})
    assert json.loads(path.read_text()) == {"m.y__mutmut_1": {"edit": ["f"], "reason": "s"},
                                            "m.x__mutmut_7": {"edit": ["e"], "reason": "r"}}
    auto.renumber_entries({"m.y__mutmut_2": "m.x__mutmut_7", "m.x__mutmut_7": "m.y__mutmut_1"})  # onto a moved one
    assert json.loads(path.read_text()) == {"m.y__mutmut_2": {"edit": ["e"], "reason": "r"},
                                            "m.x__mutmut_7": {"edit": ["f"], "reason": "s"}}


@pytest.mark.parametrize("statuses, stats, rerun", [
    ({"m.f__mutmut_1": "killed", "m.g__mutmut_1": "no tests"}, True, ["m.g__mutmut_1"]),  # a function it lacks
    ({"m.f__mutmut_1": "killed", "m.g__mutmut_1": "survived"}, True, None),  # all covered: nothing measured again
    ({"m.g__mutmut_1": "no tests"}, False, None),  # no map yet: mutmut measured it this run, it is the verdict
])
def test_a_function_added_since_the_map_is_covered_again(statuses, stats, rerun, tmp_path, monkeypatch):
    (tmp_path / "mutants").mkdir()
    monkeypatch.setattr(auto, "results", lambda tree, module: statuses if (tree, module) == (tmp_path, "m.py") else {})
    if stats:
        (tmp_path / "mutants" / "mutmut-stats.json").write_text("{}")
    runs = []
    monkeypatch.setattr(auto, "_mutmut", lambda tree, seed, names=(), timeout=None: runs.append(list(names)))
    auto.cover_new_functions(tmp_path, "m.py", 11)
    assert runs == ([rerun] if rerun else [])
    assert (tmp_path / "mutants" / "mutmut-stats.json").exists() == (stats and not rerun)  # removed: measured again


def test_flaky_and_untriaged_count_against_the_rate():
    status = {"a": "killed", "b": "killed", "c": "flaky", "d": "equivalent", "e": "survived", "f": "timeout"}
    row = auto.summarize("moe_ref/env.py", status, 1.0)
    assert (row["mutants"], row["killed"], row["equivalent"], row["flaky"], row["untriaged"]) == (6, 2, 1, 1, 2)
    assert row["kill_rate"] == round(2 / 5, 4)


def test_every_equivalent_entry_has_an_edit_and_a_reason():
    for name, entry in json.loads(auto.EQUIVALENT.read_text()).items():
        assert "__mutmut_" in name and entry["edit"] and entry["reason"].strip(), name


def test_readme_table_is_the_recorded_results():
    readme = (auto.ROOT / "README.md").read_text()
    block = readme.split(auto.BEGIN, 1)[1].split(auto.END, 1)[0]
    rows = json.loads(auto.RECORD.read_text()) if auto.RECORD.exists() else []
    assert block.strip() == auto.markdown(rows).strip(), "README is stale: python -m tests.mutants.auto --record"
    assert {r["module"] for r in rows} <= set(auto.SELECTIONS)


def test_every_module_of_the_oracle_side_has_a_selection_that_exists():
    for module, selection in auto.SELECTIONS.items():
        assert (auto.ROOT / module).is_file(), module
        assert all((auto.ROOT / path).exists() for path in selection), module


def test_a_mutmut_run_that_tested_nothing_is_an_error(monkeypatch, tmp_path):
    """mutmut exits 1 when the module's clean tests fail: the tool must not report the previous
    run's verdicts as this run's (it raises, naming mutmut's own words)."""
    import subprocess

    from tests.mutants import auto

    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="\u280b Running clean tests\rFAILED tests/x.py::t\n"
                                                          "Failed to run clean test\n")

    monkeypatch.setattr(auto.subprocess, "run", failing_run)
    with pytest.raises(auto.MutmutFailed, match="exited 1:\n.*\nFAILED tests/x.py::t\nFailed to run clean test$"):
        auto._mutmut(tmp_path, 11)


def test_a_flaky_verdict_is_rechecked_when_the_tests_change(monkeypatch, tmp_path):
    """Kill verdicts are kept per mutated function; a "flaky" one is re-run once the module's tests
    change (a new test may kill it under every seed), a solid one is not."""
    module = "moe_ref/env.py"
    test_file = tmp_path / "tests" / "moe_ref" / "test_env.py"
    test_file.parent.mkdir(parents=True)
    test_file.write_text("def test_one(): pass\n")
    names = ["moe_ref.env.x_f__mutmut_1", "moe_ref.env.x_f__mutmut_2"]
    monkeypatch.setattr(auto, "_function_hash", lambda tree, mod: {n: "h" for n in names})
    monkeypatch.setattr(auto, "results", lambda tree, mod: {n: auto.KILLED for n in names})
    runs = []
    monkeypatch.setattr(auto, "_mutmut", lambda tree, seed, which=(), timeout=None: runs.append(list(which)))
    (tmp_path / "rechecked.json").write_text(json.dumps({
        names[0]: {"status": "flaky", "hash": "h", "tests": auto.tests_digest(tmp_path, module)},
        names[1]: {"status": "killed", "hash": "h", "tests": auto.tests_digest(tmp_path, module)}}))
    status = {n: auto.KILLED for n in names}
    assert auto.recheck(tmp_path, module, status, [1, 2, 3]) == {names[0]: "flaky", names[1]: "killed"}
    assert runs == []  # the tests did not change: both verdicts hold
    test_file.write_text("def test_one(): pass\n\n\ndef test_two(): pass\n")
    assert auto.recheck(tmp_path, module, status, [1, 2, 3]) == {names[0]: "killed", names[1]: "killed"}
    assert runs == [[names[0]]] * 3  # only the flaky one, under each seed; now it kills with all three
    saved = json.loads((tmp_path / "rechecked.json").read_text())
    assert saved[names[0]] == {"status": "killed", "hash": "h", "tests": auto.tests_digest(tmp_path, module)}


def _fast_first(tmp_path, seconds: dict | None):
    """The plugin as prepare() writes it, with mutmut's measured durations (None: no stats yet)."""
    mutants = tmp_path / "mutants"
    mutants.mkdir()
    (mutants / "mutants_fast_first.py").write_text(auto._FAST_FIRST)
    if seconds is not None:
        (mutants / "mutmut-stats.json").write_text(json.dumps({"duration_by_test": seconds}))
    return mutants


@pytest.mark.parametrize("seconds, order", [
    ({"t::c": 0.1, "t::a": 3.0, "t::b": 0.5}, ["t::c", "t::b", "t::a", "t::d"]),  # unmeasured last, as found
    (None, ["t::a", "t::b", "t::d", "t::c"]),  # no stats yet: as collected
])
def test_tests_run_fastest_first_by_the_measured_durations(seconds, order, tmp_path, monkeypatch):
    import types

    monkeypatch.chdir(_fast_first(tmp_path, seconds))
    namespace = {}
    exec(auto._FAST_FIRST, namespace)
    items = [types.SimpleNamespace(nodeid=n) for n in ("t::a", "t::b", "t::d", "t::c")]
    namespace["pytest_collection_modifyitems"](None, None, items)
    assert [i.nodeid for i in items] == order


@pytest.mark.parametrize("second_first", [False, True])
def test_a_selection_that_needs_its_order_is_refused(second_first, tmp_path, monkeypatch):
    """A test that passes only after another ran would kill mutants in fastest-first order: the clean run
    in that order must pass, else the module is not reported."""
    mutants = _fast_first(tmp_path, {"test_pair.py::test_second": 0.01 if second_first else 9.0,
                                     "test_pair.py::test_first": 1.0})
    (mutants / "test_pair.py").write_text("STATE = []\n\n\ndef test_first():\n    STATE.append(1)\n\n\n"
                                          "def test_second():\n    assert STATE == [1]\n")
    monkeypatch.setitem(auto.SELECTIONS, "moe_ref/paths.py", ["test_pair.py"])
    if second_first:
        with pytest.raises(auto.MutmutFailed, match="fail unmutated in fastest-first order"):
            auto.order_check(tmp_path, "moe_ref/paths.py", 11)
        assert not (tmp_path / "order_checked").exists()
    else:
        auto.order_check(tmp_path, "moe_ref/paths.py", 11)
        assert (tmp_path / "order_checked").exists()


def test_a_passed_order_check_is_kept_until_what_it_depends_on_changes(tmp_path, monkeypatch):
    mutants = _fast_first(tmp_path, {"test_pair.py::test_second": 9.0, "test_pair.py::test_first": 1.0})
    pair = mutants / "test_pair.py"
    pair.write_text("STATE = []\n\n\ndef test_first():\n    STATE.append(1)\n\n\n"
                    "def test_second():\n    assert STATE == [1]\n")
    monkeypatch.setitem(auto.SELECTIONS, "moe_ref/paths.py", ["test_pair.py"])
    (tmp_path / "tests").mkdir()
    runs = []
    real = auto.subprocess.run
    monkeypatch.setattr(auto.subprocess, "run", lambda *a, **k: runs.append(a) or real(*a, **k))
    auto.order_check(tmp_path, "moe_ref/paths.py", 11)
    auto.order_check(tmp_path, "moe_ref/paths.py", 11)
    assert len(runs) == 1  # kept
    auto.order_check(tmp_path, "moe_ref/paths.py", 12)
    assert len(runs) == 2  # another seed
    (tmp_path / "tests" / "test_new.py").write_text("def test_x(): pass\n")
    auto.order_check(tmp_path, "moe_ref/paths.py", 12)
    assert len(runs) == 3  # the tests changed
    (mutants / "mutmut-stats.json").write_text(json.dumps({"duration_by_test": {"test_pair.py::test_second": 0.01,
                                                                                "test_pair.py::test_first": 1.0}}))
    with pytest.raises(auto.MutmutFailed):  # the order changed: run again, and it now fails
        auto.order_check(tmp_path, "moe_ref/paths.py", 12)
    assert len(runs) == 4
