"""``moe-oracle verify --devices N``: the layer cases spread over N GPUs, one report.

One child process per device, pinned to its GPU (``moe_oracle.devices``), runs its share of the
cases (whole (shape, M) groups: a group's layer and references stay on one device) with the same
seed and writes its rows as it goes; the parent collects them in the order of the unsharded run. A
child that dies leaves error rows for the cases it did not reach (the report still comes, and fails).
Quantizers, GEMM stages and the selector stay in the parent (they take seconds).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import engine
from .devices import pin_env

__all__ = ["run_on_devices", "RowsFile", "main"]


class RowsFile:
    """Each case's row appended to a JSON-lines file as it is made (DIR/cases.partial.jsonl with --out, a
    child's share here): a run that dies keeps what it checked; the complete report replaces it."""

    NAME = "cases.partial.jsonl"

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def __call__(self, row: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(row, default=str) + "\n")


def run_on_devices(impl_spec: str, impl, cfg, archs: list[str], n: int, gpus: list[str], *, device: str,
                   workers: int = 1, max_memory_gib: float | None = None, log_dir: Path | None = None) -> list[dict]:
    """The rows of every layer case, computed by ``n`` pinned child processes (GPU ids ``gpus``; on a
    CPU-only run, n CPU processes), each given its share as a job file (``python -m moe_oracle.sharded``)."""
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(log_dir) if log_dir else Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        children = []
        for k in range(n):
            rows_file, log, job = Path(tmp) / f"rows{k}.jsonl", logs / f"device{k}.log", Path(tmp) / f"job{k}.json"
            job.write_text(json.dumps(dict(impl=impl_spec, config=dataclasses.asdict(cfg), archs=list(archs),
                                           device=device, shard=[k, n], rows_file=str(rows_file), workers=workers,
                                           max_memory_gib=max_memory_gib)))
            cmd = [sys.executable, "-m", "moe_oracle.sharded", str(job)]
            env = {**os.environ, **(pin_env(gpus[k]) if gpus else {})}
            with log.open("w") as f:
                children.append((k, subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT), rows_file, log))
        by_index = {}
        for k, proc, rows_file, log in children:
            code = proc.wait()
            mine = engine.layer_cases(impl, cfg, archs, (k, n))
            got = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
            for (i, _), row in zip(mine, got):
                by_index[i] = row
            for i, case in mine[len(got):]:
                by_index[i] = engine.error_row(impl, case, f"device {k}'s process ended (exit status {code}) before this "
                                                           f"case; its log: {log if log_dir else 'not kept (no --out)'}")
            where = f"GPU {gpus[k]}" if gpus else "CPU"
            print(f"device {k} ({where}): {len(got)} of {len(mine)} cases checked, exit status {code}", file=sys.stderr)
            if code != 0:
                print("".join(log.read_text().splitlines(keepends=True)[-15:]), file=sys.stderr)
    return [by_index[i] for i, _ in engine.layer_cases(impl, cfg, archs)]


def main(argv=None) -> int:
    """A child: the layer cases of its share, each row appended to its rows file (exit 0 when all ran).
    Started with ``python -m`` in the parent's folder, it imports ``--impl module:attr`` as the CLI does."""
    job = json.loads(Path((sys.argv[1:] if argv is None else argv)[0]).read_text())
    from .config import VerifyConfig
    from .implementations import resolve

    cfg = VerifyConfig.from_mapping(job["config"], source="job")
    engine.run_layers(resolve(job["impl"]), cfg, device=job["device"], archs=job["archs"], workers=job["workers"],
                      on_row=RowsFile(Path(job["rows_file"])), max_memory_gib=job["max_memory_gib"],
                      shard=tuple(job["shard"]), progress=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
