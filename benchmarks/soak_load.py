"""The soak's request mix (:mod:`benchmarks.soak`): bodies, one fixed cycle, one request.

Bodies are phantom DICOMs (:func:`imaging.phantoms.generate_phantom`, 12-bit) in three
sizes and four transfer syntaxes, so the decoders, the reduced JPEG 2000 path, the
upload parser and the response encoders all take their turn, plus uploads that must be
refused. Every request has one expected status; anything else (a 5xx, a transport
error, a 200 whose body is not what the endpoint promises) is *unexpected* and fails the
soak. The cycle is the same every time round, so every window sees the same mix and
latency percentiles compare across windows.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

DICOM = "application/dicom"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
RLE = "1.2.840.10008.1.2.5"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
#: per-request client timeout (s): far above any healthy answer, so a hang is an error
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Kind:
    """One kind of request: ``expected`` is the only status that counts as right."""

    kind: str
    method: str
    path: str
    expected: int
    params: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    content_type: str | None = DICOM
    multipart: bool = False
    accept: str | None = None
    check: Callable[[Any], str | None] | None = None  # a 200's body -> problem or None


@dataclass
class Outcome:
    kind: str
    due_s: float  # when it was due, seconds from the start of the load
    status: int | None
    latency_ms: float  # due time -> response read (includes any wait to be sent)
    lag_ms: float  # due time -> sent (the driver's own delay)
    expected: bool
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def phantom_dicom(seed: int, rows: int, columns: int, syntax: str, constant: bool = False) -> bytes:
    """A 12-bit phantom (or a constant image) as a DICOM Part 10 file in ``syntax``."""
    from imaging.dicom_writer import write_dicom
    from imaging.phantoms import generate_phantom

    if constant:
        stored = np.full((rows, columns), 1800, np.uint16)
    else:
        pixels = generate_phantom(seed, seed, "a", rows, columns).pixels
        stored = np.round(pixels * 4095).astype(np.uint16)
    buffer = io.BytesIO()
    write_dicom(
        buffer,
        stored,
        transfer_syntax=syntax,
        bits_stored=12,
        uid_entropy=("soak", seed, rows, columns, syntax, constant),
    )
    return buffer.getvalue()


# ---- response checks: a 200 must carry what the endpoint promises ----------------------


def _predict_ok(response: Any) -> str | None:
    body = response.json()
    p = body.get("probability")
    return None if isinstance(p, float) and 0.0 <= p <= 1.0 else f"probability {p!r}"


def _compare_ok(response: Any) -> str | None:
    body = response.json()
    return None if isinstance(body, dict) and body else "empty compare body"


def _display_ok(response: Any) -> str | None:
    rows, cols = int(response.headers["X-Image-Rows"]), int(response.headers["X-Image-Columns"])
    n = len(response.content)
    return None if n == rows * cols * 2 else f"display {n} bytes for {rows}x{cols}"


def _multipart_ok(response: Any) -> str | None:
    kind = response.headers.get("content-type", "")
    ok = kind.startswith("multipart/related") and len(response.content) > 1000
    return None if ok else f"DICOM answer {kind!r}, {len(response.content)} bytes"


def _metrics_ok(response: Any) -> str | None:
    return None if b"# TYPE" in response.content else "no Prometheus text"


def build_cycle(base_url: str) -> tuple[list[Kind], list[int]]:
    """The fixed cycle of requests for the service at ``base_url`` (its loaded
    resolutions come from ``/v1/models``), and those resolutions."""
    import httpx

    models = httpx.get(base_url + "/v1/models", timeout=30).json()
    resolutions = sorted({int(m["resolution"]) for m in models["models"]})
    square = phantom_dicom(1, 1024, 1024, EXPLICIT_LE)  # 2 MiB, plain
    j2k = phantom_dicom(2, 1536, 1280, J2K_LOSSY)  # OpenJPEG, reduced decode below 1280
    rle = phantom_dicom(3, 2048, 2048, RLE)  # the largest upload, multipart
    jls = phantom_dicom(4, 1536, 1280, JPEG_LS_LOSSLESS)  # CharLS
    small = phantom_dicom(5, 256, 256, EXPLICIT_LE)
    blank = phantom_dicom(6, 1024, 1024, EXPLICIT_LE, constant=True)
    noise = np.random.default_rng(0).integers(0, 256, 65536, dtype=np.uint8).tobytes()
    predict = "/v1/predict"
    cycle: list[Kind] = []
    for r in resolutions:
        res = {"resolution": str(r)}
        cycle += [
            Kind(f"predict_{r}_png", "POST", predict, 200, res, square, check=_predict_ok),
            Kind(f"predict_{r}_png_j2k", "POST", predict, 200, res, j2k, check=_predict_ok),
            Kind(
                f"predict_{r}_rle_mask",
                "POST",
                predict,
                200,
                {**res, "mask_format": "rle"},
                jls,
                check=_predict_ok,
            ),
            Kind(
                f"predict_{r}_heatmap",
                "POST",
                predict,
                200,
                {**res, "heatmap": "true", "saliency_map": "true"},
                j2k,
                check=_predict_ok,
            ),
        ]
    top = str(resolutions[-1])
    cycle += [
        Kind(
            "predict_multipart",
            "POST",
            predict,
            200,
            {"mask_format": "rle"},
            rle,
            multipart=True,
            check=_predict_ok,
        ),
        Kind(
            "predict_probability_only",
            "POST",
            predict,
            200,
            {"explain": "false"},
            square,
            check=_predict_ok,
        ),
        Kind(
            "predict_dicom_objects",
            "POST",
            predict,
            200,
            {"resolution": top},
            square,
            accept='multipart/related; type="application/dicom"',
            check=_multipart_ok,
        ),
        Kind("compare", "POST", "/v1/compare", 200, {}, jls, check=_compare_ok),
        Kind("display", "POST", "/v1/display", 200, {}, square, check=_display_ok),
        Kind("display_j2k", "POST", "/v1/display", 200, {}, j2k, check=_display_ok),
        Kind("bad_not_dicom", "POST", predict, 400, {}, noise),
        Kind("bad_truncated", "POST", predict, 400, {}, square[: len(square) // 3]),
        Kind("bad_media_type", "POST", predict, 415, {}, small, content_type="text/plain"),
        Kind("bad_resolution", "POST", predict, 422, {"resolution": "99999"}, small),
        Kind("bad_blank_image", "POST", predict, 422, {}, blank),
        Kind("metrics", "GET", "/metrics", 200, content_type=None, check=_metrics_ok),
        Kind("models", "GET", "/v1/models", 200, content_type=None),
    ]
    return cycle, resolutions


# ---- one request -----------------------------------------------------------------------

_local = threading.local()


def _client() -> Any:
    import httpx

    client = getattr(_local, "client", None)
    if client is None:  # one keep-alive connection per driver thread
        client = _local.client = httpx.Client(timeout=TIMEOUT_S)
    return client


def send(base_url: str, kind: Kind, t0: float, due_s: float) -> Outcome:
    """Send ``kind`` (due ``due_s`` after ``t0``, ``time.monotonic`` seconds) and judge it."""
    due = t0 + due_s
    started = time.monotonic()
    headers = {"Accept": kind.accept} if kind.accept else {}
    request: dict[str, Any] = {"params": kind.params, "headers": headers}
    if kind.multipart:
        request["files"] = {"file": ("image.dcm", kind.content or b"", DICOM)}
    elif kind.content is not None:
        request["content"] = kind.content
        headers["Content-Type"] = kind.content_type or DICOM
    status, error = None, None
    try:
        response = _client().request(kind.method, base_url + kind.path, **request)
        status = response.status_code
        if status == kind.expected and status == 200 and kind.check is not None:
            error = kind.check(response)
        elif status != kind.expected:
            error = response.text[:300]
    except Exception as exc:  # a transport error is an outcome too, never a crash
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
        _local.client = None  # the connection may be broken: a fresh one next time
    done = time.monotonic()
    return Outcome(
        kind=kind.kind,
        due_s=round(due_s, 3),
        status=status,
        latency_ms=round((done - due) * 1e3, 2),
        lag_ms=round((started - due) * 1e3, 2),
        expected=status == kind.expected and error is None,
        error=error,
    )
