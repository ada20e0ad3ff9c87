"""Every citation of the numerics document, in code, tests, docs and printed output, names a section
that exists in the tree's NUMERICS.md."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"NUMERICS(?:\.md)?\s*,?\s*(?:sections?\s*)?(\d+)(?:\s*(?:-|to|and)\s*(\d+))?", re.S)
SOURCES = [p for pattern in ("*.py", "*.md", "*.sh", "*.toml") for p in ROOT.rglob(pattern)
           if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]


def _sections() -> set[int]:
    return {int(m) for m in re.findall(r"^## (\d+)\. ", (ROOT / "NUMERICS.md").read_text(), re.M)}


def _cited(text: str) -> set[int]:
    cited = set()
    for first, last in CITATION.findall(re.sub(r"\s+", " ", text)):
        cited |= set(range(int(first), int(last or first) + 1))
    return cited


def test_the_document_exists_with_numbered_sections():
    assert _sections() == set(range(1, 13))


def test_every_citation_in_the_tree_resolves():
    missing = {str(p.relative_to(ROOT)): sorted(_cited(p.read_text()) - _sections()) for p in SOURCES}
    assert not {k: v for k, v in missing.items() if v}
    assert sum(bool(_cited(p.read_text())) for p in SOURCES) >= 8  # the citations are found at all


def test_the_citation_pattern_reads_every_form():
    assert _cited("NUMERICS.md section 2") == {2} and _cited("NUMERICS.md\nsections 4-5") == {4, 5}
    assert _cited("(no float cast: NUMERICS 5)") == {5} and _cited("NUMERICS.md sections 3-5") == {3, 4, 5}


def test_printed_citations_resolve():
    out = subprocess.run([sys.executable, "-m", "emulation"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert _cited(out) and _cited(out) <= _sections()
