"""Each activation path's quantization is the emulation's, byte for byte and value for value, in every
scale mode and by default ROUND_UP; the records' fields and the lookup's refusal."""

from __future__ import annotations

import numpy as np
import pytest

import emulation as em
from moe_ref import ACTIVATION_PATHS, activation_path


def _rows(rng):
    x = (rng.standard_normal((4, 64)) * np.exp2(rng.integers(-20, 20, (4, 1)))).astype(np.float32)
    x[0, :32] = 0.0
    x[1, :32] = np.float32(0.25) * np.arange(32, dtype=np.float32)  # e2m1 midpoints at its block scale (ties)
    return x


@pytest.mark.parametrize("mode", [None, *em.ScaleMode])
@pytest.mark.parametrize("act_dtype", list(ACTIVATION_PATHS))
def test_bytes_and_values_are_the_emulations(act_dtype, mode, rng):
    path, x = activation_path(act_dtype), _rows(rng)
    kw = {} if mode is None else {"scale_mode": mode.value}
    want_mode = em.ScaleMode.ROUND_UP if mode is None else mode
    codes, scale = path.quantize(x, **kw)
    values = path.quantize_values(x, **kw)
    if act_dtype == "bf16":
        assert scale is None and np.array_equal(codes, em.encode(x, "bf16"))
        assert np.array_equal(values.view(np.uint32), em.round_to_bf16(x).view(np.uint32))
        return
    fmt = path.element_format
    want_codes, want_scale = (em.quantize_mxfp4(x, scale_mode=want_mode) if path.packed
                              else em.quantize_mx(x, fmt, scale_mode=want_mode))
    assert np.array_equal(codes, want_codes) and np.array_equal(scale, want_scale)
    want_values = em.dequantize_mx(*em.quantize_mx(x, fmt, scale_mode=want_mode), fmt)
    assert np.array_equal(values.view(np.uint32), want_values.view(np.uint32))


def test_the_records():
    assert [(p.act_dtype, p.name, p.element_format, p.packed, p.is_mx) for p in ACTIVATION_PATHS.values()] == [
        ("bf16", "a16w4", None, False, False), ("fp4x2", "a4w4", "e2m1", True, True),
        ("fp8", "a8w4", "e4m3fn", False, True)]
    with pytest.raises(ValueError, match="act_dtype='fp16' is not valid; expected one of"):
        activation_path("fp16")
