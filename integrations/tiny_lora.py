"""A real, tiny diffusion + LoRA training run on CPU (the demo and the tests use it).

Nothing here is mocked: a ``diffusers.UNet2DConditionModel`` (built from the
config below, random init, ~0.8 M parameters) is trained with the DDPM
epsilon objective (``diffusers.DDPMScheduler``) on scikit-image photographs
and textures, then a PEFT LoRA adapter is trained on top of it.

Data and "latent space"
-----------------------
Images are grey 64x64 crops of scikit-image pictures, scaled to [-1, 1].
There is no learned VAE: a fixed, exactly invertible 8x "encoder" maps a
64x64 image to a 4x8x8 latent — 4x4 area averaging to 16x16, then one level
of the orthonormal 2-D Haar transform (channels LL, LH, HL, HH), each channel
scaled to unit variance. ``decode`` inverts the Haar step and upsamples, so
samples come back as 64x64 images and the CLI's default ``--vae-scale 8``
holds (8 pixels per latent cell).

Two phases
----------
1. **Base** (:func:`load_or_build_base`): a few thousand small steps on crops of
   ten pictures, each picture conditioned on its own fixed random 4-token
   "prompt" (``cross_attention_dim`` 32). A randomly initialised UNet's loss
   sits near 1 at every timestep; after this phase it is heavy-tailed over
   timesteps like a real model's. The weights are cached as
   ``<cache>/tiny_base-<config hash>.safetensors`` (``$DIFFDIAG_CACHE`` or
   ``~/.cache/diffdiag``); a cache miss rebuilds them (about a minute on two
   CPU threads).
2. **LoRA** (:func:`train_lora`): rank-4 LoRA on the attention projections, on
   a small dataset of crops of two pictures the base never saw (``brick``,
   ``gravel``) with a new prompt, masked loss, batch size 2 — like a style LoRA.
   The dataset (PNG) and masks are written to ``workdir/dataset`` and
   ``workdir/masks`` so that ``diffdiag analyze --dataset --masks`` can check them.

Faults (``LoraConfig.fault``)
-----------------------------
``lr_too_high``  the LR warms up to 100x the healthy LR.
``corrupted_samples``  three samples are garbage (a broken decode: noise with
    extreme and infinite values); their PNG on disk is noise. Their steps give a
    non-finite loss, and the trainer skips steps whose gradients are not finite
    (as fp16 training with a gradient scaler does), so the run goes on.
``tiled_sources``  a third of the dataset are 2x2/4x4 tilings of a smaller crop.
``broken_masks``  some masks are empty, full, non-binary or misaligned (the
    masked loss then drops to 0 on empty masks).

Logs are written like a real trainer's: ``logs/train.jsonl`` (``loss``,
``ema_loss``, ``lr``, ``grad_norm``, ``sample_ids``, ``timesteps``) and
TensorBoard scalars in ``logs/``; W&B (offline) and MLflow when asked.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["UNET_CONFIG", "BaseConfig", "LoraConfig", "TrainResult", "FAULTS", "build_unet", "encode", "decode",
           "load_or_build_base", "train_lora", "sample_images", "cache_dir", "prompt_embeddings"]

#: The tiny UNet (diffusers' "attention_head_dim" is the number of heads here).
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)
PIXELS = 64           # image side (px)
LATENT = 8            # latent side (cells): 8 px per cell
TOKENS = 4            # prompt length
#: per-channel std of the Haar latents of the base data (LL, LH, HL, HH), measured once; see encode()
LATENT_STD = (0.75, 0.17, 0.17, 0.09)
#: global latent scale (like SD's 0.18215): latents have std 0.3. Textures carry much unpredictable
#: detail; at this scale the noise dominates for most timesteps, as it does for a real VAE's latents,
#: so the trained model's loss is low at most timesteps and high near t=0 (heavy-tailed over t).
LATENT_SCALE = 0.3
BASE_SOURCES = ("camera", "astronaut", "chelsea", "coffee", "coins", "grass", "moon", "page", "rocket", "text")
LORA_SOURCES = ("brick", "gravel")
FAULTS = ("lr_too_high", "corrupted_samples", "tiled_sources", "broken_masks")
DATA_VERSION = 1


def cache_dir() -> Path:
    """Where the base weights are cached: ``$DIFFDIAG_CACHE`` or ``~/.cache/diffdiag``."""
    return Path(os.environ.get("DIFFDIAG_CACHE") or Path.home() / ".cache" / "diffdiag").expanduser()


# ---------------------------------------------------------------------------- data
def _grey(name: str) -> np.ndarray:
    """A scikit-image picture as float32 grey in [0, 1]."""
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.util import img_as_float32

    im = getattr(skimage.data, name)()
    if im.ndim == 3 and im.shape[2] == 4:
        im = rgba2rgb(im)
    if im.ndim == 3:
        im = rgb2gray(im)
    return img_as_float32(im)


def _pyramid(im: np.ndarray, scales=(1.0, 0.5, 0.25)) -> list[np.ndarray]:
    from skimage.transform import rescale

    return [im if s == 1.0 else rescale(im, s, anti_aliasing=True).astype(np.float32) for s in scales
            if min(im.shape) * s >= PIXELS]


def _random_crops(images: list[np.ndarray], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 64x64 crops (with flips) from ``images``; returns (crops (n,64,64), source index (n,))."""
    out = np.empty((n, PIXELS, PIXELS), np.float32)
    src = rng.integers(0, len(images), n)
    for i, s in enumerate(src):
        levels = images[s]
        im = levels[rng.integers(0, len(levels))]
        y = rng.integers(0, im.shape[0] - PIXELS + 1)
        x = rng.integers(0, im.shape[1] - PIXELS + 1)
        c = im[y:y + PIXELS, x:x + PIXELS]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        out[i] = c
    return out, src


