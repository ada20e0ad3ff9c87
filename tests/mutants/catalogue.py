"""The mutant catalogue: each entry plants one bug (``bugs.py``) in a copy of the tree by exact edits.

``python -m tests.mutants.run`` (``nox -s mutants``) applies each to a temporary copy, runs the tests
that can see it (``tests`` or, by default, those of the edited file: ``TESTS_BY_FILE``), and, where
``report`` is set, ``moe-oracle verify --quick --only <report>`` too, which must exit 1. GPU mutants
(code that runs only on a GPU: the PTX weight decode, the tensor-core path, graph capture) run the
GPU suite instead, through the device tool. ``tests/mutants/test_catalogue.py`` checks that every
edit still applies exactly once and compiles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .bugs import BUGS, Bug

__all__ = ["Mutant", "MUTANTS", "TESTS_BY_FILE", "GPU_TESTS_BY_FILE"]

_QUANT_TESTS = ("tests/kernels/test_quant.py", "tests/kernels/test_numerics.py")
_MOE_TESTS = ("tests/kernels/test_fused_moe.py", "tests/edge/test_policies.py")
_SELECTOR_TESTS = ("tests/moe_ref/test_selector.py", "tests/edge/test_refusals.py",
                   "tests/kernels/test_fused_moe.py::test_the_path_that_ran_is_the_selector_decision")
_GPU_DECODE = ("tests/kernels/test_numerics.py::test_weight_decode_is_exact_at_every_scale",
               "tests/kernels/test_fused_moe.py::test_bit_exact_on_exact_inputs_gpu")
_EMULATION_TESTS = ("tests/emulation", "tests/moe_ref", "tests/kernels/test_quant.py")
TESTS_BY_FILE = {
    "emulation/": _EMULATION_TESTS,
    "moe_ref/selector.py": _SELECTOR_TESTS,
    "moe_ref/env.py": _SELECTOR_TESTS,
    "moe_ref/tolerance.py": ("tests/moe_ref", "tests/oracle/test_verify.py"),
    "moe_ref/": ("tests/moe_ref", "tests/kernels/test_fused_moe.py"),
    "moe_kernels/_numerics.py": _QUANT_TESTS + ("tests/kernels/test_fused_moe.py",),
    "moe_kernels/quant.py": _QUANT_TESTS,
    "moe_kernels/_per_token.py": _QUANT_TESTS,
    "moe_kernels/_decode.py": ("tests/kernels/test_numerics.py", "tests/kernels/test_decode_ptx.py") + _MOE_TESTS,
    "moe_kernels/": _MOE_TESTS,
    "moe_oracle/": ("tests/oracle",),
}
GPU_TESTS_BY_FILE = {"moe_kernels/": ("tests/kernels",)}


@dataclass(frozen=True)
class Mutant:
    bug: Bug
    file: str
    edits: tuple[tuple[str, str], ...]  # (old, new): old must occur exactly once in the file
    tests: tuple[str, ...] = ()  # pytest selection; () = TESTS_BY_FILE's entry for ``file``
    report: str | None = None  # "quantizers" / "moe": moe-oracle verify --quick --only <report> must exit 1
    gpu: bool = False  # GPU-only code: run by the GPU suite (-m gpu) on a device
    equivalent: str = ""  # the proof that no input tells it apart: expected to survive, not counted

    @property
    def id(self) -> str:
        slug = "-".join("".join(c if c.isalnum() else " " for c in self.bug.name.lower()).split())
        return slug + ("-gpu" if self.gpu else "")

    def selection(self) -> tuple[str, ...]:
        if self.tests:
            return self.tests
        table = GPU_TESTS_BY_FILE if self.gpu else TESTS_BY_FILE
        return next(t for prefix, t in table.items() if self.file.startswith(prefix))


def _m(bug_name, file, *edits, **kw) -> Mutant:
    return Mutant(BUGS[bug_name], file, tuple(edits), **kw)


_NUM, _QUANT, _TOK = "moe_kernels/_numerics.py", "moe_kernels/quant.py", "moe_kernels/_per_token.py"
_GEMM, _DISP, _ROUTE = "moe_kernels/moe_gemm.py", "moe_kernels/dispatch.py", "moe_kernels/routing.py"
_DEC, _PREP = "moe_kernels/_decode.py", "moe_kernels/prepared.py"
_PREPARED_TESTS = ("tests/kernels/test_prepared.py", "tests/kernels/test_numerics.py::test_weight_decode_is_exact_at_every_scale",
                   "tests/kernels/test_fused_moe.py::test_bit_exact_with_the_weights_as_the_left_operand")
_PREPARED_GPU = ("tests/kernels/test_numerics.py::test_weight_decode_is_exact_at_every_scale",
                 "tests/kernels/test_fused_moe.py::test_bit_exact_at_every_tile_configuration_gpu",
                 "tests/kernels/test_fused_moe.py::test_bit_exact_on_exact_inputs_gpu")
_SEL, _ENV, _REF, _TOL = "moe_ref/selector.py", "moe_ref/env.py", "moe_ref/reference.py", "moe_ref/tolerance.py"

# the left-operand GEMMs' prepared layout (moe_kernels.prepared): Hopper's tiles, and the interpreter when forced
_LEFT_CPU = (
    _m("prepared lanes off by one", _PREP, ("    return 2 * torch.arange(_LANES, device=device)[:, None] + offsets[None, :]",
                                            "    return 2 * torch.arange(_LANES, device=device).roll(1)[:, None] + offsets[None, :]"),
       tests=_PREPARED_TESTS),
    _m("prepared permutation not undone", _GEMM, ("tl.permute(halves, (0, 1, 3, 5, 4, 2, 6))",
                                                  "tl.permute(halves, (0, 1, 3, 4, 5, 2, 6))"),
       tests=_PREPARED_TESTS),
    _m("prepared nibble pair swapped", _GEMM, ("halves = tl.join(pairs.to(tl.int16), (pairs >> 16).to(tl.int16))",
                                               "halves = tl.join((pairs >> 16).to(tl.int16), pairs.to(tl.int16))"),
       tests=_PREPARED_TESTS),
    _m("scale of the neighbouring block", _GEMM, ("    sb = k0 // 32 + tl.arange(0, BLOCK_K // 32)\n",
                                                  "    sb = k0 // 32 + (tl.arange(0, BLOCK_K // 32) ^ 1)\n"),
       tests=_PREPARED_TESTS),
    _m("prepared scale word's other half", _GEMM, ("(16 * ((k0 // 64) % 2) + 8 * tl.arange(0, 2))",
                                                   "(16 * ((k0 // 64 + 1) % 2) + 8 * tl.arange(0, 2))"),
       tests=_PREPARED_TESTS),
    _m("folded decode past its range", _PREP, ("int(s.max()) <= 128", "int(s.max()) <= 129"),
       tests=("tests/kernels/test_prepared.py",)),
)

MUTANTS: tuple[Mutant, ...] = (
    # ---- element rounding -------------------------------------------------------------------
    _m("ties away", _NUM, ("nrm = (nb + ((1 << (drop - 1)) - 1) + ((nb >> drop) & 1)) >> drop",
                           "nrm = (nb + (1 << (drop - 1))) >> drop"), report="quantizers"),
    _m("truncation", _NUM, ("nrm = (nb + ((1 << (drop - 1)) - 1) + ((nb >> drop) & 1)) >> drop",
                            "nrm = nb >> drop"), report="quantizers"),
    # no report run: a tie rule shows only where the fp32 result is known exactly (the bit-exact tests);
    # the report's bound rightly grants the ulp wherever ref +- bound holds the tie
    _m("bf16 output ties away", _NUM, ("rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16",
                                       "rounded = (bits + 0x8000) >> 16"), tests=_MOE_TESTS),
    _m("bf16 output truncated", _NUM, ("rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16",
                                       "rounded = bits >> 16"), tests=_MOE_TESTS, report="moe"),
    # ---- scale computation ------------------------------------------------------------------
    _m("scale exponent off by one", _NUM, ("        unbiased = up - 127\n", "        unbiased = up - 126\n"),
       report="quantizers"),
    _m("CEIL instead of ROUND_UP", _NUM, ("MODE_ROUND_UP, MODE_ROUND_DOWN, MODE_CEIL = (",
                                          "MODE_CEIL, MODE_ROUND_DOWN, MODE_ROUND_UP = ("), report="quantizers"),
    _m("ROUND_DOWN where ROUND_UP is asked", _NUM, ("MODE_ROUND_UP, MODE_ROUND_DOWN, MODE_CEIL = (",
                                                    "MODE_ROUND_DOWN, MODE_ROUND_UP, MODE_CEIL = ("),
       report="quantizers"),
    _m("EVEN rounds at the wrong bit", _NUM, ("((amax_bits + (1 << (22 - MAN_BITS))) >> 23)",
                                              "((amax_bits + (1 << (23 - MAN_BITS))) >> 23)"), report="quantizers"),
    _m("NaN block scale 0xFE", _NUM, ("return tl.where(amax_bits >= 0x7F800000, 255, byte)",
                                      "return tl.where(amax_bits >= 0x7F800000, 254, byte)"), report="quantizers"),
    _m("zero block scale 127", _NUM, ("tl.where(amax_bits == 0, 0, 1)", "tl.where(amax_bits == 0, 127, 1)"),
       report="quantizers"),
    _m("subnormal-ratio block scale 0", _NUM, ("tl.where(amax_bits == 0, 0, 1)", "tl.where(amax_bits == 0, 0, 0)"),
       report="quantizers"),
    _m("tiny block scale clamped at 2^-126", _NUM, ("byte = tl.minimum(tl.maximum(unbiased, -127), 127) + 127",
                                                    "byte = tl.minimum(tl.maximum(unbiased, -126), 127) + 127"),
       report="quantizers"),
    _m("scale not clamped at 2^127", _NUM, ("byte = tl.minimum(tl.maximum(unbiased, -127), 127) + 127",
                                            "byte = tl.minimum(tl.maximum(unbiased, -127), 128) + 127"),
       equivalent="no fp32 amax reaches an unbiased exponent above 126: amax < 2^128, and every mode divides by "
                  "at least 2^emax = 4 (ROUND_UP: amax / 6 < 2^126; CEIL, EVEN: ceil_pow2(amax) / 4 <= 2^126), "
                  "so the upper clamp is dead code, kept as a guard"),
    _m("NaN block codes kept", _NUM, ("    return tl.where(byte == 255, 0, code)\n", "    return code\n"),
       report="quantizers"),
    # ---- packing ----------------------------------------------------------------------------
    _m("nibbles swapped", _QUANT, ("(codes_lo | (codes_hi << 4)).to(tl.uint8)", "(codes_hi | (codes_lo << 4)).to(tl.uint8)"),
       report="quantizers"),
    _m("weight nibbles swapped", _GEMM, ("tile = tl.reshape(tl.join(lo, hi), (R, BLOCK_K))",
                                         "tile = tl.reshape(tl.join(hi, lo), (R, BLOCK_K))"),
       report="moe"),
    _m("weight sign lost", _DEC, ("lo = (((packed & MAG) << (23 - MAN_BITS)) | ((packed & SIGN) << (31 - SIGN_SHIFT)))",
                                  "lo = (((packed & MAG) << (23 - MAN_BITS)) | ((packed & 0) << (31 - SIGN_SHIFT)))"),
       report="moe"),
    # ---- fp8 --------------------------------------------------------------------------------
    _m("no satfinite clamp", _NUM, ("code = encode_magnitude(tl.minimum(v, F.max_finite), bits, F)",
                                    "code = encode_magnitude(v, bits, F)"), report="quantizers"),
    _m("per-token x / s", _TOK,
       ("return inv[:, None], tl.where(amax == 0", "return tl.where(amax == 0, 1.0, scale)[:, None], tl.where(amax == 0"),
       ("v = tl.abs(bits.to(tl.float32, bitcast=True)) * inv",
        "v = tl.math.div_rn(tl.abs(bits.to(tl.float32, bitcast=True)), inv)"),
       ("scaled = (bits.to(tl.float32, bitcast=True) * inv).to(tl.int32, bitcast=True)",
        "scaled = tl.math.div_rn(bits.to(tl.float32, bitcast=True), inv).to(tl.int32, bitcast=True)"),
       report="quantizers"),
    _m("per-token NaN row not NaN", _TOK, ("tl.where(amax == 0, 0, tl.where(finite, -1, F.nan_code))",
                                           "tl.where(amax == 0, 0, -1)"), report="quantizers"),
    _m("per-token NaN row scale inf", _TOK, ("tl.where(finite, scale, float(\"nan\"))", "scale"), report="quantizers"),
    _m("e4m3fn max used for e4m3fnuz", _TOK, ("scale = tl.math.div_rn(amax.to(tl.float32, bitcast=True), F.max_finite)",
                                              "scale = tl.math.div_rn(amax.to(tl.float32, bitcast=True), 448.0)")),
    # ---- GEMM -------------------------------------------------------------------------------
    _m("last K block dropped", _GEMM, ("for k0 in range(0, H, BLOCK_K):", "for k0 in range(0, H - BLOCK_K + 1, BLOCK_K):"),
       report="moe"),
    _m("scale of the wrong block", _GEMM, ("sb = k0 // 32 + tl.arange(0, BLOCK_K // 32)",
                                           "sb = k0 // BLOCK_K + tl.arange(0, BLOCK_K // 32)"), report="moe"),
    _m("bf16 accumulation", _GEMM, ('out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")',
                                    'out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")'
                                    ".to(tl.bfloat16).to(tl.float32)"), report="moe"),
    # ---- SwiGLU -----------------------------------------------------------------------------
    _m("gate and up swapped", _GEMM, ("gate_rows = n * (2 if INTERLEAVED else 1)\n        up_rows = gate_rows + (1 if INTERLEAVED else I)",
                                      "up_rows = n * (2 if INTERLEAVED else 1)\n        gate_rows = up_rows + (1 if INTERLEAVED else I)"),
       report="moe"),
    _m("gate limit dropped", _GEMM, ("g = tl.minimum(acc_g, LIMIT, propagate_nan=tl.PropagateNan.ALL)", "g = acc_g"),
       report="moe"),
    _m("alpha dropped", _GEMM, ("1.0 + tl.exp(-(ACT.alpha * g))", "1.0 + tl.exp(-g)"), report="moe"),
    _m("up + 1 dropped", _GEMM, ("h = (g * s) * (u + 1.0)", "h = (g * s) * u"), report="moe"),
    _m("alpha and limit options ignored", _DISP, ("GatedActivation(_ACT_IDS[spec.activation], spec.alpha, spec.limit)",
                                                   "GatedActivation(_ACT_IDS[spec.activation], 1.702, 7.0)")),
    _m("bias1 dropped", _DISP, ("HAS_BIAS=bias1 is not None", "HAS_BIAS=False")),
    _m("interleave read as separated", _DISP, ('INTERLEAVED=spec.gate_mode == "interleave"', "INTERLEAVED=False"), report="moe"),
    # ---- routing ----------------------------------------------------------------------------
    _m("routing weight applied twice", _DISP, ("WEIGHT_HERE=not spec.doweight_stage1", "WEIGHT_HERE=True")),
    _m("routing weight never applied", _DISP, ("DOWEIGHT=spec.doweight_stage1", "DOWEIGHT=False")),
    _m("last expert's tokens dropped", _ROUTE, ("placed = (i < n_pairs) & (key < E)", "placed = (i < n_pairs) & (key < E - 1)"),
       report="moe"),
    _m("expert mask ignored", _DISP, ("live = None if expert_mask is None else", "live = None if True else")),
    _m("masked slots summed", _GEMM, ("acc = tl.where(live[:, None], acc + y, acc)", "acc = acc + y")),
    # ---- the intermediate -------------------------------------------------------------------
    _m("intermediate not quantized", _DISP, ("OUT_KIND=path.kind,", "OUT_KIND=ACTIVATION_PATHS['bf16'].kind,"), report="moe"),
    _m("scale mode ignored", _DISP, ("MODE=SCALE_MODE_IDS[spec.scale_mode]", "MODE=0"), report="moe"),
    _m("stage-1 quantizer ignores the scale mode", _DISP,
       ("a_q, a_scale = quantize_mxfp4(hidden, scale_mode=spec.scale_mode)", "a_q, a_scale = quantize_mxfp4(hidden)"),
       report="moe"),
    # ---- dispatch and selector --------------------------------------------------------------
    _m("bound <= instead of <", _SEL, ("fired = M < bound", "fired = M <= bound")),
    _m("env ignored", _DISP, ('quant_type="per_1x32",\n                                       env=env)', 'quant_type="per_1x32",\n                                       env=None)')),
    _m("env read once at import", _ENV, ("_TRUE, _FALSE = ", "_IMPORT_ENV = dict(os.environ)\n_TRUE, _FALSE = "),
       ("env = os.environ if env is None else", "env = _IMPORT_ENV if env is None else")),
    _m("force flag on one rule only", _SEL, ('(_FORCE, Override("arch_not_in"', '(Override("arch_not_in"')),
    _m("legacy variable wins", _ENV, ("    if value is not None:\n        return value, var.name\n",
                                      "    if legacy_value is not None:\n        return legacy_value, var.legacy\n"
                                      "    if value is not None:\n        return value, var.name\n")),
    _m("any string is true", _ENV, ("        if text in _TRUE:\n", "        if text not in _FALSE:\n")),
    _m("arch features not stripped", _SEL, ("return normalize_arch(props.gcnArchName)", "return props.gcnArchName")),
    _m("fp8 on gfx942", _SEL, ('archs=("gfx950",)', 'archs=("gfx950", "gfx942")')),
    # ---- the oracle itself ------------------------------------------------------------------
    _m("bound 4x too loose", _TOL, ("bound += topk * 2.0**-24 * (out + bound)",
                                    "bound = 4 * (bound + topk * 2.0**-24 * (out + bound))")),
    _m("probabilistic bound 4x too loose", _TOL, ("LAMBDA = 7.0", "LAMBDA = 28.0")),
    _m("worst-case bound 4x too loose", _TOL, ("n, u = (k, U_ACC) if", "n, u = (4 * k, U_ACC) if")),
    _m("flip step 4x too loose", _TOL, ("return np.where(robust, 0.0, 2 * step + 2 * b_h)",
                                        "return np.where(robust, 0.0, 8 * step + 2 * b_h)")),
    _m("reference skips the intermediate quantization", _REF,
       ('hq = h if ideal or h_dtype == "fp32" else quantize_activation(h, h_dtype, scale_mode)', "hq = h")),
    _m("reference skips the bf16 rounding of hidden", _REF,
       ("a = x.astype(np.float64) if ideal else em.round_to_bf16(x.astype(np.float32))",
        "a = x.astype(np.float64) if ideal else x.astype(np.float32)")),
    _m("emulation ignores low mantissa bits", "emulation/convert.py",
       ("sticky = (bits & np.uint32((1 << int(shift)) - 1)) != 0", "sticky = np.zeros(bits.shape, dtype=bool)")),
    _m("emulation rounds ties away", "emulation/convert.py",
       ("tie_up = (code_lo & 1) == 1", "tie_up = (code_lo & 1) >= 0")),
    _m("emulation NaN block codes kept", "emulation/mx.py",
       ("codes = np.where(finite[..., None], codes, 0).astype(np.uint8)", "codes = codes.astype(np.uint8)")),
    _m("e4m3fnuz bias 7", "emulation/formats.py", ('"e4m3fnuz", bits=8, exp_bits=4, man_bits=3, bias=8,',
                                                   '"e4m3fnuz", bits=8, exp_bits=4, man_bits=3, bias=7,')),
    _m("exact matmul trusts float64 too far", "moe_ref/exact.py",
       ("F64_BITS = 53", "F64_BITS = 64")),
    _m("uploaded layer never refreshed", "moe_oracle/_tensors.py",
       ("                t.copy_(self.copies[name])\n", "                pass\n")),
    _m("verdict 4x too lenient", "moe_oracle/compare.py", ("within_tolerance=bool(margin <= 1.0)",
                                                           "within_tolerance=bool(margin <= 4.0)")),
    *_LEFT_CPU,
    # ---- GPU-only code (run with the GPU suite on a device) ---------------------------------
    _m("tensor-core bf16 accumulation", _GEMM, ("        out = tl.dot(a, b, acc)\n",
                                                "        out = tl.dot(a, b, acc).to(tl.bfloat16).to(tl.float32)\n"),
       tests=_GPU_DECODE[1:], gpu=True),
    _m("subnormal weight scale flushed", _DEC, ("scale_pair = tl.maximum(byte * 0x00800080, 0x00400040)",
                                                 "scale_pair = byte * 0x00800080"), tests=_GPU_DECODE, gpu=True),
    _m("weight sign lost", _DEC, ("and.b32 s, t, {0x80008000};", "and.b32 s, t, {0x00008000};"), tests=_GPU_DECODE,
       gpu=True),
    _m("weight nibbles swapped", _DEC, ("return pairs.to(tl.int16), (pairs >> 16).to(tl.int16)",
                                        "return (pairs >> 16).to(tl.int16), pairs.to(tl.int16)"),
       tests=_GPU_DECODE, gpu=True),
    _m("host sync under graph capture", _DISP, ("if topk_ids.is_cuda and torch.cuda.is_current_stream_capturing():",
                                                "if False:"),
       tests=("tests/kernels/test_fused_moe.py::test_cuda_graph_replay_equals_eager",), gpu=True),
    # the left-operand tiles on the GPU: the prepared decode at every byte and scale byte, each tile bit-exact
    *(dataclasses.replace(m, tests=_PREPARED_GPU, gpu=True) for m in _LEFT_CPU[:5]),
    _m("folded scale off by one", _DEC, ("folded_pair = (byte + 126) * 0x00800080", "folded_pair = (byte + 127) * 0x00800080"),
       tests=_PREPARED_GPU, gpu=True),
    _m("bad ids never reported", _DISP, ("    if pending is not None:\n        pending.finish()\n", ""),
       tests=("tests/kernels/test_fused_moe.py::test_out_of_range_ids_raise_on_the_gpu",), gpu=True),
)
