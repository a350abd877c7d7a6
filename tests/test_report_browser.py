"""The HTML report as a person sees it: opened from disk in headless Chromium.

Uses Debian's ``chromium`` driven by Playwright for Python (``executable_path=/usr/bin/chromium``;
``make test`` installs the package). A screenshot is kept in ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from diffdiag.diagnosis_io import write_diagnosis
from diffdiag.model import RunData, RunLog, Series, Settings
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
    return RunData(name="browser-case", log=log, inputs={"logdir": "synthetic"})


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
                "img", "els => els.map(e => ({ok: e.complete && e.naturalWidth > 0, alt: e.alt}))")
            rows = page.eval_on_selector_all("#findings-table tbody tr", "els => els.map(e => e.innerText)")
            verdict = page.inner_text("#verdict")
            page.screenshot(path=str(artifacts_dir / "report_screenshot.png"), full_page=True)
        finally:
            browser.close()
    n_figs = len(list((report_dir / "figures").glob("*.png")))
    assert len(images) == n_figs >= 1
    assert all(i["ok"] for i in images), images
    assert not console_errors and not page_errors, (console_errors, page_errors)
    assert any("loss_nonfinite" in r for r in rows)
    assert "Critical" in verdict
