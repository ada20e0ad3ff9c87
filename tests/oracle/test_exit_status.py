"""The oracle's own arithmetic, pinned directly: the verdict at margin exactly 1 and just above, and the
exit status of every CLI mode for a passing and a failing check of each kind."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from moe_oracle import cli
from moe_oracle.compare import compare_output


def test_margin_exactly_one_passes_and_the_next_float_fails():
    ref, bound = np.array([0.0, 0.0]), np.array([0.25, 0.0])  # ref 0: the error is the output, exactly
    at = compare_output(ref + np.array([0.25, 0.0]), ref, ref, bound)
    assert at["margin"] == 1.0 and at["within_tolerance"] and at["at_rounding_step"]
    past = compare_output(ref + np.array([np.nextafter(0.25, 1.0), 0.0]), ref, ref, bound)
    assert past["margin"] > 1.0 and not past["within_tolerance"] and past["n_outside"] == 1
    nothing_granted = compare_output(ref + np.array([0.0, 5e-324]), ref, ref, bound)  # any error where the bound is 0
    assert nothing_granted["margin"] == np.inf and not nothing_granted["within_tolerance"]
    nan = compare_output(np.array([np.nan, 0.0]), ref, ref, bound)
    assert not nan["within_tolerance"] and nan["nan_out"] == 1


IMPLS = textwrap.dedent('''
    import torch
    import emulation as em
    from moe_ref import select_activation_dtype

    def _quantizer(ties):
        def quantize_mxfp4(x, scale_mode="round_up"):
            q, s = em.quantize_mxfp4(x.float().numpy(), scale_mode=scale_mode, ties=ties)
            return torch.from_numpy(q), torch.from_numpy(s)
        return quantize_mxfp4

    def _selector(right):
        def select_act_dtype(M, *, arch, gate_mode, env):
            return select_activation_dtype(M, arch=arch, gate_mode=gate_mode, env=env).dtype if right else "bf16"
        return select_act_dtype

    good_quant, bad_quant = {"quantize_mxfp4": _quantizer("even")}, {"quantize_mxfp4": _quantizer("away")}
    good_select, bad_select = {"select_act_dtype": _selector(True)}, {"select_act_dtype": _selector(False)}
''')


@pytest.mark.parametrize("impl, only, code", [
    ("good_quant", "quantizers", 0), ("bad_quant", "quantizers", 1), ("good_quant", "all", 0), ("bad_quant", "all", 1),
    ("good_select", "all", 0), ("bad_select", "all", 1),
    ("good_quant", "moe", 2), ("good_select", "quantizers", 2),  # nothing of that kind to check: usage
])
def test_exit_status_of_each_mode(impl, only, code, tmp_path, monkeypatch, capsys):
    (tmp_path / "exit_impls.py").write_text(IMPLS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    got = cli.main(["--impl", f"exit_impls:{impl}", "--quick", "--only", only, "--seed", "3"])
    out = capsys.readouterr()
    assert got == code, (out.out[-800:], out.err[-800:])
    if code == 1:
        assert "0 failed" not in out.out.splitlines()[-1]
