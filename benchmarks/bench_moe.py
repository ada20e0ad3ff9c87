"""fused_moe per activation path vs stock PyTorch MoE and the floors, in one run (issue 7).

gpt-oss-120b layer: E=128, H=I=2880, top-k 4, routing from random logits (softmax top-k). For each M:
- fused_moe on each path (a16w4, a4w4, a8w4), forced through the selector's own inputs (arch/env);
- OpenAI triton_kernels' matmul_ogs MoE with its routing (vLLM's gpt-oss path), where it can be
  loaded (``MOE_ORACLE_TRITON_KERNELS_PATH``: a folder holding ``triton_kernels/``, or the vLLM wheel),
  its output checked against ours before it is timed; weights swizzled once, outside the timing;
- torch._grouped_mm on the dequantized bf16 weights, and a per-expert torch loop for small M;
- floors: the touched experts' MXFP4 bytes (4.25 bits per weight) over the measured device copy
  bandwidth, and the layer's FLOPs over the measured bf16 matmul rate.
Times are triton.testing.do_bench medians (ms), host launch overhead included; the CUDA-graph columns
(``triton.testing.do_bench_cudagraph``) replay captured calls: device time, as a serving engine that
captures decode steps sees it (routing prep of the peers is outside their timing). Without a GPU it runs tiny shapes under the interpreter
(wall-clock, one call) so that it cannot rot. ``--json PATH`` saves the rows.
"""

from __future__ import annotations

# isort: off
import moe_kernels as mk  # before triton: it picks the interpreter on a machine without a GPU
import torch
from moe_kernels import _runtime
# isort: on

import argparse
import functools
import json

import emulation as em
from benchmarks._timing import time_graph_ms, time_ms  # noqa: E402

GPU_SHAPE = dict(E=128, H=2880, I=2880, topk=4)
GPU_MS = (1, 8, 64, 256, 1024, 4096, 8192)
CPU_SHAPE = dict(E=8, H=64, I=64, topk=2)
CPU_MS = (1, 16)
ROUTES = {  # the selector's inputs that make it choose each path at any M
    "a16w4": dict(arch="gfx950", gate_mode="separated", env={"AITER_MOE_FORCE_BF16_ACT": "1"}),
    "a4w4": dict(arch="gfx950", gate_mode="separated", env={"GPTOSS_SWIGLU_MXFP4_BF16_BOUND": "0"}),
    "a8w4": dict(arch="gfx950", gate_mode="interleave", env={"AITER_MOE_BF16_FP8_BOUND": "0"}),
}


def _time(fn) -> float:
    return time_ms(fn, warmup=10, rep=100)


def _graph(fn) -> float | None:
    """CUDA-graph replay median (device time without host launch overhead), None if not capturable."""
    try:
        return time_graph_ms(fn)
    except RuntimeError:
        return None


