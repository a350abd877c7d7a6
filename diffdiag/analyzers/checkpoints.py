"""Compare checkpoints: per-module ΔW norms and spectra, growth and change across checkpoints.

Pure numpy; no I/O. For a LoRA module ``ΔW = s · U @ D`` (``U`` = up, shape
(out, r); ``D`` = down, shape (r, in); ``s`` = alpha / r) nothing of size
out × in is ever formed:

* With the r × r Gram matrices ``G_U = UᵀU`` and ``G_D = D Dᵀ`` (float64),
  ``‖ΔW‖_F² = s² · Σ G_U ∘ G_D`` and the singular values of ΔW are
  ``s · sqrt(eig(S G_D S))`` with ``S = G_U^{1/2}`` (symmetric square root) —
  the r × r "core" whose spectrum equals ΔW's (the same numbers the QR route
  ``U = Q_U R_U``, ``Dᵀ = Q_D R_D``, ``svd(R_U R_Dᵀ)`` gives, at a third of
  the cost).
* Between consecutive checkpoints ``⟨ΔW₁, ΔW₂⟩_F = s₁s₂ · trace((U₁ᵀU₂)(D₂D₁ᵀ))``,
  so cosine similarity and ``‖ΔW₂ − ΔW₁‖_F`` cost O((out + in) r²).

Full (non-LoRA) state dicts are compared tensor by tensor: the tracked matrix
is the weight itself (Frobenius norm, no spectrum), the change is
``‖W_k − W_{k−1}‖_F``.

Thresholds (robust, documented in :func:`detect_norm_events`)
--------------------------------------------------------------
Growth is measured as a *power-law exponent* ``p = Δlog‖ΔW‖_F / Δlog step``
between consecutive checkpoints. A healthy LoRA's ΔW accumulates bounded
optimizer steps, so its norm grows at most about linearly with the step
(p ≲ 1, falling later); an explosion is a jump far faster than any such power
law. The first checkpoint (B = 0 at init gives ΔW = 0) has no growth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from .robust import robust_scale

#: explosion: the norm grows at least this factor between consecutive checkpoints …
EXPLOSION_MIN_GROWTH = 2.5
#: … at a power-law exponent of at least this (healthy ΔW grows ≲ linearly in the step) …
EXPLOSION_MIN_EXPONENT = 3.0
#: … that is a robust outlier against the module's other transitions (MAD units; floor below) …
EXPLOSION_MAD_Z = 6.0
EXPLOSION_MAD_FLOOR = 0.25
#: … and reaches a new high: at least this factor above every earlier checkpoint.
EXPLOSION_NEW_HIGH = 2.0
#: collapse: the norm falls below this fraction of the module's earlier peak.
COLLAPSE_RATIO = 0.4
#: modules whose peak norm is below this fraction of the median module's peak are ignored (noise)
NEGLIGIBLE_MODULE = 1e-3

#: ``‖W‖_F / sqrt(out)`` of a layer that keeps unit-RMS inputs at unit scale — its RMS gain. PyTorch's
#: default init of ``nn.Linear``/``nn.Conv*`` (kaiming-uniform, a = √5: entries U(±1/√in)) gives 1/√3;
#: trained layers stay near it (the tiny UNet's trained attention projections: 0.52–0.66, median 0.60).
#: Without the base model, a module's ΔW is measured against a layer of this gain and its output width.
LAYER_GAIN = 1.0 / math.sqrt(3.0)
#: Size thresholds (relative size ρ = ‖ΔW‖_F / ‖W_ref‖_F, see :func:`detect_oversize`), calibrated on real
#: LoRA trainings of the tiny diffusers UNet (PEFT, AdamW, weight decay 1e-2; ranks 4–32, LR 1e-4–3e-3 ×
#: alpha/r 1–2, 10–1000 steps, the shipped trained base and a random-init one): healthy runs reach a median ρ
#: of at most 0.66 and a module ρ of at most 1.96, one module at most 3.2× the adapter's median; an LR of 0.1
#: gives median ρ 6–65 from step 50 on (modules 50–180), an LR ×300 burst on two modules ρ ≈ 100 there.
#: the adapter is oversized when its median module's ρ reaches this (its modules with ρ ≥ 1 are named) …
OVERSIZE_MEDIAN = 2.0
#: … a module is oversized when its own ρ reaches this …
OVERSIZE_MODULE = 4.0
#: … or when it is an outlier of its adapter: ρ ≥ OVERSIZE_OUTLIER_FLOOR and ≥ OVERSIZE_OUTLIER_FACTOR × the median
OVERSIZE_OUTLIER_FACTOR = 20.0
OVERSIZE_OUTLIER_FLOOR = 0.5
#: the largest ρ of any module and of the median module in those healthy trainings (quoted in messages)
HEALTHY_MODULE_SIZE, HEALTHY_MEDIAN_SIZE = 2.0, 0.7


# ---------------------------------------------------------------- one module


@dataclass
class SpectrumStats:
    """Norms and ranks of one ΔW (or W).

    Attributes
    ----------
    fro : float
        Frobenius norm.
    spectral : float
        Largest singular value (NaN when not computed).
    stable_rank : float
        ``fro² / spectral²`` (NaN when not computed).
    effective_rank : float
        Roy & Vetterli's effective rank ``exp(H(σ / Σσ))`` (NaN when not computed).
    singular_values : ndarray, shape (r,)
        Descending (empty when not computed).
    """

    fro: float
    spectral: float = math.nan
    stable_rank: float = math.nan
    effective_rank: float = math.nan
    singular_values: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _gram_up(up: np.ndarray) -> np.ndarray:
    u = _f64(up)
    return u.T @ u


def _gram_down(down: np.ndarray) -> np.ndarray:
    d = _f64(down)
    return d @ d.T


def _psd_sqrt(g: np.ndarray) -> np.ndarray:
    """Symmetric square root of a batch of PSD matrices, shape (..., r, r)."""
    w, v = np.linalg.eigh(g)
    w = np.sqrt(np.clip(w, 0.0, None))
    return (v * w[..., None, :]) @ np.swapaxes(v, -1, -2)


def singular_values_from_grams(g_up: np.ndarray, g_down: np.ndarray, scale: float | np.ndarray = 1.0
                               ) -> np.ndarray:
    """Singular values of ``s·U@D`` from ``G_U = UᵀU`` and ``G_D = D Dᵀ``.

    Parameters
    ----------
    g_up, g_down : ndarray, shape (..., r, r)
        The Gram matrices ``UᵀU`` and ``D Dᵀ`` (symmetric PSD; float64 preferred).
    scale : float or ndarray, shape (...)
        The LoRA scale ``s`` = alpha / r of each module (unitless).

    Returns
    -------
    ndarray, shape (..., r)
        Descending singular values.
    """
    s = _psd_sqrt(g_up)
    core = s @ g_down @ s
    core = 0.5 * (core + np.swapaxes(core, -1, -2))
    ev = np.linalg.eigvalsh(core)[..., ::-1]
    sv = np.sqrt(np.clip(ev, 0.0, None))
    return sv * np.abs(np.asarray(scale, dtype=np.float64))[..., None]


def _batched_singular_values(g_up: np.ndarray, g_down: np.ndarray) -> np.ndarray:
    """Singular values of U@D for a batch of Grams (n, r, r): Cholesky route, eigh route as fallback.

    With ``G_D = L Lᵀ``: ``σ(U D)² = eig(Lᵀ G_U L)`` — one symmetric
    eigenvalue problem of size r per module. A tiny jitter (1e-13 · mean
    diagonal) keeps rank-deficient ``G_D`` factorable; all-zero ones give zeros.
    """
    r = g_down.shape[-1]
    tr = np.trace(g_down, axis1=-2, axis2=-1) / r
    jitter = (1e-13 * tr)[:, None, None] * np.eye(r)
    try:
        chol = np.linalg.cholesky(g_down + jitter + (tr <= 0)[:, None, None] * np.eye(r))
    except np.linalg.LinAlgError:
        return singular_values_from_grams(g_up, g_down)
    chol = chol * (tr > 0)[:, None, None]
    core = np.swapaxes(chol, -1, -2) @ g_up @ chol
    core = 0.5 * (core + np.swapaxes(core, -1, -2))
    ev = np.linalg.eigvalsh(core)[..., ::-1]
    return np.sqrt(np.clip(ev, 0.0, None))


def spectrum_stats(sv: np.ndarray, fro: float | None = None) -> SpectrumStats:
    """Norms and ranks from singular values.

    Parameters
    ----------
    sv : ndarray, shape (r,)
        Singular values of ΔW (or W), any order, non-negative.
    fro : float, optional
        The Frobenius norm when already known exactly (from the Grams);
        default ``sqrt(Σ sv²)``.

    Returns
    -------
    SpectrumStats
        ``singular_values`` is ``sv`` as float64.
    """
    sv = np.asarray(sv, dtype=np.float64)
    f = float(np.sqrt(np.sum(sv ** 2))) if fro is None else float(fro)
    top = float(sv.max()) if sv.size else 0.0
    if top <= 0:
        return SpectrumStats(f, 0.0, 0.0, 0.0, sv)
    p = sv / sv.sum()
    p = p[p > 0]
    eff = float(np.exp(-np.sum(p * np.log(p))))
    return SpectrumStats(f, top, f * f / (top * top), eff, sv)


def lora_stats(up: np.ndarray, down: np.ndarray, scale: float = 1.0) -> SpectrumStats:
    """Norms, spectrum and ranks of ``ΔW = scale · up @ down`` from the factors only.

    Parameters
    ----------
    up : ndarray, shape (out, r)
    down : ndarray, shape (r, in)
    scale : float
        The module's LoRA scale alpha / r (unitless).

    Returns
    -------
    SpectrumStats
        Of ΔW, singular values shape (r,), descending.
    """
    gu, gd = _gram_up(up), _gram_down(down)
    fro = abs(scale) * math.sqrt(max(float(np.sum(gu * gd)), 0.0))
    return spectrum_stats(singular_values_from_grams(gu, gd, scale), fro)


def lora_inner(up1: np.ndarray, down1: np.ndarray, s1: float,
               up2: np.ndarray, down2: np.ndarray, s2: float) -> float:
    """Frobenius inner product ``⟨s₁U₁D₁, s₂U₂D₂⟩ = s₁s₂·trace((U₁ᵀU₂)(D₂D₁ᵀ))`` without forming ΔW.

    Parameters
    ----------
    up1, down1 : ndarray, shapes (out, r₁) and (r₁, in)
        Factors of the first module.
    s1 : float
        Its LoRA scale alpha / r₁.
    up2, down2 : ndarray, shapes (out, r₂) and (r₂, in)
        Factors of the second module (the ranks may differ).
    s2 : float
        Its LoRA scale alpha / r₂.

    Returns
    -------
    float
        ``⟨ΔW₁, ΔW₂⟩_F`` (units of the weights squared).
    """
    a = _f64(up1).T @ _f64(up2)          # (r1, r2)
    b = _f64(down2) @ _f64(down1).T      # (r2, r1)
    return float(s1 * s2 * np.sum(a * b.T))


def dense_stats(delta: np.ndarray) -> SpectrumStats:
    """Reference: norms and spectrum of a dense matrix by full SVD (the slow baseline).

    Parameters
    ----------
    delta : ndarray, shape (out, ...)
        ΔW (or W); trailing axes (e.g. a conv kernel's) are flattened to (out, in).

    Returns
    -------
    SpectrumStats
        Singular values shape (min(out, in),), descending.
    """
    m = _f64(delta).reshape(delta.shape[0], -1)
    sv = np.linalg.svd(m, compute_uv=False)
    return spectrum_stats(sv, float(np.linalg.norm(m)))


# ---------------------------------------------------------------- many checkpoints


@dataclass
class Comparison:
    """Per-checkpoint, per-module statistics of a checkpoint sequence.

    Arrays have shape (n_checkpoints, n_modules); NaN where a module is absent
    (or non-finite, or, for ``cos_prev``/``change``, for the first checkpoint).

    Attributes
    ----------
    names : list of str
        Checkpoint names, in order.
    steps : list of int or None
    modules : list of str
        Module (LoRA) or tensor (full) names, in first-seen order.
    kind : {"lora", "full"}
    fro, spectral, stable_rank, effective_rank : ndarray
        Of ΔW (LoRA) or W (full).
    cos_prev : ndarray
        Cosine similarity of ΔW with the previous checkpoint's (LoRA only).
    change : ndarray
        ``‖M_k − M_{k−1}‖_F`` (M = ΔW or W).
    nonfinite : dict of int to list of str
        Checkpoint index -> modules holding NaN/Inf.
    notes : list of str
    shapes : dict of str to (int, int, int)
        LoRA module -> ``(out, in, rank)`` of its factors (as last seen).
    base_norms : dict of str to float
        LoRA module -> ``‖W₀‖_F`` of the base layer it adapts, when a base was given.
    scales : dict of str to float
        LoRA module -> its scale alpha / r (as last seen).
    """

    names: list[str]
    steps: list[int | None]
    modules: list[str]
    kind: str
    fro: np.ndarray
    spectral: np.ndarray
    stable_rank: np.ndarray
    effective_rank: np.ndarray
    cos_prev: np.ndarray
    change: np.ndarray
    nonfinite: dict[int, list[str]]
    notes: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    base_norms: dict[str, float] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)

    @property
    def top1_energy(self) -> np.ndarray:
        """Share of ‖ΔW‖_F² in the largest singular direction, ``σ₁² / Σσ²`` = 1 / stable rank (NaN unknown)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.stable_rank > 0, 1.0 / self.stable_rank, np.nan)

    def reference_norms(self) -> tuple[np.ndarray, np.ndarray]:
        """The norm each module's ΔW is measured against, shape (n_modules,), and whether it is the base's.

        The base layer's ``‖W₀‖_F`` where :attr:`base_norms` has it, else
        ``LAYER_GAIN · sqrt(out)`` — the norm of a layer of that output width
        whose gain for unit-RMS inputs is :data:`LAYER_GAIN` (NaN when the shape is unknown).
        """
        ref = np.full(len(self.modules), np.nan)
        from_base = np.zeros(len(self.modules), dtype=bool)
        for j, mod in enumerate(self.modules):
            b = self.base_norms.get(mod)
            if b is not None and math.isfinite(b) and b > 0:
                ref[j], from_base[j] = b, True
            elif mod in self.shapes:
                ref[j] = LAYER_GAIN * math.sqrt(self.shapes[mod][0])
        return ref, from_base

    def relative_size(self) -> np.ndarray:
        """``‖ΔW‖_F`` over :meth:`reference_norms`, shape (n_checkpoints, n_modules) (LoRA; NaN for full dicts)."""
        if self.kind != "lora":
            return np.full_like(self.fro, np.nan)
        ref, _ = self.reference_norms()
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.fro / ref[None, :]

    @property
    def totals(self) -> np.ndarray:
        """Per-checkpoint total norm ``sqrt(Σ_modules ‖ΔW‖_F²)``, shape (n_checkpoints,)."""
        return np.sqrt(np.nansum(self.fro ** 2, axis=1))

    @property
    def total_change(self) -> np.ndarray:
        """Per-checkpoint ``sqrt(Σ_modules ‖M_k − M_{k−1}‖²)`` (NaN for the first)."""
        out = np.sqrt(np.nansum(self.change ** 2, axis=1))
        out[np.all(np.isnan(self.change), axis=1)] = np.nan
        return out

    def growth(self) -> np.ndarray:
        """Ratio ``fro_k / fro_{k−1}``, shape (n_checkpoints, n_modules) (NaN for the first / from zero)."""
        g = np.full_like(self.fro, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            prev = self.fro[:-1]
            g[1:] = np.where(prev > 0, self.fro[1:] / prev, np.nan)
        return g

    def dominant_modules(self, k: int, top: int = 5) -> list[tuple[str, float]]:
        """The modules that carry most of the change into checkpoint ``k``: (name, share of Σ change²)."""
        if k <= 0 or k >= len(self.names):
            return []
        c2 = np.nan_to_num(self.change[k] ** 2)
        tot = c2.sum()
        if tot <= 0:
            return []
        order = np.argsort(-c2)[:top]
        return [(self.modules[i], float(c2[i] / tot)) for i in order if c2[i] > 0]


class CheckpointComparer:
    """Accumulate checkpoints one at a time (holding only the previous one) into a :class:`Comparison`.

    Examples
    --------
    >>> cmp = CheckpointComparer()
    >>> for name, step, modules in checkpoints:          # doctest: +SKIP
    ...     cmp.add_lora(name, step, modules)            # modules: {name: (up, down, scale)}
    >>> result = cmp.result()                            # doctest: +SKIP

    Parameters
    ----------
    base_norms : mapping of str to float, optional
        ``‖W₀‖_F`` of the base layer each LoRA module adapts (by module name),
        when the base model is known; the relative size of ΔW is then measured
        against it (:meth:`Comparison.relative_size`).
    """

    def __init__(self, base_norms: Mapping[str, float] | None = None) -> None:
        self.names: list[str] = []
        self.steps: list[int | None] = []
        self.kind: str | None = None
        self._index: dict[str, int] = {}
        self._rows: list[dict[str, tuple[float, float, float, float, float, float]]] = []
        self._prev: dict[str, tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]] = {}
        self._prev_full: dict[str, np.ndarray] = {}
        self.nonfinite: dict[int, list[str]] = {}
        self.notes: list[str] = []
        self.shapes: dict[str, tuple[int, int, int]] = {}
        self.scales: dict[str, float] = {}
        self.base_norms: dict[str, float] = dict(base_norms or {})

    def _module_index(self, name: str) -> int:
        if name not in self._index:
            self._index[name] = len(self._index)
        return self._index[name]

    def _set_kind(self, kind: str) -> None:
        if self.kind is None:
            self.kind = kind
        elif self.kind != kind:
            self.notes.append(f"checkpoint {self.names[-1]!r} is a {kind} state dict among {self.kind} ones; "
                              f"only modules with the same names are compared")

    def add_lora(self, name: str, step: int | None,
                 modules: Mapping[str, tuple[np.ndarray, np.ndarray, float]]) -> None:
        """Add one LoRA checkpoint.

        Parameters
        ----------
        name : str
        step : int or None
        modules : mapping of str to (up, down, scale)
            ``up`` shape (out, r), ``down`` shape (r, in), ``scale`` = alpha / r.

        Notes
        -----
        Factors are cast once to float32 (``up`` pre-multiplied by the scale);
        the r × r products are float32 BLAS accumulated into float64 Grams.
        Against the previous checkpoint only the *differences* of the factors
        enter new products: with ``dU = U₂ − U₁``, ``dD = D₂ − D₁``,
        ``G_U₂ = G_U₁ + U₁ᵀdU + dUᵀU₁ + dUᵀdU`` (likewise for D) and
        ``‖ΔW₂ − ΔW₁‖² = ‖dU·D₂ + U₁·dD‖²`` expanded into r × r traces — so the
        change between nearly equal checkpoints has no catastrophic cancellation,
        and each module costs about ``3·(out + in)·r²`` multiply-adds.
        """
        self.names.append(name)
        self.steps.append(step)
        self._set_kind("lora")
        k = len(self.names) - 1
        bad: list[str] = []
        row: dict[str, tuple[float, float, float, float, float, float]] = {}
        cur: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        names: list[str] = []
        gus: list[np.ndarray] = []
        gds: list[np.ndarray] = []
        cross: dict[str, tuple[float, float]] = {}
        with np.errstate(invalid="ignore", over="ignore"):
            self._lora_products(modules, bad, cur, names, gus, gds, cross)
        self._finish_lora(k, bad, row, cur, names, gus, gds, cross)

    def _lora_products(self, modules, bad, cur, names, gus, gds, cross) -> None:
        for mod, (up, down, scale) in modules.items():
            self._module_index(mod)
            scale = float(scale)
            u = np.asarray(up, dtype=np.float32)
            d = np.asarray(down, dtype=np.float32)
            if u.ndim == 2 and d.ndim == 2:
                self.shapes[mod] = (int(u.shape[0]), int(d.shape[1]), int(d.shape[0]))
            self.scales[mod] = scale
            if not math.isfinite(scale):
                bad.append(mod)
                continue
            u = u * np.float32(scale) if scale != 1.0 else u
            prev = self._prev.get(mod)
            if prev is not None and prev[0].shape == u.shape and prev[1].shape == d.shape:
                pu, pd, pgu, pgd = prev
                du = u - pu
                dd = d - pd
                gdu = (du.T @ du).astype(np.float64)
                cu = (pu.T @ du).astype(np.float64)          # U1ᵀ dU
                gdd = (dd @ dd.T).astype(np.float64)
                cd = (pd @ dd.T).astype(np.float64)          # D1 dDᵀ
                gu = pgu + cu + cu.T + gdu
                gd = pgd + cd + cd.T + gdd
                if not (np.all(np.isfinite(np.diagonal(gu))) and np.all(np.isfinite(np.diagonal(gd)))):
                    bad.append(mod)
                    continue
                # ‖dU D2 + U1 dD‖² = tr(G_dU G_D2) + tr(G_U1 G_dD) + 2 tr((dUᵀU1)(dD D2ᵀ)), dD D2ᵀ = cdᵀ + G_dD
                ch2 = float(np.sum(gdu * gd) + np.sum(pgu * gdd) + 2.0 * np.sum(cu.T * (cd + gdd)))
                pf2 = float(np.sum(pgu * pgd))
                cross[mod] = (max(ch2, 0.0), pf2)
            else:
                gu = (u.T @ u).astype(np.float64)
                gd = (d @ d.T).astype(np.float64)
                if not (np.all(np.isfinite(np.diagonal(gu))) and np.all(np.isfinite(np.diagonal(gd)))):
                    bad.append(mod)
                    continue
            gu = 0.5 * (gu + gu.T)
            gd = 0.5 * (gd + gd.T)
            names.append(mod)
            gus.append(gu)
            gds.append(gd)
            cur[mod] = (u, d, gu, gd)

    def _finish_lora(self, k, bad, row, cur, names, gus, gds, cross) -> None:
        # batched spectra, one batch per rank
        by_rank: dict[int, list[int]] = {}
        for i, g in enumerate(gus):
            by_rank.setdefault(g.shape[0], []).append(i)
        sv_of: dict[str, np.ndarray] = {}
        for idx in by_rank.values():
            sv = _batched_singular_values(np.stack([gus[i] for i in idx]), np.stack([gds[i] for i in idx]))
            for j, i in enumerate(idx):
                sv_of[names[i]] = sv[j]
        for i, mod in enumerate(names):
            fro = math.sqrt(max(float(np.sum(gus[i] * gds[i])), 0.0))
            st = spectrum_stats(sv_of[mod], fro)
            cos = change = math.nan
            if mod in cross:
                ch2, pf2 = cross[mod]
                change = math.sqrt(ch2)
                pf = math.sqrt(max(pf2, 0.0))
                if pf > 0 and fro > 0:
                    cos = max(-1.0, min(1.0, (pf2 + fro * fro - ch2) / (2.0 * pf * fro)))
            row[mod] = (st.fro, st.spectral, st.stable_rank, st.effective_rank, cos, change)
        if bad:
            self.nonfinite[k] = sorted(bad)
        self._rows.append(row)
        self._prev = cur

    def add_full(self, name: str, step: int | None, tensors: Mapping[str, np.ndarray]) -> None:
        """Add one full (non-LoRA) state dict: tensors compared by name with the previous one."""
        self.names.append(name)
        self.steps.append(step)
        self._set_kind("full")
        k = len(self.names) - 1
        bad: list[str] = []
        row: dict[str, tuple[float, float, float, float, float, float]] = {}
        cur: dict[str, np.ndarray] = {}
        for mod, w in tensors.items():
            self._module_index(mod)
            w = np.asarray(w)
            if not np.all(np.isfinite(w)):
                bad.append(mod)
                continue
            fro = float(np.linalg.norm(_f64(w).ravel()))
            change = math.nan
            prev = self._prev_full.get(mod)
            if prev is not None and prev.shape == w.shape:
                change = float(np.linalg.norm(_f64(w).ravel() - _f64(prev).ravel()))
            row[mod] = (fro, math.nan, math.nan, math.nan, math.nan, change)
            cur[mod] = w
        if bad:
            self.nonfinite[k] = sorted(bad)
        self._rows.append(row)
        self._prev_full = cur

    def result(self) -> Comparison:
        """The statistics gathered so far."""
        n, m = len(self.names), len(self._index)
        arrs = [np.full((n, m), np.nan) for _ in range(6)]
        for k, row in enumerate(self._rows):
            for mod, vals in row.items():
                j = self._index[mod]
                for a, v in zip(arrs, vals):
                    a[k, j] = v
        mods = sorted(self._index, key=self._index.__getitem__)
        return Comparison(list(self.names), list(self.steps), mods, self.kind or "lora", *arrs,
                          nonfinite=dict(self.nonfinite), notes=list(self.notes), shapes=dict(self.shapes),
                          base_norms=dict(self.base_norms), scales=dict(self.scales))


