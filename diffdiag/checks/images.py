"""Image checks: ``--images`` (lone images and reference/output pairs).

Wires the pixel, stripes and tiling analyzers to the run model. With a pair,
``stripes``, ``hf_noise_patch`` and ``tiling_period_doubling`` describe the
error (output against reference); a lone image is described as itself
(docs/CONTRACT.md §3). At most ``settings.max_images`` inputs are analysed; one
image that fails adds a warning and the rest still run. Logged samples go
through the same :func:`analyze_images` in :mod:`diffdiag.checks.samples`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..analyzers import pixel, spectral, stripes, tiling
from ..findings.words import box_words, period_words
from ..model import CheckResult, Finding, ImageInput, RunData, Settings
from ..registry import register, strict_mode

#: stripes below this RMS amplitude (≈ 2.5/255) or narrower than this are only noted (info)
STRIPE_WARN_AMPLITUDE = 0.01
STRIPE_WARN_COLUMNS = 6
#: ... or whose profile follows the reference's Laplacian this closely
STRIPE_MAX_CONTENT_CORR = 0.6
#: a noisy patch is a warning from this RMS of added fine-scale signal (re-encoding artefacts stay below)
PATCH_WARN_RMS = 0.025
#: a crop offset must explain this much of the pair's error
OFFSET_MIN_IMPROVEMENT = 0.15


def _shift_value(v: float) -> float | int:
    r = round(v)
    return int(r) if abs(v - r) <= 0.2 else round(float(v), 1)


def _loc(item: ImageInput, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"image": item.path}
    d.update(kw)
    return d


def _base_evidence(item: ImageInput) -> dict[str, Any]:
    ev: dict[str, Any] = {"shape": list(item.image.shape)}
    if item.step is not None:
        ev["step"] = item.step
    if item.notes:
        ev["notes"] = list(item.notes)
    return ev


def degenerate_findings(item: ImageInput, which: str = "image") -> list[Finding]:
    """``image_degenerate`` for the output/lone image (and the reference when ``which="reference"``)."""
    arr = item.image if which == "image" else item.reference
    name = item.path if which == "image" else (item.reference_path or "reference")
    problem, stats = pixel.degenerate_problem(arr)
    if problem is None:
        return []
    sev = "critical" if problem in ("nonfinite", "black") else "warning"
    words = {"nonfinite": f"contains non-finite values ({stats['nonfinite_fraction']:.1%} of pixels)",
             "black": "is black", "white": "is white", "uniform": "is a uniform colour",
             "saturated": f"is saturated: {stats.get('clipped_low', 0):.0%} of its values are clipped at black "
                          f"and {stats.get('clipped_high', 0):.0%} at white"}[problem]
    hint = " — the usual sign of an fp16 VAE overflow; decode in fp32 or use an fp16-fixed VAE" \
        if problem in ("nonfinite", "black") else \
        " — the look of an over-driven model (too high a learning rate or LoRA scale, or an exploded LoRA)" \
        if problem == "saturated" else ""
    ev = dict(stats)
    if which == "reference":
        ev["role"] = "reference"
    return [Finding("image_degenerate", sev, 1.0, f"The {'reference ' if which == 'reference' else ''}"
                    f"image {name} {words}{hint}.", {"image": name, "problem": problem}, ev)]


def pair_findings(item: ImageInput, settings: Settings) -> list[Finding]:
    """Findings for a reference/output pair (both finite, same shape)."""
    assert item.reference is not None
    # every analyzer below works on luma: convert once
    out, ref = spectral.to_gray(item.image), spectral.to_gray(item.reference)
    thr = settings.fft_threshold
    found: list[Finding] = []
    base = _base_evidence(item)
    rname = item.reference_path or "reference"
    # crop offset first: a shifted crop makes every other error look structured
    rp = tiling.periodicity(ref, threshold=thr)
    off = pixel.crop_offset(out, ref)
    sy, sx = (_shift_value(v) for v in off.shift_px)
    shifted = (abs(off.shift_px[0]) >= 0.5 or abs(off.shift_px[1]) >= 0.5) and \
        off.improvement >= OFFSET_MIN_IMPROVEMENT
    if shifted and rp.found and max(abs(off.shift_px[0]), abs(off.shift_px[1])) > 1.5:
        shifted = False  # a tiled picture matches itself at many shifts: only a small offset is meaningful
    if shifted:
        found.append(Finding(
            "crop_offset", "warning", min(1.0, 0.5 + off.improvement),
            f"{item.path} is offset by [dy, dx] = [{sy}, {sx}] px against {rname}; undoing the shift removes "
            f"{off.improvement:.0%} of the error (a misaligned crop or mask).",
            _loc(item, reference=rname, shift_px=[sy, sx]),
            {**base, "shift_exact": [round(v, 2) for v in off.shift_px], "error_before": off.error_before,
             "error_after": off.error_after, "improvement": off.improvement}))
    # tiling: the reference's period, and doubling in the output
    dbl = None
    if rp.found:
        dbl = tiling.period_doubling(out, ref, threshold=thr, ref_period=rp)
        if dbl.found:
            found.append(Finding(
                "tiling_period_doubling", "warning",
                min(1.0, 0.6 + 0.01 * max([v for v in dbl.odd_harmonic_snr.values() if np.isfinite(v)] or [0])),
                f"{item.path} repeats {period_words(dbl.doubled_period_px, 'every')} where its reference {rname} "
                f"repeats {period_words(dbl.period_px, 'every')}: the tiling period doubled along "
                f"{', '.join(dbl.axes)}.",
                _loc(item, reference=rname, period_px=dbl.period_px, doubled_period_px=dbl.doubled_period_px),
                {**base, "axes": dbl.axes, "odd_harmonic_snr": dbl.odd_harmonic_snr, "autocorr": dbl.corr,
                 "reference_strength": rp.strength}))
    else:
        op = tiling.periodicity(out, threshold=thr)
        if op.found and op.seamless:
            found.append(Finding(
                "periodic_pattern", "warning", op.strength,
                f"{item.path} repeats {period_words(op.period_px, 'every')} although its reference {rname} does not.",
                _loc(item, period_px=op.period_px),
                {**base, "strength": op.strength, "seamless": op.seamless, "reference": rname}))
    if not shifted:
        bands = stripes.pair_stripes(out, ref, threshold=thr)
        blob = len(bands) == 2 and _iou(bands[0].bbox, bands[1].bbox) >= 0.5
        strong = []
        for s in bands:
            f = _stripe_finding(item, s, base, pair=True)
            if blob:
                # "bands" on both axes over one area are a blob (e.g. a clipped noisy patch), not stripes
                f.severity, f.score = "info", min(f.score, 0.3)
                f.evidence["both_axes"] = True
            if _explained_by_tiling(s, rp, dbl):
                # the error of a doubled tiling is periodic along the doubled axis: that is the tiling symptom
                f.severity, f.score = "info", min(f.score, 0.3)
                f.evidence["explained_by"] = "tiling_period_doubling" if dbl is not None and dbl.found \
                    else "reference tiling"
            found.append(f)
            if f.severity != "info":
                strong.append(s)
        patches = pixel.noise_patches(out, ref)
        for p in patches:
            # fine periodic stripes add high-frequency energy too: a patch inside a band is the band
            if any(_inside(p.bbox, s.bbox) >= 0.5 for s in strong):
                continue
            f = _patch_finding(item, p, base, pair=True)
            if dbl is not None and dbl.found and _repeats_with(p, dbl.doubled_period_px, out - ref):
                # the error of a doubled tile repeats with the doubled period: a patch whose error recurs one
                # period away is that error, not noise
                f.severity, f.score = "info", min(f.score, 0.25)
                f.evidence["explained_by"] = "tiling_period_doubling"
            found.append(f)
    return found


#: a patch is the repeated error of a doubled tile when the error one doubled period away (along either axis,
#: or both) correlates with it at least this much — it explains ≥ 80 % of the patch's error variance (a doubled
#: tile's repeated error correlates at ~1.0); noise added to one spot does not repeat, and from a quarter of the
#: patch's variance on it keeps the patch a warning
REPEAT_MIN_CORR = 0.9


def _repeats_with(p: pixel.NoisePatch, period: Any, err: np.ndarray) -> bool:
    """Whether the error in ``p``'s box recurs one ``period`` ``[py, px]`` (px) away.

    ``err`` (H, W) is the pair's luma error (output − reference); an axis without a period is not shifted.
    """
    py, px = (int(round(v)) if v else 0 for v in (list(period) + [None, None])[:2])
    x0, y0, x1, y1 = p.bbox
    a = err[y0:y1, x0:x1].ravel()
    if a.size < 16 or not a.std() > 0:
        return False
    h, w = err.shape
    for dy, dx in {(sy * py, sx * px) for sy in (-1, 0, 1) for sx in (-1, 0, 1)} - {(0, 0)}:
        if not (0 <= y0 + dy and y1 + dy <= h and 0 <= x0 + dx and x1 + dx <= w):
            continue
        b = err[y0 + dy:y1 + dy, x0 + dx:x1 + dx].ravel()
        if b.std() > 0 and float(np.corrcoef(a, b)[0, 1]) >= REPEAT_MIN_CORR:
            return True
    return False


def _explained_by_tiling(s: stripes.Stripe, rp: tiling.Periodicity, dbl: tiling.Doubling | None) -> bool:
    """A band along an axis where the pair's tiling doubled, or at a multiple of the reference's tile period."""
    ax = 1 if s.axis == "vertical" else 0
    if dbl is not None and dbl.found and ("x" if ax == 1 else "y") in dbl.axes:
        return True
    p = rp.period_px[ax]
    if p and s.period_px:
        k = s.period_px / p
        return round(k) >= 1 and abs(s.period_px - round(k) * p) <= 1
    return False


def _iou(a: list[int], b: list[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _inside(a: list[int], b: list[int]) -> float:
    """Fraction of box ``a`` that lies inside box ``b``."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = max(1, (a[2] - a[0]) * (a[3] - a[1]))
    return ix * iy / area


