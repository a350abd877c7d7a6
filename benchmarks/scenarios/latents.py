"""Labelled latent cases: healthy VAE-like latents and controlled latent faults.

Real VAE latents cannot be produced here without a trained VAE, so healthy
latents are *VAE-like*: real photos (scikit-image) cut into random crops,
reduced 8x into per-cell features (colour means and local texture energy) and
mixed into four channels by one fixed random linear map, standardised to unit
variance and given a little noise. They keep what matters for the analyzers:
image-to-image variation of channel statistics, spatial correlation, and no
periodic structure.

Every generator returns a :class:`LatentCase` whose ``truth`` lists the
findings a correct analysis reports (``[]`` for healthy cases), with the
``location`` keys of docs/CONTRACT.md §3.

Example
-------
>>> case = shifted_latents(seed=3)
>>> folder = write_latent_case(case, tmp_path, fmt="npz")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "immunohistochemistry",
          "hubble_deep_field", "coins", "moon", "grass", "gravel")
VAE_SCALE = 8


@dataclass
class LatentCase:
    """A folder's worth of latent files with the findings it should produce.

    Attributes
    ----------
    name : str
    files : dict
        File name -> array ``[B, C, H, W]`` float32, or ``{"pre": ..., "post": ...}``.
    truth : list of dict
        Expected findings: ``{"id": ..., "location": {...}}``.
    """

    name: str
    files: dict[str, Any]
    truth: list[dict[str, Any]] = field(default_factory=list)


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    img = np.asarray(img, dtype=np.float32) / 255.0
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3]


@lru_cache(maxsize=1)
def _vae_map() -> np.ndarray:
    """The fixed 'encoder' mixing matrix (5 cell features -> 4 channels)."""
    return np.random.default_rng(20240521).normal(size=(4, 5)).astype(np.float32)


@lru_cache(maxsize=None)
def _features(name: str, k: int) -> np.ndarray:
    """Per-cell features of a whole photo on k x k pixel cells, shape (h/k, w/k, 5).

    Features: colour means, texture energy (cell std), horizontal gradient.
    Cells of 6..12 px stand in for the photo seen at different zooms, with no
    resampling (interpolation would add periodic kinks a real VAE never has).
    """
    img = _photo(name)
    h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    img = img[:h, :w]
    hc, wc = h // k, w // k
    cells = img.reshape(hc, k, wc, k, 3)
    mean = cells.mean(axis=(1, 3))
    lum = img.mean(axis=-1).reshape(hc, k, wc, k)
    tex = lum.std(axis=(1, 3))[..., None] * 4.0
    lm = lum.mean(axis=(1, 3))
    grad = np.abs(np.diff(lm, axis=1, prepend=lm[:, :1]))[..., None] * 4.0
    return np.concatenate([mean - 0.45, tex - 0.15, grad - 0.05], axis=-1).astype(np.float32)


def _crop_features(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random crop (random zoom, position, flip, rotation) of a photo's cell features, (size, size, 5)."""
    while True:
        name = PHOTOS[int(rng.integers(len(PHOTOS)))]
        shape = _photo(name).shape
        kmax = min(12, min(shape[:2]) // size)
        if kmax >= 4:
            break
    k = int(rng.integers(max(4, kmax - 6), kmax + 1))
    f = _features(name, k)
    h, w = f.shape[:2]
    y0 = int(rng.integers(0, h - size + 1))
    x0 = int(rng.integers(0, w - size + 1))
    crop = f[y0:y0 + size, x0:x0 + size]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(np.rot90(crop, int(rng.integers(4))))


def vae_like_latents(rng: np.random.Generator, batch: int = 4, size: int = 32) -> np.ndarray:
    """VAE-like latents of random photo crops.

    Parameters
    ----------
    rng : numpy Generator
    batch : int
        Number of samples B.
    size : int
        Latent side in cells (the image side is ``size * 8`` pixels).

    Returns
    -------
    ndarray of float32, shape (B, 4, size, size)
        Roughly zero-mean, unit-variance per channel over a large set.
    """
    out = np.empty((batch, 4, size, size), np.float32)
    m = _vae_map()
    for b in range(batch):
        feats = _crop_features(rng, size)                           # (size, size, 5)
        z = np.einsum("cf,hwf->chw", m, feats) * 2.2
        z += rng.normal(0, 0.15, size=z.shape)
        out[b] = z
    return out


def _step_name(step: int, prefix: str = "latents_step") -> str:
    return f"{prefix}{step:06d}.npy"


def healthy_latents(seed: int = 0, n_files: int = 6, batch: int = 4, size: int = 32,
                    pre_post: bool = False) -> LatentCase:
    """Healthy latents: every file an exchangeable batch of photo latents (no finding expected).

    With ``pre_post`` each file holds ``pre`` (noisy latents) and ``post`` (a
    healthy epsilon prediction: the noise plus a small model error).
    """
    rng = np.random.default_rng(seed)
    files: dict[str, Any] = {}
    for i in range(n_files):
        x0 = vae_like_latents(rng, batch, size)
        if pre_post:
            files[_step_name(100 * (i + 1))] = _pre_post(rng, x0)
        else:
            files[_step_name(100 * (i + 1))] = x0
    return LatentCase(f"healthy_latents_s{seed}", files, [])


def _pre_post(rng: np.random.Generator, x0: np.ndarray) -> dict[str, np.ndarray]:
    """Noisy latents and an epsilon prediction with a realistic error."""
    b = x0.shape[0]
    abar = rng.uniform(0.05, 0.95, size=(b, 1, 1, 1)).astype(np.float32)
    eps = rng.normal(size=x0.shape).astype(np.float32)
    pre = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
    err = rng.normal(0, 0.3, size=x0.shape).astype(np.float32)
    post = eps + err
    return {"pre": pre.astype(np.float32), "post": post.astype(np.float32)}


def shifted_latents(seed: int = 0, n_files: int = 8, batch: int = 4, size: int = 32,
                    n_shifted: int = 1, channels: tuple[int, ...] | None = None,
                    shift: float | None = None, scale: float | None = None) -> LatentCase:
    """Latents where ``n_shifted`` files have some channels shifted and/or rescaled.

    The shift is in units of the channel's standard deviation (default: 1.5..2.5
    at random); the scale multiplies the deviation from the channel mean.
    Truth: one ``latent_batch_shift`` with the shifted files and channels.
    """
    rng = np.random.default_rng(seed)
    case = healthy_latents(seed + 1000, n_files, batch, size)
    names = sorted(case.files)
    bad = sorted(rng.choice(len(names), size=n_shifted, replace=False).tolist())
    if channels is None:
        k = int(rng.integers(1, 3))
        channels = tuple(sorted(rng.choice(4, size=k, replace=False).tolist()))
    if shift is None and scale is None:
        shift = float(rng.uniform(1.5, 2.5)) * (1 if rng.random() < 0.5 else -1)
    pooled = np.concatenate([case.files[n] for n in names], axis=0)
    for i in bad:
        x = case.files[names[i]]
        for c in channels:
            sd = float(pooled[:, c].std())
            mu = float(pooled[:, c].mean())
            if scale is not None:
                x[:, c] = mu + (x[:, c] - mu) * scale
            if shift is not None:
                x[:, c] += shift * sd
    truth = [{"id": "latent_batch_shift",
              "location": {"files": [names[i] for i in bad], "channels": list(channels)}}]
    return LatentCase(f"shifted_latents_s{seed}", case.files, truth)


def periodic_latents(seed: int = 0, period: int = 4, axis: str = "vertical", channel: int = 1,
                     amplitude: float = 0.5, n_files: int = 4, batch: int = 4, size: int = 32,
                     files_affected: int | None = None) -> LatentCase:
    """Latents with a periodic band pattern in one channel.

    Parameters
    ----------
    period : int
        Period in latent cells (any integer >= 2; non-powers of two welcome).
    axis : {"vertical", "horizontal"}
        "vertical" bands vary along x (columns), as in docs/CONTRACT.md §3.
    channel : int
    amplitude : float
        Peak amplitude in units of the channel's standard deviation.
    files_affected : int, optional
        How many files carry the pattern (default: all).

    Truth: ``latent_periodicity`` (files, axis, period, channel) and ``stripes``
    (location ``latents``, period_px = period * 8).
    """
    rng = np.random.default_rng(seed)
    case = healthy_latents(seed + 2000, n_files, batch, size)
    names = sorted(case.files)
    k = len(names) if files_affected is None else files_affected
    hit = names[:k]
    phase = rng.uniform(0, 2 * np.pi)
    coord = np.arange(size, dtype=np.float32)
    wave = np.sign(np.sin(2 * np.pi * coord / period + phase)) * 0.5 + 0.5 * np.sin(
        2 * np.pi * coord / period + phase)
    wave = (wave - wave.mean()) / (np.abs(wave).max() + 1e-9)
    for n in hit:
        x = case.files[n]
        sd = float(x[:, channel].std())
        if axis == "vertical":
            x[:, channel] += amplitude * sd * wave[None, None, :]
        else:
            x[:, channel] += amplitude * sd * wave[None, :, None]
    truth = [{"id": "latent_periodicity",
              "location": {"files": hit, "axis": axis, "period": period, "channel": channel}},
             {"id": "stripes", "location": {"latents": hit[0], "axis": axis, "period_px": period * VAE_SCALE}}]
    return LatentCase(f"periodic_latents_p{period}_{axis}_s{seed}", case.files, truth)


def banded_latents(seed: int = 0, axis: str = "vertical", channel: int = 2, n_lines: int = 3,
                   amplitude: float = 0.8, n_files: int = 5, batch: int = 4, size: int = 32) -> LatentCase:
    """Aperiodic banding: ``n_lines`` random columns (rows) of one channel offset by ``amplitude``
    standard deviations over half the frame, at the same place in every sample.

    Truth: ``stripes`` (location ``latents``, axis, ``period_px`` None) with ``bbox_cells``
    [x0, y0, x1, y1] in the truth's ``evidence``.
    """
    rng = np.random.default_rng(seed)
    case = healthy_latents(seed + 3000, n_files, batch, size)
    names = sorted(case.files)
    lines = sorted(int(v) for v in rng.choice(size, n_lines, replace=False))
    start = int(rng.integers(0, size // 2))
    sd = float(np.concatenate([case.files[n][:, channel] for n in names]).std())
    for n in names:
        x = case.files[n]
        if axis == "vertical":
            x[:, channel, start:start + size // 2][..., lines] += amplitude * sd
        else:
            x[:, channel, lines, start:start + size // 2] += amplitude * sd
    if axis == "vertical":
        bbox = [lines[0], start, lines[-1] + 1, start + size // 2]
    else:
        bbox = [start, lines[0], start + size // 2, lines[-1] + 1]
    truth = [{"id": "stripes", "location": {"latents": names[0], "axis": axis, "period_px": None},
              "evidence": {"bbox_cells": bbox, "channel": channel}}]
    return LatentCase(f"banded_latents_{axis}_s{seed}", case.files, truth)


def drift_latents(seed: int = 0, n_files: int = 6, batch: int = 4, size: int = 32,
                  channels: tuple[int, ...] | None = None, files_affected: int | None = None,
                  mode: str = "scale") -> LatentCase:
    """pre/post latents where the prediction's statistics drift in some channels of some files.

    ``mode`` "scale" multiplies the prediction by 2.5..4 in ``files_affected``
    files (default 2: a drift against the run's other files), "explode" by
    8..20 (an absolute drift, found even in every file), "shift" adds 3.5..5
    standard deviations, "collapse" multiplies by 0.02..0.08.
    Truth: ``latent_stats_drift`` with the affected files and channels.
    """
    rng = np.random.default_rng(seed)
    names = [_step_name(100 * (i + 1)) for i in range(n_files)]
    files = {n: _pre_post(rng, vae_like_latents(rng, batch, size)) for n in names}
    if channels is None:
        k = int(rng.integers(1, 3))
        channels = tuple(sorted(rng.choice(4, size=k, replace=False).tolist()))
    k = min(2, n_files) if files_affected is None else files_affected
    hit = names[n_files - k:]
    for n in hit:
        post = files[n]["post"]
        for c in channels:
            if mode == "scale":
                post[:, c] *= rng.uniform(2.5, 4.0)
            elif mode == "explode":
                post[:, c] *= rng.uniform(8.0, 20.0)
            elif mode == "shift":
                post[:, c] += rng.uniform(3.5, 5.0) * (1 if rng.random() < 0.5 else -1)
            elif mode == "collapse":
                post[:, c] *= rng.uniform(0.02, 0.08)
            else:
                raise ValueError(mode)
    truth = [{"id": "latent_stats_drift", "location": {"files": hit, "channels": list(channels)}}]
    return LatentCase(f"drift_latents_{mode}_s{seed}", files, truth)


def write_latent_case(case: LatentCase, folder: str | Path, fmt: str = "npy") -> Path:
    """Write a case's files into ``folder`` in one of the docs/CONTRACT.md §2 formats.

    ``fmt`` is ``npy`` (plain arrays only; pre/post files become ``.npz``),
    ``npz``, ``safetensors`` or ``pt``. Returns the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in case.files.items():
        stem = Path(name).stem
        arrays = value if isinstance(value, dict) else {"latents": value}
        if fmt == "npy" and not isinstance(value, dict):
            np.save(folder / f"{stem}.npy", value)
        elif fmt in ("npy", "npz"):
            np.savez(folder / f"{stem}.npz", **arrays)
        elif fmt == "safetensors":
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(folder / f"{stem}.safetensors"))
        elif fmt == "pt":
            import torch

            obj = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
            torch.save(obj if isinstance(value, dict) else obj["latents"], folder / f"{stem}.pt")
        else:
            raise ValueError(f"unknown format {fmt!r}")
    return folder
