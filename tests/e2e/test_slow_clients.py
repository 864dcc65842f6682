"""Slow and abusive clients against a real server on real sockets (issue #16, item 5).

The server is uvicorn with ``create_app(settings)`` and ``uvicorn_limits(settings)``
(service/http_limits.py) in a subprocess, with short bounds: a trickled upload is answered
408 and its connection closed, a half-sent request head is closed after the header
timeout, an idle keep-alive connection after the keep-alive timeout, connections past
``max_connections`` get the JSON 503 while admitted ones are still served, and a key over
its burst gets 429 with ``Retry-After`` while another key does not. The last test runs the
same checks through ``python -m service`` (service/server.py), which passes once the
server wires ``uvicorn_limits``.

With ``SLOW_CLIENTS_RESULTS=<path>`` the measured bounds are written there as JSON
(benchmarks/results/slow_clients.json).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import REPO, Server, free_port

HEADER_S = 2.0
IDLE_S = 1.0
KEEP_ALIVE_S = 1.0
MAX_CONNECTIONS = 6
PER_MINUTE = 6.0  # one token per 10 s
BURST = 3
SETTINGS = {
    "header_timeout_s": str(HEADER_S),
    "upload_idle_timeout_s": str(IDLE_S),
    "keep_alive_timeout_s": str(KEEP_ALIVE_S),
    "max_connections": str(MAX_CONNECTIONS),
    "rate_limit_per_minute": str(PER_MINUTE),
    "rate_limit_burst": str(BURST),
    "api_keys": "key-a,key-b,key-upload,key-stow",
    "default_resolution": "256",
    "decode_isolation": "thread",
    "decode_workers": "1",
    "intra_op_threads": "1",
    "job_workers": "1",
}
#: slack on every measured bound (s): a busy 2-core CI machine
SLACK_S = 1.0

SERVE = """
import sys, uvicorn
from service.app import create_app
from service.http_limits import uvicorn_limits
from service.settings import Settings
settings = Settings()
config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=int(sys.argv[1]),
                        log_config=None, access_log=False, **uvicorn_limits(settings))
