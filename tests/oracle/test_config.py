"""``moe_oracle.config`` pinned directly: the defaults, every key's refusal in its exact words (naming the
source and the key), the edges each rule accepts, and the file loader's errors."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

import emulation as em
from moe_oracle import config
from moe_oracle.config import DEFAULT_ARCHS, DEFAULT_CPU, DEFAULT_GPU, QUICK, VerifyConfig, load_config
from moe_ref.env import ENV_VARS, bound_points

SHAPE = {"E": 2, "H": 32, "I": 32, "topk": 1}
KNOWN_ENV = sorted({n for v in ENV_VARS.values() for n in (v.name, v.legacy) if n})


def test_defaults():
    assert DEFAULT_ARCHS == ("gfx942", "gfx950")
    cpu = VerifyConfig()
    assert cpu == DEFAULT_CPU
    assert cpu.shapes == ({"E": 4, "H": 64, "I": 64, "topk": 2}, {"E": 4, "H": 288, "I": 96, "topk": 2})
    assert cpu.M == (1, *bound_points()) and cpu.archs is None and cpu.seed is None
    assert cpu.envs == ({}, {"AITER_MOE_FORCE_BF16_ACT": "1"}) and cpu.gate_modes == ("separated", "interleave")
    assert cpu.scale_modes == tuple(m.value for m in em.ScaleMode) and len(cpu.scale_modes) == len(em.ScaleMode)
    assert cpu.tolerance_scale == 1.0 and cpu.reference_act_dtype is None and cpu.impl == "ours"
    assert cpu.guard_bands is True
    assert QUICK.M == (1, 64, 256, 512) and QUICK.envs == ({},) and QUICK.scale_modes == ("round_up", "even")
    assert QUICK.shapes == cpu.shapes and QUICK.gate_modes == cpu.gate_modes
    assert DEFAULT_GPU.shapes == ({"E": 32, "H": 2880, "I": 2880, "topk": 4},)
    assert DEFAULT_GPU.M == (1, 64, *bound_points())
    for cfg in (DEFAULT_CPU, QUICK, DEFAULT_GPU):
        assert cfg.validated() == cfg


def test_from_mapping_keeps_each_value():
    data = {"shapes": [SHAPE], "M": [0, 3], "archs": ["GFX950:sramecc+:xnack-", "gfx942", "gfx950"],
            "envs": [{"AITER_MOE_FORCE_BF16_ACT": "1"}], "gate_modes": ["interleave"], "scale_modes": ["EVEN"],
            "seed": 0, "tolerance_scale": 0.5, "reference_act_dtype": "fp8", "impl": "mod:attr", "guard_bands": False}
    cfg = VerifyConfig.from_mapping(data)
    assert cfg.shapes == (SHAPE,) and cfg.M == (0, 3) and cfg.envs == ({"AITER_MOE_FORCE_BF16_ACT": "1"},)
    assert cfg.archs == ("gfx950", "gfx942")  # normalised, duplicates dropped, order kept
    assert cfg.gate_modes == ("interleave",) and cfg.scale_modes == ("EVEN",)
    assert cfg.seed == 0 and cfg.tolerance_scale == 0.5 and cfg.reference_act_dtype == "fp8"
    assert cfg.impl == "mod:attr" and cfg.guard_bands is False
    assert VerifyConfig.from_mapping({}) == DEFAULT_CPU
    assert VerifyConfig.from_mapping({"tolerance_scale": 2}).tolerance_scale == 2  # an int is a number
    assert VerifyConfig.from_mapping({"reference_act_dtype": None}).reference_act_dtype is None
    assert VerifyConfig.from_mapping({"archs": ["sm90"]}).archs == ("sm90",)
    assert VerifyConfig.from_mapping({"shapes": [{"E": 1, "H": 32, "I": 32, "topk": 1}]}).shapes[0]["topk"] == 1


@pytest.mark.parametrize("data, words", [
    ({"Ms": [1], "zz": 1}, "src: unknown key(s) ['Ms', 'zz']; expected some of " + str(sorted(
        f.name for f in dataclasses.fields(VerifyConfig)))),
    ({"seed": "5"}, "src: seed must be an integer, got '5'"),
    ({"seed": True}, "src: seed must be an integer, got True"),
    ({"seed": 1.0}, "src: seed must be an integer, got 1.0"),
    ({"tolerance_scale": 0}, "src: tolerance_scale must be a finite number > 0, got 0"),
    ({"tolerance_scale": -1.0}, "src: tolerance_scale must be a finite number > 0, got -1.0"),
    ({"tolerance_scale": float("nan")}, "src: tolerance_scale must be a finite number > 0, got nan"),
    ({"tolerance_scale": float("inf")}, "src: tolerance_scale must be a finite number > 0, got inf"),  # inf x 0: NaN
    ({"tolerance_scale": True}, "src: tolerance_scale must be a finite number > 0, got True"),
    ({"tolerance_scale": "1"}, "src: tolerance_scale must be a finite number > 0, got '1'"),
    ({"reference_act_dtype": "fp4"}, "src: reference_act_dtype must be one of ['bf16', 'fp4x2', 'fp8'], got 'fp4'"),
    ({"guard_bands": 1}, "src: guard_bands must be true or false, got 1"),
    ({"guard_bands": "yes"}, "src: guard_bands must be true or false, got 'yes'"),
    ({"impl": ""}, "src: impl must be a name or module:attr string, got ''"),
    ({"impl": 3}, "src: impl must be a name or module:attr string, got 3"),
    ({"M": []}, "src: M must be a non-empty list, got []"),
    ({"M": (1,)}, "src: M must be a non-empty list, got (1,)"),
    ({"envs": {}}, "src: envs must be a non-empty list, got {}"),
    ({"shapes": [[2, 32, 32, 1]]}, "src: each shape needs exactly E, H, I, topk; got [2, 32, 32, 1]"),
    ({"shapes": [{"E": 2, "H": 32, "I": 32}]}, "src: each shape needs exactly E, H, I, topk; got {'E': 2, 'H': 32, 'I': 32}"),
    ({"shapes": [{**SHAPE, "K": 1}]}, "src: each shape needs exactly E, H, I, topk; got "),
    ({"shapes": [{**SHAPE, "E": 0}]}, "src: shape {'E': 0, 'H': 32, 'I': 32, 'topk': 1} needs positive integers"),
    ({"shapes": [{**SHAPE, "E": True}]}, "needs positive integers"),
    ({"shapes": [{**SHAPE, "H": 32.0}]}, "needs positive integers"),
    ({"shapes": [{**SHAPE, "topk": -1}]}, "needs positive integers"),
    ({"shapes": [{**SHAPE, "H": 48}]}, "src: shape {'E': 2, 'H': 48, 'I': 32, 'topk': 1} has H or I not a multiple of 32"),
    ({"shapes": [{**SHAPE, "I": 16}]}, "has H or I not a multiple of 32"),
    ({"shapes": [{**SHAPE, "topk": 3}]}, "src: shape {'E': 2, 'H': 32, 'I': 32, 'topk': 3} has topk > E"),
    ({"M": [-1]}, "src: M values must be integers >= 0, got -1"),
    ({"M": [1.5]}, "src: M values must be integers >= 0, got 1.5"),
    ({"M": [False]}, "src: M values must be integers >= 0, got False"),
    ({"envs": [["AITER_MOE_FORCE_BF16_ACT"]]}, "src: envs must be mappings of variable -> string, got ['AITER_MOE_FORCE_BF16_ACT']"),
    ({"envs": [{"AITER_MOE_FORCE_BF16_ACT": 1}]}, "src: envs must be mappings of variable -> string, got {'AITER_MOE_FORCE_BF16_ACT': 1}"),
    ({"envs": [{"AITER_MOE_FORCE_BF16_ACTS": "1"}]},
     f"src: envs: 'AITER_MOE_FORCE_BF16_ACTS' is not a variable the selector reads (did you mean "
     f"'AITER_MOE_FORCE_BF16_ACT'?); expected one of {KNOWN_ENV}"),
    ({"envs": [{"PATH": "1"}]}, f"src: envs: 'PATH' is not a variable the selector reads; expected one of {KNOWN_ENV}"),
    ({"scale_modes": ["nearest"]}, "src: scale_modes='nearest' is not valid; expected one of "
     + str([m.value for m in em.ScaleMode])),
    ({"gate_modes": ["both"]}, "src: gate_modes: 'both' is not valid; expected 'separated' or 'interleave'"),
    ({"archs": ["gfx9999"]}, "src: archs: arch='gfx9999' is not a known arch; expected one of "),
    ({"archs": [""]}, "src: archs: arch='' is not valid; expected one of "),
])
def test_each_refusal_names_the_source_and_the_key(data, words):
    with pytest.raises(ValueError) as info:
        VerifyConfig.from_mapping(data, source="src")
    message = str(info.value)
    assert message.startswith(words) if words.startswith("src: ") else (message.startswith("src: shape ")
                                                                       and message.endswith(words)), message


def test_the_default_source_is_named_config():
    with pytest.raises(ValueError, match=re.escape("config: seed must be an integer")):
        VerifyConfig.from_mapping({"seed": "x"})
    with pytest.raises(ValueError, match=re.escape("config: shape ")):
        VerifyConfig(shapes=({**SHAPE, "H": 40},)).validated()


def test_every_known_variable_and_its_legacy_name_is_accepted():
    for name in KNOWN_ENV:
        assert VerifyConfig.from_mapping({"envs": [{name: "1"}]}).envs == ({name: "1"},)
    assert VerifyConfig.from_mapping({"envs": [{}]}).envs == ({},)


def test_validated_checks_every_entry_not_only_the_first():
    good = dict(SHAPE)
    with pytest.raises(ValueError, match="has topk > E"):
        VerifyConfig(shapes=(good, {**SHAPE, "topk": 5})).validated()
    with pytest.raises(ValueError, match="M values"):
        VerifyConfig(M=(1, -2)).validated()
    with pytest.raises(ValueError, match="gate_modes"):
        VerifyConfig(gate_modes=("separated", "x")).validated()
    with pytest.raises(ValueError, match="scale_modes"):
        VerifyConfig(scale_modes=("even", "x")).validated()
    with pytest.raises(ValueError, match="envs"):
        VerifyConfig(envs=({}, {"X": "1"})).validated()


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_load_config_files(tmp_path):
    js = _write(tmp_path, "c.json", json.dumps({"M": [2], "seed": 9}))
    cfg = load_config(js)
    assert cfg.M == (2,) and cfg.seed == 9
    toml = _write(tmp_path, "c.toml", 'M = [4]\nguard_bands = false\n')
    cfg = load_config(toml)
    assert cfg.M == (4,) and cfg.guard_bands is False


@pytest.mark.parametrize("name, text, words", [
    ("c.json", "[1, 2]", "{flag} {path}: expected a table/object at the top level"),
    ("c.json", "{not json", "{flag} {path}: invalid JSON: "),
    ("c.toml", "M = [", "{flag} {path}: invalid TOML: "),
    ("c.yaml", "M: [1]", "{flag} {path}: expected a .json or .toml file"),
    ("c.json", '{"seed": "x"}', "{flag} {path}: seed must be an integer, got 'x'"),  # the source names the file
])
@pytest.mark.parametrize("flag", ["--config", "--cfg"])
def test_load_config_refusals_name_the_flag_and_the_file(tmp_path, name, text, words, flag):
    path = _write(tmp_path, name, text)
    with pytest.raises(ValueError) as info:
        load_config(path, flag) if flag != "--config" else load_config(path)
    assert str(info.value).startswith(words.format(flag=flag, path=path)), str(info.value)


def test_load_config_missing_file(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(ValueError) as info:
        load_config(missing, "--x")
    assert str(info.value) == f"--x: no file {missing}"
    assert config.__all__ == ["VerifyConfig", "DEFAULT_CPU", "DEFAULT_GPU", "QUICK", "DEFAULT_ARCHS", "load_config"]


@pytest.mark.parametrize("seed", [None, 0, 1, 127, 2**32, 2**63 - 1])
def test_a_command_line_seed_in_range(seed):
    assert config.seed_problem("--seed", seed) is None


@pytest.mark.parametrize("seed", [-1, -(2**63), 2**63, 2**64])
@pytest.mark.parametrize("flag", ["--seed", "--moe-oracle-seed"])
def test_a_command_line_seed_out_of_range_is_named(flag, seed):
    assert config.seed_problem(flag, seed) == f"{flag} must be an integer in [0, 2**63), got {seed}"
