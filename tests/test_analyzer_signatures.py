"""The public analyzer functions follow one calling convention (scikit-image style).

Data arguments are positional; every tuning knob (a threshold, a window, a
limit, a switch) comes after ``*``, so a call reads ``detect_spikes(loss,
sigma=3.0)`` and a new knob never shifts a positional argument. Each public
function has a numpy-style docstring with a Parameters section (shapes and
units are written there).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import diffdiag.analyzers

#: modules whose conventions are owned elsewhere
SKIPPED_MODULES = {
    "streaming",  # a stateful stream monitor (classes, no analyzer functions); owned by the hook's engineer
}

#: (module, function, parameter): optional *data* with a None default, positional on purpose,
#: like ``reference`` in ``skimage.metrics``-style ``f(image, reference=None)``
DATA_WITH_DEFAULT = {
    ("checkpoints", "singular_values_from_grams", "scale"),  # the module's alpha / r read from the checkpoint
    ("checkpoints", "lora_stats", "scale"),           # the module's alpha / r (positional like lora_inner's s1, s2)
    ("checkpoints", "spectrum_stats", "fro"),         # the Frobenius norm when already known (a value, not a knob)
    ("dataset", "brightness_subgroup", "exclude"),    # indices of images left out of the set
    ("dataset", "garbage_stats", "color"),            # the image's pixels (H, W, C), clipping counted per channel
    ("masks", "check_mask", "gray"),
    ("onset", "find_onset", "artifact"),              # the finding id copied into the result (a label)                  # the image (H, W) the mask belongs to, for alignment
    ("pixel", "noise_patches", "reference"),          # the reference image (H, W[, C]) of a pair
    ("stripes", "find_stripes", "weights"),           # per-pixel weights (H, W)
}


def _is_knob(default) -> bool:
    if default is None or isinstance(default, (bool, int, float, str)):
        return True
    return isinstance(default, tuple) and all(isinstance(v, (bool, int, float)) for v in default)


def public_functions():
    out = []
    for info in pkgutil.iter_modules(diffdiag.analyzers.__path__):
        if info.name in SKIPPED_MODULES:
            continue
        mod = importlib.import_module(f"diffdiag.analyzers.{info.name}")
        for name, fn in vars(mod).items():
            if not name.startswith("_") and inspect.isfunction(fn) and fn.__module__ == mod.__name__:
                out.append((info.name, name, fn))
    return out


FUNCTIONS = public_functions()


def test_the_scan_finds_the_analyzers():
    names = {(m, f) for m, f, _ in FUNCTIONS}
    assert {("loss_spikes", "detect_spikes"), ("spectral", "estimate_period"), ("stripes", "find_stripes"),
            ("pixel", "crop_offset")} <= names
    assert len(FUNCTIONS) > 40


def test_the_allow_list_is_current():
    # an entry for a parameter that no longer exists (or is keyword-only now) must go
    by_name = {(m, f): fn for m, f, fn in FUNCTIONS}
    for module, func, param in DATA_WITH_DEFAULT:
        p = inspect.signature(by_name[(module, func)]).parameters[param]
        assert p.kind is p.POSITIONAL_OR_KEYWORD, (module, func, param)


@pytest.mark.parametrize("module,name,fn", FUNCTIONS, ids=[f"{m}.{n}" for m, n, _ in FUNCTIONS])
def test_tuning_knobs_are_keyword_only(module, name, fn):
    bad = [p.name for p in inspect.signature(fn).parameters.values()
           if p.default is not p.empty and p.kind is not p.KEYWORD_ONLY and _is_knob(p.default)
           and (module, name, p.name) not in DATA_WITH_DEFAULT]
    assert not bad, f"diffdiag.analyzers.{module}.{name}: put {bad} after '*' (keyword-only tuning knobs)"


@pytest.mark.parametrize("module,name,fn", FUNCTIONS, ids=[f"{m}.{n}" for m, n, _ in FUNCTIONS])
def test_numpy_docstring_with_parameters(module, name, fn):
    doc = inspect.getdoc(fn) or ""
    assert "\nParameters\n----------\n" in doc, f"diffdiag.analyzers.{module}.{name}: no numpy Parameters section"
    documented = doc.split("\nParameters\n----------\n", 1)[1]
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        assert any(line.startswith(p.name) or f", {p.name}" in line.split(" : ")[0]
                   for line in documented.splitlines()), f"{module}.{name}: parameter {p.name} not documented"
    assert "\nReturns\n-------\n" in doc, f"diffdiag.analyzers.{module}.{name}: no numpy Returns section"
