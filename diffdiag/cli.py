"""Command line: ``diffdiag analyze [SOURCES...] [--report DIR] [OPTIONS...]`` (docs/CONTRACT.md §1).

A thin layer over the Python API (:mod:`diffdiag.api`): the flags become a
:class:`~diffdiag.sources.spec.SourceSpec`, :class:`~diffdiag.model.Settings` and a push
target; ``load``, ``analyze``, ``write_report`` and ``push`` do the work.

Exit codes: 0 analysis done; 1 a finding reached ``--fail-on``; 2 bad usage or
unreadable input; 3 a tracker could not be reached or refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ._version import __version__
from .api import SourceSpec, Target, WandbTarget, analyze, load, push, target_of, write_report
from .errors import DiffdiagError, InputError
from .model import SEVERITY_RANK, RunData, Settings
from .summary import print_summary

EXIT_OK, EXIT_FAIL_ON, EXIT_INPUT, EXIT_TRACKER = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message}\n")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return v


def add_analyze_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``analyze`` sources and options (docs/CONTRACT.md §1) to a parser."""
    src = p.add_argument_group("sources (any combination, at least one)")
    src.add_argument("--logdir", metavar="PATH",
                     help="directory (searched recursively) or file of training logs: TensorBoard, CSV, JSONL")
    src.add_argument("--images", nargs="+", action="append", metavar="IMG",
                     help="one image, or a reference/output pair IN OUT; repeatable")
    src.add_argument("--latents", metavar="PATH", help="directory of saved latents (.npy/.npz/.pt/.safetensors)")
    src.add_argument("--dataset", metavar="DIR", help="training images (PNG/JPEG/WebP), searched recursively")
    src.add_argument("--masks", metavar="DIR", help="masks for --dataset, matched by file stem")
    src.add_argument("--checkpoints", nargs="+", metavar="PATH",
                     help="LoRA/model checkpoints (.safetensors/.pt/.ckpt) or directories of them")
    src.add_argument("--wandb-run", metavar="REF",
                     help="entity/project/run_id, a run URL, or a local W&B run directory")
    src.add_argument("--mlflow-run", metavar="RUN_ID", help="an MLflow run id")
    src.add_argument("--mlflow-tracking-uri", metavar="URI",
                     help="MLflow tracking URI (else MLFLOW_TRACKING_URI, else the embedded default)")
    opt = p.add_argument_group("options")
    opt.add_argument("--report", metavar="DIR", default="./diffdiag-report",
                     help="where report.html, report.pdf, figures/ and diagnosis.json go (default: %(default)s)")
    opt.add_argument("--push", action="store_true", help="write the results back into the tracker run that was read")
    opt.add_argument("--wandb-report", action="store_true", help="also build a W&B Report")
    add_settings_arguments(opt)
    add_engine_arguments(opt, what="the --dataset scan")
    opt.add_argument("--format", choices=("text", "json"), default="text", help="what goes to stdout")
    opt.add_argument("--fail-on", choices=("info", "warning", "critical"),
                     help="exit 1 when a finding reaches this severity")
    opt.add_argument("--no-progress", action="store_true", help="never show progress bars")


def add_settings_arguments(opt: argparse._ArgumentGroup) -> None:
    """The analysis options (``Settings``) of ``analyze`` and ``triage``."""
    opt.add_argument("--fft-threshold", type=_positive_float, metavar="F",
                     help="sensitivity of periodic-peak detection (lower finds weaker peaks)")
    opt.add_argument("--spike-sigma", type=_positive_float, default=3.0, metavar="S",
                     help="loss-spike threshold in robust standard deviations (default: 3)")
    opt.add_argument("--heatmap-scale", type=_positive_float, default=4.0, metavar="H",
                     help="gain applied to error heatmaps in the report (default: 4)")
    opt.add_argument("--max-images", type=_positive_int, default=16, metavar="N",
                     help="at most this many images in the report (default: 16)")
    opt.add_argument("--loss-key", metavar="NAME", help="log key of the raw loss (else auto-detected)")
    opt.add_argument("--ema-key", metavar="NAME", help="log key of the smoothed/EMA loss (else auto-detected)")
    opt.add_argument("--lr-key", metavar="NAME", help="log key of the learning rate (else auto-detected)")
    opt.add_argument("--vae-scale", type=_positive_int, default=8, metavar="N",
                     help="pixels per latent cell (default: 8)")


