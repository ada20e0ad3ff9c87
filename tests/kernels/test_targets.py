"""Every kernel variant the dispatcher uses builds for gfx950, gfx942 and sm_90 on this machine, takes
the native matrix instructions, never spills, and stays within its recorded resources.

The kernels of this test session are interpreter functions (TRITON_INTERPRET=1), so compilation runs in
a subprocess with TRITON_INTERPRET=0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest


def _python(code: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), timeout=1800)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("targets") / "targets.json"
    res = _python(f"""
        import sys
        from moe_kernels import targets
        sys.exit(targets.main(["--json", {str(out)!r}]))
    """, out.parent)
    assert out.exists(), res.stderr[-3000:]
    return json.loads(out.read_text()), res


def test_every_variant_builds_for_every_target_without_problems(table):
    data, res = table
    from moe_kernels.targets import TARGETS, VARIANTS

    seen = {(r["kernel"], r["target"]) for r in data["rows"]}
    assert seen == {(name, t) for name, v in VARIANTS.items() for t in v.targets}
    assert {t for _, t in seen} == set(TARGETS)
    bad = [f"{r['kernel']}@{r['target']}: {r['problems']}" for r in data["rows"] if r["problems"]]
    assert not bad, "\n".join(bad)
    assert all(r["spills"] == 0 for r in data["rows"])
    assert res.returncode == 0, res.stdout[-2000:]


def test_every_dispatcher_config_is_a_variant():
    from moe_kernels import dispatch
    from moe_kernels.targets import TARGETS, VARIANTS
    from moe_ref import ACTIVATION_PATHS

    for backend in ("cuda", "hip"):
        for M in (1, 8, 64, 256, 1024, 8192):
            for E, topk in ((128, 4), (32, 4), (8, 2)):
                name = dispatch.config_name(dispatch._config(M, E, topk, backend=backend))
                built_for = {t for t, target in TARGETS.items() if target.backend == backend}
                assert built_for <= set(VARIANTS[f"moe_stage2/{name}"].targets)
                for path in ACTIVATION_PATHS.values():
                    assert built_for <= set(VARIANTS[f"moe_stage1/{path.name}/separated/{name}"].targets)


def test_the_checks_catch_regressions(tmp_path):
    """A register regression, a missing instruction family and a forbidden one are reported."""
    res = _python("""
        from moe_kernels import targets as t
        name, target = next(n for n in t.VARIANTS if n.startswith("moe_stage2/bm64")), "sm90"
        r = t.resources(name, target)
        tight = {"triton": t.triton.__version__, "entries": {f"{name}@{target}": dict(regs=r["regs"] // 2, shared=r["shared"] // 2)}}
        problems = t.check_variant(name, target, tight)
        assert any("registers" in p for p in problems) and any("shared" in p for p in problems), problems
        key = (t.VARIANTS[name].kernel_class, target)
        t.EXPECTED[key] = dict(require=[r"v_mfma_nothing"], forbid=[r"wgmma"])
        problems = t.check_variant(name, target, None)
        assert any("missing" in p for p in problems) and any("forbidden" in p for p in problems), problems
        print("caught")
    """, tmp_path)
    assert "caught" in res.stdout, res.stderr[-3000:]


def test_the_left_operand_check_tells_the_register_path_from_the_staged_one(tmp_path):
    """The sm_90 GEMMs whose weights are the MMA's left operand (configs.json ``w_left``) must issue wgmma
    with a register A operand and keep the decoded tile out of shared memory (``mma_left``). The same
    expectations, held against the tiles that stage the weights through shared memory (the previous
    kernels, still built for the other configs), must fail for exactly those reasons: the check can tell."""
    res = _python("""
        from moe_kernels import targets as t
        left = [n for n, v in t.VARIANTS.items() if v.kernel_class == "mma_left"]
        assert left and all(t.VARIANTS[n].targets == ("sm90",) for n in left), left
        assert {n.split("/")[0] for n in left} == {"moe_stage1", "moe_stage2"}
        assert t.check_variant(left[-1], "sm90", None) == []
        staged = next(n for n, v in t.VARIANTS.items() if n.startswith("moe_stage2/bm64") and v.kernel_class == "mma_bm64")
        t.VARIANTS[staged] = t.Variant(**{**t.VARIANTS[staged].__dict__, "kernel_class": "mma_left"})
        problems = t.check_variant(staged, "sm90", None)
        assert any(p.startswith("missing") and "%r" in p for p in problems), problems  # no register A operand
        assert any("in the K loop" in p and "st" in p for p in problems), problems  # the decoded tile stored
        small = next(n for n, v in t.VARIANTS.items() if n.startswith("moe_stage2/bm16") and v.kernel_class == "mma_bm16")
        t.VARIANTS[small] = t.Variant(**{**t.VARIANTS[small].__dict__, "kernel_class": "mma_left"})
        problems = t.check_variant(small, "sm90", None)
        assert any(p.startswith("forbidden") and "mma" in p for p in problems), problems  # mma.sync, not wgmma
        print("told apart")
    """, tmp_path)
    assert "told apart" in res.stdout, res.stdout[-2000:] + res.stderr[-3000:]


def test_every_weight_decode_compiles_for_every_target(tmp_path):
    """The weight decodes the GPU tests run (``test_numerics._weight_decode_kernel``: public and prepared
    weights; portable, PTX and folded PTX) compile for sm_90, and the portable ones for gfx950 too: the
    interpreter runs Python, not the compiler, so a construct only the compiler refuses (a constexpr
    tuple indexed in a kernel did) is seen here without a GPU."""
    res = _python("""
        import moe_kernels
        from triton.compiler import ASTSource, compile as triton_compile
        from moe_kernels.moe_gemm import WEIGHT_FORMAT
        from moe_kernels.targets import TARGETS
        from tests.kernels.test_numerics import _weight_decode_kernel as fn
        sig = dict(w_ptr="*u8", s_ptr="*u8", out_ptr="*i16", R="i32", K="i32", ROW_BYTES="i32", SCALE_ROW_BYTES="i32")
        built = 0
        for decode, targets in (("fp32", ("sm90", "gfx950")), ("ptx", ("sm90",)), ("ptx-folded", ("sm90",))):
            for prepared in (False, True) if decode != "ptx-folded" else (True,):
                for block_k in (64, 128):
                    ce = dict(BLOCK_R=16, BLOCK_K=block_k, W=WEIGHT_FORMAT, DECODE=decode, PREPARED=prepared)
                    for t in targets:
                        triton_compile(ASTSource(fn, {**sig, **{k: "constexpr" for k in ce}}, ce), target=TARGETS[t],
                                       options={"num_warps": 4})
                        built += 1
        print("built", built)
    """, tmp_path)
    assert "built 14" in res.stdout, res.stdout[-2000:] + res.stderr[-3000:]
