"""The validation rules of every public entry point (emulation, reference, kernels, oracle), in one
place: each raises TypeError or ValueError naming the argument, what was expected and what came.
Plain Python and NumPy only (torch tensors are checked through their NumPy-visible properties by the
callers that hold them)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

__all__ = ["check_bool", "check_int", "check_finite_number", "check_mapping_of_str", "parse_ascii_uint", "check_byte_range",
           "check_mask_values"]

_ASCII_UINT = re.compile(r"[0-9]+")


def check_bool(value, arg: str) -> bool:
    """A real bool (not a truthy string such as "no")."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{arg}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_int(value, arg: str, *, minimum: int | None = None, multiple_of: int | None = None) -> int:
    """An integer (not a bool, not a float), at least ``minimum``, a multiple of ``multiple_of``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{arg}: expected an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{arg}={value} is not valid; expected an integer >= {minimum}")
    if multiple_of is not None and value % multiple_of:
        raise ValueError(f"{arg}={value} is not valid; expected a multiple of {multiple_of}")
    return value


def check_finite_number(value, arg: str) -> float:
    """A finite real number (NaN and +-Inf are not parameters: alpha=NaN would poison every output)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{arg}: expected a finite number, got {type(value).__name__} {value!r}")
    if not np.isfinite(value):
        raise ValueError(f"{arg}={value!r} is not valid; expected a finite number")
    return float(value)


def check_mapping_of_str(env, arg: str = "env") -> Mapping[str, str]:
    """A mapping of variable names to string values (an environment)."""
    if not isinstance(env, Mapping):
        raise TypeError(f"{arg}: expected a mapping of variable -> string (like os.environ), got {type(env).__name__}")
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{arg}: {key!r}={value!r}: environment names and values must be strings, got "
                            f"{type(key).__name__} -> {type(value).__name__}")
    return env


def parse_ascii_uint(text: str, name: str) -> int:
    """A non-negative decimal integer written in ASCII digits (str.isdigit also admits '²' and '١٢')."""
    stripped = text.strip()
    if not _ASCII_UINT.fullmatch(stripped):
        raise ValueError(f"environment variable {name}={text!r} is invalid: expected an integer >= 0 in ASCII digits")
    return int(stripped)


def check_byte_range(arr: np.ndarray, arg: str) -> np.ndarray:
    """Integer codes or scale bytes: uint8, or another integer dtype whose values all lie in 0..255."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{arg}: expected an integer (uint8) array, got dtype {arr.dtype}")
    if arr.dtype != np.uint8 and arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"{arg}: values must lie in 0..255 (bytes), got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.uint8, copy=False)


def check_mask_values(mask: np.ndarray, arg: str = "expert_mask") -> np.ndarray:
    """An expert mask: bool, or numbers that are exactly 0 or 1 (0.5 and NaN are not an answer)."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if mask.dtype.kind not in "iuf":
        raise TypeError(f"{arg}: expected a bool or 0/1 numeric array, got dtype {mask.dtype}")
    bad = ~((mask == 0) | (mask == 1))
    if bad.any():
        raise ValueError(f"{arg}: entries must be 0 or 1 (or bool), got {mask[bad][:4].tolist()}")
    return mask == 1
