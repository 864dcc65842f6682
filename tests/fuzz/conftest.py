"""The API fuzzer's pieces (tests/fuzz/test_api_schema_fuzz.py): real DICOM request bodies
and their mutations, the ledger of the cases sent, and a real server with jobs in it."""

from __future__ import annotations

import os
import platform
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import numpy as np
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case

from tests.conftest import make_dicom, pydicom_file
from tests.e2e.conftest import Server
from tests.service.conftest import bad_inputs, phantom, phantom_dicom

FUZZ_KEY = "fuzz-key"
AUTH = {"X-API-Key": FUZZ_KEY}
BOUNDARY = "sharpcxr-fuzz-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


# ------------------------------------------------------------------ request bodies
_SEEDS: list[bytes] = []


def seed_bodies() -> list[bytes]:
    """Real DICOM files, built once: in-distribution phantoms (the whole pipeline runs),
    a small CR ramp, pydicom's CT (the gate refuses it) and every real bad input."""
    if not _SEEDS:
        ramp = np.tile(np.linspace(0, 4095, 96).round().astype(np.uint16), (80, 1))
        _SEEDS.extend([
            phantom_dicom(phantom(0, size=256)),
            phantom_dicom(phantom(1, size=384, positive=False)),
            phantom_dicom(phantom(2, size=256), transfer_syntax="1.2.840.10008.1.2.5"),
            make_dicom(ramp),
            pydicom_file("CT_small.dcm"),
            *(data for data, _, _ in bad_inputs().values()),
        ])  # fmt: skip
    return _SEEDS


@st.composite
def dicom_bytes(draw: st.DrawFn) -> bytes:
    """A seed, whole or mutated: cut short, header bytes overwritten, bytes inserted."""
    seeds = seed_bodies()
    data = bytearray(seeds[draw(st.integers(0, len(seeds) - 1))])
    kind = draw(st.sampled_from(["whole", "whole", "truncate", "overwrite", "insert", "random"]))
    if kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "overwrite":  # mostly the header, where the parsing is
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, min(len(data), 4096) - 1))
            data[pos] = draw(st.integers(0, 255))
    elif kind == "insert":
        pos = draw(st.integers(0, min(len(data), 4096)))
        data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "random":
        return draw(st.binary(max_size=2048))
    return bytes(data)


#: header values as a server decodes them (latin-1), and a dictionary of numbers that are
#: not quite numbers (str.isdigit() is True for superscripts, int() refuses them)
LATIN1 = st.one_of(
    st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=8),
    st.sampled_from(["\u00b3", "1\u00b2", "\u00bd", "-1", "+5", " 7 ", "0x10", "1e3", "9" * 20]),
)


@st.composite
def related_bodies(draw: st.DrawFn) -> bytes:
    """A STOW-RS ``multipart/related`` body of 0-3 parts, mostly well framed."""
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        header = draw(st.sampled_from([
            b"Content-Type: application/dicom\r\n", b"", b"Content-Type: text/plain\r\n",
            b"Content-Type: application/dicom\r\nContent-Transfer-Encoding: base64\r\n",
            b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n",
            b"X-\xff: \x00\r\n",
        ]))  # fmt: skip
        data = draw(dicom_bytes())
        length = draw(st.one_of(st.none(), st.just(str(len(data))), LATIN1))
        if length is not None:  # a part may declare its length: right, or anything
            header += b"Content-Length: " + length.encode("latin-1") + b"\r\n"
        parts.append(b"--" + BOUNDARY.encode() + b"\r\n" + header + b"\r\n" + data)
    body = b"\r\n".join(parts) + b"\r\n--" + BOUNDARY.encode() + b"--\r\n"
    framing = draw(st.sampled_from(["whole", "whole", "whole", "cut", "preamble", "lf"]))
    if framing == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    elif framing == "preamble":
        body = b"a preamble, ignored\r\n" + body + b"an epilogue"
    elif framing == "lf":
        body = body.replace(b"\r\n", b"\n")
    return body


# ------------------------------------------------------------------ the ledger
def error_code(response: Any) -> str | None:
    """The ``error.code`` of a JSON error body, else None."""
    try:
        body = response.json()
    except Exception:  # not JSON: a DICOM, a PNG, metrics text
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code")) if isinstance(error, dict) else None


