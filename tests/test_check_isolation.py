"""Every registered check is a pure function of the loaded inputs (issue 11, docs/ARCHITECTURE.md "Checks are pure").

One rich run is written to disk and read once through the sources
(``diffdiag.sources.load_run``): a CSV log with loss spikes, a reference/output
pair with stripes (real photo), periodic latents, a small dataset with masks
(one empty), two kohya LoRA checkpoints and a ``sample/`` folder beside them
with five steps of samples that carry stripes from step 300 on. Cross-attention
captures only come from the training hook, so they are added to the loaded
run as the hook would (a token collapsed to a point).

Then every registered check runs (a) through the full pipeline and (b) alone,
on a fresh deep copy of the inputs, in a random order (three seeds), with file
access switched off. The findings must be identical (the whole
``Finding.to_dict()``), and the inputs must be unchanged after every check
(a fingerprint over every field, array bytes included).
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import dataclasses
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from benchmarks.scenarios.combos import write_pair
from benchmarks.scenarios.datasets import mask_problem_dataset, write_dataset_case
from benchmarks.scenarios.images import photo, rerender, stripes_case
from benchmarks.scenarios.latents import periodic_latents, write_latent_case
from benchmarks.scenarios.loss_logs import injected_spikes, write_csv
from diffdiag.model import RunData, Settings
from diffdiag.pipeline import analyze
from diffdiag.registry import registered_checks, run_check
from diffdiag.sources import load_run
from diffdiag.sources.spec import SourceSpec
from .lora_files import kohya_lora_files

SAMPLE_STEPS = [100, 200, 300, 400, 500]
ONSET_STEP = 300
CHECKPOINT_STEPS = [200, 400]


def fingerprint(obj: Any) -> str:
    """A digest of everything reachable from ``obj`` (dataclass fields, containers, array dtype/shape/bytes).

    An object of a type it does not know raises, so nothing in RunData escapes the comparison.
    """
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            h.update(f"<{type(x).__name__}".encode())
            for f in dataclasses.fields(x):
                h.update(f.name.encode())
                feed(getattr(x, f.name))
            h.update(b">")
        elif isinstance(x, np.ndarray):
            h.update(f"nd{x.dtype}{x.shape}".encode())
            h.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k, v in x.items():
                feed(k)
                feed(v)
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[" if isinstance(x, list) else b"(")
            for v in x:
                feed(v)
            h.update(b"]")
        elif x is None or isinstance(x, (str, bytes, bool, int, float, complex, Path, np.generic)):
            h.update(f"{type(x).__name__}:{x!r};".encode())
        else:
            raise TypeError(f"fingerprint: unknown type {type(x).__name__}")

    feed(obj)
    return h.hexdigest()


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.round(img * 255), 0, 255).astype(np.uint8)).save(path)


def _attention_captures() -> list[dict[str, Any]]:
    """Two captures of one layer, (T=3, 16, 16) maps; token 1 collapsed onto one cell in both."""
    rng = np.random.default_rng(5)
    caps = []
    for step in (100, 200):
        maps = rng.random((3, 16, 16)).astype(np.float32) + 0.5
        maps[1] = 1e-4
        maps[1, 7, 9] = 1.0
        caps.append({"step": step, "layer": "mid_block.attentions.0.attn2", "maps": maps / maps.sum(axis=(1, 2),
                                                                                                     keepdims=True)})
    return caps


@pytest.fixture(scope="module")
def rich_run(tmp_path_factory) -> tuple[RunData, Settings]:
    root = tmp_path_factory.mktemp("rich")
    log = write_csv(injected_spikes(n_steps=1500, seed=2), root / "logs" / "train.csv")
    pair = write_pair(stripes_case(axis="vertical", period=8, name="camera", seed=1, amplitude=0.08,
                                   size=(160, 160)), root / "pairs")[1:]
    latents = write_latent_case(periodic_latents(seed=0, n_files=4, size=32), root / "latents")
    images, masks = write_dataset_case(mask_problem_dataset(seed=1, problem="empty", n=8, n_bad=1, size=64),
                                       root / "dataset")
    out = root / "out"
    kohya_lora_files(out, CHECKPOINT_STEPS, seed=3)
    for i, st in enumerate(SAMPLE_STEPS):
        rng = np.random.default_rng(40 + i)
        img = (stripes_case(axis="horizontal", period=9, name="coffee", seed=40 + i, amplitude=0.1,
                            size=(128, 128), bbox=[8, 8, 120, 120]).image if st >= ONSET_STEP
               else rerender(photo("coffee")[:128, :128], "jpeg", rng))
        _save(img, out / "sample" / f"mylora_{st:06d}_00_20260101120000.png")
    settings = Settings()
    spec = SourceSpec(logdir=log, images=(tuple(pair),), latents=latents, dataset=images, masks=masks,
                      checkpoints=(out,))
    run = load_run(spec, settings)
    run.attention = _attention_captures()  # the hook's captures: no file source exists for them
    return run, settings


def _findings(res) -> list[dict[str, Any]]:
    return [f.to_dict() for f in res.findings]


@contextlib.contextmanager
def no_file_access():
    """Opening, listing or stat-ing a file raises inside this block (imports are not affected)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a check touched the file system: {args[:1]}")

    with pytest.MonkeyPatch.context() as mp:
        for mod, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "stat"), (os, "scandir"),
                          (os, "listdir"), (Image, "open")):
            mp.setattr(mod, name, refuse)
        yield


