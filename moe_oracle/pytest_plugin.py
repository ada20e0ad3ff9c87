"""pytest plugin (entry point ``pytest11``: active wherever moe-oracle is installed): the oracle's case
matrix as parametrized fixtures for a kernel repo's own tests, and one assertion helper.

    def test_my_moe(moe_case):                        # one test per case of the matrix
        moe_case.assert_conforms(my_fused_moe)        # a fused_moe-shaped callable

    def test_my_quantizer(mx_scale_mode):             # one test per scale mode
        moe_oracle.assert_conforms(moe_oracle.check_quantizer(my_quant, "quantize_mxfp4", scale_mode=mx_scale_mode))

Options: ``--moe-oracle-config FILE`` (the report's JSON/TOML config; default: the quick matrix),
``--moe-oracle-device cpu|cuda``, ``--moe-oracle-seed N`` (default: the config file's seed, else fresh per
run, in the header). Test ids name the case: shape, M, arch, gate mode, scale mode, environment;
``mx_scale_mode`` runs the config file's scale modes (default: all four).
"""

from __future__ import annotations

import dataclasses
import secrets

import pytest

import emulation as em

__all__ = ["MoECase"]

SCALE_MODES = tuple(m.value for m in em.ScaleMode)


def pytest_addoption(parser):
    group = parser.getgroup("moe-oracle")
    group.addoption("--moe-oracle-config", default=None, help="case matrix (JSON/TOML; default: the quick matrix)")
    group.addoption("--moe-oracle-device", default=None, help="cpu or cuda (default: cuda when visible)")
    group.addoption("--moe-oracle-seed", type=int, default=None, help="base seed of the oracle's data")


def _file_config(config):
    """The --moe-oracle-config file's matrix (None without one); its errors are usage errors."""
    if not hasattr(config, "_moe_oracle_file"):
        from moe_oracle.config import load_config

        path = config.getoption("--moe-oracle-config", None)
        try:
            config._moe_oracle_file = load_config(path, flag="--moe-oracle-config") if path else None
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    return config._moe_oracle_file


def _seed(config) -> int:
    """--moe-oracle-seed, else the config file's seed, else fresh (printed in the header)."""
    if not hasattr(config, "_moe_oracle_seed"):
        given = config.getoption("--moe-oracle-seed", None)
        from moe_oracle.config import seed_problem

        problem = seed_problem("--moe-oracle-seed", given)
        if problem:
            raise pytest.UsageError(problem)
        cfg = _file_config(config)
        if given is None and cfg is not None:
            given = cfg.seed
        config._moe_oracle_seed = given if given is not None else secrets.randbits(32)
    return config._moe_oracle_seed


def pytest_configure(config):
    """The plugin's options are checked before collection: a bad one is a usage error (exit 4), not an
    error in every case."""
    if config.getoption("--moe-oracle-device", None) is not None:
        _device(config)
    _seed(config)


def pytest_report_header(config):
    return f"moe-oracle data seed: {_seed(config)} (rerun with --moe-oracle-seed {_seed(config)})"


def _matrix(config):
    from moe_oracle.config import QUICK

    return dataclasses.replace(_file_config(config) or QUICK, seed=_seed(config))


@dataclasses.dataclass(frozen=True)
class MoECase:
    """One case of the matrix: its parameters, and ``assert_conforms(fused_moe)`` to check a callable."""

    case: object  # moe_oracle.cases.LayerCase: shape, M, arch, env, gate_mode, scale_mode
    cfg: object
    device: str

    def assert_conforms(self, fused_moe) -> dict:
        """Run ``fused_moe`` on this case's problem and fail with the oracle's diagnosis unless it
        conforms; returns the report row."""
        __tracebackhide__ = True
        import torch

        from moe_oracle.api import assert_conforms
        from moe_oracle.implementation import as_implementation
        from moe_oracle.layer import check_layer_case

        row = check_layer_case(as_implementation(fused_moe), self.case, self.cfg, torch.device(self.device),
                               self.cfg.seed, {})
        assert_conforms(row)
        return row


def _device(config) -> str:
    """--moe-oracle-device (checked as the API checks ``device``: a usage error), else cuda where visible."""
    from moe_oracle.devices import default_device, parse_device

    given = config.getoption("--moe-oracle-device", None)
    if given is None:
        return default_device()
    try:
        return parse_device(given)
    except ValueError as exc:
        raise pytest.UsageError(f"--moe-oracle-device: {exc}") from None


def pytest_generate_tests(metafunc):
    if "moe_case" in metafunc.fixturenames:
        from moe_oracle.cases import cases

        cfg = _matrix(metafunc.config)
        found = list(cases(cfg, list(cfg.archs or ("gfx942", "gfx950"))))
        metafunc.parametrize("moe_case_params", found, ids=[c.name for c in found], indirect=True)
    if "mx_scale_mode" in metafunc.fixturenames:
        cfg = _file_config(metafunc.config)
        metafunc.parametrize("mx_scale_mode", cfg.scale_modes if cfg is not None else SCALE_MODES)


@pytest.fixture
def moe_case_params(request):
    return request.param


@pytest.fixture
def moe_case(request, moe_case_params) -> MoECase:
    return MoECase(moe_case_params, _matrix(request.config), _device(request.config))
