"""Tile configurations (``configs.json``): data, not code. Read at call time, so a benchmark sweep can
try other tiles by editing ``CONFIGS`` in place."""

from __future__ import annotations

import json
from pathlib import Path

CONFIGS_PATH = Path(__file__).with_name("configs.json")
CONFIGS: dict = json.loads(CONFIGS_PATH.read_text())