def add_engine_arguments(opt: argparse._ArgumentGroup, what: str) -> None:
    """``--engine``, ``--ray-address``, ``--workers`` (:mod:`diffdiag.triage.engines`)."""
    opt.add_argument("--engine", choices=("local", "ray"), default="local",
                     help=f"where {what} runs: local processes, or Ray (pip install 'diffdiag[ray]')")
    opt.add_argument("--ray-address", metavar="ADDR",
                     help="join this Ray cluster (ray://host:10001, host:6379, auto); else Ray starts here")
    opt.add_argument("--workers", type=_positive_int, metavar="N",
                     help="worker processes (default: 2; with --ray-address, the cluster's CPUs)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        spike_sigma=args.spike_sigma,
        fft_threshold=args.fft_threshold,
        heatmap_scale=args.heatmap_scale,
        max_images=args.max_images,
        loss_key=args.loss_key,
        ema_key=args.ema_key,
        lr_key=args.lr_key,
        vae_scale=args.vae_scale,
        fail_on=args.fail_on,
    )


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@contextmanager
def progress_display(enabled: bool) -> Iterator[Callable[[str], None]]:
    """A transient rich status line on stderr; a no-op when disabled or not a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield lambda label: None
        return
    console = _stderr_console()
    with console.status("diffdiag: starting", spinner="dots") as status:
        yield lambda label: status.update(f"diffdiag: {label}")


def spec_from_args(args: argparse.Namespace) -> SourceSpec:
    """The sources ``diffdiag analyze``'s flags name."""
    return SourceSpec(logdir=args.logdir, images=tuple(tuple(g) for g in args.images or ()), latents=args.latents,
                      dataset=args.dataset, masks=args.masks, checkpoints=tuple(args.checkpoints or ()),
                      wandb_run=args.wandb_run, mlflow_run=args.mlflow_run,
                      mlflow_tracking_uri=args.mlflow_tracking_uri)


def push_target(args: argparse.Namespace, run: RunData, settings: Settings) -> Target:
    """Where ``--push``/``--wandb-report`` write: the tracker run that was read."""
    target = target_of(run)
    if args.wandb_report and target is not None and not isinstance(target, WandbTarget):
        raise InputError("--wandb-report needs a W&B run (--wandb-run)")
    if target is None:
        raise InputError("--push/--wandb-report need a tracker run (--wandb-run or --mlflow-run)")
    if isinstance(target, WandbTarget):
        return dataclasses.replace(target, push=args.push, report=args.wandb_report)
    return dataclasses.replace(target, max_images=settings.max_images)


def run_analyze(args: argparse.Namespace) -> int:
    """Run ``diffdiag analyze`` with parsed arguments; return the exit code."""
    spec = spec_from_args(args)
    if spec.is_empty():
        raise InputError("no source given: name at least one of --logdir, --images, --latents, "
                         "--dataset, --checkpoints, --wandb-run, --mlflow-run")
    if args.push and not (args.wandb_run or args.mlflow_run):
        raise InputError("--push writes into the tracker run that was read: use it with --wandb-run or --mlflow-run")
    settings = settings_from_args(args)
    report_dir = Path(args.report).expanduser()
    from .reports.folder import check_report_dir

    check_report_dir(report_dir)  # a report that cannot be written is said before the analysis, not after
    with progress_display(not args.no_progress) as progress:
        if args.engine != "local" or args.workers or args.ray_address:
            from .triage.engines import load_with_engine, make_engine

            with make_engine(args.engine, workers=args.workers, address=args.ray_address) as engine:
                run = load_with_engine(spec, settings, engine, progress=progress)
        else:
            run = load(spec, settings=settings, progress=progress)
        diagnosis = analyze(run, settings, progress=progress)
        progress("writing report")
        write_report(run, diagnosis, report_dir, settings)
        if args.push or args.wandb_report:
            target = push_target(args, run, settings)
            progress("writing back to the tracker")
            push(diagnosis, target, inputs=run, report_dir=report_dir)
    from .redact import redact_diagnosis, redact_obj

    if args.format == "json":
        sys.stdout.write(json.dumps(redact_obj(diagnosis.to_dict()), indent=2) + "\n")
    else:
        print_summary(redact_diagnosis(diagnosis), report_dir)
    for line in run.input_errors:  # unreadable inputs: the rest was analysed, the exit code says so
        print(f"diffdiag: error: {line}", file=sys.stderr)
    if run.input_errors:
        return EXIT_INPUT
    if args.fail_on:
        worst = diagnosis.worst_severity()
        if worst is not None and SEVERITY_RANK[worst] >= SEVERITY_RANK[args.fail_on]:
            return EXIT_FAIL_ON
    return EXIT_OK


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(report=args.report, workdir=args.workdir, fault=args.fault, steps=args.steps)


