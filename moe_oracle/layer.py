"""One MoE case of the report: run the implementation's ``fused_moe``, compare with the reference of
the path the selector chose (bytes of the stage-1 input where the implementation exposes them, the
output within the derived bound), and diagnose what does not match."""

from __future__ import annotations

import contextlib
import inspect
import time

import numpy as np

import emulation as em
from moe_ref import ACTIVATION_PATHS, activation_path

from . import references as refs
from ._tensors import Kept, to_numpy, torch_module
from .cases import LayerCase
from .compare import compare_output
from .contract import layer_output
from .guard import guard_band_check
from .implementation import LayerResult, call_with
from .rows import LayerRow

__all__ = ["PATH_NAMES", "layer_capabilities", "judged_act_dtype", "check_layer_case"]

PATH_NAMES = {d: p.name for d, p in ACTIVATION_PATHS.items()}


def layer_capabilities(fn) -> set[str]:
    """The keyword arguments of ``fused_moe``'s contract that ``fn`` names (``**kwargs`` names none:
    ``implementation.call_with`` passes it nothing)."""
    try:
        return {p.name for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD}
    except (TypeError, ValueError):
        return set()


def _fill_allocator(device, nbytes: int, byte: int) -> None:
    """Leave freed memory holding ``byte`` where the implementation's buffers will come from: blocks of
    every power-of-two size up to ``nbytes`` held at once, then freed (a GPU's caching allocator hands
    them out again; on a CPU heap this reaches some sizes only, hence also :func:`filled_empty`)."""
    torch = torch_module()
    top = max(nbytes, 1 << 20).bit_length()
    held = [torch.full((1 << k,), byte, dtype=torch.uint8, device=device) for k in range(6, top + 1) for _ in range(3)]
    del held


@contextlib.contextmanager
def filled_empty(byte: int):
    """``torch.empty``, ``empty_like``, ``empty_strided`` and ``Tensor.new_empty`` return buffers whose
    every byte is ``byte`` for the duration: uninitialised memory made deterministic, so that a result
    that depends on it shows (0xFF is NaN in every float type)."""
    torch = torch_module()
    saved = torch.empty, torch.empty_like, torch.empty_strided, torch.Tensor.new_empty

    def fill(t):
        if t.numel() and t.is_contiguous():
            t.view(-1).view(torch.uint8).fill_(byte)
        elif t.numel():  # a strided buffer: the same bytes element by element
            t.fill_(float("nan") if byte == 0xFF and t.dtype.is_floating_point else -1 if byte == 0xFF else 0)
        return t

    try:
        torch.empty = lambda *a, **k: fill(saved[0](*a, **k))
        torch.empty_like = lambda *a, **k: fill(saved[1](*a, **k))
        torch.empty_strided = lambda *a, **k: fill(saved[2](*a, **k))
        torch.Tensor.new_empty = lambda self, *a, **k: fill(saved[3](self, *a, **k))
        yield
    finally:
        torch.empty, torch.empty_like, torch.empty_strided, torch.Tensor.new_empty = saved


ARG_NAMES = ("hidden", "w1", "w1_scale", "w2", "w2_scale", "topk_weights", "topk_ids")


def _inputs(pt, caps) -> dict:
    """The layer's inputs by name: the seven positional ones, and the biases where it takes them."""
    return {**dict(zip(ARG_NAMES, pt.args())), **(pt.biases() if "bias1" in caps else {})}


def _run(impl, inputs: dict, case, caps, fill: int, device) -> tuple[np.ndarray, LayerResult, float]:
    M, s = case.M, case.shape
    H, I, topk = s["H"], s["I"], s["topk"]  # noqa: E741
    _fill_allocator(device, min(4 * (M * topk * (2 * I + H) * 4 + M * H * 2), 1 << 28), fill)
    kw = dict(gate_mode=case.gate_mode, scale_mode=case.scale_mode, arch=case.arch)
    kw.update({k: v for k, v in inputs.items() if k.startswith("bias")})
    if "poison" in caps:
        kw["poison"] = fill == 0xFF
    t0 = time.perf_counter()
    with filled_empty(fill):
        result = call_with(impl.fused_moe, *(inputs[n] for n in ARG_NAMES), env=case.env, **kw)
    if device.type == "cuda":
        torch_module().cuda.synchronize()
    seconds = time.perf_counter() - t0
    result = layer_output(f"{impl.name}'s fused_moe", result, M, H)
    return to_numpy(result.out).astype(np.float64), result, seconds


