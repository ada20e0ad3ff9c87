"""``moe-oracle verify --memcheck``: the same run again, under CUDA's compute-sanitizer (its memcheck tool).

The guard-band run (``guard.py``) sees a read past a row's end or past the last row when its result
changes; memcheck sees the reads themselves, where they leave an allocation: past the last row of a
tight tensor, into nothing. The run is re-executed as ``compute-sanitizer --tool memcheck python -m
moe_oracle verify ...`` with PyTorch's caching allocator off (``PYTORCH_NO_CUDA_MEMORY_CACHING=1``:
every tensor its own allocation, so a read past its end leaves it instead of landing in a neighbour's
block). Its report prints as usual; the sanitizer's findings are grouped per kernel and access
(``invalid __global__ read of 4 bytes in _moe_gemm_kernel: 1,152 (e.g. 60 bytes after an allocation of
.. bytes)``), added to report.json / report.md / the JUnit XML / the JSON, and any of them fails the run
(exit 1). A sanitizer that does not finish (no ``ERROR SUMMARY``: an unsupported device, a crash) is an
error (exit 2), never a pass. NVIDIA only; the sanitizer is looked up in ``MOE_ORACLE_COMPUTE_SANITIZER``,
on PATH, then under ``CUDA_HOME`` / ``/usr/local/cuda``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

__all__ = ["SANITIZER_ENV", "Finding", "Memcheck", "find_sanitizer", "parse", "sanitizer_command", "run"]

SANITIZER_ENV = "MOE_ORACLE_COMPUTE_SANITIZER"
_PREFIX = re.compile(r"^=+ ?")
_ACCESS = re.compile(r"^(Invalid __(\w+)__ (read|write|atomic)\w* of size (\d+) bytes?|Misaligned address)")
_AT_PLUS = re.compile(r"^at (?:0x[0-9a-f]+ in )?([A-Za-z_][\w$.]*)\+0x[0-9a-f]+")
_AT_FILE = re.compile(r"^at (?:0x[0-9a-f]+ in )?\S+:\d+:([A-Za-z_][\w$.]*)")
_AT_NAME = re.compile(r"^at (?:0x[0-9a-f]+ in )?([A-Za-z_][\w$.]*)")
_WHERE = re.compile(r"^and is (?:(\d+) bytes? (after|before)|(inside)) the nearest allocation at \S+ of size ([\d,]+) bytes?")
_HOST = re.compile(r"^Program hit (\w+) \(error \d+\).* on CUDA API call to (\w+)")
_SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) errors?")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One kind of bad access: the kernel, what it did (``invalid __global__ read of 4 bytes``), how often,
    and where the first one went relative to the nearest allocation."""

    kernel: str
    access: str
    count: int
    example: str

    def text(self) -> str:
        return f"{self.access} in {self.kernel}: {self.count:,}" + (f" (e.g. {self.example})" if self.example else "")


@dataclasses.dataclass(frozen=True)
class Memcheck:
    """The sanitizer's log, read: ``completed`` (it printed its ERROR SUMMARY), ``errors`` (that count),
    ``findings`` (the errors it printed, grouped), ``note`` (why it did not complete)."""

    completed: bool
    errors: int
    findings: tuple[Finding, ...]
    note: str = ""

    def lines(self) -> list[str]:
        if not self.completed:
            return [f"memcheck did not complete: {self.note}"]
        if not self.errors:
            return ["memcheck: 0 errors (no access outside an allocation, in any kernel of the run)"]
        shown = sum(f.count for f in self.findings)
        return ([f"memcheck: {self.errors:,} error(s)" + (f" ({shown:,} printed, grouped below)" if shown != self.errors
                                                          else "")] + [f"    {f.text()}" for f in self.findings])

    def as_dict(self) -> dict:
        return {"completed": self.completed, "errors": self.errors, "note": self.note,
                "findings": [dataclasses.asdict(f) for f in self.findings]}


def find_sanitizer(environ=None) -> str | None:
    """The compute-sanitizer executable: ``MOE_ORACLE_COMPUTE_SANITIZER``, PATH, ``$CUDA_HOME/bin``, /usr/local/cuda/bin."""
    environ = os.environ if environ is None else environ
    if environ.get(SANITIZER_ENV):
        return environ[SANITIZER_ENV]
    found = shutil.which("compute-sanitizer", path=environ.get("PATH"))
    if found:
        return found
    for home in (environ.get("CUDA_HOME"), environ.get("CUDA_PATH"), "/usr/local/cuda"):
        candidate = Path(home or "/nonexistent") / "bin" / "compute-sanitizer"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def parse(log: str) -> Memcheck:
    """Group the errors of a memcheck log by (kernel, access); the summary's count is the total."""
    groups: dict[tuple[str, str], list] = {}
    current: list | None = None
    summary = None
    for raw in log.splitlines():
        line = _PREFIX.sub("", raw).strip()
        if m := _SUMMARY.search(line):
            summary = int(m.group(1))
            continue
        if m := _ACCESS.match(line):
            access = (f"invalid __{m.group(2)}__ {m.group(3)} of {m.group(4)} bytes" if m.group(2)
                      else "misaligned address")
            current = [access, None, ""]
            continue
        if m := _HOST.match(line):  # a failed runtime call: after a bad access, the lost context's errors
            groups.setdefault(("(host)", f"{m.group(1)} from {m.group(2)}"), [0, ""])[0] += 1
            current = None
            continue
        if current is None:
            continue
        if current[1] is None and line.startswith("at "):
            m = _AT_PLUS.match(line) or _AT_FILE.match(line) or _AT_NAME.match(line)
            current[1] = m.group(1) if m else line[3:].split()[0]
            key = (current[1], current[0])
            groups.setdefault(key, [0, ""])[0] += 1
        elif (m := _WHERE.match(line)) and current[1] is not None:
            entry = groups[(current[1], current[0])]
            size = int(m.group(4).replace(",", ""))
            where = f"{m.group(1)} bytes {m.group(2)}" if m.group(1) else "straddling the end of"
            entry[1] = entry[1] or f"{where} an allocation of {size:,} bytes"
            current = None
    findings = tuple(sorted((Finding(kernel, access, n, example) for (kernel, access), (n, example) in groups.items()),
                            key=lambda f: (-f.count, f.kernel, f.access)))
    if summary is None:
        tail = " | ".join(_PREFIX.sub("", x).strip() for x in log.strip().splitlines()[-4:]) or "empty log"
        return Memcheck(False, sum(f.count for f in findings), findings, f"no ERROR SUMMARY in its log ({tail})")
    return Memcheck(True, summary, findings)


