"""``moe-oracle verify``: the conformance report of an implementation over a matrix of cases.

For every case (shape, M, arch, env, gate mode, scale mode) the selector says which activation path
the layer must take; the implementation's ``fused_moe`` runs, and its output is compared with that
path's emulated reference within the derived bound (and its stage-1 bytes with the emulation's,
where it exposes them); its quantizers are checked byte for byte on nasty data; its own dispatch,
if it has one, against the selector. Exit status: 0 all pass, 1 any case fails, 2 bad usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from . import __version__
from .config import DEFAULT_ARCHS, DEFAULT_CPU, DEFAULT_GPU, QUICK, VerifyConfig, load_config, seed_problem

__all__ = ["main", "cli", "build_parser"]

_NEEDS = "moe-oracle verify needs torch (and triton for Triton implementations): pip install 'moe-oracle[kernels]'"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="moe-oracle verify", description=__doc__.split("\n\n")[0].replace("``", ""),
                                 epilog="Exit status: 0 every case passes, 1 some case fails, 2 bad usage.")
    ap.add_argument("--impl", metavar="NAME|module:attr",
                    help="implementation under test: ours (default), aiter-triton, triton-kernels, a module, "
                         "or module:attr (a module in the current folder is found)")
    ap.add_argument("--config", metavar="FILE", help=f"JSON or TOML file (keys: {', '.join(f.name for f in dataclasses.fields(VerifyConfig))})")
    ap.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when a GPU is visible")
    ap.add_argument("--arch", action="append", metavar="NAME",
                    help="arch profile(s) to run, repeatable; an unknown name is an error listing the known ones "
                         "(default: the config's, else gfx942, gfx950 and the detected one)")
    ap.add_argument("--seed", type=int, metavar="N", help="base seed (default: fresh, printed)")
    ap.add_argument("--out", metavar="DIR", help="directory for report.json, report.md and margin_vs_M.png "
                                                "(without it nothing is written)")
    ap.add_argument("--quick", action="store_true", help="a smaller matrix (CI smoke run)")
    ap.add_argument("--workers", type=int, metavar="N",
                    help="processes computing the references on the host (default 1; a GPU run computes them on "
                         "the GPU, one after the other)")
    ap.add_argument("--max-memory-gb", type=float, metavar="GIB",
                    help="host memory the run may use: fewer reference workers where theirs would not fit (default 14)")
    ap.add_argument("--devices", metavar="all|N",
                    help="GPUs the MoE cases are spread over: 'all' or a number (one process each, one report; "
                         "default 1; on a CPU-only run a number means that many CPU processes)")
    ap.add_argument("--memcheck", action="store_true",
                    help="run again under CUDA's compute-sanitizer (memcheck): any access outside an allocation, "
                         "named by kernel, fails the run (NVIDIA GPUs; MOE_ORACLE_COMPUTE_SANITIZER names the tool)")
    ap.add_argument("--version", action="version", version=f"moe-oracle {__version__}")
    ap.add_argument("-q", "--quiet", action="store_true", help="no tables, no progress: errors and the last line only")
    ap.add_argument("--json", action="store_true", help="the report as JSON on stdout (the text goes to stderr)")
    ap.add_argument("--junit-xml", metavar="FILE", help="JUnit XML for CI systems: a testcase per check")
    ap.add_argument("--only", choices=["all", "quantizers", "moe", "dispatch"], default="all",
                    help="which checks to run; dispatch: AITER's dispatch and its tests' copies against the selector "
                         "(--impl aiter; MOE_ORACLE_AITER_PATH = a checkout or a wheel)")
    ap.add_argument("--aiter-repo", metavar="DIR", help="with --only dispatch: an AITER git checkout whose history "
                                                      "is walked (from --since to --until)")
    ap.add_argument("--since", metavar="COMMIT", help="with --aiter-repo: the first commit to check")
    ap.add_argument("--until", metavar="COMMIT", help="with --aiter-repo: the last commit to check (default HEAD)")
    return ap


def _archs(args, cfg) -> tuple[list[str], str]:
    from moe_ref import detect_arch
    from moe_ref.selector import normalize_arch

    if args.arch:
        archs = list(dict.fromkeys(normalize_arch(a) for a in args.arch))
        return archs, f"{', '.join(archs)} (--arch)"
    if cfg.archs is not None:
        return list(cfg.archs), f"{', '.join(cfg.archs)} (config)"
    detected = detect_arch()
    archs = list(dict.fromkeys([*DEFAULT_ARCHS, detected]))
    return archs, f"{', '.join(DEFAULT_ARCHS)} (default) + {detected} (the detected device)"


def _usage(message: str) -> int:
    print(f"moe-oracle verify: {message}", file=sys.stderr)
    return 2


def _usage_problem(args) -> str | None:
    """What is wrong with the command line, found before any work (exit 2)."""
    for name, value in (("--workers", args.workers), ("--max-memory-gb", args.max_memory_gb)):
        if value is not None and not value > 0:
            return f"{name} must be > 0, got {value}"
    problem = seed_problem("--seed", args.seed)
    if problem:
        return problem
    for flag, value in (("--out", args.out), ("--junit-xml", args.junit_xml)):
        if value is not None and not value.strip():
            return f"{flag}: empty path"
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        return f"--out {args.out}: exists and is not a folder"
    if args.junit_xml and Path(args.junit_xml).is_dir():
        return f"--junit-xml {args.junit_xml}: is a folder; expected a file path"
    if args.quick and args.config:
        return "--quick and --config: the config is the matrix; give one of them"
    if args.impl is not None and not args.impl.strip():
        return "--impl '': empty; expected ours, aiter-triton, triton-kernels, a module or module:attr"
    for flag, path, folder in (("--out", args.out, args.out),
                               ("--junit-xml", args.junit_xml, args.junit_xml and Path(args.junit_xml).parent)):
        why = folder and _cannot_write(Path(folder))
        if why:
            return f"{flag} {path}: cannot write in {folder} ({why})"
    return None


def _cannot_write(folder: Path) -> str | None:
    """Why a file cannot be written in ``folder`` (made if missing, as the run would), or None: found
    before the run, not after it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def _importable_cwd() -> None:
    """The current folder on sys.path, as ``python -m`` has it: ``--impl mykern:fn`` finds ./mykern.py."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


_WHAT = {"all": "quantizers, GEMM stages, fused_moe and dispatch", "quantizers": "quantizers",
         "moe": "fused_moe, GEMM stages and dispatch"}


def _planned(impl, only: str) -> list[str]:
    """The parts ``--only`` asks for that the implementation provides."""
    parts = []
    if only in ("all", "quantizers") and impl.quantizers():
        parts.append("quantizers")
    if only in ("all", "moe"):
        parts += [p for p, fn in (("stages", impl.moe_gemm_stage), ("moe", impl.fused_moe),
                                  ("dispatch", impl.select_act_dtype)) if fn is not None]
    return parts


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    problem = _usage_problem(args)
    if problem:
        return _usage(problem)
    if args.only == "dispatch" or args.aiter_repo:
        from .dispatch_cli import run

        return run(args)
    if importlib.util.find_spec("torch") is None:
        print(_NEEDS, file=sys.stderr)
        return 2
    _importable_cwd()
    try:
        cfg = load_config(args.config) if args.config else None
        impl_spec = args.impl if args.impl is not None else (cfg.impl if cfg else "ours")
        from .implementations import resolve

        impl = resolve(impl_spec)
    except (ValueError, ImportError) as exc:
        return _usage(str(exc))
    except RuntimeError as exc:  # adapters' PeerUnavailable: not installed, or does not run here
        return _usage(f"implementation {impl_spec!r} unavailable here: {exc}")
    parts = _planned(impl, args.only)
    if not parts:
        provided = ", ".join(impl.provides()) or "none of the contract's callables"
        return _usage(f"nothing to check: {impl.name} provides {provided}; --only {args.only} checks "
                      f"{_WHAT[args.only]}")
    from .devices import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        return _usage(str(exc))
    if args.memcheck:
        return _memcheck(args, argv, device)
    cfg = cfg or (QUICK if args.quick else DEFAULT_GPU if device == "cuda" else DEFAULT_CPU)
    from .devices import resolve_devices, visible_gpus

    gpus = visible_gpus() if device == "cuda" else []
    try:
        n_devices = resolve_devices(args.devices, gpus)
    except ValueError as exc:
        return _usage(str(exc))
    try:
        archs, archs_why = _archs(args, cfg)
    except ValueError as exc:
        return _usage(f"--arch: {exc}")
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    if cfg.seed is None:
        import secrets

        cfg = dataclasses.replace(cfg, seed=secrets.randbits(32))
    return _run(args, _Plan(impl_spec, impl, cfg, parts, device, archs, archs_why, n_devices, gpus))


def _memcheck(args, argv: list[str], device: str) -> int:
    """``--memcheck``: the same command line again under compute-sanitizer (``memcheck.run``)."""
    import torch

    from .memcheck import SANITIZER_ENV, find_sanitizer, run

    if device != "cuda" or torch.version.hip:
        return _usage("--memcheck: compute-sanitizer checks NVIDIA GPU kernels; this run is on "
                      + ("ROCm" if device == "cuda" else "the CPU (the Triton interpreter)"))
    if args.devices not in (None, "1"):
        return _usage("--memcheck runs the cases in one process: drop --devices")
    sanitizer = find_sanitizer()
    if sanitizer is None:
        return _usage(f"--memcheck: compute-sanitizer not found (looked at ${SANITIZER_ENV}, PATH, $CUDA_HOME/bin, "
                      "/usr/local/cuda/bin)")
    # the flag as given: argparse takes any unique prefix ("--me" already is one; "--m" is ambiguous)
    rest = [a for a in argv if not (len(a) > 3 and "--memcheck".startswith(a))]
    return run(rest, sanitizer, out=args.out, junit=args.junit_xml, as_json=args.json)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What one run will check, and where: resolved from the command line before any work."""

    impl_spec: str  # as given (--impl or the config's): device processes resolve it again
    impl: object  # the resolved Implementation
    cfg: object  # the VerifyConfig, its seed set
    parts: list  # of "quantizers", "stages", "moe", "dispatch"
    device: str  # "cpu" or "cuda"
    archs: list
    archs_why: str  # where the archs came from (printed, and kept in the report)
    n_devices: int
    gpus: list  # the visible GPUs (empty on the CPU)