def test_inputs_were_read_by_the_sources(rich_run):
    run, _ = rich_run
    assert run.log is not None and run.log.loss is not None
    assert len(run.images) == 1 and run.images[0].reference is not None
    assert len(run.latents) == 4
    assert run.dataset is not None and len(run.dataset.files) == 8 and run.dataset.masks_dir is not None
    assert [c.step for c in run.checkpoint_scan.checkpoints] == CHECKPOINT_STEPS
    assert sorted({s.step for s in run.samples}) == SAMPLE_STEPS  # the sample folder beside the checkpoints
    assert run.input_errors == []
    assert all(spec.needs(run) for spec in registered_checks())  # every check has its inputs


def test_every_check_alone_in_any_order_gives_the_pipeline_findings(rich_run):
    run, settings = rich_run
    specs = registered_checks()
    before = fingerprint(run)
    inputs = copy.deepcopy(run)
    diagnosis = analyze(inputs, settings)
    assert fingerprint(inputs) == before  # the whole analysis leaves its inputs as they were
    # the pipeline found what this run holds, from every kind of input
    ids = {f.id for f in diagnosis.findings}
    assert {"loss_spike", "stripes", "latent_periodicity", "dataset_invalid_mask", "artifact_onset",
            "attention_collapse"} <= ids
    onset = diagnosis.by_id("artifact_onset")[0]
    assert onset.location == {"step": ONSET_STEP, "artifact": "stripes"}
    assert onset.evidence["checkpoint"] == "mylora-step00000400.safetensors"      # from the loaded headers
    assert onset.evidence["last_clean_checkpoint"] == "mylora-step00000200.safetensors"
    assert {"dataset", "checkpoints", "samples", "latents"} <= set(diagnosis.details)

    alone: dict[int, dict[str, Any]] = {}
    for seed in (0, 1, 2):
        order = [specs[i] for i in np.random.default_rng(seed).permutation(len(specs))]
        results = {}
        for spec in order:
            fresh = copy.deepcopy(run)
            fp = fingerprint(fresh)
            with no_file_access():
                res = run_check(spec, fresh, settings)
            assert fingerprint(fresh) == fp, f"check {spec.name} changed its inputs"
            assert not [n for n in res.notes if "internal error" in n], res.notes
            results[spec.name] = res
        alone[seed] = results
        assert [f.to_dict() for f in diagnosis.findings] == \
            [d for spec in specs for d in _findings(results[spec.name])], f"seed {seed}"
        for spec in specs:
            assert set(results[spec.name].notes) <= set(diagnosis.warnings)
    for seed in (1, 2):
        for name, res in alone[seed].items():
            assert _findings(res) == _findings(alone[0][name])
            assert fingerprint(res.data) == fingerprint(alone[0][name].data)