def _stripe_finding(item: ImageInput, s: stripes.Stripe, base: dict, pair: bool) -> Finding:
    # a band whose profile follows the reference's own edges is a re-rendering error, not banding
    warn = s.amplitude >= STRIPE_WARN_AMPLITUDE and s.columns >= STRIPE_WARN_COLUMNS and \
        s.content_corr < STRIPE_MAX_CONTENT_CORR
    kind = f"periodic (every {s.period_px} px)" if s.period_px else "aperiodic"
    what = "the error against the reference" if pair else "the image"
    where = "columns" if s.axis == "vertical" else "rows"
    return Finding(
        "stripes", "warning" if warn else "info", s.score if warn else min(0.3, s.score),
        f"{s.axis.capitalize()} stripes ({kind}) in {what} of {item.path}: {s.columns} {where} banded "
        f"over the {box_words(s.bbox)} (amplitude {s.amplitude:.3f}).",
        _loc(item, axis=s.axis, period_px=s.period_px, bbox=s.bbox),
        {**base, "strength": s.z, "amplitude": s.amplitude, "banded_lines": s.columns,
         "period_strength": s.period_strength, "content_corr": s.content_corr,
         "on": "error" if pair else "image"})


def _patch_finding(item: ImageInput, p: pixel.NoisePatch, base: dict, pair: bool) -> Finding:
    # alone, fine texture (grass, hair, craters) cannot be told from noise: a note only
    warn = pair and p.rms >= PATCH_WARN_RMS
    return Finding(
        "hf_noise_patch", "warning" if warn else "info", min(1.0, 0.3 + p.ratio / 40) if warn else 0.25,
        f"A patch of high-frequency noise in {item.path} at the {box_words(p.bbox)} "
        f"({p.ratio:.0f}× the frame's typical "
        f"fine-scale {'error' if pair else 'energy'}, RMS {p.rms:.3f}).",
        _loc(item, bbox=p.bbox),
        {**base, "ratio": p.ratio, "rms": p.rms, "area_fraction": p.area_fraction,
         "on": "error" if pair else "image"})


