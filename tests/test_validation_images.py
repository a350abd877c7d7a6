"""Validation images from real training runs, read from every source they are logged to.

The project's tiny diffusers/PEFT training (``integrations/tiny_lora.py``) logs
validation images the way diffusers' ``train_text_to_image_lora.py`` does
(``log_validation``: the same seed every time; TensorBoard
``add_images("validation", images, step, dataformats="NHWC")``, W&B a list of
``wandb.Image`` in an offline run; ``test`` for the final ones), plus an
MLflow ``log_image`` per image and a sample folder. Two real runs, trained
once per session: a healthy one, and one whose learning rate warms up to 100x
(``lr_too_high``), whose validation images blow up into saturated blobs a few
validations in. Ground truth comes from the trainer's own arrays
(``TrainResult.validation``), never from diffdiag. Nothing is faked; W&B runs
offline (no server at all).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("tensorboard")

from .conftest import validate_diagnosis  # noqa: E402

STEPS = 60
EVERY = 10
N_IMAGES = 2
VAL_STEPS = list(range(EVERY, STEPS + 1, EVERY))
#: a validation step is blown up (ground truth) when this share of its pixels is pinned at 0 or 255 (ten times
#: what the healthy run's images ever reach)
BLOWN_CLIP = 0.1
SAMPLE_IDS = {"image_degenerate", "sample_change", "artifact_onset", "stripes", "periodic_pattern",
              "hf_noise_patch"}


def _train(tmp, fault):
    from diffdiag.integrations.tiny_lora import LoraConfig, load_or_build_base, train_lora

    base, _ = load_or_build_base()
    return train_lora(LoraConfig(workdir=tmp, steps=STEPS, fault=fault, validation_every=EVERY,
                                 validation_images=N_IMAGES, validation_dir=True, wandb=True, jsonl=False,
                                 checkpoint_every=STEPS // 2, save_lora=False, wandb_project="diffdiag-validation"),
                      base=base)


@pytest.fixture(scope="session")
def healthy(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("val-healthy"), None)


@pytest.fixture(scope="session")
def blown(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("val-lr"), "lr_too_high")


def _u8(a: np.ndarray) -> np.ndarray:
    return (a * 255).round().astype(np.uint8)


def _clip_share(images: np.ndarray) -> float:
    u = _u8(images)
    return float(((u == 0) | (u == 255)).mean())


def _blown_steps(res) -> list[int]:
    return [st for st, im in sorted(res.validation["validation"].items()) if _clip_share(im) >= BLOWN_CLIP]


def _expected_labels(source: str) -> set[str]:
    labels = {f"{source}:validation@{st}#{i}" for st in VAL_STEPS for i in range(N_IMAGES)}
    return labels | {f"{source}:test@{STEPS}#{i}" for i in range(N_IMAGES)}


def _load(**spec):
    import diffdiag

    run = diffdiag.load(**spec)
    assert run.input_errors == []
    return run, diffdiag.analyze(run)


def _assert_pixels_match(run, res, source: str) -> None:
    """Every sample is the trainer's own image, pixel for pixel (8-bit), under its unique label."""
    labels = [s.path for s in run.samples]
    assert len(labels) == len(set(labels))
    assert set(labels) == _expected_labels(source)
    for s in run.samples:
        assert (s.source, s.step) == (source, s.step) and s.key in ("validation", "test")
        want = _u8(res.validation[s.key][s.step][s.index])
        got = _u8(s.image)
        got = got if got.ndim == 2 else got[..., 0]
        assert np.array_equal(got, want), s.path


def _warnings(diag):
    return [f for f in diag.findings if f.severity in ("warning", "critical")]


def test_ground_truth_healthy_images_stay_clean_blown_ones_blow_up(healthy, blown):
    assert sorted(healthy.validation["validation"]) == VAL_STEPS == sorted(blown.validation["validation"])
    assert _blown_steps(healthy) == []
    assert max(_clip_share(im) for im in healthy.validation["validation"].values()) < 0.01
    blown_steps = _blown_steps(blown)
    assert blown_steps and blown_steps[-1] == VAL_STEPS[-1] and blown_steps[0] > VAL_STEPS[0]   # clean first


@pytest.mark.parametrize("source", ["tensorboard", "wandb"])
def test_healthy_validation_images_are_read_labelled_and_raise_nothing(healthy, source):
    spec = {"logdir": healthy.logs} if source == "tensorboard" else {"wandb_run": healthy.wandb_dir}
    run, diag = _load(**spec)
    _assert_pixels_match(run, healthy, source)
    assert _warnings(diag) == []
    summary = diag.inputs["samples"]
    assert summary["count"] == len(_expected_labels(source))
    assert summary["series"] == [{"source": source, "key": "test", "images": N_IMAGES, "steps": [STEPS]},
                                 {"source": source, "key": "validation", "images": N_IMAGES * len(VAL_STEPS),
                                  "steps": VAL_STEPS}]


def test_healthy_sample_folder_and_mlflow_images(healthy, tmp_path):
    """The sample folder beside the run and MLflow ``log_image`` images (two per key and step) are read too."""
    from diffdiag.integrations.mlflow_demo import log_media, start_run

    first = healthy.workdir / f"checkpoint-{STEPS // 2}" / "pytorch_lora_weights.safetensors"
    assert first in healthy.checkpoints
    run, diag = _load(checkpoints=(first,))       # the folder beside the checkpoints' folder: <workdir>/samples
    folder = [s for s in run.samples if s.source == "folder"]
    assert sorted({s.step for s in folder}) == VAL_STEPS
    assert {s.path for s in folder} == {str(healthy.workdir / "samples" / f"step_{st:06d}_{i}.png")
                                        for st in VAL_STEPS for i in range(N_IMAGES)}
    assert not [f for f in _warnings(diag) if f.id in SAMPLE_IDS]
    run_id, uri = start_run(workdir=tmp_path / "mlflow", run_name="validation")
    images = [("validation", st, im) for st, ims in sorted(healthy.validation["validation"].items()) for im in ims]
    log_media(run_id, uri, images=images)
    run, diag = _load(mlflow_run=run_id, mlflow_tracking_uri=uri)
    labels = sorted(s.path for s in run.samples)
    assert labels == sorted(f"mlflow:validation@{st}#{i}" for st in VAL_STEPS for i in range(N_IMAGES))
    for st in VAL_STEPS:  # the two images of a step keep the order they were logged in
        got = [_u8(s.image)[..., 0] if s.image.ndim == 3 else _u8(s.image)
               for s in sorted((s for s in run.samples if s.step == st), key=lambda s: s.index)]
        assert all(np.array_equal(g, _u8(w)) for g, w in zip(got, healthy.validation["validation"][st]))
    assert _warnings(diag) == []


@pytest.mark.parametrize("source", ["tensorboard", "wandb"])
def test_blown_up_validation_images_are_flagged_with_their_step(blown, source):
    spec = {"logdir": blown.logs} if source == "tensorboard" else {"wandb_run": blown.wandb_dir}
    run, diag = _load(**spec)
    _assert_pixels_match(run, blown, source)
    step_of = {s.path: s.step for s in run.samples}
    flagged = {step_of[f.location["image"]] for f in _warnings(diag) if f.location.get("image") in step_of}
    blown_steps = _blown_steps(blown)
    change = [f for f in diag.findings if f.id == "sample_change" and f.location["key"] == f"{source}:validation"]
    assert len(change) == 1 and change[0].severity == "warning"
    assert change[0].location["step"] == blown_steps[0]                     # the first blown-up validation
    assert change[0].evidence["previous_step"] == blown_steps[0] - EVERY
    assert set(blown_steps) <= set(change[0].evidence["steps_changed"])
    # every later blown-up step is flagged on its own images too (saturated), and no clean step before it is
    assert set(blown_steps[1:]) <= flagged
    assert not {st for st in flagged if st < blown_steps[0] - EVERY}
    saturated = [f for f in diag.findings if f.id == "image_degenerate" and f.location["problem"] == "saturated"]
    assert saturated and all(f.severity == "warning" for f in saturated)
    assert any(f.id == "artifact_onset" and f.location["step"] in blown_steps for f in diag.findings)


def test_cli_lists_the_samples_and_draws_their_strips(blown, run_cli, tmp_path):
    code, out, err, diag = run_cli("analyze", "--logdir", str(blown.logs), report=tmp_path / "rep")
    assert code == 0, err
    validate_diagnosis(diag)
    series = {(s["source"], s["key"]): s for s in diag["inputs"]["samples"]["series"]}
    assert series[("tensorboard", "validation")]["steps"] == VAL_STEPS
    strips = [p for p in diag["outputs"]["figures"] if "/samples_" in p]
    assert len(strips) == 2                                        # validation and test
    change = next(f for f in diag["findings"] if f["id"] == "sample_change")
    assert change["location"]["step"] == _blown_steps(blown)[0]


# ------------------------------------------------------------------ TensorBoard image summaries, every way
def _photos(n: int, size: int = 48) -> np.ndarray:
    """``n`` real photo crops (scikit-image), uint8 RGB, shape (n, size, size, 3)."""
    from skimage import data

    pics = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    out = []
    for i in range(n):
        p = pics[i % len(pics)]
        y, x = 20 + 7 * i, 30 + 11 * i
        out.append(p[y:y + size, x:x + size])
    return np.stack(out)


def _png(a: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_tensorboard_grids_plugin_tensors_tf1_tags_and_a_bad_png(tmp_path):
    """``add_images`` grids (one row, and two rows with filler cells), ``add_image``, the images plugin's
    string tensor (TF2 ``tf.summary.image``), TF1 ``name/image/<i>`` tags and a PNG that does not decode."""
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, types_pb2
    from torch.utils.tensorboard import SummaryWriter

    logs = tmp_path / "logs"
    w = SummaryWriter(str(logs))
    three, ten, plugin = _photos(3), _photos(10), _photos(2)
    for st in range(5):
        w.add_scalar("loss", 0.5 - 0.01 * st, st)
    w.add_images("grid", three, 2, dataformats="NHWC")
    w.add_images("grid", ten, 4, dataformats="NHWC")          # 8 columns, 2 rows: 6 black filler cells
    w.add_image("single", three[0], 3, dataformats="HWC")
    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="images"))
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"48", b"48"] + [_png(a) for a in plugin])
    w._get_file_writer().add_summary(summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag="tf2", metadata=meta, tensor=tensor),
        *[summary_pb2.Summary.Value(tag=f"tf1/image/{i}", image=summary_pb2.Summary.Image(
            height=48, width=48, colorspace=3, encoded_image_string=_png(a))) for i, a in enumerate(plugin)],
        summary_pb2.Summary.Value(tag="broken", image=summary_pb2.Summary.Image(
            height=48, width=48, colorspace=3, encoded_image_string=b"\x89PNG\r\n\x1a\n not a png"))]), 3)
    w.close()
    import diffdiag

    run = diffdiag.load(logdir=logs)
    assert len(run.input_errors) == 1 and "'broken'" in run.input_errors[0] and "step 3" in run.input_errors[0]
    assert "tfevents" in run.input_errors[0]
    got = {s.path: s for s in run.samples}
    want = {**{f"tensorboard:grid@2#{i}": a for i, a in enumerate(three)},
            **{f"tensorboard:grid@4#{i}": a for i, a in enumerate(ten[:4])},     # at most 4 images per step
            "tensorboard:single@3#0": three[0],
            **{f"tensorboard:tf2@3#{i}": a for i, a in enumerate(plugin)},
            **{f"tensorboard:tf1@3#{i}": a for i, a in enumerate(plugin)}}
    assert set(got) == set(want)
    for label, a in want.items():
        assert np.array_equal(_u8(got[label].image), a), label
    from diffdiag.sources.samples import split_grid

    grid = np.zeros((96, 8 * 48, 3), np.float32)             # what make_grid draws for 10 images
    for i, a in enumerate(ten):
        r, c = divmod(i, 8)
        grid[r * 48:(r + 1) * 48, c * 48:(c + 1) * 48] = a / 255
    assert [np.array_equal(_u8(t), a) for t, a in zip(split_grid(grid), ten)] == [True] * 10
    assert len(split_grid(grid)) == 10
    assert len(split_grid(np.zeros((48, 48)))) == 1 and len(split_grid(np.zeros((48, 100)))) == 1