# ---------------------------------------------------------------- events


@dataclass
class NormEvent:
    """A checkpoint where module norms exploded or collapsed.

    Attributes
    ----------
    kind : {"explosion", "collapse"}
    index : int
        Checkpoint index in the comparison.
    modules : list of str
        Modules that crossed the threshold at this checkpoint, sorted.
    growth : float
        Explosion: ``‖·‖`` of those modules together at k over k−1. Collapse: at k over their peak.
    per_module : dict of str to float
        Each module's own ratio (same definition).
    exponent : dict of str to float
        Explosion: the power-law exponent Δlog‖ΔW‖/Δlog step of each module.
    fraction : float
        Share of the compared modules involved.
    cumulative_fraction : float
        Collapse: share of the modules that have collapsed by this checkpoint
        (this one and earlier ones); explosion: same as ``fraction``.
    basis : {"growth", "size", "growth+size"}
        Explosion: found from the growth since the previous checkpoint, from the
        size of ΔW at this checkpoint alone (:func:`detect_oversize`; ``growth``
        is then the growth since the previous checkpoint, or None for the first
        one), or both.
    relative : dict of str to float
        Explosion found from size: each oversized module's ``‖ΔW‖_F`` over its
        layer's norm (:meth:`Comparison.relative_size`).
    median_relative : float
        The median relative size over all compared modules at this checkpoint (NaN when not measured).
    peak_index, peak_median, peak_modules
        Explosion found from size: the checkpoint (at or after this one) where
        the adapter's median relative size is largest, that median and how many
        modules are oversized there.
    """

    kind: str
    index: int
    modules: list[str]
    growth: float | None
    per_module: dict[str, float]
    exponent: dict[str, float]
    fraction: float
    cumulative_fraction: float = 0.0
    basis: str = "growth"
    relative: dict[str, float] = field(default_factory=dict)
    median_relative: float = math.nan
    peak_index: int | None = None
    peak_median: float = math.nan
    peak_modules: int = 0


