"""Schema-driven fuzzing of the running HTTP API (Schemathesis, issue #16).

Schemathesis takes the service's own OpenAPI document (built from the app in-process; the
real server, ``python -m service`` on loopback with API key ``fuzz-key``, must serve the
very same) and sends every operation generated requests: its coverage phase (boundary
and negative values of each parameter, unexpected methods) and its fuzzing phase
(Hypothesis, positive and negative), derandomized so that CI sees the same cases every
run. Every response goes through all of Schemathesis' checks: no 5xx, the status code
documented, content type, headers and body conforming to the schema, negative data
rejected, valid data accepted.

Bodies go deep: ``application/dicom`` (raw, and the ``file`` part of
``multipart/form-data``) is drawn from real DICOM files (in-distribution phantoms the
whole pipeline runs on, a CT the gate refuses, the real bad inputs of
``tests/service/conftest.py``) and mutations of them (cut short, header bytes
overwritten, bytes inserted); STOW-RS bodies are ``multipart/related`` messages of such
parts, whole, cut short, with odd part headers or declared lengths. Path parameters
sometimes name real jobs, studies and result objects (seeded before fuzzing), so that
those routes answer 200 with their whole schema, not only 404.

Two variants: with the key, and without a valid one (none, wrong, mis-cased, empty, as
``X-API-Key``, Bearer or Basic): every ``/v1`` and ``/dicomweb`` operation must answer
401, and the checks still hold. The static viewer and docs pages, outside the schema,
get raw request paths (traversal attempts among them). Afterwards the service must be
ready, answer a real prediction, have settled every job and logged no error. The cases
are counted and may not fall below :data:`MIN_CASES`; ``SHARPCXR_FUZZ_REPORT=path``
writes the counts per operation, status and error code as JSON.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.transport import SerializationContext, register_serializer

from service.openapi import openapi_document
from tests.e2e.conftest import Server
from tests.fuzz.conftest import (
    AUTH,
    FUZZ_KEY,
    KNOWN,
    LEDGER,
    STOW_TYPE,
    dicom_bytes,
    error_code,
    related_bodies,
)
from tests.service.conftest import phantom, phantom_dicom

#: cases of the default suite, both variants together (asserted, so it cannot shrink)
MIN_CASES = 2000
#: Hypothesis examples per operation in the fuzzing phase (the coverage phase adds its own)
EXAMPLES_WITH_KEY = 200
EXAMPLES_WITHOUT_KEY = 80
LONG_FACTOR = 10
PROTECTED = ("/v1/", "/dicomweb/")
#: what the unauthorized variant presents, in turn (never the configured key)
WRONG_CREDENTIALS: list[dict[str, str]] = [
    {},
    {"X-API-Key": "not-the-key"},
    {"Authorization": "Bearer not-the-key"},
    {"X-API-Key": FUZZ_KEY.upper()},
    {"X-API-Key": ""},
    {"Authorization": f"Basic {FUZZ_KEY}"},
]


def _related(ctx: SerializationContext, value: Any) -> dict[str, Any]:
    # Schemathesis sends the bare media type of the schema; STOW-RS needs the boundary
    return {"data": value, "headers": {"Content-Type": STOW_TYPE}}


schemathesis.openapi.media_type("application/dicom", dicom_bytes())
schemathesis.openapi.media_type('multipart/related; type="application/dicom"', related_bodies())
register_serializer(_related, 'multipart/related; type="application/dicom"', "multipart/related")


# ------------------------------------------------------------------ the schema
#: The app's own document, built in-process at collection (nothing is started), so that
#: every operation is its own test item; the first test checks that the running service
#: serves this very document (tests/service/test_api.py checks the committed copy).
DOCUMENT = openapi_document()
#: Uploads: any bytes are a schema-valid ``string/binary`` body and any integer a valid
#: ``resolution``, but only a decodable radiograph at a loaded resolution can be assessed
#: (which resolutions are loaded is a setting, not in the schema), so valid-looking data
#: may be refused with 400 (not DICOM) or 422 (unknown resolution or method, the gate).
UPLOAD_ACCEPTED = ["2xx", "400", "401", "404", "413", "422", "503"]
STOW_ACCEPTED = ["2xx", "400", "401", "409", "413", "503"]
CONFIG = schemathesis.Config.from_dict({
    "seed": 16,
    "generation": {"deterministic": True},
    "operations": [{
        "include-path-regex": "^/v1/(predict|compare|display)$",
        "checks": {"positive_data_acceptance": {"expected-statuses": UPLOAD_ACCEPTED}},
    }, {  # the same for STOW-RS: a schema-valid body need not be a multipart message
        "include-path-regex": "^/dicomweb/studies",
        "checks": {"positive_data_acceptance": {"expected-statuses": STOW_ACCEPTED}},
    }],
})  # fmt: skip
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    """Now and then a real job, study or result object instead of a drawn one."""
    drawn = dict(path_parameters or {})
    names = [n for n in drawn if n in KNOWN]
    if not names:
        return st.just(path_parameters)
    real = st.fixed_dictionaries({n: st.sampled_from(KNOWN[n]) for n in names})
    return st.one_of(st.just(path_parameters), real.map(lambda r: {**drawn, **r}))


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,  # the same cases on every run and in CI
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                               HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
        print_blob=True,
    )  # fmt: skip


# ------------------------------------------------------------------ the variants
def send(case: Case[Any], server: Server, variant: str, credential: dict[str, str]) -> Any:
    """Send the case with ``credential`` and run every Schemathesis check on the answer."""
    started = time.perf_counter()
    response = case.call(base_url=server.url, headers=credential, timeout=120)
    LEDGER.record(variant, case, response, time.perf_counter() - started)
    try:
        case.validate_response(
            response, headers=credential,
            transport_kwargs={"base_url": server.url, "headers": credential},
        )  # fmt: skip
    except Exception:
        LEDGER.failed(variant, case)
        raise
    return response


_turn = itertools.count()


def send_without_key(case: Case[Any], server: Server, variant: str) -> None:
    """No valid key: the checks still hold, and every protected route answers 401."""
    credential = WRONG_CREDENTIALS[next(_turn) % len(WRONG_CREDENTIALS)]
    response = send(case, server, variant, credential)
    path = case.formatted_path
    declared = case.method.lower() in DOCUMENT["paths"][case.operation.path]
    if path.startswith(PROTECTED) and declared:  # an undeclared method is a 405 first
        try:
            assert response.status_code == 401, (case.method, path, response.status_code)
            assert response.headers.get("www-authenticate", [""])[0].startswith("Bearer")
            assert error_code(response) == "unauthorized"
        except AssertionError:
            LEDGER.failed(variant, case)
            raise


def test_the_server_serves_the_fuzzed_document(fuzz_server: Server) -> None:
    served = httpx.get(fuzz_server.url + "/openapi.json", timeout=10).json()
    assert served == DOCUMENT


@schema.parametrize()
@fuzz_settings(EXAMPLES_WITH_KEY)
def test_fuzz_with_key(case: Case[Any], fuzz_server: Server) -> None:
    send(case, fuzz_server, "with_key", AUTH)


@schema.parametrize()
@fuzz_settings(EXAMPLES_WITHOUT_KEY)
def test_fuzz_without_key(case: Case[Any], fuzz_server: Server) -> None:
    send_without_key(case, fuzz_server, "without_key")


@pytest.mark.slow
@pytest.mark.timeout(3600)
@schema.parametrize()
@fuzz_settings(EXAMPLES_WITH_KEY * LONG_FACTOR)
def test_fuzz_with_key_long(case: Case[Any], fuzz_server: Server) -> None:
    send(case, fuzz_server, "with_key_long", AUTH)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@schema.parametrize()
@fuzz_settings(EXAMPLES_WITHOUT_KEY * LONG_FACTOR)
def test_fuzz_without_key_long(case: Case[Any], fuzz_server: Server) -> None:
    send_without_key(case, fuzz_server, "without_key_long")


# the 500s the fuzzer found (str.isdigit() is True for "³", int() refuses it), kept fixed
FOUND = {
    "compare-resolutions-superscript": (
        "/v1/compare?resolutions=6%C2%B3", {"Content-Type": "application/dicom"}, b"x",
        422, "invalid_parameter",
    ),
    "stow-part-content-length-superscript": (
        "/dicomweb/studies", {"Content-Type": STOW_TYPE},
        b"--sharpcxr-fuzz-boundary\r\nContent-Length: \xb3\r\n\r\nx\r\n"
        b"--sharpcxr-fuzz-boundary--\r\n", 409, None,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", FOUND)
def test_what_the_fuzzer_found_stays_fixed(fuzz_server: Server, name: str) -> None:
    path, headers, body, status, code = FOUND[name]
    r = httpx.post(fuzz_server.url + path, content=body, headers={**AUTH, **headers}, timeout=30)
    assert r.status_code == status, r.text
    assert code is None or r.json()["error"]["code"] == code


# ------------------------------------------------------------------ the viewer
VIEWER_DIR = Path(__file__).resolve().parents[2] / "service" / "viewer"
VIEWER_FILES = {p.read_bytes() for p in VIEWER_DIR.rglob("*") if p.is_file()}
SEGMENTS = ["..", "%2e%2e", ".%2e", "%2e.", "%2F", "%5c", "..%2f", "..\\", ".", "", "vendor",
            "swagger-ui", "redoc", "js", "index.html", "app.js", "viewer.css", "LICENSE",
            "etc", "passwd", "service", "settings.py", "..;", "%00", "%ff", "~", "*"]  # fmt: skip
ROOTS = ["/viewer/", "/viewer", "/", "/docs", "/redoc", "//", "/viewer//"]
SEGMENT = st.one_of(
    st.sampled_from(SEGMENTS),
    st.text(st.characters(codec="ascii", exclude_characters="/?#"), max_size=12),
)


VIEWER_CASES = {
    "method": st.sampled_from(["GET", "GET", "HEAD", "POST", "DELETE"]),
    "root": st.sampled_from(ROOTS),
    "segments": st.lists(SEGMENT, max_size=6),
}


def viewer_case(server: Server, method: str, target: str) -> tuple[int, dict[str, str], bytes]:
    """One raw request (no client-side path normalisation, so ``..`` reaches the server)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        conn.putheader("X-API-Key", FUZZ_KEY)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def check_viewer_case(
    server: Server, method: str, root: str, segments: list[str], variant: str
) -> None:
    """The static viewer and the docs pages outside the schema: never a 5xx, and a 200
    serves one of the viewer's own files (or a docs page), with the viewer's CSP."""
    target = (root + "/".join(segments)).replace(" ", "%20")
    started = time.perf_counter()
    try:
        status, headers, body = viewer_case(server, method, target)
    except http.client.HTTPException:  # uvicorn refuses a request line it cannot parse
        status, headers, body = 400, {}, b""
    op = LEDGER.ops[variant][f"{method} {root}..."]
    op["statuses"][str(status)] += 1
    LEDGER.clock(variant, time.perf_counter() - started)
    try:
        assert status < 500, (method, target, status)
        if status == 200 and method == "GET" and target.startswith("/viewer"):
            assert body in VIEWER_FILES, (target, body[:80])  # nothing from outside it
            assert "default-src 'self'" in headers.get("content-security-policy", "")
    except AssertionError:
        op["failed"]["cases"] += 1
        raise