@dataclasses.dataclass(frozen=True)
class _Checked:
    """What one run checked: quantizer rows, stage rows, MoE case rows, selector agreements."""

    quant: list
    stages: list
    rows: list
    selector: list

    @property
    def verdicts(self) -> list[str]:
        return ([r["verdict"] for r in self.rows] + [c["verdict"] for c in self.quant]
                + [s["verdict"] for s in self.stages] + ["PASS" if s["agree"] else "FAIL" for s in self.selector])


def _run(args, plan: _Plan) -> int:
    stream = sys.stderr if args.json else sys.stdout  # --json: stdout holds the JSON alone

    def say(text: str, quiet_too: bool = False) -> None:  # quiet_too: a line -q keeps (errors, failures, the last)
        if not args.quiet:
            print(text, file=stream)
        elif quiet_too:  # -q: no tables, so no blank lines between them
            print(text.removeprefix("\n"), file=stream)

    impl, seed = plan.impl, plan.cfg.seed
    say(f"implementation: {impl.name} ({', '.join(impl.provides())})" + (f"; {impl.note}" if impl.note else ""))
    say(f"seed: {seed} (rerun with --seed {seed}); archs: {plan.archs_why}; device: {plan.device}")
    checked = _check(args, plan, say)
    _print_results(checked, args.quiet, say)
    verdicts = checked.verdicts
    if not verdicts:
        return _usage(f"nothing was checked: the matrix gave {impl.name} no case for {', '.join(plan.parts)}")
    _write_outputs(args, checked, plan, say)
    n_fail, n_interp = verdicts.count("FAIL"), verdicts.count("INTERP")
    say(f"\n{len(verdicts) - n_fail - n_interp} passed, {n_fail} failed"
        + (f" ({n_interp} more differ only by the Triton interpreter's own casts: INTERP)" if n_interp else ""),
        quiet_too=True)
    return 1 if n_fail else 0