def _log_time(steps: Sequence[int | None]) -> np.ndarray:
    known = [s for s in steps if s is not None]
    if len(known) == len(steps) and len(set(known)) == len(known) and all(
            b > a for a, b in zip(known, known[1:])):
        return np.log(np.maximum(np.asarray(known, dtype=np.float64), 1.0))
    return np.log(np.arange(1, len(steps) + 1, dtype=np.float64))


def detect_norm_events(cmp: Comparison, *, min_growth: float = EXPLOSION_MIN_GROWTH,
                       min_exponent: float = EXPLOSION_MIN_EXPONENT, mad_z: float = EXPLOSION_MAD_Z,
                       new_high: float = EXPLOSION_NEW_HIGH, collapse_ratio: float = COLLAPSE_RATIO
                       ) -> list[NormEvent]:
    """Find norm explosions and collapses in a checkpoint sequence.

    Rules (per module m, consecutive checkpoints k−1 → k; time t = log step,
    or log of the checkpoint's ordinal when steps are unknown or not increasing):

    * **explosion** at k when all hold: ``fro_k / fro_{k−1} ≥ min_growth`` (2.5);
      the exponent ``p = Δlog fro / Δt ≥ min_exponent`` (3 — healthy ΔW grows
      ≲ linearly); with ≥ 3 transitions, ``p`` exceeds the median exponent of the
      module's transitions by ``mad_z`` (6) robust sigmas (1.4826·MAD, floored at
      0.25); and ``fro_k ≥ new_high`` (2) × the module's earlier maximum (a
      recovery after a dip is no explosion).
    * **collapse** at the first k where ``fro_k < collapse_ratio`` (0.4) × the
      module's peak over earlier checkpoints (LoRA ΔW accumulates updates, so a
      healthy one does not shrink to 40 % of its peak; weight decay or other
      regularisation dominating the gradient does that).

    Modules whose peak norm is below ``NEGLIGIBLE_MODULE`` × the median module
    peak, zero norms (ΔW = 0 at init) and non-finite values are ignored here
    (non-finite ones are reported separately).

    Parameters
    ----------
    cmp : Comparison
        Per-checkpoint, per-module norms, arrays of shape (n_checkpoints, n_modules).
    min_growth : float
        Explosion: least factor ``fro_k / fro_{k−1}`` between consecutive checkpoints.
    min_exponent : float
        Explosion: least power-law exponent Δlog fro / Δlog step (unitless).
    mad_z : float
        Explosion: least excess of the exponent over the module's median, in
        robust sigmas (1.4826·MAD).
    new_high : float
        Explosion: least factor above the module's earlier maximum norm.
    collapse_ratio : float
        Collapse: the norm falls below this fraction of the module's earlier peak.

    Returns
    -------
    list of NormEvent
        At most one explosion and one collapse event per checkpoint, in checkpoint order.
    """
    f = np.where(np.isfinite(cmp.fro) & (cmp.fro > 0), cmp.fro, np.nan)
    n, m = f.shape
    if n < 2 or m == 0:
        return []
    with np.errstate(all="ignore"):
        peaks = np.nanmax(np.where(np.isnan(f), -np.inf, f), axis=0)
        ref = np.nanmedian(peaks[np.isfinite(peaks) & (peaks > 0)]) if np.any(peaks > 0) else 0.0
        alive = np.isfinite(peaks) & (peaks > NEGLIGIBLE_MODULE * ref)
        logf = np.log(f)
        t = _log_time(cmp.steps)
        dt = np.diff(t)[:, None]
        dlog = np.diff(logf, axis=0)                       # (n-1, m)
        expo = dlog / np.where(dt > 0, dt, np.nan)
    n_alive = int(alive.sum()) or 1
    events: list[NormEvent] = []
    collapsed = np.zeros(m, dtype=bool)
    for k in range(1, n):
        ex_mods, ex_ratio, ex_exp = [], {}, {}
        co_mods, co_ratio = [], {}
        for j in np.flatnonzero(alive):
            fk = f[k, j]
            raw = cmp.fro[k, j]
            if not np.isfinite(raw):
                continue
            earlier = f[:k, j]
            earlier = earlier[np.isfinite(earlier)]
            if earlier.size == 0:
                continue
            # explosion
            p = expo[k - 1, j]
            if np.isfinite(p) and np.isfinite(f[k - 1, j]):
                ratio = fk / f[k - 1, j]
                ok = ratio >= min_growth and p >= min_exponent and fk >= new_high * earlier.max()
                if ok:
                    others = np.delete(expo[:, j], k - 1)
                    others = others[np.isfinite(others)]
                    if others.size >= 2:
                        med = float(np.median(others))
                        sig = max(robust_scale(others), EXPLOSION_MAD_FLOOR)
                        ok = p - med > mad_z * sig
                if ok:
                    name = cmp.modules[j]
                    ex_mods.append(name)
                    ex_ratio[name] = float(ratio)
                    ex_exp[name] = float(p)
            # collapse (first crossing only)
            if not collapsed[j] and raw < collapse_ratio * earlier.max():
                collapsed[j] = True
                name = cmp.modules[j]
                co_mods.append(name)
                co_ratio[name] = float(raw / earlier.max())
        if ex_mods:
            idx = [cmp.modules.index(x) for x in ex_mods]
            g = math.sqrt(float(np.sum(f[k, idx] ** 2)) / float(np.sum(f[k - 1, idx] ** 2)))
            events.append(NormEvent("explosion", k, sorted(ex_mods), g, ex_ratio, ex_exp, len(ex_mods) / n_alive,
                                    len(ex_mods) / n_alive))
        if co_mods:
            idx = [cmp.modules.index(x) for x in co_mods]
            peak = np.array([np.nanmax(f[:k, i]) for i in idx])
            g = math.sqrt(float(np.sum(np.nan_to_num(cmp.fro[k, idx]) ** 2)) / float(np.sum(peak ** 2)))
            events.append(NormEvent("collapse", k, sorted(co_mods), g, co_ratio, {}, len(co_mods) / n_alive,
                                    float(collapsed[alive].sum()) / n_alive))
    return events