def _stage1_bytes(result: LayerResult, hidden_bf16: np.ndarray, act_dtype: str, scale_mode) -> tuple[int, int] | None:
    """(equal, total) bytes of the exposed stage-1 input against the emulation; None if not exposed."""
    if result.a_q is None:
        return None
    path = activation_path(act_dtype)
    got = to_numpy(result.a_q)
    want_q, want_s = path.quantize(hidden_bf16, scale_mode)
    if not path.is_mx:
        got = em.encode(got.astype(np.float32), "bf16") if got.dtype != np.uint16 else got
        return int((got == want_q).sum()), want_q.size
    got_s = to_numpy(result.a_scale)
    if got.shape != want_q.shape or got_s.shape != want_s.shape:
        return 0, want_q.size + want_s.size
    return int((got == want_q).sum() + (got_s == want_s).sum()), want_q.size + want_s.size


_CONVENTIONS = (  # the reference's convention options a foreign layer may follow instead of the contract's
    (("routing_weight_dtype", "bf16"),), (("slot_dtype", "bf16"),),
    (("routing_weight_dtype", "bf16"), ("slot_dtype", "bf16")),
)
_VARIANT_TEXT = {"routing_weight_dtype": "routing weights rounded to bf16", "slot_dtype": "each slot rounded to bf16 "
                 "before the top-k sum"}


def _candidates(selected: str, scale_mode):
    """(path, variant) pairs tried when the output misses its reference: the other paths, the selected
    path with its intermediate kept in bf16 or fp32, under each convention, and (MX paths) under the
    other scale modes."""
    if ACTIVATION_PATHS[selected].is_mx:
        for mode in em.ScaleMode:
            if mode.value != em.ScaleMode.parse(scale_mode).value:
                yield selected, (("scale_mode", mode.value),)
    for other in ACTIVATION_PATHS:
        if other != selected:
            yield other, ()
    for inter in ("bf16", "fp32"):
        if inter != selected:
            yield selected, (("intermediate_dtype", inter),)
    for conv in _CONVENTIONS:
        yield selected, conv


def _variant_label(act: str, variant: tuple) -> str:
    opts = dict(variant)
    if not opts:
        return f"the {PATH_NAMES[act]} path's reference"
    if "scale_mode" in opts:
        return f"the {PATH_NAMES[act]} reference with scale mode {opts['scale_mode']}"
    if "intermediate_dtype" in opts:
        kept = opts["intermediate_dtype"]
        return f"the {PATH_NAMES[act]} reference with its intermediate {'unquantized (fp32)' if kept == 'fp32' else 'in ' + kept}"
    return f"the {PATH_NAMES[act]} reference with " + " and ".join(_VARIANT_TEXT[k] for k in opts)


def _diagnose(case, device, seed, cache, with_bias, out, cmp, selected, reported) -> list[str]:
    """Why the output does (not) match: another path's reference, an unquantized intermediate, NaN."""
    mma_k = refs.mma_k_of(device.type)
    notes = []
    if reported is not None and reported != selected:
        notes.append(f"it reports path {PATH_NAMES.get(reported, reported)}; the selector chose {PATH_NAMES[selected]}")
    at = refs.reference_device(device)
    _, ref, _, _ = refs.reference(cache, case, selected, seed, mma_k, with_bias, device=at)
    bad = int((~np.isfinite(out) & np.isfinite(ref)).sum())
    if bad:
        notes.append(f"{cmp['nan_out']} NaN and {cmp['inf_out']} Inf outputs ({bad} where the reference is finite)")
    if cmp["within_tolerance"]:
        notes.insert(0, f"matches the {PATH_NAMES[selected]} reference (margin {cmp['margin']:.3g})")
        return notes
    tried = []
    for act, variant in _candidates(selected, case.scale_mode):
        _, r, ideal, b = refs.reference(cache, case, act, seed, mma_k, with_bias, variant=variant, device=at)
        tried.append((compare_output(out, r, ideal, b)["margin"], act, variant))
    tried.sort(key=lambda t: t[0])
    best_m, act, variant = tried[0]
    label = _variant_label(act, variant)
    if best_m <= 1.0 and not variant:
        notes.insert(0, f"matches {label} (margin {best_m:.3g}): it took {PATH_NAMES[act]} where the selector chose "
                        f"{PATH_NAMES[selected]}")
    elif best_m <= 1.0 and "scale_mode" in dict(variant):
        notes.insert(0, f"matches {label} (margin {best_m:.3g}): it quantized with another scale mode than the "
                        f"{case.scale_mode} asked for")
    elif best_m <= 1.0 and dict(variant).get("intermediate_dtype"):
        notes.insert(0, f"matches {label} (margin {best_m:.3g}): the stage-2 input was not quantized as the "
                        f"{PATH_NAMES[selected]} path requires")
    elif best_m <= 1.0:
        notes.insert(0, f"matches {label} (margin {best_m:.3g}): a convention of its own, not the contract's")
    else:
        notes.insert(0, f"matches no path's reference (margin {cmp['margin']:.3g} on {PATH_NAMES[selected]}, "
                        f"{cmp['n_outside']} of {out.size} outputs outside the bound, up to {cmp['max_err_ulps']:.3g} bf16 "
                        f"ulps; closest: {label}, margin {best_m:.3g})")
    return notes


