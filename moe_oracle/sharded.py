"""``moe-oracle verify --devices N``: the layer cases spread over N GPUs, one report.

One child process per device, pinned to its GPU (``moe_oracle.devices``), runs its share of the
cases (whole (shape, M) groups: a group's layer and references stay on one device) with the same
seed and writes its rows as it goes; the parent collects them in the order of the unsharded run. A
child that dies leaves error rows for the cases it did not reach (the report still comes, and fails).
Quantizers, GEMM stages and the selector stay in the parent (they take seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import engine
from .devices import pin_env

__all__ = ["run_on_devices", "child_argv"]

_DROPPED = {"--devices", "--out", "--only", "--seed", "--shard", "--rows-file"}  # options with a value


def child_argv(argv: list[str]) -> list[str]:
    """The parent's arguments without those the parent decides for its children."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _DROPPED:
            skip = True
        elif arg.split("=", 1)[0] not in _DROPPED:
            out.append(arg)
    return out


def run_on_devices(argv: list[str], impl, cfg, archs: list[str], n: int, gpus: list[str],
                   log_dir: Path | None = None) -> list[dict]:
    """The rows of every layer case, computed by ``n`` pinned child processes (GPU ids ``gpus``; on a
    CPU-only run, n CPU processes)."""
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(log_dir) if log_dir else Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        children = []
        for k in range(n):
            rows_file, log = Path(tmp) / f"rows{k}.jsonl", logs / f"device{k}.log"
            cmd = [sys.executable, "-m", "moe_oracle", "verify", *child_argv(argv), "--only", "moe",
                   "--seed", str(cfg.seed), "--shard", f"{k}/{n}", "--rows-file", str(rows_file)]
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
            if code not in (0, 1):
                print("".join(log.read_text().splitlines(keepends=True)[-15:]), file=sys.stderr)
    return [by_index[i] for i, _ in engine.layer_cases(impl, cfg, archs)]