@dataclass
class SizeState:
    """The oversized LoRA modules of one checkpoint (:func:`detect_oversize`).

    Attributes
    ----------
    index : int
        Checkpoint index in the comparison.
    modules : list of str
        Oversized modules, sorted.
    relative : dict of str to float
        Their relative size ``‖ΔW‖_F / ‖W_ref‖_F``.
    median_relative : float
        Median relative size over all compared modules (finite, non-zero ΔW).
    fraction : float
        Share of the compared modules that are oversized.
    from_base : bool
        Every oversized module was measured against its base layer's weights.
    """

    index: int
    modules: list[str]
    relative: dict[str, float]
    median_relative: float
    fraction: float
    from_base: bool


def detect_oversize(cmp: Comparison, *, median_ratio: float = OVERSIZE_MEDIAN, module_ratio: float = OVERSIZE_MODULE,
                    outlier_factor: float = OVERSIZE_OUTLIER_FACTOR,
                    outlier_floor: float = OVERSIZE_OUTLIER_FLOOR) -> list[SizeState]:
    """LoRA modules whose update is too large for the layer it adapts, checkpoint by checkpoint.

    Needs no history: one file is enough. A module's *relative size* is
    ``ρ = ‖ΔW‖_F / ‖W_ref‖_F`` (:meth:`Comparison.relative_size`), with
    ``W_ref`` the base layer when known, else a layer of the module's output
    width and RMS gain :data:`LAYER_GAIN`: ρ is about the RMS change ΔW makes to
    the layer's output relative to the output itself. B starts at 0, so ΔW
    starts at 0, and Adam-type optimisers move each weight by about the LR per
    step: a healthy fine-tune moves a layer by a fraction of its size, a
    blown-up one by many times it (the calibration is at :data:`OVERSIZE_MEDIAN`).

    Rules, at each checkpoint:

    * the **adapter** is oversized when the median module's ρ ≥ ``median_ratio``
      (2); its modules with ρ ≥ 1 are named;
    * a **module** is oversized when ρ ≥ ``module_ratio`` (4: ΔW four times
      the layer it adapts);
    * an **outlier** is oversized: ρ ≥ ``outlier_floor`` (0.5) and ρ ≥
      ``outlier_factor`` (20) × the median ρ (the modules of one adapter are
      trained with one LR and stay within a few × of each other).

    Parameters
    ----------
    cmp : Comparison
        A LoRA comparison (full state dicts give no states).
    median_ratio, module_ratio, outlier_factor, outlier_floor : float
        The thresholds above (unitless).

    Returns
    -------
    list of SizeState
        One per checkpoint with at least one oversized module, in checkpoint order.
    """
    if cmp.kind != "lora" or not cmp.modules:
        return []
    rel = cmp.relative_size()
    _, from_base = cmp.reference_norms()
    out: list[SizeState] = []
    for k in range(len(cmp.names)):
        row = rel[k]
        ok = np.isfinite(row) & (row > 0)
        if not ok.any():
            continue
        med = float(np.median(row[ok]))
        flag = ok & ((row >= module_ratio) | ((row >= outlier_floor) & (row >= outlier_factor * med)))
        if med >= median_ratio:
            flag |= ok & (row >= 1.0)
        if not flag.any():
            continue
        idx = np.flatnonzero(flag)
        mods = sorted(cmp.modules[j] for j in idx)
        out.append(SizeState(k, mods, {cmp.modules[j]: float(row[j]) for j in idx}, med,
                             float(flag.sum()) / float(ok.sum()), bool(np.all(from_base[idx]))))
    return out


def _growth_of(cmp: Comparison, k: int, mods: Sequence[str]) -> float | None:
    """``‖·‖`` of ``mods`` together at k over k−1 (None for the first checkpoint or without both norms)."""
    if k <= 0:
        return None
    idx = [cmp.modules.index(m) for m in mods]
    a, b = cmp.fro[k - 1, idx], cmp.fro[k, idx]
    ok = np.isfinite(a) & np.isfinite(b)
    den = float(np.sum(a[ok] ** 2))
    return math.sqrt(float(np.sum(b[ok] ** 2)) / den) if ok.any() and den > 0 else None


def norm_events(cmp: Comparison, *, min_growth: float = EXPLOSION_MIN_GROWTH,
                min_exponent: float = EXPLOSION_MIN_EXPONENT, mad_z: float = EXPLOSION_MAD_Z,
                new_high: float = EXPLOSION_NEW_HIGH, collapse_ratio: float = COLLAPSE_RATIO,
                oversize_median: float = OVERSIZE_MEDIAN, oversize_module: float = OVERSIZE_MODULE,
                outlier_factor: float = OVERSIZE_OUTLIER_FACTOR,
                outlier_floor: float = OVERSIZE_OUTLIER_FLOOR) -> list[NormEvent]:
    """Explosions and collapses of a checkpoint sequence (or of one file): from growth and from size.

    Growth events are :func:`detect_norm_events`'s; size states are
    :func:`detect_oversize`'s. One blow-up is one event:

    * the first checkpoint with oversized modules is an explosion (``basis``
      ``"size"``; ``growth`` None when it is the first checkpoint — the LoRA
      had blown up before it, or a single file is analysed), merged with the
      growth explosion at that checkpoint when there is one (``"growth+size"``),
      or left to an earlier growth explosion of the same modules (the blow-up
      began there; its ``peak_*`` fields say how large it grew);
    * modules oversized by the time of a later growth explosion are left out of
      it (the same blow-up growing on);
    * a module that was oversized before it shrank has not collapsed: weight
      decay is pulling an exploded update back, which is no over-regularisation;
      it is left out of the collapse events.

    Parameters
    ----------
    cmp : Comparison
    min_growth, min_exponent, mad_z, new_high, collapse_ratio
        :func:`detect_norm_events`'s thresholds.
    oversize_median, oversize_module, outlier_factor, outlier_floor
        :func:`detect_oversize`'s thresholds.

    Returns
    -------
    list of NormEvent
        In checkpoint order (explosion before collapse at one checkpoint).
    """
    events = detect_norm_events(cmp, min_growth=min_growth, min_exponent=min_exponent, mad_z=mad_z,
                                new_high=new_high, collapse_ratio=collapse_ratio)
    sizes = detect_oversize(cmp, median_ratio=oversize_median, module_ratio=oversize_module,
                            outlier_factor=outlier_factor, outlier_floor=outlier_floor)
    if not sizes:
        return events
    first = sizes[0]
    peak = max(sizes, key=lambda st: (st.median_relative, len(st.modules)))
    oversized_at: dict[str, int] = {}
    for st in sizes:
        for m in st.modules:
            oversized_at.setdefault(m, st.index)
    kept: list[NormEvent] = []
    merged = False
    for ev in events:
        if ev.kind == "explosion" and ev.index == first.index and not merged:
            ev.basis, ev.relative, ev.median_relative = "growth+size", dict(first.relative), first.median_relative
            ev.peak_index, ev.peak_median, ev.peak_modules = peak.index, peak.median_relative, len(peak.modules)
            merged = True
        elif ev.kind == "explosion" and ev.index < first.index and not merged and set(ev.modules) & set(oversized_at):
            # the blow-up began as a jump before its modules outgrew their layers: one event, from the jump
            ev.peak_index, ev.peak_median, ev.peak_modules = peak.index, peak.median_relative, len(peak.modules)
            merged = True
        elif ev.kind == "explosion":   # a later jump of modules oversized by then is the same blow-up growing on
            mods = [m for m in ev.modules if oversized_at.get(m, len(cmp.names)) > ev.index]
            if not mods:
                continue
            if len(mods) < len(ev.modules):
                ev = _restrict(cmp, ev, mods)
        else:
            mods = [m for m in ev.modules if oversized_at.get(m, len(cmp.names)) >= ev.index]
            if not mods:
                continue
            if len(mods) < len(ev.modules):
                ev = _restrict(cmp, ev, mods)
        kept.append(ev)
    if not merged:
        kept.append(NormEvent("explosion", first.index, list(first.modules),
                              _growth_of(cmp, first.index, first.modules),
                              {m: r for m, r in first.relative.items()}, {}, first.fraction, first.fraction,
                              "size", dict(first.relative), first.median_relative, peak.index,
                              peak.median_relative, len(peak.modules)))
    kept.sort(key=lambda e: (e.index, e.kind != "explosion"))
    return kept


