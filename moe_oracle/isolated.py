"""The ecosystem table's libraries, each in a process of its own: native code that kills its process
(a segfault in a C++ extension, an abort) costs the table one measured line, not the run.

``measure_in_processes(name, ...)`` starts ``python -m moe_oracle.isolated`` for the library; the child
writes the index of each function before calling it, and its results at the end. When the child dies
(by a signal, or any exit without results) the function it had started is recorded as what killed
it, and a fresh child runs the library's remaining functions.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["measure_in_processes", "main"]


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def measure_in_processes(name: str, seed: int, M: int, K: int, device: str, timeout: float | None = None) -> dict:
    """``ecosystem.measure_entries`` of one library (a registry name or ``module:attr``), in child
    processes; the functions that killed one are "not run" lines naming how it died."""
    skip: list[int] = []
    crashed: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        progress, out = Path(tmp) / "progress", Path(tmp) / "result.pickle"
        while True:
            progress.write_text("")
            cmd = [sys.executable, "-m", "moe_oracle.isolated", name, "--seed", str(seed), "--shape", f"{M},{K}",
                   "--device", device, "--progress", str(progress), "--out", str(out),
                   *(["--skip", ",".join(map(str, skip))] if skip else [])]
            # a CPU run's kernels run under the interpreter (set before any library imports triton)
            env = {**os.environ, **({"TRITON_INTERPRET": "1"} if device == "cpu" else {})}
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout,
                                  check=False, env=env)
            if proc.returncode == 0 and out.exists():
                result = pickle.loads(out.read_bytes())
                result["not_run"] = crashed + result["not_run"]
                return result
            started = [json.loads(line) for line in progress.read_text().splitlines() if line.endswith("}")]
            if not started:  # it died before its first function: loading the library killed it
                tail = (proc.stderr.strip().splitlines() or [""])[-1][:160]
                return dict(quantizers=[], dequantizers=[], outputs={}, not_run=crashed + [dict(
                    library=name, version=name, function="(import)", kind="", note="", mode=None,
                    reason=f"loading it {_how(proc.returncode)}" + (f": {tail}" if tail else ""))])
            entry = started[-1]
            skip.append(entry.pop("index"))
            crashed.append(dict(entry, reason=f"calling it {_how(proc.returncode)} (its process died; the "
                                              "library's other functions ran in a fresh one)"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moe_oracle.isolated")
    ap.add_argument("library")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--shape", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--progress", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--skip", default="")
    args = ap.parse_args(argv)
    from .ecosystem import _input, _library, entries, measure_entries

    M, K = map(int, args.shape.split(","))
    skip = {int(i) for i in args.skip.split(",") if i}
    found = entries([_library(args.library)])
    kept = [i for i in range(len(found)) if i not in skip]

    def started(k: int) -> None:
        line = dict(index=kept[k], **found[kept[k]].columns())
        with args.progress.open("a") as f:
            f.write(json.dumps(line) + "\n")

    result = measure_entries([found[i] for i in kept], _input(args.seed, M, K), args.seed, args.device, started)
    args.out.write_bytes(pickle.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