def encode(images: Any) -> Any:
    """Fixed 8x "VAE" encoder: (B, 1, 64, 64) in [-1, 1] -> (B, 4, 8, 8) latents (torch).

    4x4 area average, then one orthonormal Haar level (LL, LH, HL, HH), each
    channel divided by :data:`LATENT_STD` (unit variance on the base data) and
    multiplied by :data:`LATENT_SCALE`.
    """
    import torch
    import torch.nn.functional as F

    x = F.avg_pool2d(images, PIXELS // (2 * LATENT))
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    lat = torch.cat([(a + b + c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2], dim=1)
    return lat * (LATENT_SCALE / torch.tensor(LATENT_STD, dtype=lat.dtype, device=lat.device).view(1, 4, 1, 1))


def decode(latents: Any) -> Any:
    """Inverse of :func:`encode` (up to the 4x4 averaging): (B, 4, 8, 8) -> (B, 1, 64, 64) in about [-1, 1]."""
    import torch
    import torch.nn.functional as F

    z = latents * torch.tensor(LATENT_STD, dtype=latents.dtype, device=latents.device).view(1, 4, 1, 1) / LATENT_SCALE
    ll, lh, hl, hh = z[:, 0:1], z[:, 1:2], z[:, 2:3], z[:, 3:4]
    a = (ll + lh + hl + hh) / 2
    b = (ll - lh + hl - hh) / 2
    c = (ll + lh - hl - hh) / 2
    d = (ll - lh - hl + hh) / 2
    h, w = z.shape[-2:]
    x = torch.zeros(z.shape[0], 1, 2 * h, 2 * w, dtype=z.dtype, device=z.device)
    x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2] = a, b, c, d
    return F.interpolate(x, scale_factor=PIXELS // (2 * LATENT), mode="bilinear", align_corners=False)


def prompt_embeddings(n: int, seed: int) -> Any:
    """``n`` fixed random prompts (n, TOKENS, 32): token 0 is shared (a "BOS" token), the rest differ."""
    import torch

    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, TOKENS, UNET_CONFIG["cross_attention_dim"], generator=g)
    emb[:, 0] = torch.randn(UNET_CONFIG["cross_attention_dim"], generator=torch.Generator().manual_seed(7))
    return emb


# ---------------------------------------------------------------------------- model
def build_unet(seed: int = 0) -> Any:
    """The tiny ``UNet2DConditionModel`` of :data:`UNET_CONFIG`, randomly initialised."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG)


def _scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012)


@dataclass
class BaseConfig:
    """Pre-training of the tiny base (what the cache key hashes)."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-3
    pool: int = 4096        # random crops encoded once, sampled from
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({"unet": UNET_CONFIG, "base": asdict(self), "sources": BASE_SOURCES,
                           "std": LATENT_STD, "scale": LATENT_SCALE, "data": DATA_VERSION}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(int(threads))


def load_or_build_base(cfg: BaseConfig | None = None, cache: str | Path | None = None,
                       threads: int | None = 2, log: Callable[[str], None] | None = None) -> tuple[Any, dict]:
    """The pre-trained tiny base UNet: from the cache, else trained now and cached.

    Parameters
    ----------
    cfg : BaseConfig, optional
    cache : path, optional
        Cache folder (default :func:`cache_dir`).
    threads : int or None
        ``torch.set_num_threads`` for the build (default 2).
    log : callable, optional
        Progress lines.

    Returns
    -------
    unet : UNet2DConditionModel
        In eval mode, all parameters frozen.
    info : dict
        ``{"path", "cached": bool, "seconds", "steps", "final_loss"}``.
    """
    import torch
    from safetensors.torch import load_file, save_file

    cfg = cfg or BaseConfig()
    say = log or (lambda s: None)
    path = Path(cache or cache_dir()) / f"tiny_base-{cfg.key()}.safetensors"
    unet = build_unet(cfg.seed)
    if path.exists():
        try:
            unet.load_state_dict(load_file(str(path)))
            unet.requires_grad_(False).eval()
            return unet, {"path": str(path), "cached": True, "seconds": 0.0, "steps": cfg.steps}
        except Exception as exc:  # noqa: BLE001 - a broken cache file is rebuilt
            say(f"cached base {path} unreadable ({exc}); rebuilding")
    _set_threads(threads)
    t0 = time.perf_counter()
    say(f"training the tiny base UNet ({cfg.steps} steps, cached afterwards in {path.parent})")
    rng = np.random.default_rng(cfg.seed)
    pics = [_pyramid(_grey(n)) for n in BASE_SOURCES]
    crops, src = _random_crops(pics, cfg.pool, rng)
    with torch.no_grad():
        lat = encode(torch.from_numpy(crops * 2 - 1)[:, None])
        src_t = torch.from_numpy(src)
    emb = prompt_embeddings(len(BASE_SOURCES), seed=cfg.seed + 1)
    sched = _scheduler()
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=1e-4)
    warm = max(1, cfg.steps // 20)
    lr_at = lambda i: cfg.lr * min(1.0, (i + 1) / warm) * (0.5 * (1 + math.cos(math.pi * i / cfg.steps)) * 0.9 + 0.1)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    ema = None
    for i in range(cfg.steps):
        idx = torch.randint(0, lat.shape[0], (cfg.batch_size,), generator=g)
        x0 = lat[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch_size,), generator=g)
        xt = sched.add_noise(x0, noise, t)
        for pg in opt.param_groups:
            pg["lr"] = lr_at(i)
        pred = unet(xt, t, emb[src_t[idx]]).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lv = float(loss.detach())
        ema = lv if ema is None else 0.99 * ema + 0.01 * lv
        if (i + 1) % 250 == 0:
            say(f"  base step {i + 1}/{cfg.steps}: loss (EMA) {ema:.4f}")
    unet.requires_grad_(False).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp),
              metadata={"config": json.dumps(asdict(cfg)), "writer": "diffdiag.tiny_lora"})
    tmp.replace(path)
    secs = time.perf_counter() - t0
    say(f"  base trained in {secs:.0f} s, final loss (EMA) {ema:.4f}")
    return unet, {"path": str(path), "cached": False, "seconds": secs, "steps": cfg.steps, "final_loss": ema}


