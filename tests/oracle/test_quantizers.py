"""``moe_oracle.quantizers`` pinned directly: its refusals, the shape check, the verdict and the exact
diagnosis words of a pass and of each kind of failure, the policies it reports, and what it records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import emulation as em
from moe_oracle.inputs import BLOCK_KINDS, classify_blocks, quantizer_input
from moe_oracle.quantizers import MX_KINDS, QuantizerCheck, check_quantizer

from .planted import _fake, _mxfp4, _mxfp8, _nibbles_swapped, _per_tensor, _per_token, _post, _zero_block_scale_127


def test_kinds_and_refusals():
    assert MX_KINDS == {"quantize_mxfp4": "e2m1", "quantize_mxfp8": None, "quantize_dequantize_mxfp4": "e2m1"}
    with pytest.raises(ValueError) as info:
        check_quantizer(_mxfp4(), "quantize_mxfp6")
    assert str(info.value) == ("kind='quantize_mxfp6' is not valid; expected one of ['quantize_mxfp4', 'quantize_mxfp8', "
                               "'quantize_dequantize_mxfp4', 'quantize_fp8_per_token', 'quantize_fp8_per_tensor', "
                               "'dequantize_mxfp4']")
    with pytest.raises(ValueError) as info:
        check_quantizer(_mxfp4(), "quantize_mxfp4", ties="up")
    assert str(info.value) == f"ties='up' is not valid; expected one of {list(em.TIE_MODES)}"
    with pytest.raises(ValueError, match="scale_mode='nearest' is not valid"):
        check_quantizer(_mxfp4(), "quantize_mxfp4", scale_mode="nearest")


def test_a_correct_quantizer_passes_in_these_words():
    check = check_quantizer(_mxfp4(), "quantize_mxfp4", seed=7, M=32, K=256)
    assert isinstance(check, QuantizerCheck) and check.passed and check.verdict == "PASS"
    total = 32 * 128 + 32 * 8  # packed bytes and scale bytes
    assert (check.bytes_equal, check.bytes_total, check.unit, check.seed) == (total, total, "bytes", 7)
    assert check.expected == "round_up, ties even" and check.fmt == "e2m1" and check.input_dtype == "bfloat16"
    assert check.follows == "round_up, ties even" and check.best == "round_up, ties even"
    assert check.diagnosis() == f"bit-exact under round_up, ties even ({total} bytes)"
    assert check.policies == {} and check.notes == ()
    assert all(v == 0 for v in check.differing.values()) and all(v == 0 for v in check.best_differing.values())


def test_the_expected_convention_follows_the_arguments():
    check = check_quantizer(_mxfp4(ties="away"), "quantize_mxfp4", scale_mode="even", ties="away", seed=3)
    assert check.passed and check.expected == "even, ties away"


def test_a_tie_rule_bug_is_named_with_its_counts():
    check = check_quantizer(_mxfp4(ties="away"), "quantize_mxfp4", seed=7)
    assert not check.passed and check.verdict == "FAIL"
    assert check.follows == "round_up, ties away" and check.best == "round_up, ties away"
    assert check.differing["ties"] > 0 and check.differing["ordinary"] == 0
    n_bad = check.bytes_total - check.bytes_equal
    text = check.diagnosis()
    assert text.startswith(f"{n_bad} of {check.bytes_total} bytes differ from round_up, ties even; "
                           f"differing blocks by kind: ties: {check.differing['ties']}")
    assert "; follows round_up, ties away bit for bit on ordinary and tie blocks" in text
    assert "no scale mode" not in text


def test_nibble_order_and_policies_are_read():
    check = check_quantizer(_post(_mxfp4(), _nibbles_swapped), "quantize_mxfp4", seed=7)
    assert check.follows.startswith("round_up, ties even, nibbles swapped (element 2i in the high nibble)")
    zero = check_quantizer(_post(_mxfp4(), _zero_block_scale_127), "quantize_mxfp4", seed=7)
    assert zero.policies["zero blocks"].startswith("scale byte(s) ['0x7f'], codes ")
    assert zero.policies["zero blocks"].endswith("(contract: scale 0x00, codes +-0)")
    assert "zero blocks: scale byte(s) ['0x7f']" in zero.diagnosis()
    assert zero.differing["zero"] > 0 and zero.differing["ordinary"] == 0


def test_nothing_reproduces_it():
    def noise(x, scale_mode="round_up"):
        q, s = em.quantize_mxfp4(x.float().numpy())
        return torch.from_numpy(q ^ 0x11), torch.from_numpy(s)  # both nibbles' lowest bit flipped

    check = check_quantizer(noise, "quantize_mxfp4", seed=7)
    assert check.follows is None and check.closest.startswith("round_up, ties even (")
    assert " ordinary/tie blocks differ" in check.closest
    assert "no scale mode x tie rule reproduces it; closest " in check.diagnosis()


def test_wrong_shapes_are_an_error():
    """The right number of bytes (the contract's check) in the wrong shape: the check names both."""
    def flat(x, scale_mode="round_up"):
        q, s = em.quantize_mxfp4(x.float().numpy())
        return torch.from_numpy(q.reshape(-1)), torch.from_numpy(s)

    with pytest.raises(ValueError) as info:
        check_quantizer(flat, "quantize_mxfp4", M=32, K=256, seed=1)
    assert str(info.value) == ("quantize_mxfp4: returned codes [4096] and scales [32, 8]; expected [32, 128] and "
                               "[32, 8]")

    def transposed_scales(x, scale_mode="round_up", fmt="e4m3fn"):
        q, s = em.quantize_mxfp8(x.float().numpy(), fmt=fmt)
        return torch.from_numpy(q), torch.from_numpy(np.ascontiguousarray(s.T))

    with pytest.raises(ValueError) as info:
        check_quantizer(transposed_scales, "quantize_mxfp8", M=32, K=256, seed=1)
    assert str(info.value) == ("quantize_mxfp8: returned codes [32, 256] and scales [8, 32]; expected [32, 256] and "
                               "[32, 8]")


@pytest.mark.parametrize("per_row", [False, True], ids=["blocks", "per_row"])
@pytest.mark.parametrize("M, K", [(1, 192), (2, 96), (3, 64), (6, 32), (11, 32), (12, 32), (16, 32), (16, 64),
                                  (9, 64), (32, 256)])
def test_every_block_kind_is_drawn_at_every_shape(M, K, per_row):
    """Small shapes too: every kind the classifier can name is present (a NaN block was overwritten by the
    per-token tie rows at K = 32), per row the zero and NaN blocks stay in the first rows, the x / s tie
    rows and the +-0 last row are there wherever the rows leave room, and nothing else changes the kinds."""
    first_tie_row = max(3, 5 // (K // 32) + 1)
    for seed in range(4):
        x = quantizer_input(np.random.default_rng(seed), M, K, "e4m3fn", per_row=per_row)
        kinds = classify_blocks(x)
        assert x.shape == (M, K) and x.dtype == np.float32
        assert set(kinds.ravel()) == set(BLOCK_KINDS) - {"ties"}  # a tie block reads as ordinary
        if not per_row:
            continue
        poisoned = {r for r in range(M) if np.isin(kinds[r], ["zero", "nan_inf"]).any()}
        room = M > first_tie_row + 5  # five tie rows and the zero row after them
        zero_row = M - 1 > (first_tie_row + 4 if room else max(5 // (K // 32), 2))
        assert poisoned <= set(range(first_tie_row)) | ({M - 1} if zero_row else set())
        tie_rows = x[first_tie_row:first_tie_row + 5] if room else x[:0]
        scale = np.abs(tie_rows).max(1, keepdims=True) / np.float32(448)
        apart = em.encode(tie_rows / scale, "e4m3fn") != em.encode(tie_rows * (np.float32(1) / scale), "e4m3fn")
        assert apart.any(1).all() and np.isin(kinds[first_tie_row:first_tie_row + 5 if room else 0], "ordinary").all()
        assert (x[M - 1] == 0).all() == zero_row


@pytest.mark.parametrize("M, K, error, words", [
    (2, 64, ValueError, "M=2, K=64: 4 blocks of 32, fewer than the 6 kinds every check draws (ordinary, ties, zero, "
                        "subnormal, huge, nan_inf); expected M * K / 32 >= 6"),
    (16, 48, ValueError, "K=48: expected a multiple of 32 (one scale per 32 values along K)"),
    (0, 64, ValueError, "M=0: expected a positive integer"),
    (16, -32, ValueError, "K=-32: expected a positive integer"),
    (16.0, 64, TypeError, "M=16.0: expected an int"),
    (True, 64, TypeError, "M=True: expected an int"),
    (16, "64", TypeError, "K='64': expected an int"),
])
@pytest.mark.parametrize("kind", ["quantize_mxfp4", "quantize_fp8_per_token"])
def test_shapes_it_cannot_draw_are_refused_by_name(M, K, error, words, kind):
    with pytest.raises(error) as info:
        check_quantizer(_mxfp4(), kind, M=M, K=K)
    assert str(info.value) == words
    if error is TypeError or M == 0 or K == -32:  # per tensor: any positive M and K (one scale)
        with pytest.raises(error, match=words.split(":")[0]):
            check_quantizer(_mxfp4(), "quantize_fp8_per_tensor", M=M, K=K)


@pytest.mark.parametrize("x, error, words", [
    (np.zeros((16, 48), np.float32), ValueError, "x: K=48 is not a multiple of 32 (one scale per 32 values along K)"),
    (np.zeros(64, np.float32), ValueError, "x: expected a non-empty [M, K] array, got shape (64,)"),
    (np.zeros((2, 3, 32)), ValueError, "x: expected a non-empty [M, K] array, got shape (2, 3, 32)"),
    (np.zeros((0, 32)), ValueError, "x: expected a non-empty [M, K] array, got shape (0, 32)"),
    ("abc", TypeError, "x: expected real values [M, K] (float or integer), got str of dtype <U3"),
    (np.zeros((4, 64), complex), TypeError, "x: expected real values [M, K] (float or integer), got ndarray of dtype "
                                            "complex128"),
    (np.zeros((4, 64), bool), TypeError, "x: expected real values [M, K] (float or integer), got ndarray of dtype bool"),
])
def test_given_data_it_cannot_check_is_refused_by_name(x, error, words):
    with pytest.raises(error) as info:
        check_quantizer(_mxfp4(), "quantize_mxfp4", x=x)
    assert str(info.value) == words


@pytest.mark.parametrize("kind", ["quantize_mxfp4", "quantize_mxfp8", "quantize_fp8_per_token", "dequantize_mxfp4"])
@pytest.mark.parametrize("kw, error, says", [
    ({"fn": None}, TypeError, "fn: expected a callable quantizer, got NoneType"),
    ({"fn": "quantize"}, TypeError, "fn: expected a callable quantizer, got str"),
    ({"input_dtype": "float8"}, ValueError, "input_dtype='float8' is not valid; expected one of ['bfloat16', "
                                            "'float16', 'float32']"),
    ({"device": "gpu0"}, ValueError, "device='gpu0' is not a device (Invalid device string: 'gpu0'); expected 'cpu', "
                                     "'cuda' or 'cuda:N'"),
    ({"device": "cuda"}, ValueError, "device='cuda': torch sees no GPU"),
    ({"seed": -1}, ValueError, "seed=-1: expected a non-negative integer"),
    ({"seed": "a"}, ValueError, "seed='a': expected a non-negative integer"),
    ({"seed": 1.5}, ValueError, "seed=1.5: expected a non-negative integer"),
    ({"fmt": 3}, ValueError, "fmt=3 is not valid for "),
])
def test_arguments_it_cannot_use_are_refused_by_name(kind, kw, error, says, monkeypatch):
    """Each was a raw error from torch or NumPy (or, for fmt, silently ignored) before any call."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    calls = []
    kw = {"fn": lambda *a, **k: calls.append(a), **kw}
    with pytest.raises(error) as info:
        check_quantizer(kw.pop("fn"), kind, **kw)
    assert str(info.value).startswith(says) and calls == []


@pytest.mark.parametrize("kind, fmt, says", [
    ("quantize_mxfp4", "e4m3fn", "fmt='e4m3fn' is not valid for quantize_mxfp4; expected None or 'e2m1'"),
    ("quantize_dequantize_mxfp4", "e4m3fn", "fmt='e4m3fn' is not valid for quantize_dequantize_mxfp4; expected None or "
                                          "'e2m1'"),
    ("quantize_mxfp8", "e2m1", "fmt='e2m1' is not valid for quantize_mxfp8; expected None (e4m3fn) or one of "
                               "['e4m3fn', 'e4m3fnuz']"),
    ("quantize_fp8_per_token", "bf16", "fmt='bf16' is not valid for quantize_fp8_per_token; expected None (e4m3fn) "
                                       "or one of ['e4m3fn', 'e4m3fnuz']"),
])
def test_a_format_the_kind_cannot_have_is_refused(kind, fmt, says):
    with pytest.raises(ValueError) as info:
        check_quantizer(_mxfp4(), kind, fmt=fmt)
    assert str(info.value) == says
    assert check_quantizer(_mxfp8(), "quantize_mxfp8", fmt="e4m3fnuz", seed=3).passed


@pytest.mark.parametrize("kind", ["quantize_mxfp4", "quantize_dequantize_mxfp4"])
def test_the_fp4_kinds_take_their_one_format_by_name(kind):
    fn = _mxfp4() if kind == "quantize_mxfp4" else _fake()
    assert check_quantizer(fn, kind, fmt="e2m1", seed=3).passed


@pytest.mark.parametrize("M, K", [(1, 1), (3, 33), (2, 7)])
def test_per_tensor_takes_any_shape(M, K):
    """One scale for the tensor: no 32-blocks to fit (the MX kinds' rule does not apply)."""
    check = check_quantizer(_per_tensor(), "quantize_fp8_per_tensor", M=M, K=K, seed=5)
    assert check.passed and check.bytes_total == M * K + 1  # the codes and the one scale


def test_given_data_as_a_tensor_or_integers():
    """A tensor (bf16 here) or an integer array is the same data as its fp32 values; per token any K."""
    x = quantizer_input(np.random.default_rng(5), 16, 64, "e2m1")
    as_tensor = check_quantizer(_mxfp4(), "quantize_mxfp4", x=torch.from_numpy(x).bfloat16(), seed=1)
    as_array = check_quantizer(_mxfp4(), "quantize_mxfp4", x=torch.from_numpy(x).bfloat16().float().numpy(), seed=1)
    assert as_tensor.passed and as_tensor == as_array
    integers = check_quantizer(_mxfp4(), "quantize_mxfp4", x=np.arange(-64, 64).reshape(2, 64), seed=1)
    assert integers.passed and integers.bytes_total == 2 * 32 + 2 * 2
    assert check_quantizer(_per_token(), "quantize_fp8_per_token", x=np.ones((3, 5), np.float32)).passed


def test_a_quantizer_without_a_scale_mode_is_noted():
    def fixed(x):
        return tuple(torch.from_numpy(a) for a in em.quantize_mxfp4(x.float().numpy()))

    check = check_quantizer(fixed, "quantize_mxfp4", seed=2)
    assert check.passed and check.notes == ("takes no scale_mode: its own fixed mode",)
    assert check.diagnosis().endswith("; takes no scale_mode: its own fixed mode")
    per_token = check_quantizer(_per_token(), "quantize_fp8_per_token", seed=2)
    assert "takes no scale_mode" not in " ".join(per_token.notes)  # a per-token quantizer has no scale mode


def test_given_data_is_used_and_the_input_dtype_applied():
    x = quantizer_input(np.random.default_rng(0), 16, 64, "e2m1")
    seen = []

    def spy(x_t, scale_mode="round_up"):
        seen.append(x_t)
        return tuple(torch.from_numpy(a) for a in em.quantize_mxfp4(x_t.float().numpy()))

    check = check_quantizer(spy, "quantize_mxfp4", x=x, input_dtype="float32", seed=4)
    assert check.passed and check.input_dtype == "float32" and check.seed == 4
    assert seen[0].dtype == torch.float32 and np.array_equal(seen[0].numpy(), x, equal_nan=True)
    check_quantizer(spy, "quantize_mxfp4", x=x, seed=4)
    assert seen[-1].dtype == torch.bfloat16 and seen[-1].shape == (16, 64)


def test_mxfp8_and_its_format():
    check = check_quantizer(_mxfp8(), "quantize_mxfp8", fmt="e4m3fnuz", seed=5)
    assert check.passed and check.fmt == "e4m3fnuz" and check.kind == "quantize_mxfp8"
    assert check_quantizer(_mxfp8(), "quantize_mxfp8", seed=5).fmt == "e4m3fn"  # the default element format


def test_per_token_verdicts_and_words():
    ok = check_quantizer(_per_token(), "quantize_fp8_per_token", seed=6, M=16, K=64)
    assert ok.passed and ok.expected == "scale amax/max, x * (1/s), ties even" and ok.follows == "x * (1/s)"
    assert (ok.bytes_equal, ok.bytes_total) == (16 * 64 + 16, 16 * 64 + 16)
    div = check_quantizer(_per_token(reciprocal=False), "quantize_fp8_per_token", seed=6, M=16, K=64)
    assert not div.passed and div.follows == "x / s" and div.closest.startswith("x / s (0 of ")
    assert div.differing["ordinary"] > 0 and div.differing["zero"] == 0 and div.differing["nan_inf"] == 0


def test_per_token_policies():
    def zero_rows_scale_one(x, fmt="e4m3fn"):
        q, s = em.quantize_fp8_per_token(x.float().numpy(), fmt=fmt, reciprocal=True)
        zero = np.abs(x.float().numpy()).max(1) == 0
        s = np.where(zero[:, None], np.float32(1), s)
        return torch.from_numpy(q), torch.from_numpy(s.astype(np.float32))

    x = quantizer_input(np.random.default_rng(1), 16, 64, "e4m3fn", per_row=True)
    x[3] = 0.0
    check = check_quantizer(zero_rows_scale_one, "quantize_fp8_per_token", x=x, seed=0)
    assert check.differing["zero"] >= 1
    assert check.policies["zero rows"] == "scale [1.0] (contract: 0.0, codes 0x00)"


def test_the_name_it_is_reported_under():
    import functools

    from moe_oracle.quantizers import _name

    def plain(x):
        return x

    class Quantizer:
        def __call__(self, x):
            return x

    named = Quantizer()
    named.__name__ = "given"
    assert _name(plain) == "test_the_name_it_is_reported_under.<locals>.plain"  # the qualified name first
    assert _name(named) == "given"  # then the plain name
    assert _name(Quantizer()) == "Quantizer" and _name(functools.partial(plain)) == "partial"  # then its type


def test_what_the_call_hands_over_and_returns():
    from moe_oracle.quantizers import _call

    x = quantizer_input(np.random.default_rng(0), 4, 64, "e4m3fn", per_row=True)
    seen = []

    def per_token(x_t, fmt="e4m3fn"):
        seen.append((x_t.device.type, x_t.dtype, fmt))
        q, s = em.quantize_fp8_per_token(x_t.float().numpy(), fmt=fmt)
        return torch.from_numpy(q), torch.from_numpy(s.astype(np.float64)).float()

    q, s = _call(per_token, x, "bfloat16", "cpu", "quantize_fp8_per_token", fmt="e4m3fnuz")
    assert seen == [("cpu", torch.bfloat16, "e4m3fnuz")]
    assert q.dtype == np.uint8 and s.dtype == np.float32 and s.shape == (4, 1)
    packed, scales = _call(_mxfp4(), x, "float32", "cpu", "quantize_mxfp4", scale_mode="even")
    assert scales.dtype == np.uint8 and packed.shape == (4, 32)  # e8m0 bytes stay bytes
    want = em.quantize_fp8_per_token(x, fmt="e4m3fn")
    devices = []

    def where(x_t, fmt="e4m3fn"):  # a meta device stands in for a GPU: the input goes where it is asked
        devices.append(x_t.device.type)
        return torch.from_numpy(want[0]), torch.from_numpy(want[1])

    _call(where, x, "bfloat16", "meta", "quantize_fp8_per_token", fmt="e4m3fn")
    assert devices == ["meta"]


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_per_token_in_each_format(fmt):
    ok = check_quantizer(_per_token(), "quantize_fp8_per_token", fmt=fmt, seed=6, M=16, K=64)
    assert ok.passed and ok.fmt == fmt and ok.kind == "quantize_fp8_per_token" and ok.input_dtype == "bfloat16"
    assert ok.notes == () and ok.policies == {}
    assert ok.diagnosis() == f"bit-exact under scale amax/max, x * (1/s), ties even ({16 * 64 + 16} bytes)"


def test_per_token_counts_and_nan_rows():
    x = quantizer_input(np.random.default_rng(1), 16, 64, "e4m3fn", per_row=True)
    x[2, 5] = np.nan
    x[3] = 0.0

    def nan_rows_scale_zero(x_t, fmt="e4m3fn"):
        q, s = em.quantize_fp8_per_token(x_t.float().numpy(), fmt=fmt, reciprocal=True)
        s = np.where(np.isfinite(x_t.float().numpy()).all(1)[:, None], s, np.float32(0))
        return torch.from_numpy(q), torch.from_numpy(s.astype(np.float32))

    check = check_quantizer(nan_rows_scale_zero, "quantize_fp8_per_token", x=x, seed=0)
    finite_rows = int(np.isfinite(x).all(1).sum())
    ordinary_rows = int((np.isfinite(x).all(1) & (np.abs(x).max(1) > 0)).sum())
    assert ordinary_rows == finite_rows - 2  # row 3 and the last row are zero
    assert check.differing == {"ordinary": 0, "zero": 0, "nan_inf": 16 - finite_rows}
    assert check.policies == {"NaN/Inf rows": "scale ['0.0'] (contract: NaN, codes NaN)"}
    assert check.follows == "x * (1/s)" and check.closest == f"x * (1/s) (0 of {ordinary_rows} rows differ)"
    assert check.bytes_total - check.bytes_equal == 16 - finite_rows  # only the NaN rows' scales differ
    div = check_quantizer(_per_token(reciprocal=False), "quantize_fp8_per_token", x=x, seed=0)
    assert div.follows == "x / s" and div.differing["ordinary"] > 0 and div.differing["nan_inf"] == 0
    assert div.closest == f"x / s (0 of {ordinary_rows} rows differ)"
    assert div.notes == ()  # nothing for the interpreter to explain: this is a real rounding difference


def test_per_tensor_record():
    from .planted import _per_tensor

    check = check_quantizer(_per_tensor(), "quantize_fp8_per_tensor", seed=3, M=8, K=64)
    assert check.passed and check.kind == "quantize_fp8_per_tensor" and check.fmt == "e4m3fn"
    assert (check.bytes_equal, check.bytes_total) == (8 * 64 + 1, 8 * 64 + 1) and check.seed == 3
    bad = check_quantizer(_per_tensor(reciprocal=False), "quantize_fp8_per_tensor", fmt="e4m3fnuz", seed=3, M=8, K=64)
    assert not bad.passed and bad.follows == "x / s" and bad.fmt == "e4m3fnuz"