def _run_publish_report(args: argparse.Namespace) -> int:
    from .reports.wandb_report import publish_report_dir

    url = publish_report_dir(args.report_dir, entity=args.entity, project=args.project, base_url=args.base_url)
    print(f"published W&B report: {url}")
    return EXIT_OK


def _run_triage(args: argparse.Namespace) -> int:
    from .triage import Filters, TriageOptions, triage
    from .triage.summary import print_triage_summary

    options = TriageOptions(runs=list(args.runs), report_dir=Path(args.report).expanduser(),
                            wandb_projects=list(args.wandb_project or ()),
                            mlflow_experiments=list(args.mlflow_experiment or ()),
                            mlflow_tracking_uri=args.mlflow_tracking_uri, filters=Filters.parse(args.filter or ()),
                            engine=args.engine, workers=args.workers, ray_address=args.ray_address,
                            settings=settings_from_args(args), push=args.push, progress=not args.no_progress)
    result = triage(options)
    if args.format == "json":
        sys.stdout.write(json.dumps(result.doc, indent=2) + "\n")
    else:
        print_triage_summary(result)
    for line in result.errors:
        print(f"diffdiag: error: {line}", file=sys.stderr)
    for row in result.rows:
        if row["error"]:
            print(f"diffdiag: error: {row['run']}: {row['error']}", file=sys.stderr)
    return result.exit_code(args.fail_on)