def _check(args, plan: _Plan, say) -> _Checked:
    """Run the planned parts: the quantizers, the stages, the MoE cases (here, or sharded over devices), the selector."""
    from . import engine

    impl, cfg, parts, device, n_devices, gpus = plan.impl, plan.cfg, plan.parts, plan.device, plan.n_devices, plan.gpus

    quant = engine.run_quantizers(impl, cfg, device=device) if "quantizers" in parts else []
    stages = engine.run_stages(impl, cfg, device=device) if "stages" in parts else []
    rows, selector = [], []
    if "moe" in parts:
        layer_archs = engine.layer_archs(impl, plan.archs)
        if layer_archs is None:
            from moe_ref import detect_arch

            layer_archs = [detect_arch()]
            say(f"note: {impl.name}'s fused_moe takes no arch: run at the device's arch ({layer_archs[0]}) only")
        workers = args.workers if args.workers is not None else 1
        if n_devices > 1:
            from .sharded import run_on_devices

            say(f"MoE cases over {n_devices} devices ({', '.join(gpus[:n_devices]) or 'CPU processes'})")
            rows = run_on_devices(plan.impl_spec, impl, cfg, layer_archs, n_devices, gpus[:n_devices], device=device,
                                  workers=workers, max_memory_gib=args.max_memory_gb,
                                  log_dir=Path(args.out) / "devices" if args.out else None)
        else:
            from .sharded import RowsFile

            keep = RowsFile(Path(args.out) / RowsFile.NAME if args.out else None)
            rows = engine.run_layers(impl, cfg, device=device, archs=layer_archs, workers=workers, on_row=keep,
                                     max_memory_gib=args.max_memory_gb, progress=not args.quiet)
    if "dispatch" in parts:
        selector = engine.run_selector(impl, cfg, plan.archs)
    return _Checked(quant, stages, rows, selector)