uvicorn.Server(config).run()
"""


class LimitedServer:
    """``create_app`` under uvicorn with ``uvicorn_limits`` in a subprocess."""

    def __init__(self, models: Path, log_path: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARPCXR_")}
        env.update({
            "SHARPCXR_MODELS_DIR": str(models),
            "SHARPCXR_DATA_DIR": str(log_path.parent / "data"),
        })  # fmt: skip
        env.update({f"SHARPCXR_{k.upper()}": v for k, v in settings.items()})
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(self.port)],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited at start-up:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"service not ready after 180 s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


@pytest.fixture(scope="module")
def measured() -> Iterator[dict[str, Any]]:
    """The bounds measured by this module's tests; written out with SLOW_CLIENTS_RESULTS."""
    results: dict[str, Any] = {
        "settings": {k: SETTINGS[k] for k in list(SETTINGS)[:6]},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    yield results
    target = os.environ.get("SLOW_CLIENTS_RESULTS")
    if target:
        Path(target).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def limited(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = LimitedServer(models_dir, tmp_path_factory.mktemp("slow") / "service.log", **SETTINGS)
    yield server.url
    server.stop()


# ------------------------------------------------------------------ raw-socket helpers
def connect(url: str) -> socket.socket:
    port = int(url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_response(
    sock: socket.socket, timeout_s: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: (status, lower-cased headers, body)."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def seconds_until_closed(sock: socket.socket, limit_s: float) -> float:
    """Seconds until the server closes ``sock`` (EOF or reset); fails past ``limit_s``."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server still held the connection after {limit_s} s")
    return time.monotonic() - started


def get(path: str) -> bytes:
    """A complete keep-alive GET request."""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


# ------------------------------------------------------------------ the bounds
def test_a_trickled_upload_is_answered_408_and_its_connection_freed(
    limited: str, measured: dict[str, Any]
) -> None:
    sock = connect(limited)
    sock.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: key-upload\r\n"
        b"Content-Type: application/dicom\r\nContent-Length: 100000\r\n\r\n"
    )
    sock.settimeout(IDLE_S + 1)
    sent_at = time.monotonic()
    answer = b""
    for _ in range(3):  # one byte per (idle + 1) s, until the server answers
        sock.sendall(b"\0")
        sent_at = time.monotonic()
        try:
            answer = sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            continue
        break
    assert answer, "no answer to a stalled upload"
    status, headers, body = read_response(sock)
    to_408 = time.monotonic() - sent_at
    assert status == 408, body
    assert json.loads(body)["error"]["code"] == "upload_timeout"
    assert headers["connection"] == "close"
    closed_after = seconds_until_closed(sock, limit_s=5)
    sock.close()
    assert IDLE_S - 0.1 <= to_408 <= IDLE_S + SLACK_S
    assert closed_after < 0.5  # closed with the answer, not after another timeout
    measured["upload_408_after_last_byte_s"] = round(to_408, 3)
    measured["upload_closed_after_408_s"] = round(closed_after, 3)


def test_a_trickled_stow_is_answered_408(limited: str) -> None:
    sock = connect(limited)
    sock.sendall(
        b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: key-stow\r\n"
        b'Content-Type: multipart/related; type="application/dicom"; boundary=b0\r\n'
        b"Content-Length: 100000\r\n\r\n--b0\r\n"
    )
    sock.settimeout(IDLE_S + 1)
    answer = b""
    for _ in range(3):
        sock.sendall(b"x")
        sent_at = time.monotonic()
        try:
            answer = sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            continue
        break
    assert answer, "no answer to a stalled STOW-RS upload"
    status, _, body = read_response(sock)
    assert status == 408, body
    assert IDLE_S - 0.1 <= time.monotonic() - sent_at <= IDLE_S + SLACK_S
    assert seconds_until_closed(sock, limit_s=5) < 0.5
    sock.close()


def test_an_unread_body_does_not_hold_the_connection(limited: str) -> None:
    """Refused before its body is read (401), the client trickles the body on: bytes cancel
    uvicorn's keep-alive timer, the header timer from the response closes it."""
    sock = connect(limited)
    sock.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: wrong\r\n"
        b"Content-Type: application/dicom\r\nContent-Length: 100000\r\n\r\n"
    )
    assert read_response(sock)[0] == 401
    answered = time.monotonic()
    closed_at = None
    for _ in range(40):  # a byte per 0.25 s: the keep-alive timer alone would never fire
        try:
            sock.sendall(b"\0")
        except (BrokenPipeError, ConnectionResetError):
            closed_at = time.monotonic()
            break
        readable, _, _ = select.select([sock], [], [], 0.25)
        if readable:
            closed_at = time.monotonic()
            break
    sock.close()
    assert closed_at is not None, "the connection was held while the unread body trickled"
    assert closed_at - answered <= HEADER_S + SLACK_S


def test_an_oversized_head_is_refused(limited: str) -> None:
    sock = connect(limited)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused mid-send
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 40_000)
    status, _, _ = read_response(sock)
    assert status == 400
    assert seconds_until_closed(sock, limit_s=2) < 0.5
    sock.close()


def test_a_half_sent_head_is_closed_after_the_header_timeout(
    limited: str, measured: dict[str, Any]
) -> None:
    sock = connect(limited)
    started = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line
    status, _, body = read_response(sock, timeout_s=HEADER_S + 5)
    waited = time.monotonic() - started
    assert status == 408
    assert json.loads(body)["error"]["code"] == "header_timeout"
    assert seconds_until_closed(sock, limit_s=2) < 0.5
    sock.close()
    assert HEADER_S - 0.1 <= waited <= HEADER_S + SLACK_S
    measured["half_head_closed_after_s"] = round(waited, 3)


def test_a_head_dribbled_byte_by_byte_gets_no_more_time(
    limited: str, measured: dict[str, Any]
) -> None:
    """Slowloris: every byte arrives well within any per-byte timeout; the head never ends."""
    sock = connect(limited)
    started = time.monotonic()
    closed_at = None
    for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 100:
        sock.sendall(bytes([byte]))
        # 0.25 s a byte: far faster than any per-byte timeout would ask, and the head
        # would take 35 s; the server speaking (408) or closing ends the wait
        readable, _, _ = select.select([sock], [], [], 0.25)
        if readable:
            closed_at = time.monotonic()
            break
        if time.monotonic() - started > HEADER_S + SLACK_S + 2:
            break
    assert closed_at is not None, "the dribbled head was still held"
    status, _, _ = read_response(sock)
    sock.close()
    held = closed_at - started
    assert status == 408
    assert HEADER_S - 0.1 <= held <= HEADER_S + SLACK_S
    measured["dribbled_head_closed_after_s"] = round(held, 3)


def test_a_silent_connection_is_closed_without_an_answer(limited: str) -> None:
    sock = connect(limited)
    sock.settimeout(HEADER_S + 5)
    started = time.monotonic()
    assert sock.recv(65536) == b""  # closed, nothing said to a client that said nothing
    assert time.monotonic() - started <= HEADER_S + SLACK_S
    sock.close()


def test_an_idle_keep_alive_connection_is_closed(limited: str, measured: dict[str, Any]) -> None:
    sock = connect(limited)
    sock.sendall(get("/healthz"))
    assert read_response(sock)[0] == 200
    sock.sendall(get("/healthz"))  # the connection is reused while not idle
    assert read_response(sock)[0] == 200
    idle = seconds_until_closed(sock, limit_s=KEEP_ALIVE_S + 5)
    sock.close()
    assert KEEP_ALIVE_S - 0.1 <= idle <= KEEP_ALIVE_S + SLACK_S
    measured["idle_keep_alive_closed_after_s"] = round(idle, 3)


def test_a_partial_second_head_is_closed_after_the_header_timeout(limited: str) -> None:
    """After a response, a few bytes cancel uvicorn's keep-alive timer: ours takes over."""
    sock = connect(limited)
    sock.sendall(get("/healthz"))
    assert read_response(sock)[0] == 200
    started = time.monotonic()
    sock.sendall(b"GET /heal")
    status, _, _ = read_response(sock, timeout_s=HEADER_S + 5)
    assert status == 408
    assert HEADER_S - 0.1 <= time.monotonic() - started <= HEADER_S + SLACK_S
    sock.close()


def test_connections_past_the_limit_get_503_and_admitted_ones_are_served(
    limited: str, measured: dict[str, Any]
) -> None:
    held = [connect(limited) for _ in range(MAX_CONNECTIONS)]
    try:
        held[0].sendall(get("/healthz"))  # an admitted client, mid-flood
        assert read_response(held[0])[0] == 200
        refused = 0
        for _ in range(3):  # three more than the limit
            extra = connect(limited)
            extra.sendall(get("/healthz"))
            status, headers, body = read_response(extra)
            assert status == 503, body
            assert json.loads(body)["error"]["code"] == "overloaded"
            assert headers["retry-after"] == "1" and headers["connection"] == "close"
            assert seconds_until_closed(extra, limit_s=2) < 0.5
            extra.close()
            refused += 1
        held[0].sendall(get("/healthz"))  # still served: the flood refused only the extras
        assert read_response(held[0])[0] == 200
        # the silent ones are closed by the header timeout: the slots come back by themselves
        for sock in held[1:]:
            seconds_until_closed(sock, limit_s=HEADER_S + SLACK_S + 1)
    finally:
        for sock in held:
            sock.close()
    assert httpx.get(limited + "/healthz", timeout=5).status_code == 200
    measured["connections_admitted"] = MAX_CONNECTIONS
    measured["connections_past_limit_refused_503"] = refused


def test_many_silent_connections_are_all_let_go(limited: str, measured: dict[str, Any]) -> None:
    """A flood of connections that never speak: each is held at most the header timeout."""
    started = time.monotonic()
    flood = [connect(limited) for _ in range(60)]
    try:
        for sock in flood:
            sock.settimeout(max(0.1, HEADER_S + SLACK_S + 2 - (time.monotonic() - started)))
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(65536) == b""
        longest = time.monotonic() - started
    finally:
        for sock in flood:
            sock.close()
    assert longest <= HEADER_S + SLACK_S + 1
    assert httpx.get(limited + "/healthz", timeout=5).status_code == 200
    measured["silent_flood_connections"] = len(flood)
    measured["silent_flood_all_closed_after_s"] = round(longest, 3)


def test_a_key_over_its_burst_gets_429_and_another_key_does_not(
    limited: str, measured: dict[str, Any]
) -> None:
    with httpx.Client(base_url=limited, timeout=10) as client:
        codes = [
            client.get("/v1/models", headers={"X-API-Key": "key-a"}).status_code
            for _ in range(BURST)
        ]
        assert codes == [200] * BURST
        refused = client.get("/v1/models", headers={"Authorization": "Bearer key-a"})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        # one token per 60 / PER_MINUTE s, rounded up; the ms since the burst do not show
        assert refused.headers["retry-after"] == str(int(60 / PER_MINUTE))
        assert client.get("/v1/models", headers={"X-API-Key": "key-b"}).status_code == 200
        assert client.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
        for _ in range(BURST + 2):  # never limited
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
    assert 'sharpcxr_rate_limited_total{endpoint="/v1/models"} 1.0' in metrics
    assert "key-a" not in metrics
    measured["rate_limit_retry_after_s"] = int(refused.headers["retry-after"])


# ------------------------------------------------------------------ the real server
def test_python_m_service_applies_the_limits(models_dir: Path, tmp_path: Path) -> None:
    server = Server(
        models_dir,
        tmp_path / "service.log",
        header_timeout_s="1",
        keep_alive_timeout_s="1",
        max_connections="3",
        default_resolution="256",
        decode_isolation="thread",
        job_workers="1",
    )
    try:
        sock = connect(server.url)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert read_response(sock, timeout_s=6)[0] == 408
        sock.close()
        sock = connect(server.url)
        sock.sendall(get("/healthz"))
        assert read_response(sock)[0] == 200
        assert seconds_until_closed(sock, limit_s=4) <= 1 + SLACK_S
        sock.close()
        held = [connect(server.url) for _ in range(3)]
        extra = connect(server.url)
        extra.sendall(get("/healthz"))
        status, _, body = read_response(extra)
        assert status == 503 and json.loads(body)["error"]["code"] == "overloaded"
        for sock in [*held, extra]:
            sock.close()
    finally:
        server.stop()
