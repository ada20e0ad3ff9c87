"""The Triton quantizers write exactly the emulation's bytes (interpreter on CPU, and on a GPU)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import emulation as em
import moe_kernels as mk
from moe_kernels import _per_token as per_token_module
from moe_kernels import quant as quant_module

from ..emulation.nasty import random_fp32

MODES = [m.value for m in em.ScaleMode]
LAYOUTS = ["contiguous", "transposed", "strided", "row_padded"]
CPU_SHAPES = [(0, 64), (1, 32), (37, 96), (130, 320)]
GPU_SHAPES = [(1, 2880), (257, 2880), (4096, 7168), (3, 8192)]


def _input(rng, shape, dtype, device, layout):
    x = random_fp32(rng, shape)
    if dtype == torch.bfloat16:
        x = em.round_to_bf16(x)
    t = torch.from_numpy(x).to(dtype).to(device)  # exact; layouts made after (.to() may compact strides)
    if layout == "transposed":  # same values, column-major storage
        t = t.t().contiguous().t()
    elif layout == "strided":  # every other column of a wider tensor
        wide = torch.empty((shape[0], 2 * shape[1]), dtype=dtype, device=device)
        wide[:, ::2] = t
        t = wide[:, ::2]
    elif layout == "row_padded":  # rows contiguous, row stride > K: not one flat buffer of 32-blocks
        t = torch.nn.functional.pad(t, (0, 64))[:, :shape[1]]
    assert (layout == "contiguous") == t.is_contiguous() or 0 in shape
    return t, x


def _check_mx(x_t, x_np, mode, fmt):
    if fmt == "e2m1":
        q, s = mk.quantize_mxfp4(x_t, scale_mode=mode)
        q_ref, s_ref = em.quantize_mxfp4(x_np, scale_mode=mode)
    else:
        q, s = mk.quantize_mxfp8(x_t, fmt=fmt, scale_mode=mode)
        q_ref, s_ref = em.quantize_mxfp8(x_np, fmt=fmt, scale_mode=mode)
    assert q.device == x_t.device and s.device == x_t.device
    np.testing.assert_array_equal(s.cpu().numpy(), s_ref)
    np.testing.assert_array_equal(q.cpu().numpy(), q_ref)


def _mx_cases(shapes):
    return [(shape, mode, fmt, dtype, layout) for shape in shapes for mode in MODES
            for fmt in ("e2m1", "e4m3fn", "e4m3fnuz") for dtype in (torch.bfloat16, torch.float32)
            for layout in (LAYOUTS if shape == shapes[2] else ["contiguous"])]


@pytest.mark.parametrize("shape, mode, fmt, dtype, layout", _mx_cases(CPU_SHAPES))
def test_mx_quant_bit_exact_cpu(shape, mode, fmt, dtype, layout, rng, device):
    x_t, x_np = _input(rng, shape, dtype, device, layout)
    _check_mx(x_t, x_np, mode, fmt)


@pytest.mark.gpu
@pytest.mark.parametrize("shape, mode, fmt, dtype, layout", _mx_cases(GPU_SHAPES))
def test_mx_quant_bit_exact_gpu(shape, mode, fmt, dtype, layout, rng, device):
    x_t, x_np = _input(rng, shape, dtype, device, layout)
    _check_mx(x_t, x_np, mode, fmt)


def _check_per_token(x_t, x_np, fmt):
    q, s = mk.quantize_fp8_per_token(x_t, fmt=fmt)
    q_ref, s_ref = em.quantize_fp8_per_token(x_np, fmt=fmt, reciprocal=True)
    np.testing.assert_array_equal(s.cpu().numpy().view(np.uint32), s_ref.view(np.uint32))
    np.testing.assert_array_equal(q.cpu().numpy(), q_ref)


def _per_token_cases(shapes):
    """Odd K (byte stores, a half-empty last pair), K past one chunk, every layout at one shape."""
    return [(shape, fmt, dtype, layout) for shape in shapes for fmt in ("e4m3fn", "e4m3fnuz")
            for dtype in (torch.bfloat16, torch.float32)
            for layout in (LAYOUTS if shape == shapes[2] else ["contiguous"])]


@pytest.mark.parametrize("shape, fmt, dtype, layout",
                         _per_token_cases([*CPU_SHAPES, (5, 7), (3, 5000), (2, 8230), (1, 8193), (9, 129),
                                           (3, 2880)]))
def test_per_token_fp8_bit_exact_cpu(shape, fmt, dtype, layout, rng, device):
    x_t, x_np = _input(rng, shape, dtype, device, layout)
    _check_per_token(x_t, x_np, fmt)


def test_per_token_row_parts():
    """A row of n element pairs as three power-of-two parts: covering n with the fewest lanes, then
    equal widths (one amax reduction), then the fewest parts; a part past the row's end has width 1."""
    for n in range(1, 4097):
        parts = per_token_module.row_parts(n)
        starts = (0, parts[0], parts[0] + parts[1])
        used = [w for w, start in zip(parts, starts) if start < n]
        assert all(w & (w - 1) == 0 for w in parts) and list(parts) == sorted(parts, reverse=True)
        assert sum(used) >= n and all(w == 1 for w, start in zip(parts, starts) if start >= n), (n, parts)
        assert sum(used) - n < max(1, used[-1]), (n, parts)  # padding within the last part used
    assert [per_token_module.row_parts(n) for n in (1440, 3584, 4096, 16, 7)] == [
        (512, 512, 512), (2048, 1024, 512), (4096, 1, 1), (16, 1, 1), (4, 2, 1)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape, fmt, dtype, layout", _per_token_cases([*GPU_SHAPES, (33, 2881)]))
def test_per_token_fp8_bit_exact_gpu(shape, fmt, dtype, layout, rng, device):
    x_t, x_np = _input(rng, shape, dtype, device, layout)
    _check_per_token(x_t, x_np, fmt)


def _special_rows():
    """Rows of 64 values: all-zero, -0, NaN, +-Inf, fp32/bf16 subnormals, ties, max, overflow."""
    rows = np.zeros((10, 64), np.float32)
    rows[1] = -0.0
    rows[2, 3] = np.nan
    rows[3, 40] = -np.inf
    rows[4] = np.float32(1e-40) * np.arange(64)  # fp32 subnormals
    rows[5] = np.tile(np.float32([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0]), 8)  # e2m1 ties at scale 1
    rows[6] = np.float32(np.finfo(np.float32).max)
    rows[7] = np.tile(np.float32([448.0, 464.0, 465.0, -240.0, 248.0, 6.5, -4.875, 7.5]), 8)
    rows[8, :32] = 2.0**-127
    rows[9] = np.float32(3.0e38) * np.where(np.arange(64) % 2, 1, -1)
    return rows


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", ["e2m1", "e4m3fn", "e4m3fnuz"])
def test_special_values(mode, fmt, device):
    x = _special_rows()
    _check_mx(torch.from_numpy(x).to(device), x, mode, fmt)
    if fmt != "e2m1":
        _check_per_token(torch.from_numpy(x).to(device), x, fmt)


def _boundary_rows(fmt, mode):
    """Rows of 64 whose first block has a scale byte around 2 - emin + man_bits (below it, fp32-subnormal
    inputs can reach half the format's smallest subnormal once scaled), holding fp32 subnormals and -0
    beside its amax; the second block is ordinary."""
    f = em.get_format(fmt)
    fast_min = 2 - f.emin + f.man_bits
    rows = []
    for amax in np.float32(2.0) ** np.arange(-140, -100, 0.25, dtype=np.float32):
        byte = int(em.mx_scale_e8m0(np.float32([amax]), fmt, mode)[0])
        if abs(byte - fast_min) <= 1:
            row = np.ones(64, np.float32)
            row[:32] = np.float32(1e-40) * np.arange(32) * np.where(np.arange(32) % 2, -1, 1)
            row[1], row[2], row[3] = amax, -0.0, -amax / np.float32(3)
            rows.append(row)
    assert {int(b) for b in em.mx_scale_e8m0(np.abs(np.stack(rows))[:, :32].max(1), fmt, mode)} == \
        {fast_min - 1, fast_min, fast_min + 1}
    return np.stack(rows)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", ["e2m1", "e4m3fn", "e4m3fnuz"])
def test_special_and_boundary_rows_one_at_a_time(mode, fmt, device):
    """Each row alone is a tile of its own (no neighbouring rows decide anything)."""
    for x in (*_special_rows(), *_boundary_rows(fmt, mode)):
        x = x[None, :]
        _check_mx(torch.from_numpy(x).to(device), x, mode, fmt)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", ["e2m1", "e4m3fn", "e4m3fnuz"])
def test_special_values_gpu(mode, fmt, device):
    test_special_values(mode, fmt, device)
    test_special_and_boundary_rows_one_at_a_time(mode, fmt, device)


@pytest.mark.gpu
def test_cpu_input_on_a_gpu_machine_returns_cpu_output(rng):
    x = torch.from_numpy(random_fp32(rng, (8, 64)))
    q, s = mk.quantize_mxfp4(x)
    assert q.device.type == "cpu"
    np.testing.assert_array_equal(q.numpy(), em.quantize_mxfp4(x.numpy())[0])


def test_float8_view_option():
    x = torch.randn(4, 64)
    q, _ = mk.quantize_mxfp8(x, as_float8=True)
    assert q.dtype == torch.float8_e4m3fn
    q, s = mk.quantize_fp8_per_token(x, fmt="e4m3fnuz", as_float8=True)
    assert q.dtype == torch.float8_e4m3fnuz and s.shape == (4, 1)


@pytest.mark.parametrize(
    "call, match",
    [(lambda: mk.quantize_mxfp4(torch.zeros(4, 48)), "K=48 is not a multiple of 32"),
     (lambda: mk.quantize_mxfp4(torch.zeros(4, 64, dtype=torch.float16)), "x: expected dtype"),
     (lambda: mk.quantize_mxfp4(torch.zeros(64)), "2-D"),
     (lambda: mk.quantize_mxfp4(np.zeros((4, 64), np.float32)), "torch.Tensor"),
     (lambda: mk.quantize_mxfp4(torch.zeros(4, 64), scale_mode="floor"), "scale_mode='floor'"),
     (lambda: mk.quantize_mxfp8(torch.zeros(4, 64), fmt="e5m2"), "fmt='e5m2'"),
     (lambda: mk.quantize_fp8_per_token(torch.zeros(4, 64), fmt="e2m1"), "fmt='e2m1'")],
)
def test_bad_input(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


def test_kernels_never_use_float_casts_the_interpreter_gets_wrong():
    """Guard (NUMERICS.md section 5): conversions are integer arithmetic, so the interpreter is exact."""
    import moe_kernels._numerics as numerics
    import moe_kernels._rows as rows
    import moe_kernels.moe_gemm as moe_gemm
    import moe_kernels.routing as routing

    kernels = [obj for module in (quant_module, per_token_module, rows, numerics, moe_gemm, routing)
               for obj in vars(module).values()
               if hasattr(obj, "fn") and callable(obj.fn) and obj.fn.__module__ == module.__name__]
    assert len(kernels) >= 10
    for kernel in kernels:
        src = inspect.getsource(kernel.fn).split('"""')[-1]  # code after the docstring
        for banned in ("tl.float8", "float8e4", "tl.exp2(", " not ", "to(tl.uint8, bitcast"):
            assert banned not in src, f"{kernel.fn.__name__} uses {banned!r}"


@pytest.mark.parametrize("fmt", ["e2m1", "e4m3fn", "e4m3fnuz"])
def test_round_up_by_reciprocal_equals_division_for_every_mantissa(fmt):
    """The kernels compute ROUND_UP's ratio as amax * fl32(1/max) (no division); the emulation divides.
    The ceiling only depends on amax's mantissa (exponents shift exactly) while the ratio is normal,
    so all 2^23 mantissas, in a few binades, prove it; subnormal ratios take their own branch."""
    mx = em.FORMATS[fmt].max_finite
    inv = np.float32(1.0 / mx)  # the constant the kernel's fp32 arithmetic gets from 1.0 / MAX_FINITE
    assert inv == np.float32(1) / np.float32(mx)
    mantissas = np.arange(1 << 23, dtype=np.uint32)
    for exponent_field in (9, 64, 127, 200, 254):
        amax = ((np.uint32(exponent_field) << np.uint32(23)) | mantissas).view(np.float32)
        by_division = em.mx_scale_e8m0(amax, fmt, "round_up")
        ratio_bits = (amax * inv).astype(np.float32).view(np.uint32).astype(np.int64)
        by_reciprocal = np.clip(((ratio_bits + 0x7FFFFF) >> 23) - 127, -127, 127) + 127
        np.testing.assert_array_equal(by_division, by_reciprocal)


@pytest.mark.parametrize("layout, dtype, flat, words", [
    ("contiguous", torch.bfloat16, True, True), ("contiguous", torch.float32, True, False),
    ("row_padded", torch.bfloat16, False, True), ("transposed", torch.bfloat16, False, False),
    ("strided", torch.float32, False, False)])
def test_layouts_reach_each_tiling(layout, dtype, flat, words, rng):
    """The layouts above exercise every launch form: flat 32-blocks or 2-D tiles, word pairs or not."""
    x_t, _ = _input(rng, (37, 96), dtype, "cpu", layout)
    grid, args, meta, _ = quant_module._mx_launch(x_t, 37, 96, pack=True)
    assert (args[1] == 37 * 96 // 32) == flat and meta["WORDS"] == words


@pytest.mark.parametrize("where", ["interpreter", pytest.param("gpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("layout", ["contiguous", "row_padded"])
def test_persistent_loops_with_one_program_per_sm(layout, where, rng, device, monkeypatch):
    """With one program per SM (one on a CPU) every program walks many tiles and prefetches past the
    end: still the emulation's bytes."""
    for entry in ("quant", "per_token"):
        monkeypatch.setitem(quant_module.CONFIGS[entry], "programs_per_sm", 1)
    for shape in ((9, 129 * 32), (130, 320), *([(2000, 2880)] if device.type == "cuda" else [])):
        x_t, x_np = _input(rng, shape, torch.bfloat16, device, layout)
        _check_mx(x_t, x_np, "round_up", "e2m1")
        _check_mx(x_t, x_np, "even", "e4m3fn")
        _check_per_token(x_t, x_np, "e4m3fn")
    M, K = shape
    grid, _, meta, _ = quant_module._mx_launch(x_t, M, K, True)
    assert grid[0] * meta["BLOCK_M"] < (M * K // 32 if layout == "contiguous" else M)  # the loops ran
    grid, _, meta, _ = per_token_module.launch(x_t, K)
    assert grid[0] * meta["BLOCK_M"] < M


def test_persistent_grid_sizes(monkeypatch):
    """Grids: a fixed count per SM, or "occupancy" - the configured fallback until a launch recorded
    the programs resident per SM from registers, shared memory and warps (the smallest bound wins)."""
    from types import SimpleNamespace

    from moe_kernels import _persistent

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert _persistent.programs("k", 1000, 8, cpu) == 8  # the interpreter counts as one SM
    assert _persistent.programs("k", 3, 8, cpu) == 3
    assert _persistent.programs("k", 1000, "occupancy", cpu) == 4
    monkeypatch.setattr(_persistent, "sm_count", lambda device: 132)
    monkeypatch.setattr(_persistent.torch.version, "hip", None)
    monkeypatch.setattr(_persistent, "device_limits", lambda device: (65536, 232448, 2048))  # an H100 SM
    monkeypatch.setattr(_persistent, "_RESIDENT", {})
    assert _persistent.programs("k", 10**6, "occupancy", cuda) == 4 * 132  # nothing recorded yet
    for n_regs, shared, warps, want in ((72, 128, 4, 7), (40, 128, 4, 12), (32, 128, 4, 16), (32, 100_000, 4, 2),
                                        (56, 32, 8, 4)):
        _persistent._RESIDENT.clear()
        _persistent.record("k", cuda, SimpleNamespace(n_regs=n_regs, metadata=SimpleNamespace(shared=shared)), warps)
        assert _persistent.programs("k", 10**6, "occupancy", cuda) == want * 132, (n_regs, shared, warps)
    _persistent.record("k", cuda, None, 4)  # no compiled kernel (the interpreter): nothing changes
