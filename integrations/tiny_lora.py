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
1. **Base** (:func:`load_or_build_base`): a thousand small steps on crops of
   ten pictures, each picture conditioned on its own fixed random 4-token
   "prompt" (``cross_attention_dim`` 32). A randomly initialised UNet's loss
   sits near 1 at every timestep; after this phase it is heavy-tailed over
   timesteps like a real model's. The package ships the result
   (``integrations/assets/tiny_base.safetensors``, fp16, 1.6 MB, with
   ``tiny_base.json``: its checksum, config and loss profile over timesteps);
   ``make base`` (``python -m diffdiag.integrations.tiny_lora --build-base``)
   rebuilds it with this code, byte for byte on the same torch build. Another
   :class:`BaseConfig` is trained on first use (a few minutes on one thread) and
   cached as ``<cache>/tiny_base-<config hash>.safetensors`` (``$DIFFDIAG_CACHE``
   or ``~/.cache/diffdiag``).
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

Training runs on :data:`THREADS` torch thread(s) (one: the model is too small
for more to help) and prints a progress line with an ETA at least every 5 s.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["UNET_CONFIG", "BaseConfig", "LoraConfig", "TrainResult", "FAULTS", "THREADS", "SHIPPED_BASE", "build_unet",
           "encode", "decode", "load_or_build_base", "build_base", "train_lora", "sample_images", "generate_images",
           "cache_dir", "prompt_embeddings", "timestep_loss", "timestep_tail_ratio", "torch_threads", "Progress"]

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
#: AdamW weight decay of the LoRA phase
LORA_WEIGHT_DECAY = 1e-2
#: metrics go to MLflow at least this often (seconds) while training
ML_FLUSH_SECONDS = 2.0
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


#: torch threads for the tiny model on CPU. Its operations are too small to be split: on a 2-core
#: machine shared with other work, one thread ran a LoRA step in 70-140 ms and two threads in 2-3 s
#: (README, "Set-up"). The count is set for the duration of a build or a training run, then restored.
THREADS = 1
#: The shipped base (``make base`` rebuilds it): fp16 weights and what the build measured.
ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED_BASE = ASSETS / "tiny_base.safetensors"
SHIPPED_META = ASSETS / "tiny_base.json"
#: timesteps of the loss profile recorded with the shipped base (and checked by the tests)
PROFILE_T = (1, 5, 20, 50, 100, 200, 400, 700, 999)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, restoring the previous count (None: unchanged)."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        if threads and torch.get_num_threads() != old:
            torch.set_num_threads(old)


