"""nox sessions for moe-oracle.

Installing torch: on a CPU machine the sessions pin ``torch==2.13.0`` (a CPU wheel; an open range
could pull a multi-GB CUDA build) and take triton from PyPI. On GPU CI (CUDA or ROCm) the vendor's
torch and triton are already installed and must be used: set ``MOE_ORACLE_USE_INSTALLED_TORCH=1``
(or pass ``-- --use-installed-torch`` via the env var only), and the session's virtualenv is created
with ``--system-site-packages`` and installs neither.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

CPU_TORCH = "torch==2.13.0"
USE_INSTALLED_TORCH = os.environ.get("MOE_ORACLE_USE_INSTALLED_TORCH", "0").lower() in ("1", "true")
VENV_PARAMS = ["--system-site-packages"] if USE_INSTALLED_TORCH else []
LOCK = Path(__file__).parent / "constraints.txt"
LOCK_PYTHON = (3, 11)  # the interpreter the lock was resolved on (its header says so)


def _lock_args(session: nox.Session) -> list[str]:
    """``-c <lock>``: the pinned versions (without torch/triton where the vendor's are used)."""
    py = tuple(int(p) for p in session.run_install("python", "-c", "import sys; print(*sys.version_info[:2])",
                                                   silent=True).split())  # run_install: also under --install-only
    if py < LOCK_PYTHON:
        session.error(f"constraints.txt was resolved on Python {'.'.join(map(str, LOCK_PYTHON))}; this is "
                      f"{'.'.join(map(str, py))}: use `nox -s tests_latest` (newest releases, no lock)")
    if not USE_INSTALLED_TORCH:
        return ["-c", str(LOCK)]
    kept = [ln for ln in LOCK.read_text().splitlines() if not ln.startswith(("torch==", "triton=="))]
    path = Path(session.create_tmp()) / "constraints-installed-torch.txt"
    path.write_text("\n".join(kept) + "\n")
    return ["-c", str(path)]


def _install(session: nox.Session, *extras: str, locked: bool = True) -> None:
    pins = _lock_args(session) if locked else ["--upgrade", "--upgrade-strategy", "eager"]
    spec = f".[{','.join(extras)}]" if extras else "."
    if USE_INSTALLED_TORCH:
        session.run("python", "-c", "import torch, triton; print('using installed torch', torch.__version__, 'triton', triton.__version__)")
        session.install(*pins, "-e", spec)
    else:
        session.install(*pins, CPU_TORCH, "triton", "-e", f".[{','.join(('kernels',) + extras)}]")


def _run_suite(session: nox.Session) -> None:
    session.run(
        "pytest", "-n", "auto", "-m", "not gpu and not exhaustive", *session.posargs,
        env={"TRITON_INTERPRET": "1"},
    )


AITER = "amd-aiter==0.1.7.post2.dev18"  # a peer under test: its files only (--no-deps; its top level is never imported)
# the ecosystem's MXFP4 libraries (moe_oracle.ecosystem), their files only: each adapter imports what it needs
MX_PEERS = ("torchao==0.18.0", "amd-quark==0.13", "sglang==0.5.23", "vllm==0.33.0", "flashinfer-python==0.7.4",
            # what importing FlashInfer's fp4_quantization file needs (its kernels' own guards then speak)
            "apache-tvm-ffi==0.1.15.post2", "nvidia-ml-py==13.615.71", "requests==2.34.2", "urllib3==2.8.0",
            "certifi==2026.10.19.post1", "charset-normalizer==3.5.3", "idna==3.21")


def _install_peers(session: nox.Session) -> None:
    session.install("--no-deps", AITER, *MX_PEERS)


@nox.session(venv_params=VENV_PARAMS)
def tests(session: nox.Session) -> None:
    """The CPU suite (kernels under TRITON_INTERPRET=1), in parallel, with the locked versions."""
    _install(session, "test", "plot")
    _install_peers(session)
    _run_suite(session)


@nox.session(venv_params=VENV_PARAMS)
def mutants(session: nox.Session) -> None:
    """Oracle power: every mutant of tests/mutants/catalogue.py applied to a copy of the tree must be killed
    by the tests that can see it (and make `moe-oracle verify --quick` exit 1 where marked); writes
    mutants-report/mutants.md and .json. `-- --gpu` runs the GPU-only mutants (on a device)."""
    _install(session, "test", "plot")
    _install_peers(session)
    session.run("python", "-m", "tests.mutants.run", *session.posargs)


MUTMUT = "mutmut==3.8.1"  # the mutation tool of mutants_auto (tests/mutants/auto.py says why this one)


@nox.session(venv_params=VENV_PARAMS)
def mutants_auto(session: nox.Session) -> None:
    """Machine-generated mutants over the oracle side (mutmut): each module in its own resumable copy
    under mutants-auto/, with the tests that can see it; kills re-run under three more seeds (flaky
    ones reported); survivors triaged in tests/mutants/equivalent.json. Writes mutants-report/auto.md.
    `-- moe_ref/selector.py` runs one module; `-- --seed N` fixes the seed."""
    _install(session, "test", "plot")
    _install_peers(session)
    session.install(*_lock_args(session), MUTMUT)
    session.run("python", "-m", "tests.mutants.auto", *session.posargs)


@nox.session(venv_params=VENV_PARAMS, reuse_venv=False)
def tests_latest(session: nox.Session) -> None:
    """The CPU suite against the newest releases (no lock): upstream changes show up here first."""
    _install(session, "test", "plot", locked=False)
    _install_peers(session)
    session.run("python", "-m", "pip", "freeze")
    _run_suite(session)


@nox.session(reuse_venv=False)
def lock(session: nox.Session) -> None:
    """Re-resolve the newest releases and rewrite constraints.txt (then review the diff, run nox -s tests)."""
    session.install(CPU_TORCH, "triton", "-e", ".[kernels,test,plot]", "ruff", MUTMUT.split("==")[0])
    frozen = session.run("python", "-m", "pip", "freeze", "--exclude-editable", silent=True)
    header = [ln for ln in LOCK.read_text().splitlines() if ln.startswith("#")]
    pins = sorted((ln.split("+")[0] for ln in frozen.splitlines() if "==" in ln), key=str.lower)
    LOCK.write_text("\n".join(header + pins) + "\n")
    session.log(f"wrote {LOCK} ({len(pins)} pins); update the date in its header")


@nox.session(venv_params=VENV_PARAMS)
def fuzz(session: nox.Session) -> None:
    """The edge fuzz tests with many examples per damage kind (MOE_ORACLE_FUZZ_EXAMPLES, default 100)."""
    _install(session, "test")
    session.run("pytest", "-n", "auto", "tests/edge/test_fuzz.py", "-s", "-q", *session.posargs,
                env={"TRITON_INTERPRET": "1", "MOE_ORACLE_FUZZ_EXAMPLES": os.environ.get("MOE_ORACLE_FUZZ_EXAMPLES", "100")})


@nox.session(venv_params=VENV_PARAMS)
def peers(session: nox.Session) -> None:
    """The oracle on the peers: the ecosystem table (README, report-peers/ecosystem.json: every MXFP4
    quantizer, fake quantizer and dequantizer of torchao, amd-quark, SGLang, vLLM, triton_kernels, AITER),
    then each library's own report under report-peers/ (AITER's Triton kernels and triton_kernels as
    whole layers where they run).
    A peer that is missing or does not run here is one line; the peers' failed checks are findings,
    not a failure of the session."""
    _install(session, "plot")
    _install_peers(session)
    session.run("python", "-m", "moe_oracle.ecosystem", "--readme", "README.md", "--json", "report-peers/ecosystem.json",
                env=_interpret_without_gpu())
    for impl in ("aiter-triton", "triton-kernels", "torchao", "amd-quark", "sglang", "vllm"):
        session.run("python", "-m", "moe_oracle", "--impl", impl, "--quick", "--only", "quantizers" if impl in
                    ("torchao", "amd-quark", "sglang", "vllm") else "all", "--out", f"report-peers/{impl}",
                    *session.posargs, env=_interpret_without_gpu(), success_codes=[0, 1, 2])


@nox.session(venv_params=VENV_PARAMS)
def gpu(session: nox.Session) -> None:
    """The gpu-marked tests on a CUDA or ROCm device (set MOE_ORACLE_USE_INSTALLED_TORCH=1 there): one
    pytest-xdist worker per visible GPU, each pinned to its own (tests/conftest.py); ``-- -n K`` for K."""
    _install(session, "test")
    workers = [] if any(a == "-n" or a.startswith("-n") for a in session.posargs) else ["-n", _gpu_workers(session)]
    session.run("pytest", "-m", "gpu", "-p", "no:randomly", *workers, *session.posargs)


def _gpu_workers(session: nox.Session) -> str:
    """The number of GPUs the session's python sees (at least 1)."""
    out = session.run("python", "-c", "from moe_oracle.devices import visible_gpus; print(max(1, len(visible_gpus())))",
                      silent=True)
    return (out or "1").strip().splitlines()[-1]


@nox.session(venv_params=VENV_PARAMS)
def exhaustive(session: nox.Session) -> None:
    """All 2^32 fp32 inputs through every fp8 and e2m1 encoder vs an independent implementation."""
    _install(session, "test")
    session.run("python", "-m", "tests.emulation.exhaustive", *session.posargs)


@nox.session(venv_params=VENV_PARAMS)
def verify(session: nox.Session) -> None:
    """The main job: the conformance report on its embedded default configuration."""
    _install(session, "plot")
    session.run("python", "-m", "moe_oracle", *session.posargs, env=_interpret_without_gpu())


@nox.session(venv_params=VENV_PARAMS)
def bench(session: nox.Session) -> None:
    """Benchmarks (emulation speed on CPU; kernels vs peers on a GPU)."""
    _install(session, "test")
    session.run("python", "-m", "benchmarks.bench_emulation")
    session.run("python", "-m", "benchmarks.bench_quant", env=_interpret_without_gpu())
    session.run("python", "-m", "benchmarks.bench_moe", *session.posargs, env=_interpret_without_gpu())


@nox.session(venv_params=VENV_PARAMS)
def targets(session: nox.Session) -> None:
    """Compile every kernel variant for gfx950, gfx942 and sm_90 (no GPU needed) and print the table."""
    _install(session)
    session.run("python", "-m", "moe_kernels.targets", *session.posargs, env={"TRITON_INTERPRET": "0"})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-c", str(LOCK), "ruff")
    session.run("ruff", "check", ".")


def _interpret_without_gpu() -> dict[str, str]:
    return {} if USE_INSTALLED_TORCH else {"TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