# ---------------------------------------------------------------------------- LoRA phase
@dataclass
class LoraConfig:
    """One LoRA fine-tuning run.

    Attributes
    ----------
    workdir : path
        Receives ``dataset/``, ``masks/``, ``logs/`` (and ``samples/``, ``lora.safetensors``).
    steps, batch_size, lr, rank : LoRA training.
    n_samples : dataset size (64x64 crops of :data:`LORA_SOURCES`).
    fault : one of :data:`FAULTS` or None (healthy).
    diag_interval : the hook's interval (when a hook is used).
    tensorboard, jsonl : which logs to write; ``wandb`` (offline) and ``mlflow_uri`` when asked.
    samples : generate this many sample images at the end (0: none).
    """

    workdir: str | Path = ".diffdiag/run"
    steps: int = 200
    batch_size: int = 2
    lr: float = 1e-3
    rank: int = 4
    n_samples: int = 16
    fault: str | None = None
    seed: int = 0
    diag_interval: int = 25
    tensorboard: bool = True
    jsonl: bool = True
    wandb: bool = False
    wandb_project: str = "diffdiag-demo"
    mlflow_uri: str | None = None
    mlflow_experiment: str = "diffdiag"
    samples: int = 0
    save_lora: bool = True
    threads: int | None = 2
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fault in ("", "none", "healthy"):
            self.fault = None
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; choose one of {', '.join(FAULTS)} or None")


