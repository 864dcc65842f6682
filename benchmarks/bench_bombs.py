"""Benchmark: decompression bombs and lying codestreams against a real service (issue #16).

Every case of :func:`bombs` is a small DICOM file whose compressed data claim far more
than its header (a deflated dataset of 1 GiB in 1 MB, a JPEG 2000 SIZ of 60000 x 60000 in
a 64 x 64 image, an RLE header with 15 segments, item lengths past the data, ...) or, for
the controls, a legitimate file. Two measurements:

* **service**: ``python -m service`` (``SHARPCXR_DECODE_ISOLATION=process`` and
  ``thread``), each case POSTed to ``/v1/predict``; the status and error code, and the
  memory of the server's whole process tree (the server, the decode forkserver and its
  workers): the peak of the summed RSS sampled every 5 ms during the request, and the
  summed ``VmHWM`` of the live processes after it, both against the same server's after
  one normal upload (the baseline).
* **in process**: :func:`imaging.dicom.read_dicom` on each case in a fresh subprocess
  (``VmHWM`` growth over a warmed-up interpreter), and, for contrast, the unguarded
  ``pydicom.dcmread(...).pixel_array`` under an address-space limit of 2 GiB (so a bomb
  fails with MemoryError instead of taking the machine).

    uv run python -m benchmarks.bench_bombs --out benchmarks/results/bombs.json
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

COMMAND = "uv run python -m benchmarks.bench_bombs --out benchmarks/results/bombs.json"
GIB = 2**30


@dataclass(frozen=True)
class Bomb:
    """A case: ``code`` is the expected error code (None: it decodes), ``status`` HTTP."""

    name: str
    data: bytes
    code: str | None
    status: int
    what: str


# ---------------------------------------------------------------------------- builders
def _pixels8(rows: int = 64, columns: int = 64) -> np.ndarray[Any, Any]:
    return ((np.add.outer(np.arange(rows), np.arange(columns)) * 3) % 256).astype(np.uint8)


def _pixels16(rows: int = 64, columns: int = 64) -> np.ndarray[Any, Any]:
    return ((np.add.outer(np.arange(rows), np.arange(columns)) * 37) % 4096).astype(np.uint16)


def _dicom(pixels: np.ndarray[Any, Any], syntax: str, pixel_data: bytes | None) -> bytes:
    """Part 10 bytes: the header of ``pixels`` (8 or 12 bits stored), ``syntax``, and
    ``pixel_data`` as the (encapsulated, for a compressed syntax) Pixel Data value."""
    from tests.conftest import build_dataset, to_bytes

    ds = build_dataset(pixels, bits_stored=8 if pixels.dtype == np.uint8 else 12)
    ds.file_meta.TransferSyntaxUID = syntax
    if pixel_data is not None:
        ds.PixelData = pixel_data
    return to_bytes(ds)


def _encapsulated(pixels: np.ndarray[Any, Any], syntax: str, frame: bytes) -> bytes:
    from pydicom.encaps import encapsulate

    return _dicom(pixels, syntax, encapsulate([frame]))


def _items(*values: bytes, lengths: Sequence[int] | None = None) -> bytes:
    """Raw items (FFFE,E000); ``lengths`` overrides the declared lengths."""
    out = []
    for i, value in enumerate(values):
        length = len(value) if lengths is None else lengths[i]
        out += [struct.pack("<HHL", 0xFFFE, 0xE000, length), value]
    return b"".join(out)


def _j2k(pixels: np.ndarray[Any, Any], codecformat: str = "j2k") -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpeg2k_encode(pixels, level=0, codecformat=codecformat))


def _siz(codestream: bytes, **fields: int) -> bytes:
    """``codestream`` (starting SOC SIZ) with SIZ fields replaced (Xsiz, Ysiz, XTsiz,
    YTsiz, Ssiz0) and, with ``Csiz``, components appended as copies of the first."""
    out = bytearray(codestream)
    at = {"Xsiz": 8, "Ysiz": 12, "XTsiz": 24, "YTsiz": 28}
    for key, value in fields.items():
        if key in at:
            struct.pack_into(">L", out, at[key], value)
    if "Ssiz0" in fields:
        out[42] = fields["Ssiz0"]
    if "Csiz" in fields:
        extra = fields["Csiz"] - 1
        struct.pack_into(">H", out, 4, 38 + 3 * fields["Csiz"])
        struct.pack_into(">H", out, 40, fields["Csiz"])
        out[45:45] = bytes(out[42:45]) * extra
    return bytes(out)


def _jpeg(pixels: np.ndarray[Any, Any]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _sof(jpeg: bytes, marker: bytes, *, rows: int | None = None, columns: int | None = None,
         precision: int | None = None, components: int | None = None) -> bytes:  # fmt: skip
    """``jpeg`` with its first ``marker`` (SOF0 ``FFC0``, SOF55 ``FFF7``) fields replaced;
    more components are appended as copies of the first component's specification."""
    out = bytearray(jpeg)
    at = out.find(marker)
    if precision is not None:
        out[at + 4] = precision
    if rows is not None:
        struct.pack_into(">H", out, at + 5, rows)
    if columns is not None:
        struct.pack_into(">H", out, at + 7, columns)
    if components is not None:
        end = at + 10 + 3 * out[at + 9]
        out[end:end] = bytes(out[at + 10 : at + 13]) * (components - out[at + 9])
        out[at + 9] = components
        struct.pack_into(">H", out, at + 2, 8 + 3 * components)
    return bytes(out)


def _jpegls(pixels: np.ndarray[Any, Any]) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpegls_encode(pixels))


def _rle(pixels: np.ndarray[Any, Any]) -> bytes:
    from pydicom.encaps import generate_frames
    from pydicom.uid import RLELossless

    from tests.conftest import build_dataset

    ds = build_dataset(pixels)
    ds.compress(RLELossless)
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def deflate_bomb(inflated_bytes: int, *, declared: tuple[int, int] = (64, 64)) -> bytes:
    """A Deflated Explicit VR Little Endian file of a ``declared`` 16-bit ramp whose Pixel
    Data run on to ``inflated_bytes`` with zeros: ~1 MB per GiB (deflate's ~1030:1)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from tests.conftest import build_dataset

    ramp = _pixels16(*declared).tobytes()
    ds = build_dataset(np.zeros(declared, np.uint16))
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    meta.write(bytes(128) + b"DICM")
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    size = max(inflated_bytes - inflated_bytes % 2, len(ramp))
    body.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, size) + ramp)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [meta.getvalue(), deflater.compress(body.getvalue())]
    zeros, rest = bytes(1 << 20), size - len(ramp)
    for _ in range(rest >> 20):
        parts.append(deflater.compress(zeros))
    parts.append(deflater.compress(bytes(rest & ((1 << 20) - 1))))
    parts.append(deflater.flush())
    return b"".join(parts)


@functools.lru_cache(maxsize=1)
def bombs(deflate_gib: float = 1.0) -> tuple[Bomb, ...]:
    """Every case, built once (the 1 GiB deflate bomb takes ~5 s)."""
    from pydicom.uid import (
        HTJ2KLossless,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLSLossless,
        RLELossless,
    )

    p8, p16 = _pixels8(), _pixels16()
    j2k = _j2k(p16)
    jpeg = _jpeg(p8)
    sof0 = jpeg.find(b"\xff\xc0")
    extended = jpeg[:sof0] + b"\xff\xc1" + jpeg[sof0 + 2 :]  # the same frame as SOF1
    jls = _jpegls(p16)
    rle = _rle(p16)
    big = 60_000
    # JPEG-LS: SOF55 says 0 x 0 and an LSE oversize-dimension segment (ID 4) 100000 x 100000
    lse = b"\xff\xf8\x00\x0c\x04\x04" + struct.pack(">LL", 100_000, 100_000)
    sof55 = jls.find(b"\xff\xf7")
    jls_oversize = _sof(jls, b"\xff\xf7", rows=0, columns=0)
    jls_oversize = jls_oversize[: sof55 + 2 + 11] + lse + jls_oversize[sof55 + 2 + 11 :]
    rle_15 = struct.pack("<L", 15) + rle[4:]
    rle_past = rle[:8] + struct.pack("<L", len(rle) + 1000) + rle[12:]
    fragment = j2k + b"\0" * (len(j2k) % 2)

    def raw(value: bytes) -> bytes:
        return _dicom(p16, JPEG2000Lossless, value)

    whole = _encapsulated(p16, JPEG2000Lossless, j2k)
    cases = [
        Bomb("normal-j2k", whole, None, 200, "control: a 64x64 JPEG 2000 lossless image"),
        Bomb(
            "deflate-bomb",
            deflate_bomb(int(deflate_gib * GIB)),
            "decompression_bomb",
            422,
            f"Deflated dataset: a 64x64 image, its Pixel Data run on to {deflate_gib:g} GiB",
        ),
        Bomb(
            "deflate-100mb",
            deflate_bomb(100 * 2**20),
            None,
            200,
            "control: a deflated 64x64 image whose Pixel Data run on to 100 MiB (in ~100 kB): "
            "within the 160 MB a 36 Mpx budget allows, so it decodes, the rest ignored",
        ),
        Bomb(
            "j2k-siz-size",
            _encapsulated(
                p16, JPEG2000Lossless, _siz(j2k, Xsiz=big, Ysiz=big, XTsiz=big, YTsiz=big)
            ),
            "codestream_mismatch",
            400,
            "J2K SIZ 60000x60000 (one tile) in a 64x64 header",
        ),
        Bomb(
            "j2k-siz-tiles",
            _encapsulated(p16, JPEG2000Lossless, _siz(j2k, Xsiz=big, Ysiz=big, XTsiz=1, YTsiz=1)),
            "corrupt_dicom",
            400,
            "J2K SIZ 60000x60000 in 1x1 tiles (3.6e9 tiles)",
        ),
        Bomb(
            "j2k-siz-components",
            _encapsulated(p16, JPEG2000Lossless, _siz(j2k, Csiz=3)),
            "codestream_mismatch",
            400,
            "J2K SIZ with 3 components, header 1 sample",
        ),
        Bomb(
            "j2k-siz-precision",
            _encapsulated(p16, JPEG2000Lossless, _siz(j2k, Ssiz0=37)),
            "codestream_mismatch",
            400,
            "J2K SIZ 38-bit samples, header 16 bits allocated",
        ),
        Bomb(
            "jp2-siz-size",
            _encapsulated(p16, JPEG2000Lossless, _jp2_with_siz(_j2k(p16, "jp2"), big)),
            "codestream_mismatch",
            400,
            "JP2 file whose ihdr and jp2c SIZ say 60000x60000, header 64x64",
        ),
        Bomb(
            "htj2k-siz-size",
            _encapsulated(
                p16, HTJ2KLossless, _siz(_htj2k(p16), Xsiz=big, Ysiz=big, XTsiz=big, YTsiz=big)
            ),
            "codestream_mismatch",
            400,
            "HTJ2K SIZ 60000x60000 in a 64x64 header",
        ),
        Bomb(
            "jpeg-sof-size",
            _encapsulated(p8, JPEGBaseline8Bit, _sof(jpeg, b"\xff\xc0", rows=big, columns=big)),
            "codestream_mismatch",
            400,
            "JPEG SOF0 60000x60000 in a 64x64 header",
        ),
        Bomb(
            "jpeg-sof-dnl",
            _encapsulated(p8, JPEGBaseline8Bit, _sof(jpeg, b"\xff\xc0", rows=0)),
            "unsupported_image",
            422,
            "JPEG SOF0 height 0 (defined by a DNL marker)",
        ),
        Bomb(
            "jpeg-sof-components",
            _encapsulated(p8, JPEGBaseline8Bit, _sof(jpeg, b"\xff\xc0", components=4)),
            "codestream_mismatch",
            400,
            "JPEG SOF0 with 4 components, header 1 sample",
        ),
        Bomb(
            "jpeg-sof-precision",
            _encapsulated(p8, JPEGExtended12Bit, _sof(extended, b"\xff\xc1", precision=12)),
            "codestream_mismatch",
            400,
            "JPEG SOF1 12-bit samples, header 8 bits allocated",
        ),
        Bomb(
            "jpeg-sof-precision-0",
            _encapsulated(p8, JPEGBaseline8Bit, _sof(jpeg, b"\xff\xc0", precision=0)),
            "corrupt_dicom",
            400,
            "JPEG SOF0 0-bit samples (GDCM aborts the process on it)",
        ),
        Bomb(
            "jpegls-sof55-size",
            _encapsulated(p16, JPEGLSLossless, _sof(jls, b"\xff\xf7", rows=big, columns=big)),
            "codestream_mismatch",
            400,
            "JPEG-LS SOF55 60000x60000 in a 64x64 header",
        ),
        Bomb(
            "jpegls-lse-oversize",
            _encapsulated(p16, JPEGLSLossless, jls_oversize),
            "codestream_mismatch",
            400,
            "JPEG-LS SOF55 0x0 with an LSE oversize dimension of 100000x100000",
        ),
        Bomb(
            "rle-segments",
            _encapsulated(p16, RLELossless, rle_15),
            "codestream_mismatch",
            400,
            "RLE header: 15 segments for a 16-bit image (2 needed)",
        ),
        Bomb(
            "rle-offset-past-end",
            _encapsulated(p16, RLELossless, rle_past),
            "truncated_dicom",
            400,
            "RLE header: segment 2 starts past the frame",
        ),
        Bomb(
            "item-length-long",
            raw(_items(b"", fragment, lengths=[0, 0x7FFFFFF0])),
            "truncated_dicom",
            400,
            "fragment item declares 2 GiB, holds 1 kB",
        ),
        Bomb(
            "item-length-short",
            raw(_items(b"", fragment, lengths=[0, 100])),
            "corrupt_dicom",
            400,
            "fragment item declares 100 bytes, holds 1 kB",
        ),
        Bomb(
            "bot-outside",
            raw(_items(struct.pack("<L", 1 << 30), fragment)),
            "corrupt_dicom",
            400,
            "Basic Offset Table points 1 GiB past the fragments",
        ),
        Bomb(
            "bot-frames",
            raw(_items(struct.pack("<100000L", *range(100_000)), fragment)),
            "corrupt_dicom",
            400,
            "Basic Offset Table lists 100000 frames for a single-frame image",
        ),
        Bomb(
            "fragments-200000",
            raw(_items(b"", *([b""] * 200_000), fragment)),
            "corrupt_dicom",
            400,
            "200000 empty fragments before the codestream",
        ),
        Bomb(
            "no-delimiter",
            whole[:-8],
            "truncated_dicom",
            400,
            "encapsulated Pixel Data without its sequence delimiter",
        ),
        Bomb(
            "uncompressed-trailing-90mb",
            _dicom(p16, "1.2.840.10008.1.2.1", p16.tobytes() + bytes(90 * 2**20)),
            None,
            200,
            "control: a 64x64 uncompressed image with 90 MiB more pixel data than declared",
        ),
    ]
    return tuple(cases)


def _htj2k(pixels: np.ndarray[Any, Any]) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.htj2k_encode(pixels, level=0))


def _jp2_with_siz(jp2: bytes, size: int) -> bytes:
    """A JP2 file whose ``ihdr`` and codestream SIZ both declare ``size`` x ``size``."""
    out = bytearray(jp2)
    ihdr = out.find(b"ihdr") + 4
    struct.pack_into(">LL", out, ihdr, size, size)
    soc = out.find(b"jp2c\xff\x4f\xff\x51") + 4
    for offset in (8, 12, 24, 28):  # Xsiz, Ysiz, XTsiz, YTsiz
        struct.pack_into(">L", out, soc + offset, size)
    return bytes(out)


# ---------------------------------------------------------------------------- in process
_PROBE = r"""
import io, json, resource, sys, warnings
warnings.simplefilter("ignore")
import pydicom
from imaging.dicom import read_dicom
from imaging.errors import ImagingError


def status_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

def kib():  # VmHWM, not ru_maxrss: that one keeps the forking parent's peak across exec
    return status_kib("VmHWM")

def vm_size():
    return status_kib("VmSize") * 1024

read_dicom(open(sys.argv[2], "rb").read())  # warm-up: imports, plugins, first decode
data = open(sys.argv[1], "rb").read()
base = kib()
out = {}
if sys.argv[3] == "guarded":
    try:
        image = read_dicom(data)
        out["outcome"] = "decoded %dx%d" % image.pixels.shape
    except ImagingError as exc:
        out["outcome"] = exc.code
else:  # unguarded pydicom, inside an address-space limit of 2 GiB over the current size
    limit = vm_size() + 2 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        arr = ds.pixel_array
        out["outcome"] = "decoded " + "x".join(str(n) for n in arr.shape)
    except MemoryError:
        out["outcome"] = "MemoryError"
    except Exception as exc:
        out["outcome"] = type(exc).__name__
out["peak_growth_mib"] = round((kib() - base) / 1024, 1)
print(json.dumps(out))
"""


def in_process(cases: Sequence[Bomb], workdir: Path) -> list[dict[str, Any]]:
    """``read_dicom`` (guarded) and bare pydicom (unguarded, 2 GiB limit) on each case,
    each in a fresh interpreter; growth of its peak RSS (VmHWM) over the warmed-up one with
    the file read."""
    warm = workdir / "warm.dcm"
    warm.write_bytes(cases[0].data)
    rows = []
    for case in cases:
        path = workdir / f"{case.name}.dcm"
        path.write_bytes(case.data)
        row: dict[str, Any] = {"case": case.name}
        for mode in ("guarded", "unguarded"):
            done = subprocess.run(
                [sys.executable, "-c", _PROBE, str(path), str(warm), mode],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            lines = done.stdout.strip().splitlines()
            result = json.loads(lines[-1]) if lines else {"outcome": f"exit {done.returncode}"}
            row[mode] = result
        rows.append(row)
        path.unlink()
    return rows


# ---------------------------------------------------------------------------- service
def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_kib(pid: int, key: str) -> tuple[int, int, int]:
    """``key`` (VmRSS, VmHWM) in KiB: the sum over ``pid``'s tree, the server's own, and
    the number of processes."""
    from benchmarks.proctree import descendants

    pids = descendants(pid)
    values = [_status_kib(p, key) for p in pids]
    return sum(values), values[0] if values else 0, len(pids)


class PeakSampler:
    """Samples the summed RSS of a process tree every ``interval_s`` in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.005) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, tree_kib(self.pid, "VmRSS")[0])
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, tree_kib(self.pid, "VmRSS")[0])


def _post(client: Any, url: str, body: bytes) -> tuple[int, str]:
    r = client.post(
        url + "/v1/predict", content=body, headers={"content-type": "application/dicom"}
    )
    try:
        code = r.json().get("error", {}).get("code") if r.status_code >= 400 else "ok"
    except (ValueError, AttributeError):
        code = "?"
    return r.status_code, str(code)


def service_run(
    models_dir: Path, isolation: str, cases: Sequence[Bomb], normal: bytes, tmp: Path
) -> dict[str, Any]:
    """One server with ``SHARPCXR_DECODE_ISOLATION=isolation``: a normal upload (the
    baseline), then every case, with the tree's memory around each request."""
    import httpx

    from benchmarks.bench_service import server, service_argv

    env = {
        "SHARPCXR_MODELS_DIR": str(models_dir),
        "SHARPCXR_LOG_LEVEL": "WARNING",
        "SHARPCXR_DEFAULT_RESOLUTION": "256",
        "SHARPCXR_DECODE_ISOLATION": isolation,
        "SHARPCXR_DATA_DIR": str(tmp / f"data-{isolation}"),
    }
    rows = []
    with (
        server(isolation, service_argv(), env, tmp, 300) as srv,
        httpx.Client(timeout=300) as client,
    ):
        pid = srv.process.pid
        status, code = _post(client, srv.base_url, normal)
        if status != 200:
            raise RuntimeError(f"the normal upload failed: {status} {code}")
        time.sleep(0.5)
        base_rss, _, processes = tree_kib(pid, "VmRSS")
        base_hwm, base_server_hwm, _ = tree_kib(pid, "VmHWM")
        for case in cases:
            started = time.perf_counter()
            with PeakSampler(pid) as sampler:
                status, code = _post(client, srv.base_url, case.data)
            elapsed = (time.perf_counter() - started) * 1e3
            hwm, server_hwm, n = tree_kib(pid, "VmHWM")
            rows.append({
                "case": case.name,
                "status": status,
                "code": code,
                "expected": f"{case.status} {case.code or 'ok'}",
                "as_expected": status == case.status and code == (case.code or "ok"),
                "ms": round(elapsed, 1),
                "peak_rss_over_baseline_mib": round((sampler.peak_kib - base_rss) / 1024, 1),
                "tree_hwm_over_baseline_mib": round((hwm - base_hwm) / 1024, 1),
                "server_hwm_over_baseline_mib": round((server_hwm - base_server_hwm) / 1024, 1),
                "processes": n,
            })  # fmt: skip
    return {
        "isolation": isolation,
        "baseline": {
            "after": "one 2048x2048 uncompressed phantom through /v1/predict at 256 px",
            "tree_rss_mib": round(base_rss / 1024, 1),
            "tree_hwm_mib": round(base_hwm / 1024, 1),
            "server_hwm_mib": round(base_server_hwm / 1024, 1),
            "processes": processes,
        },
        "cases": rows,
    }


