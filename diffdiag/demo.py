"""``diffdiag demo``: the main job, end to end, on this machine's CPU.

1. the tiny base UNet (shipped with the package: ``integrations/assets/tiny_base.safetensors``);
2. a real LoRA training run with a fault injected (``--fault``, default
   ``lr_too_high``; ``none`` for a healthy run), with the in-training hook
   (live findings are printed as they happen, latents and cross-attention maps
   captured every 25 steps);
3. the analysis of everything the run left (logs, latents, attention maps, the
   dataset and its masks, sample images, the LoRA checkpoint) into
   ``--report`` (``report.html``, ``report.pdf``, ``diagnosis.json``);
4. when MLflow is installed: the training is an MLflow run in the embedded
   store (``<workdir>/mlflow.db``), opened before the first step and ended with
   the last, so its start, end and duration are the training's; its params are
   the hyper-parameters the training applies, its metrics (loss, EMA, LR,
   gradient norm) and diffdiag's live findings are logged as the steps happen;
   the sample images and the LoRA follow, and the diagnosis is pushed into the
   run, with the ``mlflow ui`` command to review it.

torch, diffusers and peft are imported only here (``pip install 'diffdiag[torch]'``).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

from .errors import InputError


class _LivePrinter:
    """A hook callback: print live findings as they happen, at most three per finding id (the report has them all)."""

    def __init__(self, say) -> None:
        self.say = say
        self.count: dict[str, int] = {}

    def on_finding(self, finding, step) -> None:
        n = self.count[finding.id] = self.count.get(finding.id, 0) + 1
        if n <= 3:
            self.say(f"  live [{finding.severity}] step {step}: {finding.message}")
        elif n == 4:
            self.say(f"  live: more {finding.id} findings follow; they are in the report")


def _need(pkg: str) -> str | None:
    try:
        __import__(pkg)
    except ImportError:
        return pkg
    return None


def run_demo(*, report: str | Path = "diffdiag-report", workdir: str | Path = ".diffdiag",
             fault: str | None = "lr_too_high", steps: int = 300) -> int:
    """Run the demo; return the exit code (0, or 2 when torch/diffusers/peft are missing).

    Parameters
    ----------
    report : path
        Where ``report.html``, ``report.pdf`` and ``diagnosis.json`` go.
    workdir : path
        Where the training run (and the embedded MLflow store) is kept.
    fault : str or None
        One of :data:`diffdiag.integrations.tiny_lora.FAULTS`; None/``"none"`` for a healthy run.
    steps : int
        LoRA training steps.
    """
    missing = [p for p in ("torch", "diffusers", "peft") if _need(p)]
    if missing:
        print(f"diffdiag demo: error: the demo trains a small model and needs {', '.join(missing)}: "
              f"pip install 'diffdiag[torch]'", file=sys.stderr)
        return 2
    from .integrations import tiny_lora as T

    fault = None if fault in (None, "", "none", "healthy") else fault
    if fault is not None and fault not in T.FAULTS:
        raise InputError(f"unknown --fault {fault!r}: choose one of {', '.join(T.FAULTS)}, or none")
    from . import api

    t0 = time.perf_counter()
    workdir = Path(workdir).expanduser().resolve()
    report = Path(report).expanduser().resolve()
    steps = int(steps or 300)
    say = lambda s: print(s, flush=True)  # noqa: E731

    say(f"diffdiag demo: a tiny diffusion model, LoRA-tuned for {steps} steps with fault "
        f"'{fault or 'none'}', then diagnosed")
    say("[1/4] base model")
    base, info = T.load_or_build_base(log=say)
    if info.get("cached"):
        say(f"  {'shipped' if info.get('source') == 'shipped' else 'cached'} base: {info['path']}")

    from .integrations.hook import DiagConfig, DiagnosticWarning, LossDiagnostics

    run_dir = workdir / f"run-{fault or 'healthy'}"
    run_name = f"tiny-lora-{fault or 'healthy'}"
    cfg = T.LoraConfig(workdir=run_dir, steps=steps, fault=fault, samples=4)
    callbacks: list = [_LivePrinter(say)]
    target, tracker_note = None, None
    if _need("mlflow") is None:
        try:  # the run opens now: the trainer logs params and metrics into it as it trains, then ends it
            from .integrations.mlflow_demo import start_run
            from .integrations.mlflow_hook import MlflowHook

            run_id, uri = start_run(workdir, run_name=run_name)
            cfg.mlflow_uri, cfg.mlflow_run_id = uri, run_id
            callbacks.append(MlflowHook(run_id, uri))  # live findings into the same run
            target = api.MlflowTarget(run_id, tracking_uri=uri)
        except Exception as exc:  # noqa: BLE001 - the demo's report does not depend on MLflow
            tracker_note = f"MLflow logging skipped ({type(exc).__name__}: {exc})"
    else:
        tracker_note = "MLflow is not installed: the run was not logged to a tracker (pip install 'diffdiag[mlflow]')"
    say(f"[2/4] LoRA training in {run_dir} (logs: logs/train.jsonl + TensorBoard"
        + (f"; MLflow run {target.run_id})" if target else ")"))
    hook = LossDiagnostics(DiagConfig(report_dir=report, diag_interval=25, write_report=False, warn=False,
                                      trackers=(), run_name=run_name, run_config=cfg.hyperparameters(),
                                      callbacks=callbacks))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiagnosticWarning)
        res = T.train_lora(cfg, base=base, hook=hook, log=say)
    hook.close()
    say(f"  trained in {res.seconds:.0f} s; per-step loss p99/median = {res.tail_ratio():.1f}")

    say("[3/4] analysis")
    from .summary import print_summary

    run = hook.run_data()  # what the hook saw: losses, latents, attention maps, the dataset
    if res.lora is not None:  # the LoRA checkpoint, and the sample images saved beside it
        run = api.load(checkpoints=(res.lora,), into=run)
    run.inputs.update({"logdir": str(res.jsonl or res.logs), "latents": str(report / "latents")})
    if target is not None:
        try:  # the samples (made at the end of training) and the LoRA, into the ended run
            from .integrations.mlflow_demo import log_media

            log_media(target.run_id, target.tracking_uri, images=[("samples", s.step, s.image) for s in run.samples],
                      artifacts=[res.lora] if res.lora else ())
            run.inputs["mlflow_run"] = target.run_id
        except Exception as exc:  # noqa: BLE001
            tracker_note, target = f"MLflow logging skipped ({type(exc).__name__}: {exc})", None
    diagnosis = api.analyze(run)
    diagnosis.outputs["live_findings"] = [f.to_dict() for f in hook.live_findings]
    api.write_report(run, diagnosis, report)

    say("[4/4] tracker")
    if target is not None:
        from .integrations.mlflow_demo import run_url

        try:
            pushed = api.push(diagnosis, target, inputs=run, report_dir=report).get("mlflow", {})
            say(f"  diagnosis pushed into MLflow run {target.run_id}; with the UI running (`make ui`), the run is "
                f"{run_url(pushed.get('experiment_id', '0'), target.run_id)}")
        except Exception as exc:  # noqa: BLE001
            tracker_note = f"MLflow push skipped ({type(exc).__name__}: {exc})"
    if tracker_note:
        say(f"  {tracker_note}")
    print_summary(diagnosis, report)
    say(f"diffdiag demo done in {time.perf_counter() - t0:.0f} s. Open the report: {report / 'report.html'}")
    return 0