def lone_findings(item: ImageInput, settings: Settings) -> list[Finding]:
    """Findings for a lone image (finite)."""
    thr = settings.fft_threshold
    base = _base_evidence(item)
    found: list[Finding] = []
    per = tiling.periodicity(item.image, threshold=thr)
    if per.found:
        sev = "warning" if per.seamless else "info"
        what = "a seamlessly repeated tile" if per.seamless else "a periodic texture (natural repetition is normal)"
        found.append(Finding(
            "periodic_pattern", sev, per.strength,
            f"{item.path} repeats {period_words(per.period_px, 'every')}: {what}.",
            _loc(item, period_px=per.period_px),
            {**base, "strength": per.strength, "seamless": per.seamless,
             "snr": [e.snr for e in per.estimates]}))
    for s in stripes.image_stripes(item.image, threshold=thr):
        found.append(_stripe_finding(item, s, base, pair=False))
    for p in pixel.noise_patches(item.image, None):
        found.append(_patch_finding(item, p, base, pair=False))
    return found


def image_findings(item: ImageInput, settings: Settings | None = None) -> list[Finding]:
    """Every image finding for one :class:`ImageInput` (lone image or pair).

    Degenerate images (black/white/uniform/non-finite) get ``image_degenerate``
    and no further analysis; a saturated one (values pinned at both ends, still a
    picture) gets ``image_degenerate`` and the rest of the analysis too.
    """
    settings = settings or Settings()
    found = degenerate_findings(item)
    if found and found[0].location["problem"] != "saturated":
        return found
    if item.reference is not None:
        ref_bad = degenerate_findings(item, "reference")
        if ref_bad and ref_bad[0].location["problem"] != "saturated":
            return found + ref_bad
        found += ref_bad
        if item.reference.shape != item.image.shape:
            return found + lone_findings(item, settings)
        return found + pair_findings(item, settings)
    return found + lone_findings(item, settings)