def _weights(E, H, I, device, gen):  # noqa: E741
    """Random MXFP4 weights in the public layout (scales near 2^-6 keep values realistic)."""
    w1 = torch.randint(0, 256, (E, 2 * I, H // 2), dtype=torch.uint8, device=device, generator=gen)
    w2 = torch.randint(0, 256, (E, H, I // 2), dtype=torch.uint8, device=device, generator=gen)
    s1 = torch.randint(118, 124, (E, 2 * I, H // 32), dtype=torch.uint8, device=device, generator=gen)
    s2 = torch.randint(118, 124, (E, H, I // 32), dtype=torch.uint8, device=device, generator=gen)
    return w1, s1, w2, s2


def routed_inputs(M, E, H, topk, device, gen):
    """(hidden bf16 [M, H], topk_weights fp32 [M, topk], topk_ids int32): softmax top-k of random
    logits, renormalized (the logits are drawn first, then hidden, from ``gen``)."""
    logits = torch.randn(M, E, device=device, generator=gen)
    weights, ids = torch.topk(torch.softmax(logits, -1), topk, dim=-1)
    weights, ids = (weights / weights.sum(-1, keepdim=True)).float(), ids.to(torch.int32)
    hidden = torch.randn(M, H, device=device, generator=gen).to(torch.bfloat16)
    return hidden, weights, ids


def _dequant_bf16(packed, scale):
    """MXFP4 -> bf16 with torch ops (exact), [.., N, K]."""
    table = torch.tensor(em.decode(torch.arange(16).numpy(), "e2m1"), device=packed.device)
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2).long()
    vals = table[codes] * torch.exp2(scale.float() - 127).repeat_interleave(32, dim=-1)
    return vals.to(torch.bfloat16)


def _swiglu(g, alpha=1.702, limit=7.0):
    half = g.shape[-1] // 2
    gate, up = g[..., :half].clamp(max=limit), g[..., half:].clamp(-limit, limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


def _peer_inputs(hidden, ids, E):
    order = torch.argsort(ids.flatten(), stable=True)
    counts = torch.bincount(ids.flatten(), minlength=E)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    return order, counts, offs


def grouped_mm_moe(hidden, w1t, w2t, weights, ids, prep):
    """torch._grouped_mm MoE on bf16 weights (w1t [E, H, 2I], w2t [E, I, H], column-major per expert)."""
    order, _, offs = prep
    topk = ids.shape[1]
    a = hidden[order // topk]
    g = torch._grouped_mm(a, w1t, offs=offs)  # bf16 out (fp32 accumulation)
    h = _swiglu(g.float()).to(torch.bfloat16)
    y = torch._grouped_mm(h, w2t, offs=offs).float() * weights.flatten()[order, None]
    return torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device).index_add_(0, order // topk, y)


def loop_moe(hidden, w1b, w2b, weights, ids, prep):
    """Per-expert torch loop on bf16 weights (w1b [E, 2I, H], w2b [E, H, I])."""
    order, counts, _ = prep
    topk = ids.shape[1]
    out = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            rows = order[start:start + n]
            h = _swiglu(hidden[rows // topk].float() @ w1b[e].float().T)
            y = (h.to(torch.bfloat16).float() @ w2b[e].float().T) * weights.flatten()[rows, None]
            out.index_add_(0, rows // topk, y)
            start += n
    return out


def triton_kernels_peer(w1, s1, w2, s2):
    """OpenAI triton_kernels' ``matmul_ogs`` MoE with its routing (``moe_oracle.adapters.triton_kernels``:
    ``MOE_ORACLE_TRITON_KERNELS_PATH``, or importable), its weights swizzled once outside the timing;
    (None, why) where it is not available or does not run here."""
    if _runtime.INTERPRET:
        return None, "not under the interpreter (its kernels raise there)"
    try:
        from moe_oracle.adapters.triton_kernels import PeerUnavailable, prepare_layer

        return prepare_layer(w1, s1, w2, s2), None
    except (ImportError, PeerUnavailable, RuntimeError) as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def peer_agreement(peer_out, ours_out) -> float:
    """max |peer - ours| / max |ours| on one call: both are a16w4 (bf16 activations, MXFP4 weights); the
    peer rounds routing weights to bf16 and accumulates in its own order, so agreement is at bf16 level
    (a broken layout or routing shows as O(1))."""
    return float((peer_out.float() - ours_out.float()).abs().max() / ours_out.float().abs().max().clamp_min(1e-30))


PEER_AGREEMENT = 0.02  # bf16 rounding of the routing weights (2^-9 relative) and of outputs, with margin


def floors(device):
    if _runtime.INTERPRET:
        return None, None
    n = 1 << 30
    src, dst = torch.empty(n, dtype=torch.uint8, device=device), torch.empty(n, dtype=torch.uint8, device=device)
    copy_bw = 2 * n / (_time(functools.partial(dst.copy_, src)) * 1e-3)
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    flops = 2 * 8192**3 / (_time(functools.partial(torch.mm, a, a)) * 1e-3)
    return copy_bw, flops


def bench(shape, ms, device, on_row=lambda row, copy_bw, flops: None):
    E, H, I, topk = shape["E"], shape["H"], shape["I"], shape["topk"]  # noqa: E741
    gen = torch.Generator(device=device).manual_seed(0)
    w1, s1, w2, s2 = _weights(E, H, I, device, gen)
    w1b, w2b = _dequant_bf16(w1, s1), _dequant_bf16(w2, s2)
    w1t, w2t = w1b.transpose(1, 2), w2b.transpose(1, 2)  # [E, K, N] views, column-major per expert
    copy_bw, flops = floors(device)
    peer, peer_why = triton_kernels_peer(w1, s1, w2, s2)
    held = mk.prepare_weights(w1, s1, w2, s2)  # ours held prepared, as the peer's weights are swizzled, outside timing
    if peer is None:
        print(f"triton_kernels: not timed ({peer_why})")
    rows = []
    for M in ms:
        hidden, weights, ids = routed_inputs(M, E, H, topk, device, gen)
        prep = _peer_inputs(hidden, ids.long(), E)
        touched = int((prep[1] > 0).sum())
        row = dict(M=M, touched_experts=touched)
        for path, route in ROUTES.items():
            fn = functools.partial(mk.fused_moe, hidden, w1, s1, w2, s2, weights, ids, prepared=held, **route)
            row[path] = _time(fn)
            row[f"{path}_graph"] = _graph(fn)
        if peer is not None:
            agreement = peer_agreement(peer(hidden, weights, ids), mk.fused_moe(hidden, w1, s1, w2, s2, weights, ids,
                                                                                 **ROUTES["a16w4"]))
            row["triton_kernels_vs_ours"] = agreement
            if agreement > PEER_AGREEMENT:
                raise RuntimeError(f"M={M}: triton_kernels' output differs from ours by {agreement:.3g} of its scale "
                                   f"(> {PEER_AGREEMENT}): its layout or routing is wrong here; not timing it")
            tk = functools.partial(peer, hidden, weights, ids)
            row["triton_kernels"] = _time(tk)
            row["triton_kernels_graph"] = _graph(tk)
        gmm = functools.partial(grouped_mm_moe, hidden, w1t, w2t, weights, ids, prep)
        try:
            row["grouped_mm"] = _time(gmm)
            row["grouped_mm_graph"] = _graph(gmm)
        except (RuntimeError, AttributeError, NotImplementedError) as exc:
            row["grouped_mm"], row["grouped_mm_error"] = None, str(exc).splitlines()[0][:120]
        if M <= 64:
            row["torch_loop"] = _time(functools.partial(loop_moe, hidden, w1b, w2b, weights, ids, prep))
        if copy_bw:
            row["bytes_floor_ms"] = touched * 3 * H * I * 4.25 / 8 / copy_bw * 1e3
            row["flops_floor_ms"] = 2 * M * topk * 3 * H * I / flops * 1e3
        rows.append(row)
        on_row(row, copy_bw, flops)
    return rows, copy_bw, flops


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--M", type=int, nargs="*", default=None)
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available() and not _runtime.INTERPRET
    device = "cuda" if gpu else "cpu"
    shape, ms = (GPU_SHAPE, GPU_MS) if gpu else (CPU_SHAPE, CPU_MS)
    card = torch.cuda.get_device_name() if gpu else "cpu (Triton interpreter, wall-clock of one call)"
    print(f"card: {card}; shape {shape}")
    print(f"{'M':>6s} {'a16w4':>9s} {'a4w4':>9s} {'a8w4':>9s} {'grouped':>9s} {'loop':>9s} {'x vs gmm (best path)':>21s} "
          f"{'floor':>9s} {'% floor':>8s} | CUDA graphs: {'best':>7s} {'grouped':>8s} {'x':>6s}")
    done = []

    def on_row(r, copy_bw, flops):  # print and save as each M finishes (a long run keeps what it measured)
        done.append(r)
        best = min(r[p] for p in ROUTES)
        gmm = r.get("grouped_mm")
        floor = max(r.get("bytes_floor_ms", 0), r.get("flops_floor_ms", 0))
        loop = r.get("torch_loop")
        print(f"{r['M']:6d} {r['a16w4']:9.3f} {r['a4w4']:9.3f} {r['a8w4']:9.3f} "
              f"{'-' if gmm is None else f'{gmm:9.3f}':>9} {'-' if loop is None else f'{loop:9.3f}':>9} "
              f"{'-' if not gmm else f'{gmm / best:.2f}x':>21} {'-' if not floor else f'{floor:9.3f}':>9} "
              f"{'-' if not floor else f'{100 * floor / best:7.0f}%':>8}", end="")
        graphs = [r[f"{p}_graph"] for p in ROUTES if r.get(f"{p}_graph")]
        g_best, g_gmm = (min(graphs) if graphs else None), r.get("grouped_mm_graph")
        print(f" | {'':13s}{'-' if g_best is None else f'{g_best:7.3f}':>7} {'-' if g_gmm is None else f'{g_gmm:8.3f}':>8} "
              f"{'-' if not (g_best and g_gmm) else f'{g_gmm / g_best:.2f}x':>6}", end="")
        tk, g_tk = r.get("triton_kernels"), r.get("triton_kernels_graph")
        if tk is not None:  # ratios: ours per path over the peer's, same run (< 1: ours faster)
            ratios = " ".join(f"{p} {r[f'{p}_graph'] / g_tk:.2f}" for p in ROUTES if r.get(f"{p}_graph") and g_tk)
            print(f" | triton_kernels {tk:7.3f} ms, graph {'-' if g_tk is None else f'{g_tk:7.3f}'}; ours/peer (graph) "
                  f"{ratios} (agreement {r['triton_kernels_vs_ours']:.2g})", end="")
        print(flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(card=card, shape=shape, copy_Bps=copy_bw, bf16_flops=flops, rows=done), f, indent=1)

    _, copy_bw, flops = bench(shape, args.M or ms, device, on_row)
    if copy_bw:
        print(f"copy {copy_bw / 1e9:.0f} GB/s, bf16 mm {flops / 1e12:.0f} TFLOP/s")

if __name__ == "__main__":
    main()
