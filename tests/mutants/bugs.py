"""The bugs: one definition each (name, area, the field failure it models, and what the conformance
engine must say when it meets it in someone else's kernel).

Two consumers share these records: the mutant catalogue (``catalogue.py``: each bug planted as an
edit of our own tree, which the test suite must kill) and the planted-bug implementations
(``tests/oracle/planted.py``: each bug as a small foreign implementation, which ``moe_oracle`` must
diagnose). A bug's ``diagnosis`` is the substring the engine's message must contain, in both.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Bug", "AREAS", "BUGS", "bug"]

AREAS = ("element rounding", "scale", "packing", "fp8", "gemm", "swiglu", "routing", "intermediate",
         "dispatch and selector", "oracle")


@dataclass(frozen=True)
class Bug:
    name: str
    area: str
    field_failure: str
    diagnosis: str = ""  # what moe_oracle's message must contain ("" where no single phrase applies)

    def __post_init__(self):
        if self.area not in AREAS:
            raise ValueError(f"bug {self.name!r}: area {self.area!r} is not one of {AREAS}")


_B = Bug
_ALL = [
    # element rounding
    _B("ties away", "element rounding", "software round(x) instead of the hardware's RNE",
       "follows round_up, ties away"),
    _B("truncation", "element rounding", "mantissa bits dropped instead of rounded",
       "no scale mode x tie rule reproduces it"),
    _B("bf16 output ties away", "element rounding", "fp32 -> bf16 by adding 0x8000 (no tie to even)"),
    _B("bf16 output truncated", "element rounding", "fp32 -> bf16 by taking the high half"),
    # scale computation
    _B("scale exponent off by one", "scale", "emax off by one in the scale formula", "scale exponent +1"),
    _B("CEIL instead of ROUND_UP", "scale", "ceil of amax instead of ceil of amax / 6", "follows ceil, ties even"),
    _B("ROUND_DOWN where ROUND_UP is asked", "scale", "the OCP floor rule shipped under the ROUND_UP name",
       "follows round_down, ties even"),
    _B("EVEN rounds at the wrong bit", "scale", "amax rounded to mbits instead of 1 + mbits bits",
       "no scale mode x tie rule reproduces it"),
    _B("NaN block scale 0xFE", "scale", "NaN amax clamped like an overflow", "nan_inf blocks: scale byte(s) ['0xfe']"),
    _B("zero block scale 127", "scale", "log2(0) guarded by scale 1", "zero blocks: scale byte(s) ['0x7f']"),
    _B("subnormal-ratio block scale 0", "scale", "a tiny block's scale flushed to 2^-127"),
    _B("scale not clamped at 2^127", "scale", "the e8m0 byte overflows into the NaN code"),
    _B("tiny block scale clamped at 2^-126", "scale", "the e8m0 floor taken as fp32's smallest normal"),
    _B("NaN block codes kept", "scale", "a NaN/Inf block's elements encoded as if finite"),
    # packing
    _B("nibbles swapped", "packing", "element 2i packed into the high nibble", "nibbles swapped"),
    _B("weight nibbles swapped", "packing", "the weight decode reads element 2i from the high nibble"),
    _B("weight sign lost", "packing", "the decode masks the sign bit away"),
    # fp8
    _B("no satfinite clamp", "fp8", "overflowing values encoded past the largest code"),
    _B("per-token x / s", "fp8", "a torch reference's division copied into the kernel", "follows x / s"),
    _B("per-tensor x / s", "fp8", "a torch reference's division copied into the kernel", "follows x / s"),
    _B("per-token NaN row not NaN", "fp8", "a NaN row encoded element by element instead of all NaN"),
    _B("per-token NaN row scale inf", "fp8", "amax / max of a NaN row stored as is (AITER: inf)"),
    _B("e4m3fn max used for e4m3fnuz", "fp8", "448 hard-wired, the gfx942 format's 240 ignored"),
    _B("e4m3fnuz bias 7", "fp8", "the gfx942 format decoded with the OCP bias"),
    _B("mxfp8 ties away", "fp8", "software round(x) in the MXFP8 quantizer", "follows round_up, ties away"),
    # reads outside the inputs (moe_oracle.guard)
    _B("hidden row stride assumed", "gemm", "the activation's row stride taken as H: a slice of a wider tensor is read wrong",
       "hidden past a row's end"),
    _B("reads past the last token", "gemm", "a statistic over the padded BLOCK_M tile reads rows past the last token",
       "hidden past the last row"),
    _B("scale row read past its end", "gemm", "the last K tile's scales loaded unmasked (K not a multiple of BLOCK_K)",
       "w_scale past a row's end"),
    # values instead of bytes: fake quantizers and dequantizers (the forms most libraries expose)
    _B("fake quant ties toward zero", "element rounding", "codes counted as |x| > midpoint (SGLang's cast_fp4)",
       "follows round_up, ties zero"),
    _B("fake quant scale exponent off by one", "scale", "emax off by one in a quantize-dequantize",
       "scale exponent +1"),
    _B("dequant flushes scale 0x00", "scale", "2^(byte-127) computed in a type that flushes 2^-127 to 0",
       "scale 0x00: 0 (flushed)"),
    _B("dequant 0xFF as inf", "scale", "the NaN scale byte decoded as 2^128 = inf", "scale 0xFF: inf"),
    _B("dequant nibbles swapped", "packing", "element 2i read from the high nibble", "high nibble first"),
    # GEMM
    _B("last K block dropped", "gemm", "the K loop stops before a partial tile"),
    _B("scale of the wrong block", "gemm", "the scale index computed per tile instead of per 32 values"),
    _B("bf16 accumulation", "gemm", "partial sums kept in bf16 instead of fp32"),
    _B("tensor-core bf16 accumulation", "gemm", "the MMA accumulator rounded to bf16 each step (GPU)"),
    _B("subnormal weight scale flushed", "gemm", "scale byte 0 (2^-127) decoded as 0 (GPU)"),
    _B("prepared lanes off by one", "packing", "the prepared layout hands each lane its neighbour's values"),
    _B("prepared permutation not undone", "packing", "the left-operand GEMM puts the decoded pairs at the wrong columns"),
    _B("prepared nibble pair swapped", "packing", "the prepared decode swaps the two values of a pair"),
    _B("folded scale off by one", "scale", "the one-multiplication decode scales by 2^byte instead of 2^(byte - 1) (GPU)"),
    _B("folded decode past its range", "scale", "the one-multiplication decode chosen for scale byte 129 (2^129 overflows)"),
    _B("scale of the neighbouring block", "gemm", "each 32-value block decoded with its neighbour's scale"),
    _B("prepared scale word's other half", "gemm", "a BLOCK_K 64 step decodes with the scales of the other 64 values of its 32-bit scale word"),
    # SwiGLU
    _B("gate and up swapped", "swiglu", "a layout mismatch between the weights and the kernel",
       "matches no path's reference"),
    _B("gate limit dropped", "swiglu", "min(gate, limit) left out"),
    _B("alpha dropped", "swiglu", "sigmoid(gate) for sigmoid(alpha * gate)"),
    _B("up + 1 dropped", "swiglu", "the gpt-oss '+ 1' left out"),
    _B("alpha and limit options ignored", "swiglu", "the defaults hard-wired in the kernel"),
    _B("bias1 dropped", "swiglu", "a bias pointer passed but never read"),
    _B("interleave read as separated", "swiglu", "gate_mode not plumbed to the kernel"),
    # routing
    _B("routing weight applied twice", "routing", "weights applied in stage 1 and stage 2",
       "matches no path's reference"),
    _B("routing weight never applied", "routing", "doweight_stage1 moved the weight out of stage 2 and nowhere in"),
    _B("last expert's tokens dropped", "routing", "an off-by-one in the expert range of the alignment"),
    _B("expert mask ignored", "routing", "expert parallelism: other ranks' experts computed here"),
    _B("masked slots summed", "routing", "padding slots read from an uninitialised buffer"),
    _B("reads padding", "routing", "padding slots read from an uninitialised buffer",
       "output changes with memory it should not read"),
    _B("routing weights in bf16", "routing", "topk_weights.to(bfloat16) before the routing kernels",
       "routing weights rounded to bf16"),
    _B("slots summed in bf16", "routing", "per-pair bf16 rows reduced after the GEMM",
       "each slot rounded to bf16 before the top-k sum"),
    _B("writes its input", "routing", "an in-place activation on the caller's tensor", "it wrote to its inputs: hidden"),
    # the intermediate
    _B("intermediate not quantized", "intermediate", "the reference that skipped activation quantization",
       "the stage-2 input was not quantized"),
    _B("scale mode ignored", "intermediate", "a kernel hard-wired to ROUND_UP",
       "it quantized with another scale mode than the even asked for"),
    _B("stage-1 quantizer ignores the scale mode", "intermediate", "scale_mode not passed to the input quantizer"),
    # dispatch and selector
    _B("bound <= instead of <", "dispatch and selector", "the M=256 boundary case on the wrong side",
       "it took a16w4 where the selector chose a4w4"),
    _B("env ignored", "dispatch and selector", "AITER_MOE_FORCE_BF16_ACT honoured by the tests' copy only",
       "it took a4w4 where the selector chose a16w4"),
    _B("never quantizes", "dispatch and selector", "the fp4x2 path never exercised",
       "it took a16w4 where the selector chose a4w4"),
    _B("env read once at import", "dispatch and selector", "os.environ cached in a module global"),
    _B("force flag on one rule only", "dispatch and selector", "AITER_MOE_FORCE_BF16_ACT wired into rule 3 only"),
    _B("legacy variable wins", "dispatch and selector", "the old name read first, the new one ignored"),
    _B("any string is true", "dispatch and selector", "bool(os.environ.get(...)): '0' and 'yes please' are true"),
    _B("arch features not stripped", "dispatch and selector", "'gfx950:sramecc+:xnack-' compared to 'gfx950'"),
    _B("fp8 on gfx942", "dispatch and selector", "the OCP fp8 path allowed on an fnuz-only arch"),
    _B("host sync under graph capture", "dispatch and selector", "the ids' range check synchronises inside capture"),
    _B("bad ids never reported", "dispatch and selector", "the deferred id check never finished (GPU)"),
    # the oracle itself: a weakened oracle passes every kernel
    _B("bound 4x too loose", "oracle", "a tolerance widened until a test passed"),
    _B("probabilistic bound 4x too loose", "oracle", "lambda chosen for comfort, not for a failure probability"),
    _B("worst-case bound 4x too loose", "oracle", "n u counted four times"),
    _B("flip step 4x too loose", "oracle", "the quantization-flip allowance set to several grid steps"),
    _B("reference skips the intermediate quantization", "oracle", "the reference that never quantized"),
    _B("reference skips the bf16 rounding of hidden", "oracle", "fp32 hidden taken as the kernel's input"),
    _B("emulation ignores low mantissa bits", "oracle", "the sticky bit dropped: fp32 inputs rounded as ties"),
    _B("emulation rounds ties away", "oracle", "the reference's round() instead of RNE"),
    _B("emulation NaN block codes kept", "oracle", "the emulation encodes a NaN block's finite elements"),
    _B("exact matmul trusts float64 too far", "oracle", "the fast path used where float64 rounds"),
    _B("verdict 4x too lenient", "oracle", "margin <= 4 taken as a pass"),
    _B("uploaded layer never refreshed", "oracle", "the layer's device copy kept after an implementation wrote to it"),
]

BUGS: dict[str, Bug] = {b.name: b for b in _ALL}
if len(BUGS) != len(_ALL):
    raise RuntimeError("tests/mutants/bugs.py: duplicate bug names")


def bug(name: str) -> Bug:
    return BUGS[name]