def analyze_images(images: list[ImageInput], settings: Settings | None = None
                   ) -> tuple[list[Finding], list[str]]:
    """:func:`image_findings` of every image, in order; an image that fails becomes a note.

    Parameters
    ----------
    images : list of ImageInput
        Lone images or pairs, all analysed (no ``max_images`` limit here).
    settings : Settings, optional

    Returns
    -------
    findings : list of Finding
    notes : list of str
        One line per image that could not be analysed (the others still are).
    """
    settings = settings or Settings()
    findings: list[Finding] = []
    notes: list[str] = []
    for item in images:
        try:
            findings.extend(image_findings(item, settings))
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the others
            if strict_mode() and not isinstance(exc, (ValueError, MemoryError)):
                raise
            notes.append(f"images: {item.path} could not be analysed ({type(exc).__name__}: {exc})")
    return findings, notes


def _select(run: RunData, settings: Settings) -> list[ImageInput]:
    return list(run.images[:max(1, int(settings.max_images))])


@register("images", needs=lambda run: bool(run.images), order=40)
def check_images(run: RunData, settings: Settings) -> CheckResult:
    """Analyse ``--images`` inputs (see module docstring; samples: :mod:`diffdiag.checks.samples`)."""
    items = _select(run, settings)
    notes: list[str] = []
    skipped = len(run.images) - len(items)
    if skipped > 0:
        notes.append(f"images: analysed {len(items)} images; {skipped} more skipped (--max-images "
                     f"{settings.max_images})")
    findings, failed = analyze_images(items, settings)
    return CheckResult(findings, notes=notes + failed)