def sanitizer_command(sanitizer: str, argv: list[str], log_file: Path) -> list[str]:
    """The sanitizer's command line around ``python -m moe_oracle verify ARGV`` (``--memcheck`` already removed)."""
    return [sanitizer, "--tool", "memcheck", "--log-file", str(log_file), "--print-limit", "1000",
            "--show-backtrace", "no", sys.executable, "-m", "moe_oracle", "verify", *argv]


STOPPED = ("the run under the sanitizer wrote no report: a bad access ends its kernel and CUDA's context with it, "
           "so the checks after it did not run (their verdicts: the same command without --memcheck)")


def _attach(result: Memcheck, out: str | None, junit: str | None, argv: list[str]) -> list[Path]:
    """The findings added to what the run wrote: report.json's ``memcheck``, report.md's section, a JUnit suite.
    Where the run wrote nothing (it died at the first bad access), a report of the findings alone."""
    written = []
    if out and not (Path(out) / "report.json").is_file():
        (Path(out) / "report.json").write_text(json.dumps({"meta": {"argv": argv, "note": STOPPED}}))
        (Path(out) / "report.md").write_text(f"# moe-oracle conformance report\n\n- command: verify {' '.join(argv)}\n"
                                             f"- {STOPPED}\n")
    if out:
        path = Path(out) / "report.json"
        report = json.loads(path.read_text())
        report["memcheck"] = result.as_dict()
        path.write_text(json.dumps(report, indent=1, default=str))
        md = Path(out) / "report.md"
        if md.is_file():
            md.write_text(md.read_text() + "\n## memcheck (compute-sanitizer)\n\n"
                          + "\n".join(f"- {line.strip()}" for line in result.lines()) + "\n")
        written.append(path)
    if junit:
        tree = ET.parse(junit) if Path(junit).is_file() else ET.ElementTree(ET.Element("testsuites", name="moe-oracle"))
        failed = not result.completed or result.errors > 0
        suite = ET.SubElement(tree.getroot(), "testsuite", name="moe-oracle.memcheck", tests="1",
                              failures=str(int(failed)), errors="0", skipped="0")
        case = ET.SubElement(suite, "testcase", classname="moe-oracle.memcheck", name="compute-sanitizer memcheck")
        text = "\n".join(result.lines())
        ET.SubElement(case, "failure" if failed else "system-out", **({"message": text[:500]} if failed else {})).text = text
        tree.write(junit, encoding="utf-8", xml_declaration=True)
    return written


def run(argv: list[str], sanitizer: str, *, out: str | None, junit: str | None, as_json: bool) -> int:
    """Run ``verify ARGV`` under memcheck and fold its findings into the exit status and the outputs."""
    with tempfile.TemporaryDirectory(prefix="moe-oracle-memcheck-") as tmp:
        log_file = Path(out) / "memcheck.log" if out else Path(tmp) / "memcheck.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
        cmd = sanitizer_command(sanitizer, argv, log_file)
        print(f"memcheck: {' '.join(cmd[:8])} ... (PYTORCH_NO_CUDA_MEMORY_CACHING=1)", file=sys.stderr)
        try:
            child = subprocess.run(cmd, env=env, stdout=subprocess.PIPE if as_json else None, text=True)
        except OSError as exc:
            print(f"moe-oracle verify: --memcheck: cannot start {sanitizer}: {exc}", file=sys.stderr)
            return 2
        log = log_file.read_text(errors="replace") if log_file.is_file() else ""
    result = parse(log)
    if out and not (Path(out) / "report.json").is_file() or junit and not Path(junit).is_file():
        print(STOPPED, file=sys.stderr)
    _attach(result, out, junit, argv)
    if as_json:
        try:
            report = json.loads(child.stdout)
        except json.JSONDecodeError:
            report = {"meta": {"argv": argv, "note": STOPPED}}
        report["memcheck"] = result.as_dict()
        print(json.dumps(report, default=str))
    stream = sys.stderr if as_json else sys.stdout
    for line in result.lines():
        print(line, file=stream)
    if child.returncode == 2 or not result.completed:
        return 2
    if result.errors:
        return 1
    if child.returncode not in (0, 1):
        print(f"moe-oracle verify: --memcheck: the run under the sanitizer ended with status {child.returncode}",
              file=sys.stderr)
        return 2
    return child.returncode
