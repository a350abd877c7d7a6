"""One deadline/retry helper for the trackers (diffdiag.deadline): backoff, transient vs fatal errors,
the overall budget; and the MLflow source against real sockets on 127.0.0.1 that accept and never
answer, or answer once and then stall — exit 3 within the deadline plus a small margin."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from diffdiag.deadline import DEFAULT_TIMEOUT_S, Deadline, DeadlineExceeded, default_timeout, retry
from diffdiag.errors import InputError, TrackerError

RUN_ID = "0123456789abcdef0123456789abcdef"


def _raise(exc: BaseException):
    raise exc


def test_budget_from_argument_env_or_default(monkeypatch):
    monkeypatch.delenv("DIFFDIAG_TRACKER_TIMEOUT", raising=False)
    assert default_timeout() == DEFAULT_TIMEOUT_S == 60.0
    monkeypatch.setenv("DIFFDIAG_TRACKER_TIMEOUT", "7.5")
    assert Deadline().seconds == 7.5 and Deadline(2).seconds == 2.0
    assert Deadline(float("inf")).remaining() == float("inf")
    for bad in ("soon", "0", "-3", "nan"):
        monkeypatch.setenv("DIFFDIAG_TRACKER_TIMEOUT", bad)
        with pytest.raises(InputError, match="DIFFDIAG_TRACKER_TIMEOUT must be a"):
            Deadline()


def test_retry_backs_off_on_transient_errors_then_succeeds():
    calls: list[float] = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("connection refused")
        return "ok"

    assert retry(flaky, doing="x", transient=lambda e: isinstance(e, ConnectionError), attempts=4,
                 backoff=0.1, deadline=Deadline(10)) == "ok"
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert len(calls) == 3 and 0.1 <= gaps[0] < 0.5 and 0.2 <= gaps[1] < 0.7  # 0.1 s, then doubled


def test_retry_raises_fatal_errors_at_once_and_gives_up_after_attempts():
    n = []

    def fatal():
        n.append(1)
        raise PermissionError("401 unauthorized")

    with pytest.raises(PermissionError):
        retry(fatal, doing="x", transient=lambda e: False, backoff=0.01)
    assert len(n) == 1
    with pytest.raises(InputError):  # diffdiag's own errors are never retried
        retry(lambda: n.append(1) or _raise(InputError("no such run")), doing="x", transient=lambda e: True,
              backoff=0.01)
    assert len(n) == 2

    def down():
        n.append(1)
        raise TimeoutError("timed out")

    with pytest.raises(TrackerError, match=r"reading x failed after 3 tries \(timed out\)"):
        retry(down, doing="reading x", transient=lambda e: True, attempts=3, backoff=0.01)
    assert len(n) == 5
    with pytest.raises(TrackerError, match="^custom 2$"):
        retry(down, doing="x", transient=lambda e: True, attempts=2, backoff=0.01,
              give_up=lambda last, k: TrackerError(f"custom {k}"))


def test_no_backoff_sleeps_past_the_deadline():
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"reading x: no answer within the 1 s deadline; last error: boom"):
        retry(lambda: _raise(OSError("boom")), doing="reading x", transient=lambda e: True,
              attempts=10, backoff=5.0, deadline=Deadline(1))
    assert time.monotonic() - t0 < 0.5  # a 5 s wait would end after the deadline: give up now
    spent = Deadline(0.01, what="reading w")
    time.sleep(0.02)
    with pytest.raises(DeadlineExceeded, match=r"^reading w: no answer .* \(allow more with DIFFDIAG_TRACKER_TIMEOUT="):
        spent.call(lambda: 1)  # no call starts once the budget is spent


def test_a_call_that_blocks_is_abandoned_at_the_deadline():
    release = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="listing: no answer within the 0.5 s deadline"):
        Deadline(0.5).call(lambda: release.wait(30), "listing")
    assert 0.45 < time.monotonic() - t0 < 1.5
    release.set()
    assert Deadline(5).call(lambda: 42) == 42
    with pytest.raises(KeyError):  # the call's own error comes back to the caller
        Deadline(5).call(lambda: {}["missing"])


# ------------------------------------------------------------------------ real sockets, MLflow source

class _Stalling:
    """A TCP server on 127.0.0.1 that accepts connections and reads requests; it answers the first
    ``answers`` HTTP requests with ``body`` (200, JSON) and never answers any other."""

    def __init__(self, answers: int = 0, body: dict | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.left, self.body = answers, json.dumps(body or {}).encode()
        self.requests: list[bytes] = []
        self.conns: list[socket.socket] = []
        self.stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        while not self.stop:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                self.requests.append(head.split(b"\r\n", 1)[0])
                if self.left > 0:
                    self.left -= 1
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(self.body)).encode() + b"\r\n\r\n" + self.body)
                # else: stall — keep the connection open, never answer

    def close(self) -> None:
        self.stop = True
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def mlflow_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFDIAG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)


def test_mlflow_server_that_never_answers_exits_3_within_the_deadline(run_cli, mlflow_env, monkeypatch):
    import mlflow.tracking  # noqa: F401 - warm imports: the deadline times the server, not a cold start
    import mlflow.utils.rest_utils  # noqa: F401

    import integrations.mlflow_source  # noqa: F401

    server = _Stalling()
    monkeypatch.setenv("DIFFDIAG_TRACKER_TIMEOUT", "4")
    try:
        t0 = time.monotonic()
        code, out, err, diag = run_cli("analyze", "--mlflow-run", RUN_ID,
                                       "--mlflow-tracking-uri", f"http://127.0.0.1:{server.port}")
        took = time.monotonic() - t0
    finally:
        server.close()
    assert code == 3 and diag is None
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "no answer within the 4 s deadline" in err and f"127.0.0.1:{server.port}" in err
    assert server.requests and server.requests[0].startswith(b"GET /api/2.0/mlflow/runs/get")
    assert took < 4 + 2.5


def test_mlflow_server_that_answers_once_then_stalls(mlflow_env):
    """The probe is answered (a plausible run), then MLflow's own client calls meet silence: without
    the bounds MLflow waits 120 s per request and retries 7 times."""
    from diffdiag.model import RunData, Settings
    from integrations.mlflow_source import read_mlflow_run

    info = {"run_id": RUN_ID, "run_uuid": RUN_ID, "experiment_id": "0", "status": "FINISHED",
            "start_time": 1, "end_time": 2, "artifact_uri": "mlflow-artifacts:/0/x/artifacts",
            "lifecycle_stage": "active", "run_name": "stall"}
    server = _Stalling(answers=1, body={"run": {"info": info, "data": {"metrics": [], "params": [], "tags": []}}})
    run = RunData()
    try:
        t0 = time.monotonic()
        with pytest.raises(TrackerError, match="no answer within the 4 s deadline"):
            read_mlflow_run(RUN_ID, run, Settings(), tracking_uri=f"http://127.0.0.1:{server.port}", timeout=4)
        took = time.monotonic() - t0
    finally:
        server.close()
    assert len(server.requests) >= 2  # answered once, then asked again and stalled
    assert took < 4 + 2.5
    import os

    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ  # MLflow's settings are restored afterwards
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
