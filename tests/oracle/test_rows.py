"""The report's rows are what ``moe_oracle.rows`` says: every key, no other, each of its type."""

from __future__ import annotations

import typing

import numpy as np

import moe_kernels  # noqa: F401  (interpreter on before triton on a CPU machine)
from moe_oracle import config, engine
from moe_oracle.cases import LayerCase
from moe_oracle.compare import compare_output
from moe_oracle.implementations import ours
from moe_oracle.rows import CaseColumns, Comparison, ErrorRow, LayerRow

SMALL = {"shapes": [{"E": 4, "H": 64, "I": 32, "topk": 2}], "M": [3], "archs": ["gfx950"], "envs": [{}],
         "gate_modes": ["separated"], "scale_modes": ["round_up"], "seed": 5}


def _conforms(row: dict, kind) -> None:
    assert set(row) == set(kind.__required_keys__), set(row) ^ set(kind.__required_keys__)
    for key, hint in typing.get_type_hints(kind).items():
        allowed = typing.get_args(hint) or (hint,)
        allowed = tuple(typing.get_origin(a) or a for a in allowed)
        value = row[key]
        ok = isinstance(value, allowed) or (float in allowed and isinstance(value, int) and not isinstance(value, bool))
        assert ok, f"{key}: {value!r} is not {hint}"


def test_a_layer_row_is_a_layer_row():
    cfg = config.VerifyConfig.from_mapping(SMALL)
    rows = engine.run_layers(ours(), cfg, device="cpu", archs=["gfx950"], progress=False)
    assert len(rows) == 1 and rows[0]["verdict"] == "PASS"
    _conforms(rows[0], LayerRow)


def test_an_error_row_and_a_comparison_are_theirs():
    case = LayerCase(SMALL["shapes"][0], 3, "gfx950", {}, "separated", "round_up")
    _conforms(engine.error_row(ours(), case, "it raised"), ErrorRow)
    _conforms(case.columns(), CaseColumns)
    x = np.ones((2, 32))
    _conforms(compare_output(x, x, x, np.zeros_like(x)), Comparison)