# ---------------------------------------------------------------------------- report
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/bombs.json"))
    p.add_argument("--isolation", default="process,thread", help="modes to serve with")
    p.add_argument("--deflate-gib", type=float, default=1.0, help="the deflate bomb's size")
    p.add_argument("--models-dir", type=Path, default=None, help="default: the test models")
    p.add_argument("--skip-in-process", action="store_true")
    return p.parse_args(argv)


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    from tests.service.conftest import phantom, phantom_dicom

    cases = bombs(args.deflate_gib)
    models_dir = args.models_dir
    if models_dir is None:
        from tests.service.models_fixture import build_fixture_models

        models_dir = build_fixture_models()
    normal = phantom_dicom(phantom(1, size=2048))
    report: dict[str, Any] = {
        "command": COMMAND,
        "argv": list(argv),
        "machine": {"cores": len(os.sched_getaffinity(0)), "python": platform.python_version()},
        "cases": [
            {
                "case": c.name,
                "bytes": len(c.data),
                "what": c.what,
                "expected": f"{c.status} {c.code or 'ok'}",
            }
            for c in cases
        ],
    }
    with tempfile.TemporaryDirectory(prefix="bombs-") as tmp:
        report["service"] = [
            service_run(models_dir, mode, cases, normal, Path(tmp))
            for mode in args.isolation.split(",")
            if mode
        ]
        if not args.skip_in_process:
            report["in_process"] = in_process(cases, Path(tmp))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Decompression bombs and lying codestreams (issue #16)",
        "",
        f"`{report['command']}` ({report['machine']['cores']} cores). Memory: the server's "
        "process tree (server + decode workers), peak of the summed RSS sampled every 5 ms "
        "during the request, and growth of the summed VmHWM, both over the same server after "
        "one normal upload (a 2048x2048 phantom). Memory Python frees after a large case "
        "is not always returned to the system, so rows after one carry its residue (a few "
        "MiB to 34 MiB; negative where a process has since returned memory).",
        "",
        "| case | bytes | what |",
        "|---|---|---|",
    ]
    lines += [f"| {c['case']} | {c['bytes']:,} | {c['what']} |" for c in report["cases"]]
    for run_ in report["service"]:
        b = run_["baseline"]
        lines += [
            "",
            f"## Service, `SHARPCXR_DECODE_ISOLATION={run_['isolation']}`",
            "",
            f"Baseline: tree RSS {b['tree_rss_mib']} MiB, VmHWM {b['tree_hwm_mib']} MiB "
            f"(server {b['server_hwm_mib']} MiB), {b['processes']} processes.",
            "",
            "| case | status | code | expected | ms | peak RSS over baseline MiB "
            "| tree VmHWM growth MiB | server VmHWM growth MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in run_["cases"]:
            mark = "" if r["as_expected"] else " **(unexpected)**"
            lines.append(
                f"| {r['case']} | {r['status']} | {r['code']}{mark} | {r['expected']} | "
                f"{r['ms']} | {r['peak_rss_over_baseline_mib']} | "
                f"{r['tree_hwm_over_baseline_mib']} | {r['server_hwm_over_baseline_mib']} |"
            )
    if "in_process" in report:
        lines += [
            "",
            "## In process: peak RSS growth of a fresh, warmed-up interpreter",
            "",
            "`read_dicom` (guarded) against bare `pydicom.dcmread(...).pixel_array` "
            "(unguarded, under RLIMIT_AS = current + 2 GiB).",
            "",
            "| case | read_dicom | MiB | pydicom alone | MiB |",
            "|---|---|---|---|---|",
        ]
        for r in report["in_process"]:
            g, u = r["guarded"], r["unguarded"]
            lines.append(
                f"| {r['case']} | {g['outcome']} | {g.get('peak_growth_mib', '-')} | "
                f"{u['outcome']} | {u.get('peak_growth_mib', '-')} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from benchmarks.bench_service import run_cli

    run_cli(argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