class Ledger:
    """Cases sent per variant and operation: their statuses, error codes, body media types
    and the cases that failed a check (Hypothesis replays a failing case while shrinking)."""

    def __init__(self) -> None:
        self.ops: dict[str, dict[str, dict[str, Counter[str]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(Counter))
        )
        self.seconds: defaultdict[str, float] = defaultdict(float)  # waiting for answers
        self.span: dict[str, list[float]] = {}  # first and last case, time.monotonic()

    def clock(self, variant: str, seconds: float) -> None:
        """``seconds`` more spent waiting for the service, at the end of a case."""
        self.seconds[variant] += seconds
        now = time.monotonic()
        self.span.setdefault(variant, [now - seconds, now])[1] = now

    def record(self, variant: str, case: Case[Any], response: Any, seconds: float) -> None:
        op = self.ops[variant][case.operation.label]
        op["statuses"][str(response.status_code)] += 1
        op["codes"][error_code(response) or "-"] += 1
        op["bodies"][(case.media_type or "none").split(";")[0]] += 1
        self.clock(variant, seconds)

    def failed(self, variant: str, case: Case[Any]) -> None:
        self.ops[variant][case.operation.label]["failed"]["cases"] += 1

    def cases(self, variant: str) -> int:
        return sum(sum(op["statuses"].values()) for op in self.ops[variant].values())

    def failures(self) -> int:
        return sum(sum(op["failed"].values()) for ops in self.ops.values() for op in ops.values())

    def report(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Everything counted, with ``settings`` (how many examples were asked for)."""
        variants = {
            name: {
                "cases": self.cases(name),
                "request_seconds": round(self.seconds[name], 1),
                "wall_seconds": round(self.span[name][1] - self.span[name][0], 1),
                "operations": {
                    label: {"cases": sum(op["statuses"].values())} | {
                        key: dict(sorted(op[key].items()))
                        for key in ("statuses", "codes", "bodies", "failed") if op[key]
                    }
                    for label, op in sorted(ops.items())
                },
            }
            for name, ops in sorted(self.ops.items())
        }  # fmt: skip
        return {
            "tool": f"schemathesis {schemathesis.__version__}, hypothesis {hypothesis.__version__}",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "examples_per_operation": settings,
            "total_cases": sum(v["cases"] for v in variants.values()),
            "failed_cases": self.failures(),
            "variants": variants,
        }  # fmt: skip


LEDGER = Ledger()
#: real path parameters, seeded by :func:`fuzz_server`: job_id, study_uid, sop_instance_uid
KNOWN: dict[str, list[str]] = {}

# ------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def fuzz_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``python -m service`` with API key ``fuzz-key``, two jobs received and answered."""
    log = tmp_path_factory.mktemp("fuzz") / "service.log"
    server = Server(models_dir, log, api_keys=FUZZ_KEY, default_resolution="256")
    try:
        seed_jobs(server)
        yield server
    finally:
        server.stop()


def seed_jobs(server: Server) -> None:
    """STOW two phantoms and wait for their answers, so that path parameters can name real
    jobs, studies and result objects."""
    seeds = seed_bodies()
    parts = [b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + d
             for d in seeds[:2]]  # fmt: skip
    body = b"\r\n".join(parts) + b"\r\n--" + BOUNDARY.encode() + b"--\r\n"
    r = httpx.post(server.url + "/dicomweb/studies", content=body,
                   headers={**AUTH, "Content-Type": STOW_TYPE}, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 120
    jobs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        jobs = httpx.get(server.url + "/v1/jobs", headers=AUTH, timeout=10).json()["jobs"]
        if len(jobs) == 2 and all(j["state"] == "done" for j in jobs):
            break
        time.sleep(0.5)
    assert [j["state"] for j in jobs] == ["done", "done"], jobs
    KNOWN["job_id"] = [j["job_id"] for j in jobs]
    KNOWN["study_uid"] = sorted({j["study_instance_uid"] for j in jobs})
    job = httpx.get(f"{server.url}/v1/jobs/{jobs[0]['job_id']}", headers=AUTH, timeout=10).json()
    KNOWN["sop_instance_uid"] = [o["sop_instance_uid"] for o in job["objects"]]
    assert KNOWN["sop_instance_uid"], job
