"""The report's checkpoint figures for 1, 2 and many checkpoints, the PDF's layout, and a report on
inputs that cannot be judged.

Checkpoints are real kohya-format LoRA files with diffusers-length module names (up to 76 characters),
written here; the PDF is read back with pypdf.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffdiag import api
from diffdiag.model import CANNOT_JUDGE_NOTE, Diagnosis, Finding, RunData, Settings
from diffdiag.reports import make_figures

BLOCKS = ("down_blocks_0_attentions_0", "down_blocks_1_attentions_1", "mid_block_attentions_0",
          "up_blocks_1_attentions_2", "up_blocks_2_attentions_0")
MODULES = [f"lora_unet_{b}_transformer_blocks_0_{attn}_{p}" for b in BLOCKS for attn in ("attn1", "attn2")
           for p in ("to_q", "to_k", "to_v")]


def lora_files(out: Path, steps: list[int], *, nan_module: str | None = None) -> list[Path]:
    """One kohya LoRA file per step (30 rank-4 modules, 64x64; B grows from 0, A drifts).

    ``nan_module``: that module's up-weights hold NaN in the last file.
    """
    from safetensors.numpy import save_file

    rng = np.random.default_rng(3)
    out.mkdir(parents=True, exist_ok=True)
    a = {m: rng.normal(0, 0.1, (4, 64)).astype(np.float32) for m in MODULES}
    b = {m: np.zeros((64, 4), np.float32) for m in MODULES}
    paths = []
    for k, st in enumerate(steps):
        t = {}
        for m in MODULES:
            a[m] = a[m] + rng.normal(0, 0.01, a[m].shape).astype(np.float32)
            b[m] = b[m] + rng.normal(0, 0.01, b[m].shape).astype(np.float32)
            up = b[m].copy()
            if m == nan_module and k == len(steps) - 1:
                up[0, 0] = np.nan
            t[f"{m}.lora_down.weight"] = a[m].astype(np.float16)
            t[f"{m}.lora_up.weight"] = up.astype(np.float16)
            t[f"{m}.alpha"] = np.array(4.0, np.float16)
        p = out / f"style-step{st:08d}.safetensors"
        save_file(t, str(p), metadata={"ss_steps": str(st)})
        paths.append(p)
    return paths


def _figures(paths: list[Path]):
    run = api.load(checkpoints=tuple(paths))
    diag = api.analyze(run)
    return run, diag, {f.name: f for f in make_figures(run, diag, Settings()) if f.section == "checkpoints"}


def _labels(fig) -> list[str]:
    ax = fig.axes[0]
    return [t.get_text() for t in ax.get_yticklabels()]


@pytest.mark.parametrize("n", [1, 2, 5])
def test_checkpoint_figures_fit_the_number_of_checkpoints(tmp_path, n):
    import matplotlib.pyplot as plt

    bad = MODULES[7]
    run, diag, figs = _figures(lora_files(tmp_path / "ck", [100 * (i + 1) for i in range(n)], nan_module=bad))
    try:
        assert any(f.id == "checkpoint_nonfinite" and f.severity == "critical" for f in diag.findings)
        expect = {1: ["checkpoint_norms"], 2: ["checkpoint_norms"], 5: ["checkpoint_growth", "checkpoint_norms"]}
        assert sorted(figs) == expect[n]
        fig = figs["checkpoint_norms"].fig
        labels = _labels(fig)
        # every layer, by its full name; the NaN layer in red (and first, but in the heat-map's block order)
        assert sorted(labels) == sorted(MODULES) and (labels[0] == bad if n < 3 else
                                                    labels == diag.details["checkpoints"].modules)
        red = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_color() == "#d7191c"]
        assert red == [bad]
        # nothing is cut off: the labels and the axes lie inside the figure
        fig.canvas.draw()
        box = fig.bbox
        for t in fig.axes[0].get_yticklabels() + [fig.axes[0].xaxis.label]:
            e = t.get_window_extent()
            assert e.x0 >= box.x0 - 1 and e.x1 <= box.x1 + 1 and e.y0 >= box.y0 - 1, (t.get_text(), e, box)
        ax = fig.axes[0]
        if n == 1:  # one bar per finite layer, no heat-map column
            assert len(ax.patches) == len(MODULES) - 1 and not ax.images
        elif n == 2:  # each layer's norm at both checkpoints
            assert [len(c.get_offsets()) for c in ax.collections] == [len(MODULES)] * 2 and not ax.images
        else:  # layers x checkpoints
            assert ax.images and ax.images[0].get_array().shape == (len(MODULES), n)
    finally:
        for f in figs.values():
            plt.close(f.fig)


def test_pdf_of_one_checkpoint_is_a4_throughout(tmp_path):
    """A tall per-layer figure, a long findings table: every page A4 portrait, page 1 the answer."""
    from pypdf import PdfReader

    paths = lora_files(tmp_path / "ck", [500], nan_module=MODULES[3])
    run = api.load(checkpoints=tuple(paths))
    diag = api.analyze(run)
    extra = [Finding("loss_spike", "warning", 0.5, f"The loss spiked at step {s}.", {"step": s, "key": "loss"})
             for s in range(200, 0, -4)]  # 50 rows: the table continues on the next pages
    diag.findings = diag.findings + extra
    api.write_report(run, diag, tmp_path / "rep")
    reader = PdfReader(tmp_path / "rep" / "report.pdf")
    assert {(round(float(p.mediabox.width)), round(float(p.mediabox.height))) for p in reader.pages} == {(595, 842)}
    assert len(reader.pages) >= 3
    first = " ".join(reader.pages[0].extract_text().split())
    assert "Critical problems found" in first and "Non-finite weights" in first
    text = " ".join(" ".join(p.extract_text().split()) for p in reader.pages)
    table = text[text.index("Most severe first, then by training step."):]
    steps = [int(s) for s in __import__("re").findall(r"The loss spiked at step (\d+)\.", table)]
    assert steps == sorted(steps) and len(steps) == 50  # by step, once each
    assert "Figure 1. Per-layer ‖ΔW‖_F of checkpoint" in text


def test_inputs_too_short_to_judge_say_so(tmp_path):
    """A check's note that its input is too short to judge makes the verdict 'cannot judge' (not 'no
    problems found') in the banner and on the PDF's page 1 — unless a finding reaches warning."""
    from pypdf import PdfReader

    from diffdiag.reports.html import render_html
    from diffdiag.reports.pdf import write_pdf

    note = f"loss: 12 logged steps are {CANNOT_JUDGE_NOTE} (at least 50 are needed)"
    d = Diagnosis(findings=[Finding("loss_plateau", "info", 0.3, "Flat.", {"start_step": 0, "end_step": 11})],
                  warnings=[note], created="2026-01-01T00:00:00+00:00")
    assert d.verdict().id == "cannot_judge" and d.unjudged() == [note]
    page = render_html(RunData(name="short"), d, [], [])
    banner = page[page.index("id='verdict'"):page.index("</section>")]
    assert "Cannot judge (inputs too short)" in banner and note in banner and "v-cannot_judge" in page
    write_pdf(RunData(name="short"), d, [], tmp_path / "r.pdf")
    first = " ".join(PdfReader(tmp_path / "r.pdf").pages[0].extract_text().split())
    assert "Cannot judge (inputs too short)" in first and note in first
    d.findings.append(Finding("loss_spike", "warning", 0.5, "A spike.", {"step": 5, "key": "loss"}))
    assert d.verdict().id == "warning"


def test_attention_collapse_has_its_figure():
    """Every attention_collapse finding is drawn: the collapsed layer's token maps, the token framed."""
    import matplotlib.pyplot as plt

    from diffdiag.pipeline import analyze

    rng = np.random.default_rng(0)
    layers = ("down_blocks.0.attentions.0.transformer_blocks.0.attn2",
              "mid_block.attentions.0.transformer_blocks.0.attn2")
    captures = []
    for step in (25, 50, 75):
        for layer in layers:
            maps = rng.random((4, 8, 8)).astype(np.float32) + 0.5
            if layer == layers[0]:
                maps[2] = 1e-4
                maps[2, 3, 4] = 1.0  # token 2 attends to one cell
            captures.append({"step": step, "layer": layer, "maps": maps / maps.sum(axis=0, keepdims=True)})
    run = RunData(name="attention", attention=captures)
    diag = analyze(run, Settings())
    idx = [i for i, f in enumerate(diag.findings) if f.id == "attention_collapse"]
    assert [diag.findings[i].location for i in idx] == [{"layer": layers[0], "token": 2}]
    figs = [f for f in make_figures(run, diag, Settings()) if f.section == "attention"]
    try:
        assert [(f.name, f.findings) for f in figs] == [("attention_maps", idx)]
        axes = figs[0].fig.axes
        assert len(axes) == 4 and axes[2].get_title() == "token 2: point"
        assert [t.get_text() for t in axes[0].texts] == [f"{layers[0]}  (step 75)"]
    finally:
        for f in figs:
            plt.close(f.fig)