def add_triage_arguments(t: argparse.ArgumentParser) -> None:
    """``diffdiag triage`` (docs/CONTRACT.md §5)."""
    t.add_argument("runs", nargs="*", metavar="RUN",
                   help="a log folder or file, a local W&B run folder, a W&B run ref, an MLflow run id")
    src = t.add_argument_group("tracker listings")
    src.add_argument("--wandb-project", action="append", metavar="ENTITY/PROJECT",
                     help="every run of a W&B project (or of a local wandb/ folder); repeatable")
    src.add_argument("--mlflow-experiment", action="append", metavar="NAME_OR_ID",
                     help="every run of an MLflow experiment; repeatable")
    src.add_argument("--mlflow-tracking-uri", metavar="URI",
                     help="MLflow tracking URI (else MLFLOW_TRACKING_URI, else the embedded default)")
    src.add_argument("--filter", action="append", metavar="KEY=VALUE",
                     help="keep listed runs with tag=NAME, state=S[,S], created_after=DATE, created_before=DATE, "
                          "name=PATTERN; repeatable (all must hold)")
    opt = t.add_argument_group("triage options")
    opt.add_argument("--report", metavar="DIR", required=True,
                     help="where triage.json, triage.html and one report folder per run go")
    opt.add_argument("--push", action="store_true",
                     help="push each run's diagnosis into its tracker run, and the triage table into the project")
    add_engine_arguments(opt, what="the triage")
    add_settings_arguments(opt)
    opt.add_argument("--format", choices=("text", "json"), default="text", help="what goes to stdout")
    opt.add_argument("--fail-on", choices=("info", "warning", "critical"),
                     help="exit 1 when a run has a finding of this severity")
    opt.add_argument("--no-progress", action="store_true", help="never show progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffdiag", description="Diagnose diffusion / LoRA training runs.")
    parser.add_argument("--version", action="version", version=f"diffdiag {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    a = sub.add_parser("analyze", help="analyse logs, images, latents, datasets, checkpoints or tracker runs")
    add_analyze_arguments(a)
    a.set_defaults(func=run_analyze)
    d = sub.add_parser("demo", help="run the embedded demo: a short training with a fault, analysed")
    d.add_argument("--report", metavar="DIR", default="./diffdiag-report")
    d.add_argument("--workdir", metavar="DIR", default="./.diffdiag", help="where the demo run is stored")
    d.add_argument("--fault", default="lr_too_high",
                   help="fault to inject: lr_too_high, corrupted_samples, tiled_sources, broken_masks, or none")
    d.add_argument("--steps", type=_positive_int, default=300, metavar="N", help="LoRA steps (default: %(default)s)")
    d.set_defaults(func=_run_demo)
    pr = sub.add_parser("publish-report", help="publish the W&B Report spec an offline analysis wrote")
    pr.add_argument("report_dir", metavar="REPORT_DIR", help="report folder holding wandb_report.json")
    pr.add_argument("--entity", help="W&B entity (default: the spec's, else your default entity)")
    pr.add_argument("--project", help="W&B project (default: the spec's)")
    pr.add_argument("--base-url", help="W&B server URL (default: WANDB_BASE_URL or W&B cloud)")
    pr.set_defaults(func=_run_publish_report)
    t = sub.add_parser("triage", help="analyse many runs (folders, W&B, MLflow) into one table")
    add_triage_arguments(t)
    t.set_defaults(func=_run_triage)
    return parser


def analyze_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Diagnose diffusion / LoRA training runs (same as 'diffdiag analyze').")
    p.add_argument("--version", action="version", version=f"diffdiag {__version__}")
    add_analyze_arguments(p)
    p.set_defaults(func=run_analyze)
    return p


def _dispatch(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from .redact import redacting_streams

    with redacting_streams(), _library_warnings_off():  # no secret and no library warning reaches stderr
        return _dispatch_redacted(parser, argv)


@contextmanager
def _library_warnings_off() -> Iterator[None]:
    """Keep library warnings (numpy, PIL, matplotlib, trackers) off the user's stderr.

    diffdiag says what matters in its own lines and notes. Under ``DIFFDIAG_STRICT``
    (the test suite) nothing is silenced here, so a warning that would reach a user's
    stderr is seen and fixed where it arises.
    """
    if os.environ.get("DIFFDIAG_STRICT"):
        yield
        return
    import logging
    import warnings

    import numpy as np

    quiet = [logging.getLogger(n) for n in ("alembic", "mlflow", "wandb", "matplotlib", "PIL", "urllib3")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(max(lg.level, logging.ERROR))
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)


def _dispatch_redacted(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    try:
        return int(args.func(args))
    except DiffdiagError as exc:
        for line in str(exc).splitlines() or [""]:  # several unreadable inputs: one line each
            print(f"diffdiag: error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("diffdiag: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - never a traceback for users
        if os.environ.get("DIFFDIAG_DEBUG") or os.environ.get("DIFFDIAG_STRICT"):
            raise
        print(f"diffdiag: error: unexpected {type(exc).__name__}: {exc} "
              f"(set DIFFDIAG_DEBUG=1 for a traceback and please report it)", file=sys.stderr)
        return EXIT_INPUT


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``diffdiag``: subcommands, or the analyze arguments directly."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices) if parser._subparsers else set()
    if argv and (argv[0] in commands or argv[0] in ("-h", "--help", "--version")):
        return _dispatch(parser, argv)
    if not argv:
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    return _dispatch(analyze_parser("diffdiag analyze"), argv)


def main_analyze(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``diagnose-loss`` and ``python -m diffdiag``: the analyze arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    if argv and argv[0] in commands:
        return _dispatch(parser, argv)
    return _dispatch(analyze_parser(Path(sys.argv[0]).name if argv is None else "diagnose-loss"), argv)


def _exit_main() -> None:  # pragma: no cover
    sys.exit(main())
