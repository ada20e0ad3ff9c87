"""Guard bands: inputs given as views into larger buffers whose slack is poisoned, to catch reads
outside the inputs.

A kernel that reads past the end of a weight row (the last K tile when K is not a multiple of its
BLOCK_K), past the last token or past a scale row computes right on tight, contiguous inputs (the
bytes it reads belong to a neighbouring row, or lie beyond the allocation) and wrong on a production
layout. Here each input is copied into a buffer with slack after every row (``ROW_SLACK`` elements:
a view with a larger row stride, as a slice of a wider tensor is) and after its last row (``TAIL_ROWS``
rows per leading index: past the last token, past each expert's last row), the slack filled with
poison: NaN for floating tensors, 0xFF bytes otherwise (fp4x2 -6.0 pairs, e8m0 NaN scales, int ids -1).
The output of the guarded run must equal the tight run's bit for bit; where it does not, each input
is guarded alone, and the one that changes the output is named with where the read went.

A kernel that refuses strided inputs (an assertion on contiguity) is run with tail slack only (a
contiguous view at the start of a larger, poisoned buffer), and the report says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ._tensors import torch_module

__all__ = ["guarded", "guard_band_check", "ROW_SLACK", "TAIL_ROWS"]

ROW_SLACK = 64  # elements after every row: one K tile of 128 fp4 values, or of 64 bf16 / bytes
TAIL_ROWS = 16  # rows after the last one (per leading index): a BLOCK_M of tokens, a tile of weight rows
MODES = {"rows+tail": (True, True), "rows": (True, False), "tail": (False, True)}


def _poison(buf) -> None:
    torch = torch_module()
    if buf.dtype.is_floating_point:
        buf.fill_(float("nan"))
    else:
        buf.view(-1).view(torch.uint8).fill_(0xFF)


def guarded(t, *, rows: bool = True, tail: bool = True):
    """A copy of ``t`` as a view into a larger buffer with poisoned slack: after every row (``rows``:
    a larger row stride) and after the last row of each leading index (``tail``)."""
    torch = torch_module()
    if t is None or t.numel() == 0:
        return t
    if not rows:  # contiguous, at the start of a longer poisoned storage
        extra = TAIL_ROWS * (t.shape[-1] if t.ndim else 1) * (int(np.prod(t.shape[:-2])) if t.ndim > 2 else 1)
        buf = torch.empty(t.numel() + max(extra, ROW_SLACK), dtype=t.dtype, device=t.device)
        _poison(buf)
        view = buf[: t.numel()].view(t.shape)
    elif t.ndim == 1:
        buf = torch.empty(t.shape[0] + (ROW_SLACK if tail else 0) + ROW_SLACK, dtype=t.dtype, device=t.device)
        _poison(buf)
        view = buf[: t.shape[0]]
    else:
        shape = (*t.shape[:-2], t.shape[-2] + (TAIL_ROWS if tail else 0), t.shape[-1] + ROW_SLACK)
        buf = torch.empty(shape, dtype=t.dtype, device=t.device)
        _poison(buf)
        view = buf[..., : t.shape[-2], : t.shape[-1]]
    view.copy_(t)
    return view


def _where(mode: str) -> str:
    return {"rows": "past a row's end (into the slack after each row)",
            "tail": "past the last row (into the slack after it: a token, an expert's row or a scale row beyond the input)",
            "rows+tail": "outside its rows"}[mode]


def guard_band_check(run: Callable[[Mapping], np.ndarray], inputs: Mapping, tight: np.ndarray) -> list[str]:
    """Run ``run(inputs)`` with every input guarded; compare with ``tight`` (the output of the tight
    run) bit for bit. Returns the diagnosis lines ([] when the guarded run matches)."""
    names = [n for n, t in inputs.items() if t is not None and getattr(t, "numel", lambda: 0)()]

    def attempt(which, mode):
        r, t = MODES[mode]
        args = {n: (guarded(v, rows=r, tail=t) if n in which else v) for n, v in inputs.items()}
        out = run(args)
        return int(_differs(out, tight).sum())

    mode, notes = "rows+tail", []
    try:
        n_diff = attempt(names, mode)
    except Exception as exc:  # noqa: BLE001 - a kernel may refuse strided views: then tail slack only
        mode = "tail"
        notes.append(f"it refuses inputs with a row stride larger than the row ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0][:100] if str(exc) else ''}); guard bands after the last row only")
        n_diff = attempt(names, mode)
    if not n_diff:
        return notes
    blamed = []
    for name in names:
        if not attempt([name], mode):
            continue
        where = [m for m in (("rows", "tail") if mode == "rows+tail" else (mode,)) if attempt([name], m)]
        blamed.append(f"{name} {' and '.join(_where(m) for m in where) if where else _where(mode)}")
    what = "; ".join(blamed) if blamed else "only with several inputs guarded at once"
    return notes + [f"reads outside its inputs: with poisoned guard bands around them, {n_diff} of {tight.size} "
                    f"outputs differ from the tight run; it reads {what}"]


def _differs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return ~((a == b) | (np.isnan(a) & np.isnan(b)))