def _restrict(cmp: Comparison, ev: NormEvent, mods: list[str]) -> NormEvent:
    """``ev`` limited to ``mods`` (growth and fractions recomputed)."""
    k = ev.index
    n_alive = len(ev.modules) / ev.fraction if ev.fraction > 0 else float(len(cmp.modules) or 1)
    idx = [cmp.modules.index(m) for m in mods]
    if ev.kind == "explosion":
        g = _growth_of(cmp, k, mods)
    else:
        f = np.where(np.isfinite(cmp.fro) & (cmp.fro > 0), cmp.fro, np.nan)
        peak = np.array([np.nanmax(f[:k, i]) for i in idx])
        g = math.sqrt(float(np.sum(np.nan_to_num(cmp.fro[k, idx]) ** 2)) / float(np.sum(peak ** 2)))
    frac = len(mods) / n_alive
    cum = ev.cumulative_fraction - (len(ev.modules) - len(mods)) / n_alive if ev.kind == "collapse" else frac
    return NormEvent(ev.kind, k, sorted(mods), g, {m: ev.per_module[m] for m in mods if m in ev.per_module},
                     {m: ev.exponent[m] for m in mods if m in ev.exponent}, frac, max(cum, frac), ev.basis,
                     {m: ev.relative[m] for m in mods if m in ev.relative}, ev.median_relative)


def compare_lora_sequence(checkpoints: Iterable[tuple[str, int | None,
                                                      Mapping[str, tuple[np.ndarray, np.ndarray, float]]]]
                          ) -> Comparison:
    """Convenience: feed ``(name, step, {module: (up, down, scale)})`` items through a :class:`CheckpointComparer`.

    Parameters
    ----------
    checkpoints : iterable of (str, int or None, mapping)
        In training order: name, step (optimizer steps; None when unknown) and
        ``{module: (up (out, r), down (r, in), scale alpha / r)}``.

    Returns
    -------
    Comparison
        Arrays of shape (n_checkpoints, n_modules).
    """
    cmp = CheckpointComparer()
    for name, step, modules in checkpoints:
        cmp.add_lora(name, step, modules)
    return cmp.result()
