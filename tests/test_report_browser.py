"""The report as a person sees it: the HTML opened from disk in headless Chromium, the PDF read back.

Uses Debian's ``chromium`` driven by Playwright for Python (``executable_path=/usr/bin/chromium``;
``make test`` installs the package). Screenshots (the whole page and the verdict banner) are kept in
``test-artifacts/``. The run: a loss with NaN steps (critical), a reference/output image pair whose
output carries vertical stripes and a noisy patch (real photo, scikit-image's astronaut).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from diffdiag.causes.titles import cause_title, first_advice, headline
from diffdiag.diagnosis_io import write_diagnosis
from diffdiag.model import SEVERITY_RANK, ImageInput, RunData, RunLog, Series, Settings
from diffdiag.pipeline import analyze
from diffdiag.reports import write_report

from .conftest import validate_diagnosis

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _faulty_run() -> RunData:
    rng = np.random.default_rng(7)
    n = 4000
    steps = np.arange(n)
    loss = 0.12 * np.exp(rng.normal(0, 0.6, n)) * (1 + np.exp(-steps / 800))
    loss[[1200, 3100]] = np.nan
    ema = np.empty(n)
    acc = loss[0]
    for i, v in enumerate(loss):
        if np.isfinite(v):
            acc = 0.99 * acc + 0.01 * v
        ema[i] = acc
    lr = np.full(n, 1e-4)
    log = RunLog(scalars={"train/loss": Series("train/loss", steps, loss),
                          "loss_ema": Series("loss_ema", steps, ema),
                          "lr": Series("lr", steps, lr)},
                 loss_key="train/loss", ema_key="loss_ema", lr_key="lr")
    return RunData(name="browser-case", log=log, images=[_striped_pair()], inputs={"logdir": "synthetic"})


def _striped_pair() -> ImageInput:
    """The astronaut (reference) and an output with vertical stripes (period 12 px) and a noisy patch."""
    from skimage import data

    ref = data.astronaut()[:192, :192].astype(np.float32) / 255
    out = ref.copy()
    x = np.arange(192)
    out[:, 110:180] += 0.06 * np.sin(2 * np.pi * x[110:180] / 12)[None, :, None]
    out[80:120, 20:70] += np.random.default_rng(0).normal(0, 0.15, (40, 50, 3))
    return ImageInput(np.clip(out, 0, 1).astype(np.float32), "/data/run-7/samples/output.png", reference=ref,
                      reference_path="/data/run-7/reference.png")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    run = _faulty_run()
    settings = Settings()
    diag = analyze(run, settings)
    diag.outputs.update(write_report(run, diag, out, settings))
    write_diagnosis(diag, out / "diagnosis.json")
    return out


def test_report_files_written(report_dir: Path) -> None:
    doc = validate_diagnosis(report_dir / "diagnosis.json")
    assert (report_dir / "report.html").stat().st_size > 1000
    pdf = (report_dir / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 2000
    figs = sorted((report_dir / "figures").glob("*.png"))
    assert figs and [str(p) for p in figs] == sorted(doc["outputs"]["figures"])
    ids = [f["id"] for f in doc["findings"]]
    assert "loss_nonfinite" in ids
    nf = doc["findings"][ids.index("loss_nonfinite")]
    assert nf["severity"] == "critical" and nf["location"]["steps"] == [1200, 3100]


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make test installs it)")
def test_report_opens_in_chromium(report_dir: Path, artifacts_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    doc = validate_diagnosis(report_dir / "diagnosis.json")
    console_errors: list[str] = []
    page_errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto((report_dir / "report.html").resolve().as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => ({ok: e.complete && e.naturalWidth > 0, alt: e.alt,"
                       " section: e.closest('figure').dataset.section, id: e.closest('figure').id}))")
            rows = page.eval_on_selector_all(
                "#findings-table tbody tr", "els => els.map(e => ({text: e.innerText, sev: e.dataset.severity,"
                " step: e.dataset.step, id: e.id, links: [...e.querySelectorAll('td.figlinks a')]"
                ".map(a => a.getAttribute('href'))}))")
            verdict = page.inner_text("#verdict")
            answers = page.eval_on_selector_all(
                "#verdict li.answer", "els => els.map(e => ({cause: e.dataset.cause, text: e.innerText}))")
            page.screenshot(path=str(artifacts_dir / "report_screenshot.png"), full_page=True)
            page.locator("#verdict").screenshot(path=str(artifacts_dir / "report_verdict.png"))
            page.locator("#findings-table").screenshot(path=str(artifacts_dir / "report_findings.png"))
            figure_ids = set(page.eval_on_selector_all("figure", "els => els.map(e => e.id)"))
        finally:
            browser.close()
    # every figure and every annotated image loads
    n_figs = len(list((report_dir / "figures").glob("*.png")))
    assert len(images) == n_figs >= 3
    assert all(i["ok"] for i in images), images
    assert [i["alt"] for i in images if i["section"] == "images"] == ["Image samples/output.png"]
    assert not console_errors and not page_errors, (console_errors, page_errors)
    # the banner is the answer: the verdict, then per symptom the top cause in words and what to try first
    assert verdict.startswith("Critical problems found")
    top: dict[str, dict] = {}
    for c in doc["causes"]:  # ranked within each symptom, most probable first
        top.setdefault(c["symptom"], c)
    assert {a["cause"] for a in answers} == {c["id"] for c in top.values()} and len(answers) >= 2
    for a in answers:
        c = top[next(s for s, t in top.items() if t["id"] == a["cause"])]
        assert cause_title(c["id"]) in a["text"] and c["id"] not in a["text"], a
        assert "First try: " + first_advice(c["advice"]) in a["text"], a
    # the findings table: most severe first, then by step; locations in words; every row linked to a figure
    assert len(rows) == len(doc["findings"]) and {r["id"] for r in rows} == {f"finding-{i}" for i in
                                                                             range(len(doc["findings"]))}
    keys = [(-SEVERITY_RANK[r["sev"]], int(r["step"]) if r["step"] else 10 ** 12) for r in rows]
    assert keys == sorted(keys)
    for r in rows:
        assert "[" not in r["text"] and "None" not in r["text"] and "/data/" not in r["text"], r["text"]
        assert r["links"] and all(h[1:] in figure_ids for h in r["links"]), r
    assert any("Non-finite loss" in r["text"] and "2 steps: 1200, 3100" in r["text"] for r in rows)
    stripes = next(r for r in rows if "\tStripes" in r["text"])
    assert "image samples/output.png" in stripes["text"] and "period 12 px" in stripes["text"]


def test_pdf_pages_are_a4_and_page_one_is_the_answer(report_dir: Path) -> None:
    """Read back with pypdf: one page size (A4 portrait) throughout; page 1 says the verdict, the top
    cause of each symptom in words with its first advice, and starts the findings table."""
    from pypdf import PdfReader

    reader = PdfReader(report_dir / "report.pdf")
    sizes = {(round(float(p.mediabox.width)), round(float(p.mediabox.height))) for p in reader.pages}
    assert sizes == {(595, 842)} and len(reader.pages) >= 3
    first = " ".join(reader.pages[0].extract_text().split())
    assert first.startswith("diffdiag report — browser-case"), first[:200]
    doc = validate_diagnosis(report_dir / "diagnosis.json")
    from diffdiag.model import Cause, Diagnosis

    d = Diagnosis(causes=[Cause(**c) for c in doc["causes"]])
    assert "Critical problems found" in first
    for h in headline(d):
        assert f"{h.symptom_title}: most probable cause — {h.cause_title}" in first
        assert " ".join(f"First try: {h.advice}".split()[:8]) in first
    assert "Findings" in first and "Non-finite loss" in first
    text = " ".join(" ".join(p.extract_text().split()) for p in reader.pages)
    n = len(list((report_dir / "figures").glob("*.png")))
    assert all(text.count(f"Figure {k}. ") == 1 for k in range(1, n + 1)) and f"Figure {n + 1}. " not in text
    assert "Figure 1. Training loss" in text
    assert reader.metadata.title == "diffdiag report — browser-case"