@dataclass
class TrainResult:
    """What :func:`train_lora` produced (paths are absolute)."""

    workdir: Path
    logs: Path
    jsonl: Path | None
    dataset: Path
    masks: Path
    losses: np.ndarray            # per-step raw loss, shape (steps,)
    lrs: np.ndarray
    sample_ids: list[list[str]]
    timesteps: list[list[int]]
    corrupted: list[str]          # sample ids that are garbage (fault corrupted_samples)
    tiled: list[str]
    broken_masks: dict[str, str]  # sample id -> problem
    seconds: float
    samples: list[Path] = field(default_factory=list)
    lora: Path | None = None
    wandb_dir: Path | None = None
    mlflow_run_id: str | None = None

    def tail_ratio(self) -> float:
        """p99 / median of the per-step loss (finite values)."""
        v = self.losses[np.isfinite(self.losses)]
        return float(np.percentile(v, 99) / np.median(v)) if v.size else float("nan")


def _lora_dataset(cfg: LoraConfig, rng: np.random.Generator) -> dict[str, Any]:
    """Build the dataset (arrays used for training and the PNG/mask files on disk)."""
    from PIL import Image

    work = Path(cfg.workdir)
    ddir, mdir = work / "dataset", work / "masks"
    for d in (ddir, mdir):
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.png"):
            old.unlink()
    pics = [_pyramid(_grey(n), scales=(0.5, 0.25)) for n in LORA_SOURCES]
    crops, _ = _random_crops(pics, cfg.n_samples, rng)
    ids = [f"sample_{i:03d}" for i in range(cfg.n_samples)]
    train = crops * 2 - 1                       # what the loader hands to the model
    masks = np.zeros((cfg.n_samples, PIXELS, PIXELS), np.float32)
    from scipy.ndimage import gaussian_filter

    for i in range(cfg.n_samples):              # a healthy mask follows the image: its brighter half, smoothed
        sm = gaussian_filter(crops[i], 3.0)
        masks[i] = (sm > np.median(sm)).astype(np.float32)
    disk_masks = [(m * 255).astype(np.uint8) for m in masks]
    corrupted: list[str] = []
    tiled: list[str] = []
    broken: dict[str, str] = {}
    picks = rng.permutation(cfg.n_samples)
    if cfg.fault == "corrupted_samples":
        for i in picks[:3]:
            crops[i] = rng.random((PIXELS, PIXELS)).astype(np.float32)     # garbage on disk
            garbage = (crops[i] * 2 - 1) * 1e4                             # extreme values in training ...
            garbage[rng.random((PIXELS, PIXELS)) < 0.01] = np.inf          # ... and a few infinite ones
            train[i] = garbage
            corrupted.append(ids[i])
    if cfg.fault == "tiled_sources":
        for j, i in enumerate(picks[: max(2, cfg.n_samples // 3)]):
            reps = 2 if j % 2 == 0 else 4
            tile = crops[i][: PIXELS // reps, : PIXELS // reps]
            crops[i] = np.tile(tile, (reps, reps))
            train[i] = crops[i] * 2 - 1
            tiled.append(ids[i])
    if cfg.fault == "broken_masks":
        problems = ["empty", "non_binary", "full", "misaligned", "empty", "non_binary"]
        for i, prob in zip(picks, problems):
            if prob == "empty":
                masks[i] = 0.0
                disk_masks[i] = np.zeros((PIXELS, PIXELS), np.uint8)
            elif prob == "full":
                masks[i] = 1.0
                disk_masks[i] = np.full((PIXELS, PIXELS), 255, np.uint8)
            elif prob == "non_binary":
                soft = gaussian_filter(masks[i], 4.0)
                masks[i] = soft
                disk_masks[i] = (soft * 255).astype(np.uint8)
            elif prob == "misaligned":
                shifted = np.roll(masks[i], (PIXELS // 3, PIXELS // 3), axis=(0, 1))
                masks[i] = shifted
                disk_masks[i] = (shifted * 255).astype(np.uint8)
            broken[ids[i]] = prob
    for i, sid in enumerate(ids):
        Image.fromarray((np.clip(crops[i], 0, 1) * 255).astype(np.uint8)).save(ddir / f"{sid}.png")
        Image.fromarray(disk_masks[i]).save(mdir / f"{sid}.png")
    return {"ids": ids, "train": train, "masks": masks, "corrupted": corrupted, "tiled": tiled,
            "broken": broken, "dataset": ddir, "masks_dir": mdir}


def _lr_schedule(cfg: LoraConfig) -> Callable[[int], float]:
    peak = cfg.lr * (100.0 if cfg.fault == "lr_too_high" else 1.0)
    warm = max(1, cfg.steps // 5)
    return lambda i: peak * min(1.0, (i + 1) / warm)


def train_lora(cfg: LoraConfig, base: Any = None, hook: Any = None,
               log: Callable[[str], None] | None = None) -> TrainResult:
    """Fine-tune a LoRA adapter on the tiny base, for real, with ``cfg.fault`` injected.

    Parameters
    ----------
    cfg : LoraConfig
    base : UNet2DConditionModel, optional
        The pre-trained base (default: :func:`load_or_build_base`). It is copied;
        the caller's model is not changed.
    hook : LossDiagnostics, optional
        Called every step as ``hook.log_step(step, loss, ema_loss, model, batch,
        lr=, grad_norm=, timesteps=)`` (the caller calls ``finish()``).
    log : callable, optional
        Progress lines.

    Returns
    -------
    TrainResult
    """
    import copy

    import torch
    from peft import LoraConfig as PeftLoraConfig

    say = log or (lambda s: None)
    _set_threads(cfg.threads)
    if base is None:
        base, _ = load_or_build_base(log=say, threads=cfg.threads)
    unet = copy.deepcopy(base)
    unet.requires_grad_(False)
    unet.add_adapter(PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.rank, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    lr_at = _lr_schedule(cfg)
    rng = np.random.default_rng(cfg.seed + 100)
    data = _lora_dataset(cfg, rng)
    hcfg = getattr(hook, "config", None)
    if hcfg is not None and getattr(hcfg, "dataset_dir", "x") is None:   # let the hook check the dataset too
        hcfg.dataset_dir, hcfg.masks_dir = data["dataset"], data["masks_dir"]
    work = Path(cfg.workdir).resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pixels_all = torch.from_numpy(data["train"])[:, None].float()
    with torch.no_grad():
        lat_all = encode(pixels_all)
        mask_lat = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(data["masks"])[:, None], LATENT)
    prompt = prompt_embeddings(1, seed=cfg.seed + 999)[0]
    sched = _scheduler()
    g = torch.Generator().manual_seed(cfg.seed + 3)

    jsonl_path = logs / "train.jsonl" if cfg.jsonl else None
    jf = open(jsonl_path, "w", encoding="utf-8") if jsonl_path else None
    tb = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(logs))
    wb = None
    if cfg.wandb:
        import wandb

        wb = wandb.init(project=cfg.wandb_project, mode="offline", dir=str(work),
                        config={**asdict(cfg), "workdir": str(cfg.workdir)}, reinit=True)
    ml_client = ml_run = None
    ml_batch: list[Any] = []
    if cfg.mlflow_uri:
        from mlflow import MlflowClient

        ml_client = MlflowClient(tracking_uri=cfg.mlflow_uri)
        exp = ml_client.get_experiment_by_name(cfg.mlflow_experiment)
        exp_id = exp.experiment_id if exp else ml_client.create_experiment(cfg.mlflow_experiment)
        ml_run = ml_client.create_run(exp_id, run_name=f"tiny-lora-{cfg.fault or 'healthy'}")
        for k, v in asdict(cfg).items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                ml_client.log_param(ml_run.info.run_id, k, str(v))

    losses, lrs, all_ids, all_ts = [], [], [], []
    ema = None
    t0 = time.perf_counter()
    n = len(data["ids"])
    try:
        for step in range(cfg.steps):
            idx = torch.randint(0, n, (cfg.batch_size,), generator=g)
            ids = [data["ids"][int(i)] for i in idx]
            batch = {"pixel_values": pixels_all[idx], "sample_ids": ids}   # what a data loader yields
            x0 = lat_all[idx]
            mk = mask_lat[idx]
            noise = torch.randn(x0.shape, generator=g)
            t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch_size,), generator=g)
            xt = sched.add_noise(x0, noise, t)
            lr = lr_at(step)
            for pg in opt.param_groups:
                pg["lr"] = lr
            pred = unet(xt, t, prompt.expand(cfg.batch_size, -1, -1)).sample
            err = (pred.float() - noise) ** 2 * mk
            loss = err.sum() / (mk.sum() * x0.shape[1]).clamp(min=1e-8)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(params, 1e9)
            if torch.isfinite(gn):      # skip steps with non-finite gradients (like a gradient scaler)
                opt.step()
            ld = loss.detach()
            if torch.isfinite(ld):
                ema = ld if ema is None else 0.95 * ema + 0.05 * ld
            if hook is not None:
                hook.log_step(step, ld, ema, model=unet, batch=batch, lr=lr, grad_norm=gn.detach(), timesteps=t)
            lv, ev, gv = float(ld), (float(ema) if ema is not None else math.nan), float(gn)
            tl = t.tolist()
            losses.append(lv)
            lrs.append(lr)
            all_ids.append(ids)
            all_ts.append(tl)
            row = {"step": step, "loss": lv, "ema_loss": ev, "lr": lr, "grad_norm": gv, "sample_ids": ids,
                   "timesteps": tl}
            if jf:
                jf.write(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                                     for k, v in row.items()}) + "\n")
            if tb:
                for k in ("loss", "ema_loss", "lr", "grad_norm"):
                    tb.add_scalar(k, row[k], step)
            if wb is not None:
                wb.log({k: row[k] for k in ("loss", "ema_loss", "lr", "grad_norm")}, step=step)
            if ml_client is not None:
                from mlflow.entities import Metric

                ts_ms = int(time.time() * 1000)
                ml_batch.extend(Metric(k, row[k], ts_ms, step) for k in ("loss", "ema_loss", "lr", "grad_norm")
                                if math.isfinite(row[k]))
                if len(ml_batch) >= 800:
                    ml_client.log_batch(ml_run.info.run_id, metrics=ml_batch)
                    ml_batch = []
            if (step + 1) % 50 == 0:
                say(f"  LoRA step {step + 1}/{cfg.steps}: loss {lv:.4f} (EMA {ev:.4f}), lr {lr:.2e}")
    finally:
        if jf:
            jf.close()
        if tb:
            tb.close()
    secs = time.perf_counter() - t0
    unet.eval()
    res = TrainResult(work, logs, jsonl_path, data["dataset"], data["masks_dir"], np.array(losses),
                      np.array(lrs), all_ids, all_ts, data["corrupted"], data["tiled"], data["broken"], secs)
    if cfg.samples:
        res.samples = sample_images(unet, prompt, cfg.samples, work / "samples", step=cfg.steps, seed=cfg.seed)
    if cfg.save_lora:
        try:
            from peft.utils import get_peft_model_state_dict
            from safetensors.torch import save_file

            sd = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
            res.lora = work / f"lora_step{cfg.steps:06d}.safetensors"
            save_file(sd, str(res.lora), metadata={"format": "peft", "rank": str(cfg.rank)})
        except Exception as exc:  # noqa: BLE001
            say(f"  (LoRA weights not saved: {exc})")
    if wb is not None:
        wb.summary["tail_ratio"] = res.tail_ratio()
        res.wandb_dir = Path(wb.dir).parent
        wb.finish()
    if ml_client is not None:
        if ml_batch:
            ml_client.log_batch(ml_run.info.run_id, metrics=ml_batch)
        ml_client.set_terminated(ml_run.info.run_id)
        res.mlflow_run_id = ml_run.info.run_id
    res.model = unet  # type: ignore[attr-defined]
    return res


def sample_images(unet: Any, prompt: Any, n: int, out_dir: str | Path, step: int = 0, seed: int = 0,
                  steps: int = 25) -> list[Path]:
    """Generate ``n`` samples with DDPM (``steps`` inference steps), decode, save ``step_<N>_<k>.png``."""
    import torch
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sched = _scheduler()
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed + 5)
    x = torch.randn(n, 4, LATENT, LATENT, generator=g)
    cond = prompt.expand(n, -1, -1)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(x, t, cond).sample
            x = sched.step(eps, t, x, generator=g).prev_sample
        img = ((decode(x) + 1) / 2).clamp(0, 1)[:, 0].numpy()
    paths = []
    for k in range(n):
        p = out_dir / f"step_{step:06d}_{k}.png"
        Image.fromarray((img[k] * 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths
