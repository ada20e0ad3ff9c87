"""Cross-target compile checks: every kernel variant the dispatcher uses, built for gfx950, gfx942 and
sm_90 on any machine (no GPU needed), with the assembly, the key instructions and the resources.

``python -m moe_kernels.targets`` prints the table (kernel x target: key instructions, registers,
spills, shared/LDS bytes); ``--write-baseline`` records the resources in ``targets_baseline.json``,
which the tests hold kernels to (no spills; registers and shared memory within 10% + 4 registers
of the baseline, for the triton version that wrote it). Works with triton 3.9 (CI); the GPU machines'
triton 3.6 compiles the same kernels at run time.

Compiling needs TRITON_INTERPRET unset or 0 when this module is imported (the kernels must be
JIT functions, not interpreter functions); ``compile_variant`` raises a clear error otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler import compile as triton_compile

from moe_ref import ACTIVATION_PATHS, MoESpec

from . import _per_token, _rows, _runtime, dispatch, moe_gemm, quant, routing
from ._decode import FOLDED_PTX
from ._numerics import SCALE_MODE_IDS, KernelFormat
from ._tuning import CONFIGS

__all__ = ["TARGETS", "VARIANTS", "EXPECTED", "Variant", "compile_variant", "resources", "check_variant"]

TARGETS = {
    "gfx950": GPUTarget("hip", "gfx950", 64),
    "gfx942": GPUTarget("hip", "gfx942", 64),
    "sm90": GPUTarget("cuda", 90, 32),
}
BASELINE_PATH = Path(__file__).with_name("targets_baseline.json")
MARGIN_REL, MARGIN_REGS = 0.10, 4

_MMA_SYNC = r"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.bf16\.bf16\.f32"
# wgmma with its left operand in registers ({4 registers} where a shared-memory operand is a descriptor)
_WGMMA_REG_A = r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.bf16\.bf16\s+\{[^}]*\},\s*\{%r\d+,\s*%r\d+,\s*%r\d+,\s*%r\d+\},\s*%rd\d+"
_WGMMA_SMEM_A = r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.bf16\.bf16\s+\{[^}]*\},\s*%rd\d+,\s*%rd\d+"
# Instruction families per (kernel class, target), derived from the compiler's output and kept as
# data: ``require`` must all match the assembly, ``forbid`` must not (regular expressions).
_FAMILIES = {
    # MoE GEMMs (bf16 x bf16 -> fp32 on the matrix cores), by BLOCK_M: sm_90 uses mma.sync below 64
    # rows and Hopper's wgmma from 64; CDNA uses 16x16 MFMA at 16 rows and 32x32 from 32.
    ("mma_bm16", "sm90"): dict(require=[_MMA_SYNC], forbid=[r"wgmma"]),
    ("mma_bm32", "sm90"): dict(require=[_MMA_SYNC], forbid=[r"wgmma"]),
    ("mma_bm64", "sm90"): dict(require=[r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.bf16\.bf16"], forbid=[]),
    ("mma_bm128", "sm90"): dict(require=[r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.bf16\.bf16"], forbid=[]),
    # weights as the left operand (moe_gemm.weight_mma, prepared weights and scales), any BLOCK_M: wgmma reads
    # the decoded tile from registers. In the K loop nothing is stored to shared memory (neither the decoded
    # tile nor a layout change of the scales: they come through the pipeline like the words), nothing goes
    # through ldmatrix, and the prepared words come back from the pipeline's shared buffer in wide loads, not
    # one byte at a time (the public layout's order)
    ("mma_left", "sm90"): dict(require=[_WGMMA_REG_A], forbid=[_WGMMA_SMEM_A, _MMA_SYNC],
                               forbid_in_loop=[r"st\.shared", r"ld\.shared\.[bsu]8\b", r"ldmatrix"]),
    ("mma_bm16", "gfx950"): dict(require=[r"v_mfma_f32_16x16x32_bf16"], forbid=[]),
    ("mma_bm32", "gfx950"): dict(require=[r"v_mfma_f32_32x32x16_bf16"], forbid=[]),
    ("mma_bm64", "gfx950"): dict(require=[r"v_mfma_f32_32x32x16_bf16"], forbid=[]),
    ("mma_bm128", "gfx950"): dict(require=[r"v_mfma_f32_32x32x16_bf16"], forbid=[]),
    ("mma_bm16", "gfx942"): dict(require=[r"v_mfma_f32_16x16x16_?bf16"], forbid=[]),
    ("mma_bm32", "gfx942"): dict(require=[r"v_mfma_f32_32x32x8_?bf16"], forbid=[]),
    ("mma_bm64", "gfx942"): dict(require=[r"v_mfma_f32_32x32x8_?bf16"], forbid=[]),
    ("mma_bm128", "gfx942"): dict(require=[r"v_mfma_f32_32x32x8_?bf16"], forbid=[]),
    # activation dequantizer: integer decoding, no float8 conversions
    ("dequant", "sm90"): dict(require=[r"st\.global"], forbid=[r"cvt\.\w*\.e4m3", r"cvt\.\w*\.e2m1"]),
    ("dequant", "gfx950"): dict(require=[r"global_store"], forbid=[r"v_cvt_\w*fp8", r"v_cvt_scalef32\w*fp4"]),
    ("dequant", "gfx942"): dict(require=[r"global_store"], forbid=[r"v_cvt_\w*fp8"]),
    # routing (alignment, slot sum): integer and fp32 adds, plain global stores
    ("routing", "sm90"): dict(require=[r"st\.global"], forbid=[]),
    ("routing", "gfx950"): dict(require=[r"global_store"], forbid=[]),
    ("routing", "gfx942"): dict(require=[r"global_store"], forbid=[]),
    # quantizers: integer arithmetic only - no hardware float8 conversions (NUMERICS.md sections 4-5)
    ("quant", "sm90"): dict(require=[r"max\.[su]32"], forbid=[r"cvt\.rn\.satfinite\.e4m3", r"cvt\.\w*\.e2m1"]),
    ("quant", "gfx950"): dict(require=[r"v_max_[iu]32"], forbid=[r"v_cvt_\w*fp8", r"v_cvt_scalef32\w*fp4"]),
    ("quant", "gfx942"): dict(require=[r"v_max_[iu]32"], forbid=[r"v_cvt_\w*fp8"]),
}


# The encoder's scaling (``_numerics.encode_scaled``) needs fp32 arithmetic that keeps subnormals:
# no flush-to-zero forms on sm_90, fp32 denormal mode 3 (inputs and outputs kept) on gfx9. Every
# class's families with that added (built once, never edited after).
_NO_FTZ = {"sm90": dict(forbid=[r"\.ftz\.f32"])}
_DENORMS_KEPT = dict(require=[r"\.amdhsa_float_denorm_mode_32\s+3"])
EXPECTED = {(cls, target): {part: fam[part] + _NO_FTZ.get(target, _DENORMS_KEPT).get(part, []) for part in fam}
            for (cls, target), fam in _FAMILIES.items()}


@dataclass(frozen=True)
class Variant:
    name: str
    kernel_class: str  # a key of EXPECTED (with the target)
    fn: object
    signature: tuple  # ((arg, type), ...)
    constexprs: tuple  # ((name, value), ...)
    num_warps: int
    num_stages: int = 3
    targets: tuple = tuple(TARGETS)  # the targets it is built for (a backend's own tile: that backend's)
    # as the JIT specializes a launch: integer args equal to 1 become constants, pointers and integers
    # that are multiples of 16 carry that fact (vectorized loads depend on it)
    ones: tuple = ()
    divisible16: tuple = ()


_MOE_SIG1 = dict(a_ptr="*bf16", w_ptr="*u8", ws_ptr="*u8", bias_ptr="*fp32", tw_ptr="*fp32",
                 sorted_ptr="*i32", expert_ptr="*i32", val_ptr="*i16", out_ptr="*u8", out_scale_ptr="*u8",
                 num_valid="i32", topk="i32", H="i32", I="i32", stride_a="i32", stride_we="i32",
                 stride_wr="i32", stride_wse="i32", stride_wsr="i32", stride_v="i32", stride_o="i32",
                 stride_os="i32")
_MOE_SIG2 = dict(a_ptr="*bf16", w_ptr="*u8", ws_ptr="*u8", bias_ptr="*fp32", tw_ptr="*fp32",
                 sorted_ptr="*i32", expert_ptr="*i32", y_ptr="*fp32", num_valid="i32", H="i32",
                 I="i32", stride_a="i32", stride_we="i32", stride_wr="i32", stride_wse="i32",
                 stride_wsr="i32", stride_y="i32")
_DEQ_SIG = dict(q_ptr="*u8", s_ptr="*u8", out_ptr="*i16", R="i32", K="i32", stride_q="i32", stride_s="i32",
                stride_o="i32")
_MX_SIG = dict(x_ptr="*i16", q_ptr="*u8", s_ptr="*u8", M="i32", K="i32", stride_xm="i32", stride_xk="i32",
               stride_qm="i32", stride_sm="i32")
_PT_SIG = dict(x_ptr="*i16", q_ptr="*u8", s_ptr="*fp32", M="i32", K="i32", n_pairs="i32", stride_xm="i32",
               stride_xk="i32", stride_qm="i32")


# what the JIT knows at gpt-oss shapes (H = I = 2880): every pointer and size is a multiple of 16, the
# scale rows (90 bytes) are not
_MOE_DIV16_1 = ("a_ptr", "w_ptr", "ws_ptr", "bias_ptr", "tw_ptr", "sorted_ptr", "expert_ptr", "val_ptr", "out_ptr",
                "out_scale_ptr", "H", "I", "stride_a", "stride_we", "stride_wr", "stride_wse", "stride_v", "stride_o")
_MOE_DIV16_2 = ("a_ptr", "w_ptr", "ws_ptr", "bias_ptr", "tw_ptr", "sorted_ptr", "expert_ptr", "y_ptr", "H", "I",
                "stride_a", "stride_we", "stride_wr", "stride_wse", "stride_y")


def _moe_variants():
    """Stage 1 for each activation path (bf16 operands in, the path's intermediate out) and stage 2, at
    every tile configuration of configs.json, and the activation dequantizer of each MX path."""
    configs = {}  # every gpu entry, and the targets of the backends it serves
    for e in CONFIGS["gpu"]:
        cfg = tuple(e[k] for k in dispatch._CONFIG_KEYS)
        for t, target in TARGETS.items():
            if e.get("backend", target.backend) == target.backend:
                if t not in configs.setdefault(cfg, []):  # a tile may serve several buckets
                    configs[cfg].append(t)
    out = []
    for cfg, targets in sorted(configs.items()):
        block_m, block_n1, block_n2, block_k, warps, stages, w_left = cfg
        name = dispatch.config_name(cfg)
        kernel_class = "mma_left" if w_left else f"mma_bm{block_m}"
        ptx = all(TARGETS[t].backend == "cuda" for t in targets)  # as fused_moe picks the decode
        # prepared weights also decode with one multiplication where every scale byte is <= 128 (dispatch)
        left_div = ("stride_wsr",) if w_left else ()  # prepared scale rows: 16 bytes (prepared.SCALE_ROW_BYTES)
        for w_ptx in (int(ptx), FOLDED_PTX) if w_left and ptx else (ptx,):
            tag = "/folded" if w_ptx == FOLDED_PTX else ""
            common = dict(BLOCK_M=block_m, BLOCK_K=block_k, INTERPRET=False, W=moe_gemm.WEIGHT_FORMAT, W_PTX=w_ptx,
                          W_LEFT=w_left)
            spec = MoESpec()  # fused_moe's defaults
            for path in ACTIVATION_PATHS.values():
                for gate_mode in ("separated", "interleave"):  # fused_moe's own launch: no codes for a trace
                    ce = dict(OUT_KIND=path.kind, STORE_CODES=False, INTERLEAVED=gate_mode == "interleave",
                              ACT=moe_gemm.GatedActivation(dispatch._ACT_IDS[spec.activation], spec.alpha, spec.limit),
                              HAS_BIAS=True, DOWEIGHT=False, MODE=SCALE_MODE_IDS[spec.scale_mode],
                              BLOCK_N=block_n1, **common, F=dispatch.kernel_format(path))
                    out.append(Variant(f"moe_stage1/{path.name}/{gate_mode}/{name}{tag}", kernel_class,
                                       moe_gemm._moe_stage1_kernel, tuple(_MOE_SIG1.items()), tuple(ce.items()), warps,
                                       stages, targets=tuple(targets), divisible16=_MOE_DIV16_1 + left_div))
            ce = dict(HAS_BIAS=True, WEIGHT_HERE=True, BLOCK_N=block_n2, **common)
            out.append(Variant(f"moe_stage2/{name}{tag}", kernel_class, moe_gemm._moe_stage2_kernel,
                               tuple(_MOE_SIG2.items()), tuple(ce.items()), warps, stages, targets=tuple(targets),
                               divisible16=_MOE_DIV16_2 + left_div))
    for path in (p for p in ACTIVATION_PATHS.values() if p.is_mx):
        ce = dict(KIND=path.kind, BLOCK_R=16, BLOCK_K=128, F=dispatch.kernel_format(path))
        out.append(Variant(f"dequant_rows/{path.act_dtype}", "dequant", moe_gemm._dequant_rows_kernel,
                           tuple(_DEQ_SIG.items()), tuple(ce.items()), 4))
    # decode alignment (M=64, top-4, E=128, BLOCK_M 16) and the slot sum, as fused_moe launches them
    ce = dict(BLOCK_M=16, HAS_LIVE=False, PAIRS=256, EXPERTS=256, BLOCKS=256, MAX_RUN=16, CHUNK=32)
    sig = dict(ids_ptr="*i32", live_ptr="*i32", sorted_ptr="*i32", expert_ptr="*i32", start_ptr="*i32",
               n_pairs="i32", E="i32", n_blocks="i32")
    out.append(Variant("align_pairs", "routing", routing._align_kernel, tuple(sig.items()), tuple(ce.items()), 4))
    ce = dict(HAS_MASK=True, BLOCK_T=4, BLOCK_H=256)
    sig = dict(y_ptr="*fp32", live_ptr="*i1", out_ptr="*i16", M="i32", H="i32", topk="i32")
    out.append(Variant("sum_slots", "routing", moe_gemm._sum_slots_kernel, tuple(sig.items()), tuple(ce.items()), 4))
    return out


def _quant_variants():
    """Every quantizer variant, specialized as a launch on contiguous x [8192, 2880] is (bf16 and fp32)."""
    out = []
    mx_spec = dict(ones=("stride_xk",), divisible16=("x_ptr", "q_ptr", "s_ptr", "K", "stride_xm", "stride_qm"))
    pt_spec = dict(mx_spec, divisible16=(*mx_spec["divisible16"], "n_pairs"))
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.empty((8192, 2880), dtype=dtype, device="meta")
        tag = "" if dtype == torch.bfloat16 else "/fp32"
        x_sig = {"x_ptr": "*i32" if _rows.words_view(x) is not None or dtype == torch.float32 else "*i16"}
        for fmt, pack in (("e2m1", True), ("e4m3fn", False), ("e4m3fnuz", False)):
            _, _, meta, _ = quant._mx_launch(x, 8192, 2880, pack)
            warps = meta.pop("num_warps")
            q_sig = {} if pack else {"q_ptr": "*i16"}
            for mode, mode_id in SCALE_MODE_IDS.items():
                if tag and mode_id:  # fp32 inputs: one scale mode
                    continue
                ce = dict(PACK_FP4=pack, MODE=mode_id, **meta, F=KernelFormat.of(fmt))
                out.append(Variant(f"quant_mx/{fmt}/{mode.value}{tag}", "quant", quant._mx_quant_kernel,
                                   tuple({**_MX_SIG, **x_sig, **q_sig}.items()), tuple(ce.items()), warps, **mx_spec))
        _, _, meta, _ = _per_token.launch(x, 2880)
        warps = meta.pop("num_warps")
        for fmt in ("e4m3fn", "e4m3fnuz"):
            ce = dict(**meta, F=KernelFormat.of(fmt))
            out.append(Variant(f"quant_fp8_per_token/{fmt}{tag}", "quant", _per_token.fp8_per_token_kernel,
                               tuple({**_PT_SIG, **x_sig, "q_ptr": "*i16"}.items()), tuple(ce.items()), warps,
                               **pt_spec))
    return out


VARIANTS = {v.name: v for v in (*_quant_variants(), *_moe_variants())}


@cache
def compile_variant(name: str, target: str):
    """The compiled kernel (asm + metadata) of one variant for one target."""
    if _runtime.INTERPRET:
        raise RuntimeError("moe_kernels.targets needs TRITON_INTERPRET=0 when moe_kernels is imported "
                           "(kernels must be JIT functions to be compiled)")
    v = VARIANTS[name]
    ce = {**dict(v.constexprs), **{k: 1 for k in v.ones}}
    sig = {**{k: t for k, t in v.signature if k not in v.ones}, **{k: "constexpr" for k in ce}}
    attrs = {(v.fn.arg_names.index(k),): [["tt.divisibility", 16]] for k in v.divisible16}
    return triton_compile(ASTSource(v.fn, sig, ce, attrs), target=TARGETS[target],
                          options={"num_warps": v.num_warps, "num_stages": v.num_stages})


def _cubin_resources(cubin: bytes) -> tuple[int, int]:
    """(registers, stack + local bytes) from ``cuobjdump -res-usage`` (bundled with triton)."""
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        info = subprocess.run([str(cuobjdump), "-res-usage", str(path)], capture_output=True, text=True,
                              check=True).stdout
    usage = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", info))
    return int(usage["REG"]), int(usage["STACK"]) + int(usage["LOCAL"])


def resources(name: str, target: str) -> dict:
    """Registers, spilled bytes, shared/LDS bytes and the assembly of one compiled variant."""
    k = compile_variant(name, target)
    if TARGETS[target].backend == "cuda":
        asm = k.asm["ptx"]
        regs, spills = _cubin_resources(k.asm["cubin"])
    else:
        asm = k.asm["amdgcn"]
        regs = int(re.search(r"\.vgpr_count:\s+(\d+)", asm).group(1))
        spills = sum(int(x) for x in re.findall(r"\.(?:vgpr|sgpr)_spill_count:\s+(\d+)", asm))
        spills += int(re.search(r"\.private_segment_fixed_size:\s+(\d+)", asm).group(1))
    return dict(regs=regs, spills=spills, shared=int(k.metadata.shared), asm=asm)


def _loop_bodies(ptx: str) -> list[str]:
    """The PTX of each loop: from a block the compiler marks as a loop header to the branch back to it."""
    bodies = []
    for head in re.finditer(r"^(\$L__BB\d+_\d+):[^\n]*Loop Header", ptx, re.M):
        back = re.search(r"bra(\.uni)?\s+" + re.escape(head.group(1)) + ";", ptx[head.end():])
        if back:
            bodies.append(ptx[head.end():head.end() + back.start()])
    return bodies


def check_variant(name: str, target: str, baseline: dict | None) -> list[str]:
    """Problems of one variant on one target (empty: all good)."""
    r = resources(name, target)
    exp = EXPECTED[VARIANTS[name].kernel_class, target]
    problems = [f"missing {p!r}" for p in exp["require"] if not re.search(p, r["asm"])]
    problems += [f"forbidden {p!r} present" for p in exp["forbid"] if re.search(p, r["asm"])]
    loops = [body for body in _loop_bodies(r["asm"]) if "mma" in body]
    if exp.get("forbid_in_loop") and not loops:
        problems.append("no K loop with an MMA found in the assembly")
    problems += [f"forbidden {p!r} in the K loop" for p in exp.get("forbid_in_loop", [])
                 if any(re.search(p, body) for body in loops)]
    if r["spills"]:
        problems.append(f"{r['spills']} bytes of spills/scratch")
    base = (baseline or {}).get("entries", {}).get(f"{name}@{target}")
    if base and baseline.get("triton") == triton.__version__:
        if r["regs"] > base["regs"] * (1 + MARGIN_REL) + MARGIN_REGS:
            problems.append(f"registers {r['regs']} > baseline {base['regs']} (+10% +4)")
        if r["shared"] > base["shared"] * (1 + MARGIN_REL):
            problems.append(f"shared {r['shared']} > baseline {base['shared']} (+10%)")
    return problems


def load_baseline() -> dict | None:
    return json.loads(BASELINE_PATH.read_text()) if BASELINE_PATH.exists() else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="compile every kernel variant for gfx950, gfx942 and sm_90")
    ap.add_argument("--write-baseline", action="store_true", help=f"record resources in {BASELINE_PATH.name}")
    ap.add_argument("--only", default="", help="substring filter on variant names")
    ap.add_argument("--json", default=None, help="write every (kernel, target) row, problems included, as JSON")
    args = ap.parse_args(argv)
    baseline = load_baseline()
    entries, rows, failures = {}, [], 0
    print(f"triton {triton.__version__}; baseline: {baseline.get('triton') if baseline else 'none'}")
    print(f"{'kernel':40s} {'target':7s} {'regs':>5s} {'spill':>6s} {'shared':>7s}  result")
    for name in VARIANTS:
        if args.only not in name:
            continue
        for target in VARIANTS[name].targets:
            r = resources(name, target)
            problems = check_variant(name, target, baseline)
            failures += bool(problems)
            entries[f"{name}@{target}"] = {k: r[k] for k in ("regs", "spills", "shared")}
            rows.append(dict(kernel=name, target=target, problems=problems, **entries[f"{name}@{target}"]))
            print(f"{name:40s} {target:7s} {r['regs']:5d} {r['spills']:6d} {r['shared']:7d}  "
                  f"{'ok' if not problems else '; '.join(problems)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"triton": triton.__version__, "rows": rows}, indent=1))
    if args.write_baseline:
        BASELINE_PATH.write_text(json.dumps({"triton": triton.__version__, "entries": entries}, indent=1) + "\n")
        print(f"wrote {BASELINE_PATH}")
    return 1 if failures else 0


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") not in (None, "0"):
        sys.exit("run with TRITON_INTERPRET unset or 0")
    sys.exit(main())
