"""diffdiag.redact: what is a secret, what is not (end to end: tests/hostile/test_secrets_hostile.py)."""

from __future__ import annotations

import io

import pytest

from diffdiag.model import Diagnosis, Finding
from diffdiag.redact import RedactingStream, redact, redact_diagnosis, secret_values

ENV = {"WANDB_API_KEY": "k" * 40, "MY_SERVICE_TOKEN": "tok-123456789", "HF_TOKEN": "", "FLAG_TOKEN": "1",
       "HOME": "/root", "MLFLOW_TRACKING_USERNAME": "alice"}


@pytest.mark.parametrize("text, want", [
    ("http://user:SECRETPW@host:5000/x", "http://***@host:5000/x"),
    ("https://tok@host/a?token=abc&x=1&sig=zz", "https://***@host/a?token=***&x=1&sig=***"),
    ("s3://b/k?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA/x", "s3://b/k?X-Amz-Signature=***&X-Amz-Credential=***"),
    ("Authorization: Bearer abcdefghijkl9", "Authorization: Bearer ***"),
    ("Authorization: token abcdefghijkl", "Authorization: token ***"),
    ("header Basic dXNlcjpwYXNzd29yZA==", "header Basic ***"),
    ("api_key=abcdef12 done", "api_key=*** done"),
    ("MLFLOW_TRACKING_PASSWORD=hunter22", "MLFLOW_TRACKING_PASSWORD=***"),
    ("'password': 'pa55word'", "'password': '***'"),
    ("the key " + "0123456789abcdef" * 2 + "01234567 leaked", "the key *** leaked"),
    ("tok-123456789 in a message", "*** in a message"),
])
def test_secrets_are_masked(text, want):
    assert redact(text, environ=ENV) == want


@pytest.mark.parametrize("text", [
    "attention collapsed onto token castle_tower", "token=castle_tower", "loss_key: loss", "basic functionality here",
    "sqlite:////tmp/store/mlflow.db", "run 0123456789abcdef0123456789abcdef", "alice logged it",
    "sha256 " + "ab" * 32, "step 1 of 1", "mailto:someone@example.com", "/root/.cache/diffdiag",
])
def test_ordinary_text_is_kept(text):
    assert redact(text, environ=ENV) == text


def test_secret_values_by_name_and_length():
    assert secret_values(ENV) == ["k" * 40, "tok-123456789"]  # empty and one-character values are no secrets


def test_stream_redacts_whole_lines_split_across_writes(monkeypatch):
    monkeypatch.setenv("SOME_API_KEY", "splitsecret-42")
    out = io.StringIO()
    s = RedactingStream(out)
    s.write("a line with split")
    s.write("secret-42 and more\nnext ")
    s.write("http://u:pw123@h/\n")
    s.flush()
    assert out.getvalue() == "a line with *** and more\nnext http://***@h/\n"


def test_diagnosis_copy_is_redacted_and_the_original_kept():
    f = Finding("loss_spike", "warning", 0.5, "read from http://u:pw9999@host", {"step": 3},
                {"uri": "http://u:pw9999@h"})
    d = Diagnosis(findings=[f], inputs={"mlflow_run": {"tracking_uri": "http://u:pw9999@host"}},
                  warnings=["at http://u:pw9999@host"], details={"loss": object()})
    shown = redact_diagnosis(d)
    assert "pw9999" not in repr(shown.to_dict())
    assert shown.details is d.details and "pw9999" in d.findings[0].message  # data shared, original unchanged