@fuzz_settings(EXAMPLES_WITH_KEY)
@hypothesis.given(**VIEWER_CASES)
def test_fuzz_viewer_paths(
    fuzz_server: Server, method: str, root: str, segments: list[str]
) -> None:
    check_viewer_case(fuzz_server, method, root, segments, "viewer")


@pytest.mark.slow
@fuzz_settings(EXAMPLES_WITH_KEY * LONG_FACTOR)
@hypothesis.given(**VIEWER_CASES)
def test_fuzz_viewer_paths_long(
    fuzz_server: Server, method: str, root: str, segments: list[str]
) -> None:
    check_viewer_case(fuzz_server, method, root, segments, "viewer_long")


# ------------------------------------------------------------------ afterwards
def check_survived(server: Server) -> None:
    """Ready; a real prediction still answers; every job STOW-RS made has settled (none
    stuck queued or processing); nothing the service logged was an error."""
    ready = httpx.get(server.url + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    r = httpx.post(
        server.url + "/v1/predict?resolution=256",
        content=phantom_dicom(phantom(3, size=512)),
        headers={**AUTH, "Content-Type": "application/dicom"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert 0.0 <= r.json()["probability"] <= 1.0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = httpx.get(server.url + "/v1/jobs?limit=500", headers=AUTH, timeout=10).json()
        pending = [j for j in jobs["jobs"] if j["state"] in ("queued", "processing")]
        if not pending:
            break
        time.sleep(0.5)
    assert not pending, pending
    errors = [line for line in server.log().splitlines() if '"level": "ERROR"' in line]
    assert not errors, errors[:3]


def write_report() -> None:
    """The ledger as JSON at ``$SHARPCXR_FUZZ_REPORT`` (benchmarks/results/api_fuzz.json)."""
    path = os.environ.get("SHARPCXR_FUZZ_REPORT")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        asked = {"with_key": EXAMPLES_WITH_KEY, "without_key": EXAMPLES_WITHOUT_KEY,
                 "long_factor": LONG_FACTOR}  # fmt: skip
        Path(path).write_text(json.dumps(LEDGER.report(asked), indent=2) + "\n")


def test_service_survived_and_case_count(fuzz_server: Server) -> None:
    check_survived(fuzz_server)
    counted = {v: LEDGER.cases(v) for v in ("with_key", "without_key")}
    assert all(counted.values()), f"run the whole module: the fuzz tests did not run {counted}"
    assert sum(counted.values()) >= MIN_CASES, counted
    write_report()


@pytest.mark.slow
def test_service_survived_the_long_run(fuzz_server: Server) -> None:
    check_survived(fuzz_server)
    counted = {v: LEDGER.cases(v) for v in ("with_key_long", "without_key_long")}
    assert all(counted.values()), f"run the whole module: the fuzz tests did not run {counted}"
    assert sum(counted.values()) >= MIN_CASES * LONG_FACTOR // 2, counted
    write_report()
