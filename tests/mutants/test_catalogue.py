"""The catalogue stays true to the tree (every edit applies once and compiles), covers every area,
shares its bug definitions with the planted implementations, and the runner tells a kill from a
survivor (one cheap mutant run end to end)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.oracle.planted import LAYERS, QUANTIZERS, STAGES

from .bugs import AREAS, BUGS
from .catalogue import MUTANTS, Mutant
from .run import ROOT, apply, copy_tree, run_tests, tree_files


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_every_edit_applies_once_and_compiles(mutant, tmp_path):
    (tmp_path / mutant.file).parent.mkdir(parents=True)
    shutil.copy(ROOT / mutant.file, tmp_path / mutant.file)
    apply(mutant, tmp_path)
    assert (tmp_path / mutant.file).read_text() != (ROOT / mutant.file).read_text()
    for target in mutant.selection():
        assert (ROOT / target.split("::")[0]).exists(), f"{mutant.id}: selection {target} does not exist"


def test_catalogue_size_and_coverage():
    cpu = [m for m in MUTANTS if not m.gpu]
    assert len(cpu) >= 30 and any(m.gpu for m in MUTANTS)
    assert {m.bug.area for m in cpu} == set(AREAS)
    assert len({m.id for m in MUTANTS}) == len(MUTANTS)
    assert all(m.report in (None, "quantizers", "moe") for m in MUTANTS)


def test_bug_definitions_are_shared_not_repeated():
    """Every bug is planted somewhere (a mutant of our tree or a foreign planted implementation), and
    the planted implementations take their names and diagnoses from the same records."""
    planted = [p for p in QUANTIZERS + LAYERS + STAGES if p.bug is not None]
    used = {m.bug.name for m in MUTANTS} | {p.bug.name for p in planted}
    assert used == set(BUGS), f"unplanted bugs: {sorted(set(BUGS) - used)}"
    assert all(p.bug is BUGS[p.name] and p.diagnosis == p.bug.diagnosis for p in planted)


def test_an_edit_that_does_not_apply_is_an_error(tmp_path):
    (tmp_path / "moe_ref").mkdir()
    shutil.copy(ROOT / "moe_ref/env.py", tmp_path / "moe_ref/env.py")
    stale = Mutant(BUGS["any string is true"], "moe_ref/env.py", (("no such text", "x"),))
    with pytest.raises(ValueError, match="occurs 0 times"):
        apply(stale, tmp_path)


def test_the_runner_kills_a_mutant_and_passes_the_unmutated_tree(tmp_path, base_seed):
    """End to end on a cheap mutant: the selection passes on the copy, fails once the edit is in."""
    mutant = next(m for m in MUTANTS if m.id == "any-string-is-true")
    selection = ["tests/moe_ref/test_selector.py"]
    tree = copy_tree(ROOT, tree_files(ROOT), tmp_path / "tree")
    rc, failed, _, tail = run_tests(tree, selection, gpu=False, seed=base_seed, timeout=300)
    assert rc == 0 and failed is None, tail
    apply(mutant, tree)
    rc, failed, _, tail = run_tests(tree, selection, gpu=False, seed=base_seed, timeout=300)
    assert rc == 1 and failed and failed.startswith("tests/moe_ref/test_selector.py::"), tail
    assert Path(tree / "moe_ref/env.py").read_text() != (ROOT / "moe_ref/env.py").read_text()


def test_the_equivalence_proofs_hold():
    """'scale not clamped at 2^127': the largest fp32 amax gives an unbiased exponent of at most 126 in
    every mode and format (the scale is monotonic in amax), so the clamp at 127 never acts."""
    import numpy as np

    import emulation as em

    assert [m.id for m in MUTANTS if m.equivalent] == ["scale-not-clamped-at-2-127"]
    amax = np.float32([np.finfo(np.float32).max, 2.0**127, 1.5 * 2.0**127])
    for fmt in ("e2m1", "e4m3fn", "e4m3fnuz"):
        for mode in em.ScaleMode:
            assert em.mx_scale_e8m0(amax, fmt, mode).max() <= 127 + 126, (fmt, mode)