def _print_results(checked: _Checked, quiet: bool, say) -> None:
    """The tables (details), the error rows, and with ``quiet`` the failing checks one line each."""
    from .report import LEGEND, format_quantizers, format_stages, format_table, quant_cost_by_path

    quant, stages, rows, selector = checked.quant, checked.stages, checked.rows, checked.selector
    if quant:
        say("\nQuantizers (bytes against the emulation; the diagnosis names the convention followed):")
        say(format_quantizers(quant))
    if stages:
        say("\nMoE GEMM stage (bf16 outputs against the exact reference within the derived bound):")
        say(format_stages(stages))
    if rows:
        say("\n" + format_table(rows))
        say("\n" + LEGEND)
        say("quantization cost per path (reference vs ideal): "
            + ", ".join(f"{p} {c:.3g}" for p, c in sorted(quant_cost_by_path(rows).items())))
    if selector:
        bad = [s for s in selector if not s["agree"]]
        say(f"\nits dispatch vs the selector: {len(selector) - len(bad)} of {len(selector)} agree")
        for s in bad[:20]:
            say(f"    M={s['M']} {s['arch']} {s['gate_mode']} env={s['env']}: selector {s['selector']}, it {s['impl']}")
    errors = [r for r in rows if r.get("error")]
    if errors:
        say(f"\n{len(errors)} case(s) could not be checked (an error row each, a FAIL):", quiet_too=True)
        for r in errors[:10]:
            say(f"    E={r['E']} H={r['H']} I={r['I']} M={r['M']} {r['gate_mode']} env={r['env']}: {r['error']}",
                quiet_too=True)
    if quiet:  # the failing checks, one line each
        from .outputs import checks

        for part, name, verdict, message in checks(rows, quant, stages, selector):
            if verdict == "FAIL":
                say(f"FAIL {part}: {name}: {message}", quiet_too=True)


def _write_outputs(args, checked: _Checked, plan: _Plan, say) -> None:
    """The peak memory line, and what was asked for: --out's report, --junit-xml, --json."""
    import torch

    from .references import peak_memory
    from .report import write
    from .sharded import RowsFile

    quant, stages, rows, selector = checked.quant, checked.stages, checked.rows, checked.selector
    impl, cfg, device = plan.impl, plan.cfg, plan.device
    main_gib, worker_gib = peak_memory()
    say(f"peak host memory: {main_gib:.1f} GiB (this process)"
        + (f", {worker_gib:.1f} GiB (the largest reference worker)" if worker_gib else ""))
    meta = dict(peak_host_gib=round(main_gib, 2), peak_worker_gib=round(worker_gib, 2), impl=impl.name,
                device=torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)",
                seed=cfg.seed, config=dataclasses.asdict(cfg), archs=plan.archs, archs_why=plan.archs_why,
                torch=torch.__version__, version=__version__)
    if args.out:
        files = write(Path(args.out), rows, quant, selector, meta, stages, say=say)
        (Path(args.out) / RowsFile.NAME).unlink(missing_ok=True)
        say("wrote " + ", ".join(str(f) for f in files))
    elif not args.json and not args.junit_xml:
        say("(nothing written: pass --out DIR to keep report.json, report.md and the plot)")
    if args.junit_xml:
        from .outputs import checks, write_junit

        write_junit(Path(args.junit_xml), impl.name, checks(rows, quant, stages, selector))
        say(f"wrote {args.junit_xml}")
    if args.json:
        from .outputs import json_report

        n_fail = checked.verdicts.count("FAIL")
        print(json_report(meta, rows, quant, stages, selector, len(checked.verdicts) - n_fail, n_fail))


def cli(argv: list[str] | None = None) -> None:
    """Console script: ``moe-oracle verify [options]`` (``moe-oracle --help``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="moe-oracle", description="Prove that MXFP4 MoE kernels compute exactly what "
                                  "they should.", epilog="commands:\n  verify    the conformance report (moe-oracle "
                                  "verify --help)", formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"moe-oracle {__version__}")
    top.add_argument("command", choices=["verify"], help="verify: the conformance report")
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        print("\n" + build_parser().format_help())
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        top.parse_args(argv)
    if argv[0] != "verify":
        top.error(f"unknown command {argv[0]!r}; expected: verify")
    sys.exit(main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