def judged_act_dtype(impl, case: LayerCase, cfg) -> str:
    """The path a case's output is judged on: the config's forced reference, else the implementation's one
    path, else the selector's choice."""
    return cfg.reference_act_dtype or impl.fixed_path or case.decision.dtype


def check_layer_case(impl, case: LayerCase, cfg, device, seed: int, cache: dict) -> LayerRow:
    """The report's row for one case (``moe_oracle.rows.LayerRow`` says what each field holds)."""
    caps = layer_capabilities(impl.fused_moe)
    with_bias = "bias1" in caps
    decision = case.decision
    selected = judged_act_dtype(impl, case, cfg)
    mma_k = refs.mma_k_of(device.type)
    p, ref, ideal, bound = refs.reference(cache, case, selected, seed, mma_k, with_bias,
                                          device=refs.reference_device(device))
    bound = cfg.tolerance_scale * bound
    pt = refs.on_device(cache, p, device)
    kept = Kept(dict(zip(ARG_NAMES, pt.args())))  # put back after each run: the uploaded layer is the true one again
    inputs = _inputs(pt, caps)
    out, result, seconds = _run(impl, inputs, case, caps, 0xFF, device)
    kept.put_back()
    cmp = compare_output(out, ref, ideal, bound)
    reported = result.act_dtype
    notes = _diagnose(case, device, seed, cache, with_bias, out, cmp, selected, reported)
    out_zeroed, _, _ = _run(impl, inputs, case, caps, 0x00, device)
    kept.put_back()
    changed = int((out_zeroed.view(np.uint64) != out.view(np.uint64)).sum())
    if changed:
        notes.append(f"output changes with memory it should not read: {changed} of {out.size} elements differ "
                     f"between a run over NaN-filled and one over zeroed memory")
    outside = guard_band_check(lambda args: _run(impl, args, case, caps, 0xFF, device)[0], inputs, out) \
        if cfg.guard_bands else []
    notes += outside
    read_outside = any(n.startswith("reads outside") for n in outside)
    kept.put_back()
    touched = kept.written
    if touched:
        notes.append(f"it wrote to its inputs: {', '.join(touched)}")
    if impl.fixed_path and impl.fixed_path != decision.dtype:
        notes.append(f"judged on its one path {PATH_NAMES[impl.fixed_path]}; the selector would choose "
                     f"{PATH_NAMES[decision.dtype]} here ({decision.reason})")
    bytes_eq = _stage1_bytes(result, p.hidden, reported or selected, case.scale_mode)
    ok = cmp["within_tolerance"] and not changed and not touched and not read_outside and (
        bytes_eq is None or bytes_eq[0] == bytes_eq[1])
    ok = ok and (reported is None or reported == selected)
    return LayerRow(
        impl=impl.name, **case.columns(), path=PATH_NAMES[selected], act_dtype=selected,
        reported_act_dtype=reported, rule=decision.rule, reason=decision.reason,
        bytes_equal=None if bytes_eq is None else bytes_eq[0], bytes_total=None if bytes_eq is None else bytes_eq[1],
        **cmp, poison_sensitive=bool(changed), kernel_seconds=seconds, verdict="PASS" if ok else "FAIL",
        diagnosis=notes,
    )