def _fmt_secs(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Progress lines for a loop of ``total`` steps: one at least every ``every`` seconds, with an ETA.

    Call it after each step with the number of steps done and a detail text;
    it prints (through ``say``) when ``every`` seconds (wall) have passed since
    the last line, and at the last step.
    """

    def __init__(self, total: int, say: Callable[[str], None], label: str, *, every: float = 5.0) -> None:
        self.total, self.say, self.label, self.every = int(total), say, label, float(every)
        self.t0 = self.last = time.perf_counter()

    def __call__(self, done: int, detail: str = "") -> None:
        now = time.perf_counter()
        if done < self.total and now - self.last < self.every:
            return
        self.last = now
        per = (now - self.t0) / max(done, 1)
        tail = f"ETA {_fmt_secs(per * (self.total - done))}" if done < self.total else f"done in {_fmt_secs(now - self.t0)}"
        self.say(f"  {self.label} {done}/{self.total}{': ' + detail if detail else ''} "
                 f"({per * 1000:.0f} ms/step, {tail})")


@functools.lru_cache(maxsize=1)
def _base_pictures() -> list[list[np.ndarray]]:
    """The base pictures' pyramids (read once per process)."""
    return [_pyramid(_grey(name)) for name in BASE_SOURCES]


def _base_data(cfg: BaseConfig, n: int, seed: int) -> tuple[Any, Any, Any]:
    """``n`` encoded base crops: latents (n, 4, 8, 8), source index (n,), the sources' prompts (10, 4, 32)."""
    import torch

    rng = np.random.default_rng(seed)
    crops, src = _random_crops(_base_pictures(), n, rng)
    with torch.no_grad():
        lat = encode(torch.from_numpy(crops * 2 - 1)[:, None])
    return lat, torch.from_numpy(src), prompt_embeddings(len(BASE_SOURCES), seed=cfg.seed + 1)


def timestep_loss(unet: Any, cfg: BaseConfig | None = None, *, timesteps: tuple[int, ...] = PROFILE_T,
                  n: int = 64, seed: int = 12345) -> dict[int, float]:
    """Mean epsilon-MSE of ``unet`` per timestep on ``n`` fresh crops of the base pictures.

    A random UNet scores about 1 at every timestep; the trained base is high
    near t=0 and far lower elsewhere (heavy-tailed over timesteps).

    Returns
    -------
    dict
        timestep -> mean squared error (unitless; the noise has unit variance).
    """
    import torch

    cfg = cfg or BaseConfig()
    lat, src, emb = _base_data(cfg, n, seed)
    sched = _scheduler()
    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for t in timesteps:
            noise = torch.randn(lat.shape, generator=g)
            tt = torch.full((n,), int(t))
            pred = unet(sched.add_noise(lat, noise, tt), tt, emb[src]).sample
            out[int(t)] = float(((pred - noise) ** 2).mean())
    return out


def timestep_tail_ratio(unet: Any, cfg: BaseConfig | None = None, *, n: int = 512, seed: int = 54321) -> float:
    """p99 / median of the per-sample loss of ``unet`` at uniform random timesteps (base crops).

    The demo's per-step LoRA loss has the same shape (its p99/median is 12.4-12.7).
    """
    import torch

    cfg = cfg or BaseConfig()
    lat, src, emb = _base_data(cfg, n, seed)
    sched = _scheduler()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(lat.shape, generator=g)
    tt = torch.randint(0, sched.config.num_train_timesteps, (n,), generator=g)
    with torch.no_grad():
        per = ((unet(sched.add_noise(lat, noise, tt), tt, emb[src]).sample - noise) ** 2).mean(dim=(1, 2, 3))
    v = per.numpy()
    return float(np.percentile(v, 99) / np.median(v))


def _train_base(cfg: BaseConfig, say: Callable[[str], None]) -> tuple[Any, float]:
    """Pre-train the tiny base (deterministic for a given torch build and thread count); return (unet, EMA loss)."""
    import torch

    unet = build_unet(cfg.seed)
    lat, src_t, emb = _base_data(cfg, cfg.pool, cfg.seed)
    sched = _scheduler()
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=1e-4)
    warm = max(1, cfg.steps // 20)
    lr_at = lambda i: cfg.lr * min(1.0, (i + 1) / warm) * (0.5 * (1 + math.cos(math.pi * i / cfg.steps)) * 0.9 + 0.1)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    ema = math.nan
    progress = Progress(cfg.steps, say, "base step")
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
        ema = lv if i == 0 else 0.99 * ema + 0.01 * lv
        progress(i + 1, f"loss (EMA) {ema:.4f}")
    return unet.requires_grad_(False).eval(), ema


def _write_base(unet: Any, path: Path, cfg: BaseConfig) -> Any:
    """Write ``unet``'s weights as fp16 safetensors (atomically); load them back into ``unet`` (fp32)."""
    import torch
    from safetensors.torch import save_file

    half = {k: v.detach().to(torch.float16).contiguous() for k, v in sorted(unet.state_dict().items())}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(half, str(tmp), metadata={"diffdiag_tiny_base": json.dumps({"key": cfg.key(), "config": asdict(cfg)},
                                                                          sort_keys=True)})
    tmp.chmod(0o644)   # a shared cache / package data, not a private file
    tmp.replace(path)
    unet.load_state_dict({k: v.float() for k, v in half.items()})
    return unet


def _read_base(path: Path, cfg: BaseConfig) -> Any:
    """The base UNet from a file written by :func:`_write_base` for ``cfg`` (ValueError when it is another's)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("diffdiag_tiny_base") or "{}")
    if meta.get("key") != cfg.key():
        raise ValueError(f"it holds base {meta.get('key')!r}, not {cfg.key()!r}")
    unet = build_unet(cfg.seed)
    unet.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return unet.requires_grad_(False).eval()


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shipped_base_meta() -> dict:
    """What ``make base`` recorded about the shipped base (``integrations/assets/tiny_base.json``); {} if absent."""
    try:
        return json.loads(SHIPPED_META.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def load_or_build_base(cfg: BaseConfig | None = None, cache: str | Path | None = None,
                       threads: int | None = THREADS, log: Callable[[str], None] | None = None) -> tuple[Any, dict]:
    """The pre-trained tiny base UNet: the shipped one, else from the cache, else trained now and cached.

    The package ships the base of the default :class:`BaseConfig`
    (``integrations/assets/tiny_base.safetensors``, built by ``make base``), so
    only another configuration (or a damaged package) trains here.

    Parameters
    ----------
    cfg : BaseConfig, optional
    cache : path, optional
        Cache folder (default :func:`cache_dir`).
    threads : int or None
        ``torch.set_num_threads`` while training (default :data:`THREADS`; restored afterwards).
    log : callable, optional
        Progress lines (at least one every 10 s while training, with an ETA).

    Returns
    -------
    unet : UNet2DConditionModel
        In eval mode, all parameters frozen, fp32 (the weights are stored as fp16).
    info : dict
        ``{"path", "source": "shipped" | "cache" | "trained", "cached": bool, "seconds", "steps"}``
        (and ``"final_loss"``, the EMA loss, when trained).
    """
    cfg = cfg or BaseConfig()
    say = log or (lambda s: None)
    meta = shipped_base_meta()
    if meta.get("key") == cfg.key() and SHIPPED_BASE.is_file():
        try:
            if _sha256(SHIPPED_BASE) != meta.get("sha256"):
                raise ValueError("its checksum differs from tiny_base.json")
            return _read_base(SHIPPED_BASE, cfg), {"path": str(SHIPPED_BASE), "source": "shipped", "cached": True,
                                                   "seconds": 0.0, "steps": cfg.steps}
        except Exception as exc:  # noqa: BLE001 - a damaged package falls back to the cache / a build
            say(f"shipped base {SHIPPED_BASE} unusable ({exc}); using the cache or training it")
    path = Path(cache or cache_dir()) / f"tiny_base-{cfg.key()}.safetensors"
    if path.exists():
        try:
            return _read_base(path, cfg), {"path": str(path), "source": "cache", "cached": True, "seconds": 0.0,
                                           "steps": cfg.steps}
        except Exception as exc:  # noqa: BLE001 - a broken cache file is rebuilt
            say(f"cached base {path} unreadable ({exc}); rebuilding")
    t0 = time.perf_counter()
    say(f"training the tiny base UNet ({cfg.steps} steps, {threads or 'default'} torch thread(s); "
        f"cached afterwards in {path.parent})")
    with torch_threads(threads):
        unet, ema = _train_base(cfg, say)
    _write_base(unet, path, cfg)
    secs = time.perf_counter() - t0
    say(f"  base trained in {secs:.0f} s, final loss (EMA) {ema:.4f}")
    return unet, {"path": str(path), "source": "trained", "cached": False, "seconds": secs, "steps": cfg.steps,
                  "final_loss": ema}


def build_base(out_dir: str | Path = ASSETS, cfg: BaseConfig | None = None, *, threads: int = THREADS,
               log: Callable[[str], None] | None = None) -> dict:
    """Train the base from scratch and write ``tiny_base.safetensors`` + ``tiny_base.json`` into ``out_dir``.

    ``make base`` runs this into ``integrations/assets/``. With the same torch
    build and thread count the file is the same, byte for byte (the JSON
    records the versions and the SHA-256).

    Returns
    -------
    dict
        The JSON written (path, checksum, config, loss profile over timesteps).
    """
    import diffusers
    import torch

    cfg = cfg or BaseConfig()
    say = log or (lambda s: None)
    out = Path(out_dir)
    path = out / SHIPPED_BASE.name
    t0 = time.perf_counter()
    say(f"building the tiny base UNet: {cfg.steps} steps on {threads} torch thread(s) -> {path}")
    with torch_threads(threads):
        unet, ema = _train_base(cfg, say)
        _write_base(unet, path, cfg)
        profile = timestep_loss(unet, cfg)
        tail = timestep_tail_ratio(unet, cfg)
    meta = {
        "file": path.name, "sha256": _sha256(path), "bytes": path.stat().st_size, "dtype": "float16",
        "key": cfg.key(), "base_config": asdict(cfg), "unet_config": UNET_CONFIG, "sources": list(BASE_SOURCES),
        "parameters": int(sum(p.numel() for p in unet.parameters())), "final_ema_loss": round(ema, 6),
        "timestep_loss": {str(t): round(v, 6) for t, v in profile.items()},
        "timestep_tail_ratio": round(tail, 4),
        "built_with": {"torch": torch.__version__, "diffusers": diffusers.__version__, "threads": threads},
        "rebuild": "make base  (python -m diffdiag.integrations.tiny_lora --build-base)",
    }
    (out / SHIPPED_META.name).write_text(json.dumps(meta, indent=1, default=list) + "\n", encoding="utf-8")
    say(f"  built in {time.perf_counter() - t0:.0f} s: {path} ({meta['bytes'] / 1e6:.2f} MB, sha256 "
        f"{meta['sha256'][:12]}), loss t=5 {profile[5]:.3f} vs t=700 {profile[700]:.3f}, tail ratio {tail:.1f}")
    return meta


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
    mlflow_run_id : with ``mlflow_uri``, log into this run (the caller created it before training;
        default: a new run). Its params are :meth:`hyperparameters`, its metrics are logged as the
        steps happen, and it is ended when training ends.
    samples : generate this many sample images at the end (0: none).
    validation_every, validation_images : trainer-style validation (0: none): every
        ``validation_every`` steps, and once more at the end, ``validation_images``
        images of the LoRA prompt are generated with the same seed each time (as
        diffusers' ``train_text_to_image_lora.py`` does in ``log_validation``) and
        logged under the tag/key ``validation`` (``test`` for the final ones) at the
        global step (steps done, from 1): TensorBoard with
        ``add_images(tag, images, step, dataformats="NHWC")`` (uint8 RGB, one grid
        image per call), W&B as a list of ``wandb.Image`` with captions
        ``"<i>: <prompt>"`` when ``wandb`` is on, MLflow ``log_image(key=tag, step=)``
        per image with ``mlflow_uri``; ``validation_dir`` also saves them
        as ``samples/step_<step:06d>_<i>.png`` (a sample folder).
    checkpoint_every : every this many global steps write ``checkpoint-<step>/pytorch_lora_weights.safetensors``
        (diffusers' pipeline LoRA format, written by diffusers' own ``save_lora_weights``) and, at the
        end, ``pytorch_lora_weights.safetensors`` in ``workdir`` (0: none).
    kohya_name : with ``checkpoint_every``, also write kohya sd-scripts files: ``<name>-<epoch:06d>.safetensors``
        at each checkpoint (the epoch count, rounded up, in the name; ``ss_*`` metadata with the step) and
        ``<name>.safetensors`` at the end (None: none).
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
    mlflow_run_id: str | None = None
    samples: int = 0
    validation_every: int = 0
    validation_images: int = 2
    validation_dir: bool = False
    checkpoint_every: int = 0
    kohya_name: str | None = None
    save_lora: bool = True
    threads: int | None = THREADS
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fault in ("", "none", "healthy"):
            self.fault = None
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; choose one of {', '.join(FAULTS)} or None")

    def peak_lr(self) -> float:
        """The learning rate the schedule reaches (the fault ``lr_too_high`` sets it 100x ``lr``)."""
        return self.lr * (100.0 if self.fault == "lr_too_high" else 1.0)

    def warmup_steps(self) -> int:
        """Steps of the linear learning-rate warm-up."""
        return max(1, self.steps // 5)

    def hyperparameters(self) -> dict[str, Any]:
        """The hyper-parameters the training applies: what a tracker's params (and the W&B config) show.

        ``lr`` is the peak learning rate (:meth:`peak_lr`), reached after :meth:`warmup_steps`.
        """
        return {"steps": self.steps, "batch_size": self.batch_size, "lr": self.peak_lr(),
                "lr_schedule": "linear warm-up, then constant", "lr_warmup_steps": self.warmup_steps(),
                "optimizer": "AdamW", "weight_decay": LORA_WEIGHT_DECAY, "rank": self.rank,
                "lora_alpha": self.rank, "n_samples": self.n_samples, "fault": self.fault or "none",
                "seed": self.seed}


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
    checkpoints: list[Path] = field(default_factory=list)   # checkpoint-N/, kohya and final files, in order
    #: tag ("validation"/"test") -> global step -> the validation images (n, 64, 64) in [0, 1]
    validation: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)

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
    peak, warm = cfg.peak_lr(), cfg.warmup_steps()
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
    with torch_threads(cfg.threads):
        return _train_lora(cfg, base, hook, log)


def _train_lora(cfg: LoraConfig, base: Any, hook: Any, log: Callable[[str], None] | None) -> TrainResult:
    import copy

    import torch
    from peft import LoraConfig as PeftLoraConfig

    say = log or (lambda s: None)
    if base is None:
        base, _ = load_or_build_base(log=say, threads=cfg.threads)
    unet = copy.deepcopy(base)
    unet.requires_grad_(False)
    unet.add_adapter(PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.rank, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=LORA_WEIGHT_DECAY)
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
                        config={**asdict(cfg), **cfg.hyperparameters(), "workdir": str(cfg.workdir)}, reinit=True)
    ml_client = ml_run = None
    ml_batch: list[Any] = []
    if cfg.mlflow_uri:
        from mlflow import MlflowClient

        from mlflow.entities import Param

        ml_client = MlflowClient(tracking_uri=cfg.mlflow_uri)
        if cfg.mlflow_run_id:
            ml_run = ml_client.get_run(cfg.mlflow_run_id)
        else:
            exp = ml_client.get_experiment_by_name(cfg.mlflow_experiment)
            exp_id = exp.experiment_id if exp else ml_client.create_experiment(cfg.mlflow_experiment)
            ml_run = ml_client.create_run(exp_id, run_name=f"tiny-lora-{cfg.fault or 'healthy'}")
        ml_client.log_batch(ml_run.info.run_id,
                            params=[Param(k, str(v)) for k, v in cfg.hyperparameters().items()])
        ml_flushed = time.perf_counter()

    outs = _TrainerOutputs(cfg, work, prompt, tb, wb, (ml_client, ml_run.info.run_id) if ml_client else None)
    losses, lrs, all_ids, all_ts = [], [], [], []
    ema = None
    t0 = time.perf_counter()
    n = len(data["ids"])
    progress = Progress(cfg.steps, say, "LoRA step")
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
                if len(ml_batch) >= 800 or time.perf_counter() - ml_flushed >= ML_FLUSH_SECONDS:
                    ml_client.log_batch(ml_run.info.run_id, metrics=ml_batch)   # live: the UI follows
                    ml_batch, ml_flushed = [], time.perf_counter()
            progress(step + 1, f"loss {lv:.4f} (EMA {ev:.4f}), lr {lr:.2e}")
            outs.after_step(unet, step + 1)
        outs.finish(unet, cfg.steps)
    finally:
        if jf:
            jf.close()
        if tb:
            tb.close()
    secs = time.perf_counter() - t0
    unet.eval()
    res = TrainResult(work, logs, jsonl_path, data["dataset"], data["masks_dir"], np.array(losses),
                      np.array(lrs), all_ids, all_ts, data["corrupted"], data["tiled"], data["broken"], secs,
                      checkpoints=outs.checkpoints, validation=outs.validation)
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


def generate_images(unet: Any, prompt: Any, n: int, seed: int = 0, steps: int = 25) -> np.ndarray:
    """Generate ``n`` images with DDPM (``steps`` inference steps, noise seeded by ``seed``) and decode them.

    Returns
    -------
    ndarray of float32, shape (n, 64, 64)
        Grey images in [0, 1] (clamped, as a pipeline's output is).
    """
    import torch

    sched = _scheduler()
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed + 5)
    x = torch.randn(n, 4, LATENT, LATENT, generator=g)
    cond = prompt.expand(n, -1, -1)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(x, t, cond).sample
            x = sched.step(eps, t, x, generator=g).prev_sample
        return ((decode(x) + 1) / 2).clamp(0, 1)[:, 0].numpy()


def _save_pngs(img: np.ndarray, out_dir: Path, step: int) -> list[Path]:
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(img.shape[0]):
        p = out_dir / f"step_{step:06d}_{k}.png"
        Image.fromarray((img[k] * 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def sample_images(unet: Any, prompt: Any, n: int, out_dir: str | Path, step: int = 0, seed: int = 0,
                  steps: int = 25) -> list[Path]:
    """Generate ``n`` samples (:func:`generate_images`) and save them as ``step_<N>_<k>.png``."""
    return _save_pngs(generate_images(unet, prompt, n, seed, steps), Path(out_dir), step)


class _TrainerOutputs:
    """What common trainers write besides scalars (``LoraConfig.validation_every``, ``checkpoint_every``,
    ``kohya_name``): validation images to TensorBoard / W&B / a sample folder, ``checkpoint-N/`` folders,
    kohya-named files and the final ``pytorch_lora_weights.safetensors``."""

    def __init__(self, cfg: "LoraConfig", work: Path, prompt: Any, tb: Any, wb: Any,
                 mlflow: tuple[Any, str] | None = None) -> None:
        self.cfg, self.work, self.prompt, self.tb, self.wb, self.mlflow = cfg, work, prompt, tb, wb, mlflow
        self.steps_per_epoch = max(1, math.ceil(cfg.n_samples / cfg.batch_size))
        self.validation: dict[str, dict[int, np.ndarray]] = {"validation": {}, "test": {}}
        self.checkpoints: list[Path] = []

    def after_step(self, unet: Any, global_step: int) -> None:
        cfg = self.cfg
        if cfg.validation_every and global_step % cfg.validation_every == 0:
            self.validate(unet, global_step, "validation")
        if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0:
            self.save(unet, global_step, final=False)

    def finish(self, unet: Any, global_step: int) -> None:
        if self.cfg.checkpoint_every:
            self.save(unet, global_step, final=True)
        if self.cfg.validation_every:
            self.validate(unet, global_step, "test")

    def validate(self, unet: Any, global_step: int, tag: str) -> None:
        """diffusers' ``log_validation``: the same seed every time, NHWC uint8 images to each tracker."""
        was_training = unet.training
        unet.eval()
        img = generate_images(unet, self.prompt, self.cfg.validation_images, seed=self.cfg.seed)
        if was_training:
            unet.train()
        self.validation[tag][global_step] = img
        rgb = np.repeat((img * 255).round().astype(np.uint8)[..., None], 3, axis=-1)   # (N, H, W, 3)
        if self.tb is not None:
            self.tb.add_images(tag, rgb, global_step, dataformats="NHWC")
        if self.wb is not None:
            import wandb

            self.wb.log({tag: [wandb.Image(im, caption=f"{i}: lora prompt") for i, im in enumerate(rgb)]},
                        step=global_step)
        if self.mlflow is not None:  # MlflowClient.log_image(run_id, image, key=, step=), one call per image
            client, run_id = self.mlflow
            for im in rgb:
                client.log_image(run_id, im, key=tag, step=global_step)
        if self.cfg.validation_dir and tag == "validation":
            _save_pngs(img, self.work / "samples", global_step)

    def save(self, unet: Any, global_step: int, *, final: bool) -> None:
        from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
        from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        peft_sd = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
        out = self.work if final else self.work / f"checkpoint-{global_step}"
        # as train_text_to_image_lora.py: its save_model_hook (checkpoint-N/) saves the PEFT state dict as is
        # (lora_A/lora_B keys), the end of training saves it converted (lora.down/lora.up keys)
        StableDiffusionLoraLoaderMixin.save_lora_weights(
            save_directory=str(out), safe_serialization=True,
            unet_lora_layers=convert_state_dict_to_diffusers(peft_sd) if final else peft_sd)
        self.checkpoints.append(out / "pytorch_lora_weights.safetensors")
        name = self.cfg.kohya_name
        if name:
            epoch = math.ceil(global_step / self.steps_per_epoch)
            kohya = {k: v.contiguous() for k, v in convert_state_dict_to_kohya(
                {f"unet.{k}": v for k, v in peft_sd.items()}).items()}
            meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(self.cfg.rank),
                    "ss_network_alpha": str(self.cfg.rank), "ss_steps": str(global_step), "ss_epoch": str(epoch),
                    "ss_learning_rate": str(self.cfg.lr), "ss_output_name": name}
            path = self.work / (f"{name}.safetensors" if final else f"{name}-{epoch:06d}.safetensors")
            save_file(kohya, str(path), metadata=meta)
            self.checkpoints.append(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m diffdiag.integrations.tiny_lora --build-base [--out DIR] [--check]`` (``make base``)."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(prog="python -m diffdiag.integrations.tiny_lora",
                                 description="Rebuild the tiny base UNet shipped with diffdiag (make base).")
    ap.add_argument("--build-base", action="store_true", required=True,
                    help="train the base from scratch and write tiny_base.safetensors + tiny_base.json")
    ap.add_argument("--out", metavar="DIR", default=str(ASSETS), help=f"where to write them (default {ASSETS})")
    ap.add_argument("--check", action="store_true",
                    help="build into a temporary folder and compare with the shipped file (exit 1 if it differs)")
    ap.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    a = ap.parse_args(argv)
    say = lambda line: print(line, flush=True)  # noqa: E731
    if not a.check:
        build_base(a.out, threads=a.threads, log=say)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        meta = build_base(tmp, threads=a.threads, log=say)
    shipped = shipped_base_meta()
    same = meta["sha256"] == shipped.get("sha256")
    print(f"{'same bytes as' if same else 'DIFFERS from'} the shipped {SHIPPED_BASE} "
          f"(built with {shipped.get('built_with')}; now {meta['built_with']})")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
