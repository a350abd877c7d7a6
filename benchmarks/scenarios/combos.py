"""The labelled scenarios of ``benchmarks/accuracy.py``: single inputs and combinations.

Each scenario writes real inputs — training logs with heavy-tailed diffusion
loss (``loss_logs``), image pairs from scikit-image photos (``images``), VAE-like
latents of photo crops (``latents``), training-image folders with masks,
LoRA checkpoints — and states its ground truth (see :mod:`benchmarks.scenarios`).

Cause scenarios combine a symptom with the evidence of one cause, the way a
real run shows it: stripes in the samples *and* a latent period that matches
them; doubled tiling *and* seamless tiles in the dataset; loss spikes *and*
recurring sample ids. *Competing-evidence* scenarios (``competing/...``) hold
the evidence of two or three causes at once, of which only one explains the
symptom's own measurements (a latent period that matches the stripes next to
a batch shift; tiles of an unrelated period next to misaligned masks; bad
samples that are not in the spike batches of a too-high LR), so that the
evidence, not the priors, must pick the cause. Seeds, periods, axes, photos, positions and file formats
vary across scenarios so that no rule is tuned for one generated example.

Only what cannot exist here is synthesised: the "model" behind a stripe or a
doubled tile is the artifact drawn on a real photo (``images.stripes_case`` /
``images.tiling_case``); checkpoints are PEFT-named LoRA factors whose norms
follow a prescribed schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import scenario

# ------------------------------------------------------------------ writers


def save_image(a: np.ndarray, path: Path) -> Path:
    """Write a float image in [0, 1] as 8-bit PNG/JPEG (by suffix)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    u8 = np.clip(np.round(np.nan_to_num(a) * 255), 0, 255).astype(np.uint8)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(u8).save(path, quality=95)
    else:
        Image.fromarray(u8).save(path)
    return path


def write_pair(case: Any, folder: Path, tag: str = "sample") -> list[str]:
    """Write an ``images.ImageCase`` (pair or lone image); return its ``--images`` arguments."""
    out = save_image(case.image, folder / f"{tag}_out.png")
    if case.reference is None:
        return ["--images", str(out)]
    ref = save_image(case.reference, folder / f"{tag}_ref.png")
    return ["--images", str(ref), str(out)]


def write_log(sc: Any, folder: Path, fmt: str = "csv") -> list[str]:
    """Write a ``loss_logs.LossScenario`` as csv / jsonl / tensorboard; return its ``--logdir`` arguments."""
    from . import loss_logs

    logdir = folder / "logs"
    if fmt == "csv":
        loss_logs.write_csv(sc, logdir / "train.csv")
    elif fmt == "jsonl":
        loss_logs.write_jsonl(sc, logdir / "train.jsonl")
    elif fmt == "tb":
        loss_logs.write_tensorboard(sc, logdir / "tb")
    else:
        raise ValueError(fmt)
    return ["--logdir", str(logdir)]


def write_latents(case: Any, folder: Path, fmt: str = "npy") -> list[str]:
    from . import latents

    return ["--latents", str(latents.write_latent_case(case, folder / "latents", fmt))]


# ------------------------------------------------------------------ datasets (training images, masks)
# Built on the dataset engineer's generators (``datasets``: real photo crops, composites with object
# masks, seamless tiles, corrupted masks); the stripe overlay (an augmentation that draws a pattern)
# is added here.


def write_dataset(case: Any, folder: Path) -> list[str]:
    """Write a ``datasets.DatasetCase``; return its ``--dataset`` (and ``--masks``) arguments."""
    from . import datasets

    img_dir, mask_dir = datasets.write_dataset_case(case, folder / "data")
    return ["--dataset", str(img_dir)] + (["--masks", str(mask_dir)] if mask_dir is not None else [])


def masks_case(seed: int, problems: dict[str, int], n: int = 12) -> Any:
    """Composites with correct masks except ``problems`` (problem -> how many masks get it)."""
    from . import datasets

    items = list(problems.items())
    case = datasets.mask_problem_dataset(seed, items[0][0], n=n, n_bad=items[0][1])
    rng = np.random.default_rng(seed + 7)
    bad = {t["location"]["file"] for t in case.truth}
    stems = [Path(k).stem for k in sorted(case.images) if k not in bad]
    rng.shuffle(stems)
    for problem, k in items[1:]:
        for stem in stems[:k]:
            case.masks[stem] = datasets.corrupt_mask(rng, case.masks[stem], problem)
        stems = stems[k:]
    return case


def _photo_crop(rng: np.random.Generator, size: int) -> np.ndarray:
    """A training image: a large random crop (60–100 % of the short side) of a photo, resized to ``size``²."""
    from PIL import Image

    from .images import photo

    name = DATASET_PHOTOS[int(rng.integers(len(DATASET_PHOTOS)))]
    a = photo(name)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    side = int(min(a.shape[:2]) * rng.uniform(0.6, 1.0))
    y0 = int(rng.integers(0, a.shape[0] - side + 1))
    x0 = int(rng.integers(0, a.shape[1] - side + 1))
    u8 = np.clip(np.round(a[y0:y0 + side, x0:x0 + side] * 255), 0, 255).astype(np.uint8)
    im = Image.fromarray(u8).resize((size, size), Image.LANCZOS)
    return np.asarray(im, dtype=np.float32) / 255.0


DATASET_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "grass", "gravel")


def dataset_striped(folder: Path, rng: np.random.Generator, axis: str, period: int, n: int = 4,
                    size: int = 256, amplitude: float = 0.12) -> list[Path]:
    """``n`` photo crops with a periodic stripe overlay (an augmentation that draws a pattern)."""
    from .images import stripe_pattern

    out = []
    for i in range(n):
        a = _photo_crop(rng, size)
        p = stripe_pattern(size, True, period, amplitude, rng, "square")
        add = p[None, :, None] if axis == "vertical" else p[:, None, None]
        out.append(save_image(np.clip(a + add, 0, 1), folder / f"aug_{i:03d}.png"))
    return out


# ------------------------------------------------------------------ checkpoints


def write_lora_checkpoints(folder: Path, rng: np.random.Generator, scales: list[float], steps: list[int],
                           n_modules: int = 12, rank: int = 4, width: int = 64) -> list[str]:
    """PEFT-named LoRA checkpoints whose ΔW norms follow ``scales`` (one per checkpoint)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    names = [f"base_model.model.down_blocks.{i // 4}.attentions.0.transformer_blocks.0.attn{1 + i % 2}."
             f"to_{'qkvo'[i % 4]}" for i in range(n_modules)]
    A0 = {n: rng.normal(0, 0.05, (rank, width)).astype(np.float32) for n in names}
    B0 = {n: rng.normal(0, 0.05, (width, rank)).astype(np.float32) for n in names}
    for s, step in zip(scales, steps):
        t = {}
        for n in names:
            jitter = rng.normal(0, 0.002, (width, rank)).astype(np.float32)
            t[f"{n}.lora_A.weight"] = A0[n]
            t[f"{n}.lora_B.weight"] = (B0[n] + jitter) * np.float32(s)
        save_file(t, str(folder / f"checkpoint-{step}.safetensors"))
    return ["--checkpoints", str(folder)]


# ------------------------------------------------------------------ loss scenarios

_KEYSETS = ("plain", "kohya", "diffusers", "simpletuner", "onetrainer")
_FMTS = ("csv", "jsonl", "tb")


def _loss(gen: str, fmt: str, **kw: Any) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        from . import loss_logs

        sc = loss_logs.SCENARIOS[gen](**kw)
        return write_log(sc, folder, fmt)

    return build


def _register_loss() -> None:
    for i, (shape, bs) in enumerate([("exp", 1), ("power", 4), ("lora", 1), ("exp", 2), ("lora", 4), ("power", 1)]):
        scenario(f"loss/healthy/{shape}-b{bs}-s{i}",
                 _loss("healthy", _FMTS[i % 3], n_steps=12000 + 2000 * i, seed=100 + i, batch_size=bs, shape=shape,
                       keyset=_KEYSETS[i % 5]),
                 healthy=True, fast=i == 0, kind="loss", note="healthy heavy-tailed run")
    # corrupted samples: the same ids spike the loss whenever they are drawn
    for i in range(4):
        scenario(f"loss/corrupted/b{2 + i % 3}-s{i}",
                 _loss("corrupted_samples", _FMTS[i % 3], n_steps=8000 + 3000 * i, seed=200 + i, n_bad=1 + i % 3,
                       batch_size=2 + i % 3, dataset_size=600 + 200 * i, keyset=_KEYSETS[(i + 1) % 5]),
                 # TensorBoard scalars carry no per-step sample ids: no correlation can be found there
                 expect={"loss_spike"} | ({"loss_sample_correlation"} if _FMTS[i % 3] != "tb" else set()),
                 allow=BAD_BATCH_GRAD, causes={"loss_spikes": "loss_spikes.corrupted_batch"}, fast=i < 2,
                 kind="loss", note="corrupted samples (sample ids logged in CSV/JSONL)")
    # isolated one-step spikes, level unchanged, no recurring ids
    for i in range(2):
        scenario(f"loss/isolated-spikes/s{i}",
                 _loss("injected_spikes", _FMTS[(i + 1) % 3], n_steps=15000, seed=300 + i, n_spikes=3 + 2 * i,
                       keyset=_KEYSETS[(i + 2) % 5]),
                 expect={"loss_spike"}, allow=BAD_BATCH_GRAD,
                 causes={"loss_spikes": "loss_spikes.corrupted_batch"}, kind="loss",
                 note="isolated spikes, loss level unchanged after")
    for i in range(5):
        scenario(f"loss/lr-too-high/j{1.8 + 0.4 * i:.1f}-s{i}",
                 _loss("lr_too_high", _FMTS[(i + 2) % 3], n_steps=10000 + 2500 * i, seed=400 + i, jump=1.8 + 0.4 * i,
                       batch_size=1 + i % 2, keyset=_KEYSETS[(i + 3) % 5]),
                 expect={"loss_divergence"}, allow=LR_BYPRODUCTS,
                 causes={"loss_spikes": "loss_spikes.learning_rate_too_high"}, fast=i in (1, 2), kind="loss",
                 note="LR warm-up to a too-high value")
    for i in range(5):
        scenario(f"loss/stale-ema/s{i}",
                 _loss("stale_ema", _FMTS[i % 3], n_steps=10000 + 2000 * i, seed=500 + i,
                       restore_at=0.35 + 0.1 * i, ema_decay=(0.99, 0.995, 0.998)[i % 3], keyset=_KEYSETS[i % 5]),
                 expect={"ema_divergence"}, causes={"loss_spikes": "loss_spikes.ema_gap"}, fast=i in (1, 3),
                 kind="loss",
                 note="EMA restored from a stale state on resume")
    for i in range(2):
        scenario(f"loss/shelf/s{i}", _loss("shelf", _FMTS[i % 3], n_steps=12000, seed=600 + i),
                 expect={"loss_plateau"}, kind="loss", note="loss shelf")
    scenario("loss/nonfinite/isolated", _loss("nonfinite", "jsonl", n_steps=10000, seed=700, n_bad=3),
             expect={"loss_nonfinite"},
             causes={"loss_spikes": "loss_spikes.corrupted_batch"}, kind="loss", note="a few NaN/inf steps")
    scenario("loss/nonfinite/tail", _loss("nonfinite", "csv", n_steps=10000, seed=701, n_bad=1, tail_from=0.7),
             expect={"loss_nonfinite"},
             causes={"loss_spikes": "loss_spikes.learning_rate_too_high"}, kind="loss",
             note="loss NaN from 70 % of the run on")


# ------------------------------------------------------------------ image scenarios

def _image(factory: Callable[[], Any]) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        return write_pair(factory(), folder)

    return build


def _register_images() -> None:
    from . import images as im

    for i, (name, kind) in enumerate([("camera", "jpeg"), ("astronaut", "noise"), ("rocket", "blur"),
                                      ("brick", "jpeg+noise"), ("coffee", "blur+jpeg"), ("chelsea", "quant")]):
        scenario(f"images/clean-pair/{name}", _image(lambda n=name, k=kind, s=i: im.clean_pair(n, k, 10 + s)),
                 healthy=True, fast=i == 3, kind="images", note="clean pair of a real photo")
    for name in ("coins", "page"):
        scenario(f"images/lone-photo/{name}",
                 _image(lambda n=name: im.ImageCase(n, im.photo(n))), healthy=True, kind="images")
    for i, (p, axes, style, name) in enumerate([((24, 24), "yx", "flip", "grass"), ((18, 30), "x", "shift", "gravel"),
                                                ((36, 28), "y", "vary", "coffee")]):
        scenario(f"images/tiling/{p[0]}x{p[1]}-{axes}",
                 _image(lambda p=p, a=axes, s=style, n=name, i=i: im.tiling_case(p, n, 20 + i, a, s)),
                 expect={"tiling_period_doubling"}, kind="images",
                 note="doubled tiling, no other evidence")
    for i, (axis, per) in enumerate([("vertical", 9), ("horizontal", None)]):
        scenario(f"images/stripes/{axis}-{per}",
                 _image(lambda a=axis, p=per, i=i: im.stripes_case(a, p, ["rocket", "astronaut"][i], 30 + i)),
                 expect={"stripes"}, kind="images", note="stripes, no other evidence")
    for i in range(2):
        scenario(f"images/hf-patch/s{i}", _image(lambda i=i: im.hf_patch_case(["coffee", "chelsea"][i], 40 + i)),
                 expect={"hf_noise_patch"}, kind="images")
    for i, s in enumerate([(1, 0), (0, -1)]):
        scenario(f"images/crop-offset/{s[0]},{s[1]}", _image(lambda s=s, i=i: im.shift_case("astronaut", s, 50 + i)),
                 expect={"crop_offset"}, kind="images")
    for prob in ("black", "uniform"):
        scenario(f"images/degenerate/{prob}", _image(lambda p=prob: im.degenerate_case(p, 60)),
                 expect={"image_degenerate"}, kind="images")
    scenario("images/periodic/gravel", _image(lambda: im.periodic_image_case((26, 34), "gravel", 70)),
             expect={"periodic_pattern"}, kind="images")


# ------------------------------------------------------------------ latent and dataset scenarios

def _register_latents_datasets() -> None:
    from . import latents as lt

    for i in range(3):
        scenario(f"latents/healthy/s{i}",
                 lambda f, i=i: write_latents(lt.healthy_latents(800 + i, pre_post=i == 1), f, ("npy", "npz", "pt")[i]),
                 healthy=True, fast=i == 0, kind="latents")
    for i in range(2):
        scenario(f"latents/batch-shift/s{i}", lambda f, i=i: write_latents(lt.shifted_latents(810 + i), f),
                 expect={"latent_batch_shift"}, kind="latents")
    scenario("latents/drift/scale", lambda f: write_latents(lt.drift_latents(820), f, "npz"),
             expect={"latent_stats_drift"}, kind="latents")

    from . import datasets as ds

    for i in range(3):
        scenario(f"dataset/healthy/s{i}{'-masks' if i == 2 else ''}",
                 lambda f, i=i: write_dataset(ds.healthy_dataset(900 + i, n=16 + 4 * i, with_masks=i == 2), f),
                 healthy=True, fast=i == 2, kind="dataset")
    scenario("dataset/tiled-sources", lambda f: write_dataset(ds.tiled_dataset(910, n=12, n_tiled=3), f),
             expect={"dataset_tiled_source"}, allow=DATASET_SKEWS, kind="dataset")
    scenario("dataset/invalid-masks",
             lambda f: write_dataset(masks_case(920, {"non_binary": 1, "empty": 1, "size_mismatch": 1}), f),
             expect={"dataset_invalid_mask"}, kind="dataset")
    scenario("dataset/darkened", lambda f: write_dataset(ds.darkened_dataset(930, n=24), f),
             expect={"dataset_brightness_skew"}, allow={"dataset_contrast_skew": "darkening a photo also lowers its "
                                                                                 "RMS contrast"}, kind="dataset")
    scenario("dataset/low-contrast", lambda f: write_dataset(ds.low_contrast_dataset(940, n=24), f),
             expect={"dataset_contrast_skew"},
             allow={"dataset_brightness_skew": "squashing contrast towards the mean moves dark/bright images' means"},
             kind="dataset")


# ------------------------------------------------------------------ cause scenarios (combinations)

STRIPE_PHOTOS = ("camera", "astronaut", "rocket", "coffee", "chelsea", "brick")
#: a folder mixing photos with tiled textures / overlays may have brightness or contrast outliers
DATASET_SKEWS = {"dataset_brightness_skew": "tiled textures / overlays among photos are brightness outliers of the "
                                            "set (a property of the generated set, not a fault)",
                 "dataset_contrast_skew": "tiled textures / overlays among photos are contrast outliers of the set "
                                          "(a property of the generated set, not a fault)"}
#: latents with a periodic channel: the same pattern is also banding in latent space
LATENT_STRIPES = {"stripes": "a periodic latent channel is also latent-space banding (the same pattern, seen by "
                             "the stripes detector)"}
#: a bad batch's gradient spikes with its loss (the generators scale the gradient norm at those steps)
BAD_BATCH_GRAD = {"grad_norm_spike": "a bad batch's gradient spikes with its loss"}
#: a too-high LR: spikes after the critical LR, a gradient norm that spikes with them
LR_BYPRODUCTS = {"loss_spike": "the generator injects spikes after the critical LR",
                 "grad_norm_spike": "the gradient norm spikes with the loss at the high LR"}


def _register_stripe_causes() -> None:
    from . import images as im
    from . import latents as lt

    # latent periodicity: pixel stripes at k·8 px + latents with a k-cell period on the same axis
    for i, (cells, axis) in enumerate([(6, "vertical"), (4, "horizontal"), (5, "vertical"), (7, "horizontal")]):
        def build(folder: Path, cells=cells, axis=axis, i=i) -> list[str]:
            case = im.stripes_case(axis, cells * 8, STRIPE_PHOTOS[i], 1000 + i, amplitude=0.07)
            argv = write_pair(case, folder)
            return argv + write_latents(lt.periodic_latents(1010 + i, cells, axis, channel=i % 4), folder)

        scenario(f"combo/stripes/latent-period/{cells}c-{axis}", build,
                 expect={"stripes", "latent_periodicity"},
                 causes={"stripes": "stripes.latent_periodicity"}, fast=i < 2,
                 note=f"{cells * 8} px stripes = {cells} latent cells × 8")
    # latents alone with a periodic pattern: latent stripes, explained by latent periodicity
    for i, (cells, axis) in enumerate([(3, "vertical"), (5, "horizontal")]):
        scenario(f"latents/periodic/{cells}c-{axis}",
                 lambda f, c=cells, a=axis, i=i: write_latents(lt.periodic_latents(1020 + i, c, a, channel=2), f),
                 expect={"latent_periodicity"}, allow=LATENT_STRIPES, causes={"stripes": "stripes.latent_periodicity"},
                 kind="latents", note="periodic latents")
    # batch-dependent normalisation: stripes (often aperiodic) + a batch shift of channel statistics
    for i, (axis, per) in enumerate([("horizontal", None), ("vertical", None), ("vertical", 14), ("horizontal", 11)]):
        def build(folder: Path, axis=axis, per=per, i=i) -> list[str]:
            case = im.stripes_case(axis, per, STRIPE_PHOTOS[(i + 2) % 6], 1100 + i, amplitude=0.07)
            argv = write_pair(case, folder)
            lat = lt.shifted_latents(1110 + i, n_shifted=1 + i % 2)
            return argv + write_latents(lat, folder, ("npy", "safetensors")[i % 2])

        scenario(f"combo/stripes/batch-shift/{axis}-{per}", build,
                 expect={"stripes", "latent_batch_shift"},
                 causes={"stripes": "stripes.batchnorm_imbalance"}, fast=i < 2,
                 note="stripes + batch-to-batch latent shift")
    # augmentation pattern: the training images carry stripes with the same period and axis
    for i, (axis, per) in enumerate([("vertical", 12), ("horizontal", 20), ("vertical", 27), ("horizontal", 16)]):
        def build(folder: Path, axis=axis, per=per, i=i) -> list[str]:
            from . import datasets as ds

            rng = np.random.default_rng(1200 + i)
            case = im.stripes_case(axis, per, STRIPE_PHOTOS[(i + 4) % 6], 1200 + i, amplitude=0.07)
            argv = write_pair(case, folder)
            argv += write_dataset(ds.healthy_dataset(1200 + i, n=8), folder)
            dataset_striped(Path(argv[-1]), rng, axis, per, 4)
            if i % 2 == 0:  # healthy latents alongside: they speak against the latent causes
                argv += write_latents(lt.healthy_latents(1210 + i), folder)
            return argv

        scenario(f"combo/stripes/augmentation/{axis}-{per}", build,
                 expect={"stripes"}, allow={**AUGMENT_ALLOW, **DATASET_SKEWS},
                 causes={"stripes": "stripes.augmentation_pattern"}, fast=i < 2,
                 note="training images carry the stripe pattern")


def _register_tiling_causes() -> None:
    from . import images as im
    from . import loss_logs

    specs = [((24, 24), "yx", "flip", "grass"), ((32, 20), "x", "shift", "gravel"), ((28, 28), "yx", "vary", "coffee"),
             ((20, 36), "y", "flip", "brick")]
    for i, (p, axes, style, name) in enumerate(specs):
        def build(folder: Path, p=p, axes=axes, style=style, name=name, i=i) -> list[str]:
            from . import datasets as ds

            argv = write_pair(im.tiling_case(p, name, 1300 + i, axes, style), folder)
            return argv + write_dataset(ds.tiled_dataset(1300 + i, n=10, n_tiled=3 + i % 2, periods=[p]), folder)

        scenario(f"combo/tiling/tiled-sources/{p[0]}x{p[1]}-{axes}", build,
                 expect={"tiling_period_doubling", "dataset_tiled_source"},
                 allow=DATASET_SKEWS,
                 causes={"tiling_doubling": "tiling_doubling.tiled_sources"}, fast=i < 2,
                 note="seamless tiles in the dataset")
    problems = [{"misaligned": 2}, {"non_binary": 3}, {"size_mismatch": 1, "misaligned": 1},
                {"non_binary": 1, "empty": 1}]
    for i, (p, axes, style, name) in enumerate(specs):
        def build(folder: Path, p=p, axes=axes, style=style, name=name, i=i) -> list[str]:
            argv = write_pair(im.tiling_case((p[1], p[0]), name, 1400 + i, axes, style), folder)
            return argv + write_dataset(masks_case(1400 + i, problems[i], n=10), folder)

        scenario(f"combo/tiling/masks/{'+'.join(sorted(problems[i]))}-{i}", build,
                 expect={"tiling_period_doubling", "dataset_invalid_mask"},
                 causes={"tiling_doubling": "tiling_doubling.mask_preparation"}, fast=i < 2,
                 note="invalid masks")
    for i, (p, axes, style, name) in enumerate(specs):
        def build(folder: Path, p=p, axes=axes, style=style, name=name, i=i) -> list[str]:
            rng = np.random.default_rng(1500 + i)
            argv = write_pair(im.tiling_case((p[0] + 4, p[1] + 4), name, 1500 + i, axes, style), folder)
            if i % 2 == 0:  # a loss shelf at a high level
                argv += write_log(loss_logs.shelf(n_steps=10000, seed=1500 + i, start=0.0, length=0.3), folder,
                                  _FMTS[i % 3])
            if i != 2:  # LoRA norms collapsing over the checkpoints
                argv += write_lora_checkpoints(folder / "ckpt", rng, [1.0, 0.8, 0.5, 0.25 - 0.05 * i],
                                               [500, 1000, 1500, 2000])
            return argv

        scenario(f"combo/tiling/over-regularization/{i}", build,
                 expect={"tiling_period_doubling"} | ({"loss_plateau"} if i % 2 == 0 else set())
                 | ({"checkpoint_norm_collapse"} if i != 2 else set()),
                 causes={"tiling_doubling": "tiling_doubling.over_regularization"},
                 fast=i in (0, 1), note="loss shelf and/or shrinking LoRA norms")


def _register_config_regularization() -> None:
    """Doubled tiling + a healthy loss log whose trainer config (beside the logs) holds a high weight decay /
    dropout — the only evidence, as in a run that was simply configured to over-regularise."""
    from . import images as im
    from . import loss_logs

    configs = [("config.json", '{"learning_rate": 1e-4, "weight_decay": 0.2, "lora_dropout": 0.4}\n'),
               ("config.toml", 'learning_rate = 0.0001\noptimizer_type = "AdamW"\n'
                               'optimizer_args = ["weight_decay=0.3", "betas=0.9,0.999"]\nnetwork_dropout = 0.3\n')]
    for i, (fname, text) in enumerate(configs):
        def build(folder: Path, fname=fname, text=text, i=i) -> list[str]:
            argv = write_pair(im.tiling_case((26 + 4 * i, 30), ("grass", "coffee")[i], 1800 + i, "yx", "flip"), folder)
            argv += write_log(loss_logs.healthy(n_steps=6000, seed=1800 + i, shape="lora"), folder, ("csv", "jsonl")[i])
            (Path(argv[-1]) / fname).write_text(text)
            return argv

        scenario(f"combo/tiling/over-regularization/config-{fname}", build, expect={"tiling_period_doubling"},
                 causes={"tiling_doubling": "tiling_doubling.over_regularization"},
                 note="trainer config with high weight decay and dropout")


def _register_real_checkpoints() -> None:
    """Doubled tiling + a real tiny-UNet PEFT LoRA trained with decoupled weight decay strong enough to
    shrink the adapter (``checkpoints.train_lora_checkpoints(event="collapse")``), saved in kohya format."""
    from . import images as im

    for i, (seed, at, fmt) in enumerate([(3, 2, "kohya"), (4, 3, "peft")]):
        def build(folder: Path, seed=seed, at=at, fmt=fmt, i=i) -> list[str]:
            from .checkpoints import train_lora_checkpoints

            argv = write_pair(im.tiling_case((22 + 6 * i, 26), ("gravel", "grass")[i], 1700 + i, "yx", "flip"), folder)
            train_lora_checkpoints(folder / "ckpt", seed=seed, event="collapse", event_index=at,
                                   n_event_modules=12, formats=(fmt,))
            return argv + ["--checkpoints", str(folder / "ckpt" / fmt)]

        scenario(f"combo/tiling/over-regularization/real-{fmt}", build,
                 expect={"tiling_period_doubling", "checkpoint_norm_collapse"},
                 causes={"tiling_doubling": "tiling_doubling.over_regularization"},
                 note="real LoRA checkpoints shrunk by weight decay")


def _register_combined_loss() -> None:
    """Loss faults next to image inputs (a full review: logs + samples)."""
    from . import images as im
    from . import loss_logs

    def build(folder: Path) -> list[str]:
        argv = write_log(loss_logs.corrupted_samples(n_steps=9000, seed=1600, n_bad=2, batch_size=3,
                                                    factor=(30, 60)), folder, "jsonl")
        return argv + write_pair(im.clean_pair("rocket", "jpeg", 1600), folder)

    scenario("combo/loss+images/corrupted", build, expect={"loss_spike", "loss_sample_correlation"},
             allow=BAD_BATCH_GRAD, causes={"loss_spikes": "loss_spikes.corrupted_batch"})

    def build2(folder: Path) -> list[str]:
        argv = write_log(loss_logs.lr_too_high(n_steps=12000, seed=1601, jump=2.2), folder, "tb")
        return argv + write_pair(im.clean_pair("coffee", "noise", 1601), folder)

    scenario("combo/loss+images/lr", build2, expect={"loss_divergence"},
             allow=LR_BYPRODUCTS, causes={"loss_spikes": "loss_spikes.learning_rate_too_high"})


#: real tiny trainings (200 steps) with a fault: what the fault also does to the loss log
TRAINING_LR = {"loss_spike": "a 100× LR makes the loss spike as it lifts its level"}
TRAINING_MASKS = {"loss_divergence": "broken masks move the masked loss's level (0 on an empty mask, the whole "
                                     "frame on a full one) whenever such a sample is drawn"}


def _register_training() -> None:
    """Real tiny LoRA trainings (``integrations/tiny_lora.py``) with injected faults, analysed from their logs,
    dataset and masks. Slow (a real CPU training each): never in the fast subset."""
    try:
        import importlib.util

        if importlib.util.find_spec("integrations.tiny_lora") is None:
            return
    except (ImportError, ValueError):
        return

    def train(folder: Path, fault: str | None, seed: int, steps: int = 200) -> list[str]:
        from integrations.tiny_lora import LoraConfig, train_lora

        r = train_lora(LoraConfig(workdir=folder / "run", fault=fault, seed=seed, steps=steps, threads=1,
                                  tensorboard=seed % 2 == 1, jsonl=seed % 2 == 0))
        return ["--logdir", str(r.logs), "--dataset", str(r.dataset), "--masks", str(r.masks)]

    for seed in (0, 1):
        scenario(f"training/healthy/s{seed}", lambda f, s=seed: train(f, None, s), healthy=True, kind="training",
                 note="real tiny LoRA training, no fault")
        scenario(f"training/lr-too-high/s{seed}", lambda f, s=seed: train(f, "lr_too_high", s),
                 expect={"loss_divergence"}, allow=TRAINING_LR,
                 causes={"loss_spikes": "loss_spikes.learning_rate_too_high"}, kind="training",
                 note="real tiny LoRA training, LR warm-up to 100× the healthy LR")
        scenario(f"training/corrupted-samples/s{seed}", lambda f, s=seed: train(f, "corrupted_samples", s),
                 expect={"loss_nonfinite", "dataset_garbage_image"},
                 causes={"loss_spikes": "loss_spikes.corrupted_batch"}, kind="training",
                 note="real tiny LoRA training, garbage samples (extreme and inf pixels) → NaN loss at their steps")
    scenario("training/tiled-sources/s0", lambda f: train(f, "tiled_sources", 0), expect={"dataset_tiled_source"},
             allow=DATASET_SKEWS, kind="training", note="real tiny LoRA training, tiled crops in the dataset")
    scenario("training/broken-masks/s0", lambda f: train(f, "broken_masks", 0), expect={"dataset_invalid_mask"},
             allow=TRAINING_MASKS, kind="training", note="real tiny LoRA training, broken masks")


# ------------------------------------------------------------------ competing evidence
# Two or three causes of one symptom have evidence at once; only one of them explains the symptom's own
# measurements (the stripe period, the doubled tile, the spikes' timing), and the ranking must follow that
# evidence, not the priors. Each builder takes its parameters explicitly so that ``sweep`` draws new ones.


def unrelated_period(rng: np.random.Generator, *ps: int, lo: int = 12, hi: int = 64) -> int:
    """A period in [lo, hi) that is neither any of ``ps`` (within 20 %) nor a ×2–4 harmonic of one (the
    ratio at least 0.25 from an integer): an unrelated pattern, by the tolerances the causes use and then some."""
    def far(a: int, b: int) -> bool:
        r = max(a, b) / min(a, b)
        return r > 1.2 and abs(r - round(r)) > 0.25
    return int(rng.choice([q for q in range(lo, hi) if all(far(q, p) for p in ps)]))


def _shift_latent_files(case: Any, rng: np.random.Generator, n_shifted: int = 1) -> Any:
    """Shift one or two channels of ``n_shifted`` files of a ``latents.LatentCase`` by 2.5–3 standard
    deviations (what batch-dependent normalisation does, as ``latents.shifted_latents``; clear of the
    detector's limit, which ``benchmarks/sensitivity.py`` measures — the ranking is tested here)."""
    names = sorted(case.files)
    pooled = np.concatenate([case.files[n] for n in names], axis=0)
    channels = sorted(rng.choice(pooled.shape[1], size=int(rng.integers(1, 3)), replace=False).tolist())
    shift = float(rng.uniform(2.5, 3.0)) * (1 if rng.random() < 0.5 else -1)
    for i in sorted(rng.choice(len(names), size=n_shifted, replace=False).tolist()):
        for c in channels:
            case.files[names[i]][:, c] += shift * float(pooled[:, c].std())
    return case


def stripes_competing(folder: Path, seed: int, axis: str, pixel_period: int | None, *,
                      latent_cells: int | None = None, batch_shift: bool = False,
                      dataset_period: int | None = None, photo_name: str = "camera") -> list[str]:
    """Pixel stripes (``pixel_period`` px, None: aperiodic) beside up to three causes' evidence: latents
    periodic at ``latent_cells`` cells, a batch-to-batch channel shift in the latents, training images striped
    at ``dataset_period`` px on the same axis."""
    from . import datasets as ds
    from . import images as im
    from . import latents as lt

    rng = np.random.default_rng(seed)
    argv = write_pair(im.stripes_case(axis, pixel_period, photo_name, seed, amplitude=0.07), folder)
    if latent_cells is not None or batch_shift:
        if latent_cells is not None:
            case = lt.periodic_latents(seed + 1, latent_cells, axis, channel=int(rng.integers(4)), n_files=8)
        else:
            case = lt.healthy_latents(seed + 1, n_files=8)
        if batch_shift:
            case = _shift_latent_files(case, rng)
        argv += write_latents(case, folder)
    if dataset_period is not None:
        argv += write_dataset(ds.healthy_dataset(seed + 2, n=8), folder)
        dataset_striped(Path(argv[-1]), rng, axis, dataset_period, 4)
    return argv


def tiling_competing(folder: Path, seed: int, period: tuple[int, int], *, tiled_period: tuple[int, int] | None = None,
                     n_tiled: int = 3, masks: dict[str, int] | None = None, collapse: bool = False,
                     shelf: bool = False, config: str | None = None, name: str = "grass", axes: str = "yx",
                     style: str = "flip") -> list[str]:
    """A doubled tiling (reference tile ``period``) beside up to three causes' evidence: ``n_tiled`` seamless
    tiles of ``tiled_period`` in the training images, masks with ``masks`` problems (problem -> count),
    collapsing LoRA norms, a high loss shelf, a trainer ``config`` (JSON text beside the logs)."""
    from . import datasets as ds
    from . import images as im
    from . import loss_logs

    rng = np.random.default_rng(seed)
    argv = write_pair(im.tiling_case(period, name, seed, axes, style), folder)
    if masks or tiled_period is not None:
        if masks:
            case = masks_case(seed, masks, n=10)
        else:
            case = ds.healthy_dataset(seed + 500, 10, 160, formats=("png",), with_masks=True)
        if tiled_period is not None:
            bad = {t["location"]["file"] for t in case.truth}
            free = [k for k in sorted(case.images) if k not in bad]
            for k in [free[int(j)] for j in rng.choice(len(free), n_tiled, replace=False)]:
                case.images[k] = ds.tiled_texture(rng, case.images[k].shape[0], tiled_period)
        argv += write_dataset(case, folder)
    if shelf or config is not None:
        sc = loss_logs.shelf(n_steps=10000, seed=seed, start=0.0, length=0.3) if shelf else \
            loss_logs.healthy(n_steps=6000, seed=seed, shape="exp")
        argv += write_log(sc, folder, "csv")
        if config is not None:
            (Path(argv[-1]) / "config.json").write_text(config)
    if collapse:
        argv += write_lora_checkpoints(folder / "ckpt", rng, [1.0, 0.8, 0.5, 0.2], [500, 1000, 1500, 2000])
    return argv


def _lr_warmup(n: int, peak: float, warm_fraction: float) -> np.ndarray:
    """A linear LR warm-up to ``peak`` over ``warm_fraction`` of ``n`` steps, then constant."""
    return peak * np.minimum(1.0, (np.arange(n) + 1) / max(1, int(n * warm_fraction)))


#: how much the mildly bad samples of ``lr-divergence+mild-samples`` raise their steps' loss: enough for the
#: sample-correlation test over ~30 appearances each (it needs ≳ ×3), mostly below a spike — but a draw with a
#: wide timestep spread can make some of their steps spikes too (then both causes explain part of the spikes)
MILD_FACTOR = 3.0


def loss_competing(folder: Path, seed: int, kind: str, fmt: str = "csv") -> list[str]:
    """Loss-spike runs with two causes' evidence at once.

    ``kind``:

    - ``"bad-samples+high-lr"``: corrupted samples spike the loss whenever they are drawn (ids logged) while
      the LR warms up to 1e-2 (10× the usual top for LoRA): the spikes come at low and high LR alike;
    - ``"lr-divergence+mild-samples"``: the LR warm-up is too high (the loss diverges, spikes follow the high
      LR) and two samples also raise their steps' loss ×:data:`MILD_FACTOR` throughout the run: the spikes'
      timing follows the LR, not the samples;
    - ``"stale-ema+high-lr-config"``: a stale EMA breaks away from a healthy raw loss while the trainer config
      beside the logs sets a learning rate of 5e-3.
    """
    from . import loss_logs

    rng = np.random.default_rng(seed)
    if kind == "bad-samples+high-lr":
        sc = loss_logs.corrupted_samples(n_steps=9000 + seed % 4000, seed=seed, n_bad=2, batch_size=2 + seed % 2,
                                         dataset_size=600)
        sc.lr = _lr_warmup(sc.loss.size, 1e-2, float(rng.uniform(0.3, 0.5)))
        return write_log(sc, folder, fmt)
    if kind == "lr-divergence+mild-samples":
        sc = loss_logs.lr_too_high(n_steps=12000 + seed % 4000, seed=seed, jump=2.0 + (seed % 5) / 10)
        ids = np.asarray([row[0] for row in sc.sample_ids])
        bad = rng.choice(np.unique(ids), 2, replace=False)
        sc.loss = np.where(np.isin(ids, bad), MILD_FACTOR * sc.loss, sc.loss)
        sc.ema = loss_logs._ema(sc.loss, 0.99)  # the trainer's EMA of the loss it logged
        return write_log(sc, folder, fmt)
    if kind == "stale-ema+high-lr-config":
        sc = loss_logs.stale_ema(n_steps=10000 + seed % 4000, seed=seed, restore_at=0.4 + (seed % 3) / 10)
        argv = write_log(sc, folder, fmt)
        (Path(argv[-1]) / "config.json").write_text('{"learning_rate": 0.005, "lr_warmup_steps": 0}\n')
        return argv
    raise ValueError(kind)


#: stripes + latents + dataset: the overlay on the training images is a periodic pattern (dataset_tiled_source
#: is how the scan reports it, at warning when it is strong)
AUGMENT_ALLOW = {"dataset_tiled_source": "the stripe overlay makes the training images periodic; the scan may "
                                         "call them tiled sources (the augmentation cause's own evidence)"}


#: a too-high LR with two mildly bad samples: the samples are real, the correlation test may find them
LR_MILD_SAMPLES = {**LR_BYPRODUCTS, "loss_sample_correlation": "the two samples that raise their steps' loss ×3 are "
                                                               "real; the test may find them"}


def _register_competing() -> None:
    """The competing-evidence scenarios (``competing=True``): see :func:`stripes_competing`,
    :func:`tiling_competing`, :func:`loss_competing`."""
    stripe_cases = [
        # name, cause, axis, pixel period, latent cells, batch shift, dataset period, expect
        ("latent-match+batch-shift/6c-vertical", "latent_periodicity", "vertical", 48, 6, True, None,
         {"stripes", "latent_periodicity", "latent_batch_shift"}),
        ("latent-mismatch+batch-shift/5c-horizontal", "batchnorm_imbalance", "horizontal", 26, 5, True, None,
         {"stripes", "latent_periodicity", "latent_batch_shift"}),
        ("dataset-match+latent-mismatch/v22", "augmentation_pattern", "vertical", 22, 4, False, 22,
         {"stripes", "latent_periodicity"}),
        ("latent-match+dataset-mismatch/4c-horizontal", "latent_periodicity", "horizontal", 32, 4, False, 13,
         {"stripes", "latent_periodicity"}),
        ("dataset-match+batch-shift/h18", "augmentation_pattern", "horizontal", 18, None, True, 18,
         {"stripes", "latent_batch_shift"}),
        ("aperiodic+batch-shift+dataset/vertical", "batchnorm_imbalance", "vertical", None, None, True, 15,
         {"stripes", "latent_batch_shift"}),
    ]
    for i, (name, cause, axis, per, cells, shift, dper, expect) in enumerate(stripe_cases):
        def build(folder: Path, i=i, axis=axis, per=per, cells=cells, shift=shift, dper=dper) -> list[str]:
            return stripes_competing(folder, 1900 + i, axis, per, latent_cells=cells, batch_shift=shift,
                                     dataset_period=dper, photo_name=STRIPE_PHOTOS[i % len(STRIPE_PHOTOS)])

        scenario(f"competing/stripes/{name}", build, expect=expect,
                 allow={**AUGMENT_ALLOW, **DATASET_SKEWS} if dper else {},
                 causes={"stripes": f"stripes.{cause}"}, fast=i in (1, 2), competing=True, kind="combo",
                 note=f"stripes: evidence for several causes, {cause} explains the period")
    tiling_cases = [
        # name, cause, reference period, tiled period, n tiled, masks, collapse, shelf, config
        ("tiled-match+masks-empty", "tiled_sources", (24, 24), (24, 24), 3, {"empty": 1, "full": 1}, False, False,
         None),
        ("masks-geometry+tiled-mismatch", "mask_preparation", (28, 20), (41, 31), 2,
         {"misaligned": 2, "non_binary": 1}, False, False, None),
        ("collapse+shelf+masks-empty", "over_regularization", (26, 30), None, 0, {"empty": 1}, True, True, None),
        ("tiled-match+masks-full+config", "tiled_sources", (30, 22), (30, 22), 3, {"full": 1}, False, False,
         '{"learning_rate": 1e-4, "weight_decay": 0.06}\n'),
    ]
    for i, (name, cause, p, tp, nt, masks, collapse, shelf, config) in enumerate(tiling_cases):
        def build(folder: Path, i=i, p=p, tp=tp, nt=nt, masks=masks, collapse=collapse, shelf=shelf,
                  config=config) -> list[str]:
            return tiling_competing(folder, 1950 + i, p, tiled_period=tp, n_tiled=nt, masks=masks, collapse=collapse,
                                    shelf=shelf, config=config, name=("grass", "gravel", "coffee", "brick")[i])

        expect = {"tiling_period_doubling"} | ({"dataset_tiled_source"} if tp else set()) \
            | ({"dataset_invalid_mask"} if masks else set()) | ({"checkpoint_norm_collapse"} if collapse else set()) \
            | ({"loss_plateau"} if shelf else set())
        scenario(f"competing/tiling/{name}", build, expect=expect,
                 allow=DATASET_SKEWS if tp else {},
                 causes={"tiling_doubling": f"tiling_doubling.{cause}"}, fast=i in (0, 1), competing=True,
                 kind="combo", note=f"doubled tiling: evidence for several causes, {cause} explains it")
    loss_cases = [
        ("bad-samples+high-lr", "corrupted_batch", {"loss_spike", "loss_sample_correlation"},
         {"grad_norm_spike": "a bad batch's gradient spikes with its loss"}),
        ("lr-divergence+mild-samples", "learning_rate_too_high", {"loss_divergence"}, LR_MILD_SAMPLES),
        ("stale-ema+high-lr-config", "ema_gap", {"ema_divergence"}, {}),
    ]
    for i, (kind, cause, expect, allow) in enumerate(loss_cases):
        for j, fmt in enumerate(("csv", "jsonl")):
            scenario(f"competing/loss/{kind}/{fmt}", lambda f, i=i, j=j, kind=kind, fmt=fmt:
                     loss_competing(f, 1980 + 10 * i + j, kind, fmt), expect=expect, allow=allow,
                     causes={"loss_spikes": f"loss_spikes.{cause}"}, fast=j == 0 and i < 2, competing=True,
                     kind="loss", note=f"loss spikes: evidence for two causes, {cause} explains their timing")


_register_loss()
_register_images()
_register_latents_datasets()
_register_stripe_causes()
_register_tiling_causes()
_register_combined_loss()
_register_config_regularization()
_register_real_checkpoints()
_register_competing()
_register_training()


def sweep(n: int = 3, seed: int = 12345) -> dict[str, Any]:
    """Random variants (not registered), ``n`` of each, parameters drawn from ``seed``: every single-cause
    scenario, every competing-evidence family, and healthy inputs of every kind (loss runs, photo pairs,
    tiled pairs that did not double, latents, datasets with and without masks).

    A check that the rules hold beyond the registered cases (periods, axes, photos, seeds, file formats,
    magnitudes all drawn at random): findings, false alarms and causes are judged as for the registered
    scenarios; ``accuracy.py --sweep N`` runs it.
    """
    from . import Scenario
    from . import datasets as ds
    from . import images as im
    from . import latents as lt
    from . import loss_logs

    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}

    def add(name: str, builder: Callable[[Path], list[str]], symptom: str | None, cause: str | None, *,
            expect: Any = (), allow: dict[str, str] | None = None, competing: bool = False) -> None:
        out[name] = Scenario(name, builder, frozenset(expect), dict(allow or {}),
                             {symptom: cause} if symptom else {}, healthy=symptom is None, kind="sweep",
                             competing=competing)

    for k in range(n):
        r = [int(x) for x in rng.integers(0, 10_000, 12)]
        cells, axis = int(rng.integers(3, 10)), str(rng.choice(["vertical", "horizontal"]))
        photo_name = STRIPE_PHOTOS[r[0] % len(STRIPE_PHOTOS)]

        def b_lat(f: Path, c=cells, a=axis, ph=photo_name, r=r) -> list[str]:
            return write_pair(im.stripes_case(a, c * 8, ph, r[1], amplitude=0.07), f) + write_latents(
                lt.periodic_latents(r[2], c, a, channel=r[3] % 4), f)
        add(f"sweep/stripes/latent/{k}-{cells}c-{axis}", b_lat, "stripes", "stripes.latent_periodicity",
            expect={"stripes", "latent_periodicity"})

        per = None if rng.random() < 0.5 else int(rng.integers(6, 30))

        def b_bn(f: Path, a=axis, per=per, ph=photo_name, r=r) -> list[str]:
            return write_pair(im.stripes_case(a, per, ph, r[4], amplitude=0.07), f) + write_latents(
                lt.shifted_latents(r[5]), f)
        add(f"sweep/stripes/batch-shift/{k}-{axis}-{per}", b_bn, "stripes", "stripes.batchnorm_imbalance",
            expect={"stripes", "latent_batch_shift"})

        aper = int(rng.integers(8, 40))

        def b_aug(f: Path, a=axis, per=aper, ph=photo_name, r=r) -> list[str]:
            argv = write_pair(im.stripes_case(a, per, ph, r[6], amplitude=0.07), f)
            argv += write_dataset(ds.healthy_dataset(r[7], n=10), f)
            dataset_striped(Path(argv[-1]), np.random.default_rng(r[8]), a, per, 3 + r[8] % 3)
            return argv
        add(f"sweep/stripes/augmentation/{k}-{axis}-{aper}", b_aug, "stripes", "stripes.augmentation_pattern",
            expect={"stripes"}, allow={**AUGMENT_ALLOW, **DATASET_SKEWS})

        tp = (int(rng.integers(16, 44)), int(rng.integers(16, 44)))
        axes = str(rng.choice(["yx", "x", "y"]))
        style = str(rng.choice(["flip", "shift", "vary"]))
        tex = ("grass", "gravel", "coffee", "brick", "astronaut")[r[9] % 5]

        def b_tiled(f: Path, tp=tp, axes=axes, style=style, tex=tex, r=r) -> list[str]:
            return write_pair(im.tiling_case(tp, tex, r[10], axes, style), f) + write_dataset(
                ds.tiled_dataset(r[11], n=10, n_tiled=2 + r[11] % 3), f)
        add(f"sweep/tiling/tiled/{k}-{tp[0]}x{tp[1]}-{axes}", b_tiled, "tiling_doubling",
            "tiling_doubling.tiled_sources", expect={"tiling_period_doubling", "dataset_tiled_source"},
            allow=DATASET_SKEWS)

        problem = str(rng.choice(["non_binary", "misaligned", "size_mismatch", "empty", "full"]))

        def b_mask(f: Path, tp=tp, axes=axes, style=style, tex=tex, r=r, pb=problem) -> list[str]:
            return write_pair(im.tiling_case(tp, tex, r[1], axes, style), f) + write_dataset(
                masks_case(r[2], {pb: 1 + r[2] % 3}, n=10), f)
        add(f"sweep/tiling/masks/{k}-{problem}", b_mask, "tiling_doubling", "tiling_doubling.mask_preparation",
            expect={"tiling_period_doubling", "dataset_invalid_mask"})

        def b_reg(f: Path, tp=tp, axes=axes, style=style, tex=tex, r=r) -> list[str]:
            argv = write_pair(im.tiling_case(tp, tex, r[3], axes, style), f)
            if r[3] % 2:
                argv += write_log(loss_logs.shelf(n_steps=8000, seed=r[4], start=0.0), f, "csv")
            sub = np.random.default_rng(r[5])
            return argv + write_lora_checkpoints(f / "ckpt", sub, [1.0, 0.7, 0.45, float(sub.uniform(0.1, 0.3))],
                                                 [400, 800, 1200, 1600])
        add(f"sweep/tiling/over-regularization/{k}", b_reg, "tiling_doubling", "tiling_doubling.over_regularization",
            expect={"tiling_period_doubling", "checkpoint_norm_collapse"} | ({"loss_plateau"} if r[3] % 2 else set()))

        fmt = _FMTS[r[6] % 2]  # CSV/JSONL: with sample ids

        def b_cor(f: Path, r=r, fmt=fmt) -> list[str]:
            return write_log(loss_logs.corrupted_samples(n_steps=8000 + r[7] % 6000, seed=r[7], n_bad=1 + r[8] % 3,
                                                         batch_size=2 + r[9] % 3), f, fmt)
        add(f"sweep/loss/corrupted/{k}", b_cor, "loss_spikes", "loss_spikes.corrupted_batch",
            expect={"loss_spike", "loss_sample_correlation"}, allow=BAD_BATCH_GRAD)

        def b_lr(f: Path, r=r) -> list[str]:
            return write_log(loss_logs.lr_too_high(n_steps=10000 + r[10] % 8000, seed=r[10],
                                                   jump=2.0 + (r[11] % 15) / 10), f, _FMTS[r[10] % 3])
        add(f"sweep/loss/lr-too-high/{k}", b_lr, "loss_spikes", "loss_spikes.learning_rate_too_high",
            expect={"loss_divergence"}, allow=LR_BYPRODUCTS)

        def b_ema(f: Path, r=r) -> list[str]:
            return write_log(loss_logs.stale_ema(n_steps=10000 + r[0] % 8000, seed=r[0],
                                                 restore_at=0.3 + (r[1] % 40) / 100,
                                                 ema_decay=(0.995, 0.998, 0.999)[r[2] % 3]), f, _FMTS[r[0] % 3])
        add(f"sweep/loss/stale-ema/{k}", b_ema, "loss_spikes", "loss_spikes.ema_gap", expect={"ema_divergence"})
        _sweep_competing(add, rng, k)
        _sweep_healthy(add, rng, k)
    return out


def _sweep_competing(add: Callable[..., None], rng: np.random.Generator, k: int) -> None:
    """Random variants of the competing-evidence families (:func:`_register_competing`)."""
    axis = str(rng.choice(["vertical", "horizontal"]))
    cells = int(rng.integers(3, 8))
    other = unrelated_period(rng, 8 * cells, lo=10, hi=40)  # not the latent period × 8, nor a harmonic
    seed = int(rng.integers(0, 10_000))
    photo_name = STRIPE_PHOTOS[seed % len(STRIPE_PHOTOS)]
    both = {"stripes", "latent_periodicity", "latent_batch_shift"}
    variants = [
        ("latent-match+batch-shift", "latent_periodicity", dict(pixel_period=8 * cells, latent_cells=cells,
                                                                batch_shift=True), both, {}),
        ("latent-mismatch+batch-shift", "batchnorm_imbalance", dict(pixel_period=other, latent_cells=cells,
                                                                    batch_shift=True), both, {}),
        ("dataset-match+latent-mismatch", "augmentation_pattern", dict(pixel_period=other, latent_cells=cells,
                                                                       dataset_period=other),
         {"stripes", "latent_periodicity"}, {**AUGMENT_ALLOW, **DATASET_SKEWS}),
    ]
    for j, (name, cause, kw, expect, allow) in enumerate(variants):
        def b(f: Path, kw=kw, s=seed + j) -> list[str]:
            return stripes_competing(f, s, axis, photo_name=photo_name, **kw)
        add(f"sweep/competing/stripes/{name}/{k}-{cells}c-{other}-{axis}", b, "stripes", f"stripes.{cause}",
            expect=expect, allow=allow, competing=True)
    p = (int(rng.integers(18, 40)), int(rng.integers(18, 40)))
    tex = ("grass", "gravel", "coffee", "brick")[seed % 4]
    mismatch = tuple(unrelated_period(rng, q, 2 * q, lo=16, hi=60) for q in p)
    tvariants = [
        ("tiled-match+masks-other", "tiled_sources", dict(tiled_period=p, n_tiled=3, masks={"empty": 1}),
         {"dataset_tiled_source", "dataset_invalid_mask"}),
        ("masks-geometry+tiled-mismatch", "mask_preparation",
         dict(tiled_period=mismatch, n_tiled=2, masks={str(rng.choice(["misaligned", "non_binary"])): 3}),
         {"dataset_tiled_source", "dataset_invalid_mask"}),
        ("collapse+masks-other", "over_regularization", dict(masks={"full": 1}, collapse=True, shelf=bool(k % 2)),
         {"dataset_invalid_mask", "checkpoint_norm_collapse"} | ({"loss_plateau"} if k % 2 else set())),
    ]
    for j, (name, cause, kw, expect) in enumerate(tvariants):
        def bt(f: Path, kw=kw, s=seed + 10 + j) -> list[str]:
            return tiling_competing(f, s, p, name=tex, **kw)
        add(f"sweep/competing/tiling/{name}/{k}-{p[0]}x{p[1]}", bt, "tiling_doubling", f"tiling_doubling.{cause}",
            expect={"tiling_period_doubling"} | expect,
            allow=DATASET_SKEWS if "tiled_period" in kw else {}, competing=True)
    lvariants = [
        ("bad-samples+high-lr", "corrupted_batch", {"loss_spike", "loss_sample_correlation"}, BAD_BATCH_GRAD),
        ("lr-divergence+mild-samples", "learning_rate_too_high", {"loss_divergence"}, LR_MILD_SAMPLES),
        ("stale-ema+high-lr-config", "ema_gap", {"ema_divergence"}, {}),
    ]
    for j, (kind, cause, expect, allow) in enumerate(lvariants):
        fmt = _FMTS[(seed + j) % 2]
        add(f"sweep/competing/loss/{kind}/{k}-{fmt}", lambda f, s=seed + 20 + j, kind=kind, fmt=fmt:
            loss_competing(f, s, kind, fmt), "loss_spikes", f"loss_spikes.{cause}", expect=expect, allow=allow,
            competing=True)


def _sweep_healthy(add: Callable[..., None], rng: np.random.Generator, k: int) -> None:
    """Random healthy inputs of every kind: nothing may be reported at warning or above, no cause."""
    from . import datasets as ds
    from . import images as im
    from . import latents as lt
    from . import loss_logs

    seed = int(rng.integers(0, 10_000))
    shape, bs = str(rng.choice(["exp", "power", "lora"])), int(rng.integers(1, 5))
    n_steps, fmt, keyset = int(rng.integers(6000, 20000)), _FMTS[seed % 3], _KEYSETS[seed % 5]
    add(f"sweep/healthy/loss/{k}-{shape}-b{bs}-{fmt}", lambda f: write_log(
        loss_logs.healthy(n_steps=n_steps, seed=seed, batch_size=bs, shape=shape, keyset=keyset), f, fmt),
        None, None)
    photo_name = str(rng.choice(im.PHOTOS))
    kind = str(rng.choice(im.CLEAN_KINDS))
    add(f"sweep/healthy/pair/{k}-{photo_name}-{kind}", lambda f: write_pair(im.clean_pair(photo_name, kind, seed), f),
        None, None)
    tp = (int(rng.integers(16, 44)), int(rng.integers(16, 44)))
    tex = ("grass", "gravel", "coffee", "brick")[seed % 4]
    add(f"sweep/healthy/tiled-pair/{k}-{tex}-{tp[0]}x{tp[1]}", lambda f: write_pair(
        im.tiling_case(tp, tex, seed + 1, doubled=False), f), None, None)
    pre_post = bool(seed % 2)
    lfmt = ("npy", "npz", "pt", "safetensors")[seed % 4]
    add(f"sweep/healthy/latents/{k}-{lfmt}{'-prepost' if pre_post else ''}", lambda f: write_latents(
        lt.healthy_latents(seed + 2, n_files=int(4 + seed % 5), pre_post=pre_post), f, lfmt), None, None)
    n, masks = int(rng.integers(10, 30)), bool(rng.random() < 0.5)
    add(f"sweep/healthy/dataset/{k}-n{n}{'-masks' if masks else ''}", lambda f: write_dataset(
        ds.healthy_dataset(seed + 3, n=n, with_masks=masks), f), None, None)


def describe() -> str:
    """A one-line-per-scenario listing (for ``accuracy.py --list``)."""
    from . import all_scenarios

    lines = []
    for sc in all_scenarios().values():
        truth = "healthy" if sc.healthy else ", ".join(sorted(sc.expect))
        cz = "; ".join(f"{k} → {v.split('.', 1)[1]}" for k, v in sc.causes.items())
        lines.append(f"{'*' if sc.fast else ' '} {sc.name:55s} {truth}" + (f"  [{cz}]" if cz else "")
                     + ("  (competing evidence)" if sc.competing else ""))
    return "\n".join(lines)


__all__ = ["save_image", "write_pair", "write_log", "write_latents", "write_dataset", "masks_case",
           "write_lora_checkpoints", "dataset_striped", "describe"]
