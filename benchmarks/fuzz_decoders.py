"""Decoder fuzzing (issue #16): mutated DICOM files through ``read_dicom`` in a decode pool.

Every case is a seed file of :mod:`tests.fuzz.decoder_seeds` (real and made files, every
transfer syntax the service decodes) with one to three mutators of
:mod:`tests.fuzz.decoder_mutations`, decoded by :class:`service.decode_pool.DecodePool`
(one worker process, so a codec that crashes or hangs costs a worker, not the fuzzer),
with and without ``min_side`` (the reduced JPEG 2000 path of ``imaging/reduced.py``).

An outcome is ``decoded`` (a :class:`imaging.dicom.DecodedImage` whose pixels are float32,
finite, in [0, 1], of the header's grid or its reduction), ``refused`` (an
:class:`imaging.errors.ImagingError`, by code) or a **finding**: ``decoder_crashed``,
``decode_timeout``, ``decode_memory_exceeded`` (the pool's codes), ``exception`` (any other
exception out of ``read_dicom``, with its traceback), ``bad_output`` (a decoded image that
breaks the pixel convention) or ``memory`` (the worker's peak RSS grew by more than
:data:`RSS_BOUND_BYTES` during the case; measured by resetting ``VmHWM`` through
``/proc/PID/clear_refs`` before each case). Findings are saved (``<sha256[:12]>_<kind>.dcm``
and a line in ``findings.jsonl``) for ``tests/data/fuzz-regressions/``.

    nice -n 10 .venv/bin/python -m benchmarks.fuzz_decoders --cases 10000 --seed 16 \\
        --out benchmarks/results/decoder_fuzz.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import resource
import sys
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imaging.dicom import DecodedImage, read_dicom
from imaging.errors import ImagingError
from service.decode_pool import DecodePool
from service.errors import DecoderFailedError
from tests.fuzz.decoder_mutations import Case, make_case

#: the pixel budget while fuzzing: a mutated header may declare up to this many pixels
FUZZ_MAX_PIXELS = 4_000_000
#: allowed growth of the worker's peak RSS in one case: 64 MiB of slack plus 32 bytes per
#: pixel of the budget (stored values, the float32 display image and its copies need ~14)
RSS_BOUND_BYTES = (64 << 20) + 32 * FUZZ_MAX_PIXELS
#: per-case wall-clock bound (the pool kills the worker past it: a decode_timeout finding)
CASE_TIMEOUT_S = 10.0
#: the worker's address-space limit (the service's default SHARPCXR_DECODE_MEMORY_MB)
MEMORY_MB = 3072

POOL_CODES = ("decoder_crashed", "decode_timeout", "decode_memory_exceeded")


@dataclass(frozen=True)
class Outcome:
    """``kind``: decoded | refused | finding; ``code``: the refusal or finding code."""

    kind: str
    code: str
    seconds: float
    rss_growth_bytes: int | None
    detail: str = ""
    reduction: int = 1


def worker_pids(pool: DecodePool) -> list[int]:
    """The pool's worker PIDs (one worker here)."""
    return list(pool.pids())


def _status_kib(pid: int, key: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _reset_peak(pid: int) -> None:
    with contextlib.suppress(OSError):  # VmHWM := VmRSS (Linux >= 4.0)
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def check_output(decoded: DecodedImage) -> str | None:
    """What is wrong with a decoded image's pixels, or None (the pixel convention)."""
    pixels = decoded.pixels
    rows, columns = decoded.grid
    factor = decoded.reduction
    expected = (math.ceil(rows / factor), math.ceil(columns / factor))
    if pixels.dtype != np.float32 or pixels.shape != expected:
        return f"pixels {pixels.dtype} {pixels.shape}, expected float32 {expected}"
    if not np.isfinite(pixels).all():
        return "non-finite display values"
    if pixels.size and (float(pixels.min()) < 0.0 or float(pixels.max()) > 1.0):
        return f"display values outside [0, 1]: {pixels.min()}..{pixels.max()}"
    if not math.isfinite(decoded.contrast) or not 0.0 <= decoded.contrast <= 1.0:
        return f"contrast {decoded.contrast}"
    return None


def traceback_of(data: bytes, min_side: int | None, max_pixels: int) -> str:
    """The last frames of the exception ``read_dicom`` raises on ``data``, in this process.

    Only for inputs on which a worker already raised (and survived): safe in-process."""
    try:
        read_dicom(data, max_pixels=max_pixels, min_side=min_side)
    except ImagingError as exc:
        return f"(domain refusal in-process: {exc.code})"
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)[-4:]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[::-1])
        return f"{type(exc).__name__}: {str(exc)[:160]} at {where}"
    return "(decoded in-process)"


class Fuzzer:
    """A one-worker decode pool and the bookkeeping of one fuzz run."""

    def __init__(
        self,
        *,
        max_pixels: int = FUZZ_MAX_PIXELS,
        timeout_s: float = CASE_TIMEOUT_S,
        memory_mb: int = MEMORY_MB,
        rss_bound_bytes: int = RSS_BOUND_BYTES,
        findings_dir: Path | None = None,
    ) -> None:
        self.max_pixels, self.rss_bound = max_pixels, rss_bound_bytes
        self.pool = DecodePool(1, timeout_s=timeout_s, memory_mb=memory_mb, plugins=[])
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self.findings_dir = findings_dir
        self.findings: list[dict[str, Any]] = []

    def __enter__(self) -> Fuzzer:
        self.pool.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.pool.close()

    def run(self, case: Case) -> Outcome:
        outcome = self.decode(case.data, case.min_side)
        if outcome.kind == "finding":
            self._record(case, outcome)
        return outcome

    def decode(self, data: bytes, min_side: int | None) -> Outcome:
        pids = worker_pids(self.pool)
        pid = pids[0] if pids else None
        baseline = None
        if pid is not None:
            _reset_peak(pid)
            baseline = _status_kib(pid, "VmRSS")
        started = time.perf_counter()
        kind, code, detail, reduction = "decoded", "decoded", "", 1
        try:
            decoded = self.pool.decode(data, max_pixels=self.max_pixels, min_side=min_side)
            reduction = decoded.reduction
            problem = check_output(decoded)
            if problem is not None:
                kind, code, detail = "finding", "bad_output", problem
        except ImagingError as exc:
            kind, code = "refused", exc.code
        except DecoderFailedError as exc:
            kind, code = "finding", exc.code
        except RuntimeError as exc:  # the worker's read_dicom raised a non-domain exception
            kind, code = "finding", "exception"
            detail = f"{exc}; {traceback_of(data, min_side, self.max_pixels)}"
        seconds = time.perf_counter() - started
        growth = None
        if pid is not None and baseline is not None and pid in worker_pids(self.pool):
            peak = _status_kib(pid, "VmHWM")
            growth = None if peak is None else max(0, peak - baseline) * 1024
        if kind != "finding" and growth is not None and growth > self.rss_bound:
            kind, code = "finding", "memory"
            detail = f"peak RSS grew by {growth / 2**20:.0f} MiB (bound {self.rss_bound >> 20})"
        return Outcome(kind, code, seconds, growth, detail, reduction)

    def _record(self, case: Case, outcome: Outcome) -> None:
        digest = hashlib.sha256(case.data).hexdigest()
        name = f"{digest[:12]}_{outcome.code}.dcm"
        entry = {
            "file": name,
            "kind": outcome.code,
            "detail": outcome.detail[:400],
            "seed": case.seed,
            "transfer_syntax": case.transfer_syntax,
            "mutators": list(case.mutators),
            "min_side": case.min_side,
            "case": [case.run_seed, case.index],
            "bytes": len(case.data),
        }
        self.findings.append(entry)
        if self.findings_dir is not None:
            self.findings_dir.mkdir(parents=True, exist_ok=True)
            (self.findings_dir / name).write_bytes(case.data)
            with (self.findings_dir / "findings.jsonl").open("a") as fh:
                fh.write(json.dumps(entry) + "\n")


@dataclass
class Tally:
    """Outcome counts of a group of cases (a transfer syntax, a mutator)."""

    cases: int = 0
    decoded: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    findings: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: Outcome) -> None:
        self.cases += 1
        if outcome.kind == "decoded":
            self.decoded += 1
        elif outcome.kind == "refused":
            self.refused[outcome.code] += 1
        else:
            self.findings[outcome.code] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "decoded": self.decoded,
            "refused": dict(sorted(self.refused.items())),
            "findings": dict(sorted(self.findings.items())),
        }


def fuzz(
    cases: int,
    seed: int,
    *,
    start: int = 0,
    findings_dir: Path | None = None,
    progress_every: int = 0,
) -> dict[str, Any]:
    """Run cases ``start .. start + cases`` of run ``seed``; the report as a dict."""
    total = Tally()
    by_syntax: defaultdict[str, Tally] = defaultdict(Tally)
    by_mutator: defaultdict[str, Tally] = defaultdict(Tally)
    by_seed: defaultdict[str, Tally] = defaultdict(Tally)
    growths: list[int] = []
    slowest, reduced, with_min_side = 0.0, 0, 0
    began = time.perf_counter()
    with Fuzzer(findings_dir=findings_dir) as fuzzer:
        for index in range(start, start + cases):
            case = make_case(seed, index)
            outcome = fuzzer.run(case)
            for tally in (total, by_syntax[case.transfer_syntax], by_seed[case.seed]):
                tally.add(outcome)
            for name in set(case.mutators):
                by_mutator[name].add(outcome)
            if outcome.rss_growth_bytes is not None:
                growths.append(outcome.rss_growth_bytes)
            slowest = max(slowest, outcome.seconds)
            with_min_side += case.min_side is not None
            reduced += outcome.reduction > 1
            if progress_every and (index - start + 1) % progress_every == 0:
                rate = (index - start + 1) / (time.perf_counter() - began)
                print(
                    f"{index - start + 1} cases, {rate:.1f}/s, findings {dict(total.findings)}",
                    flush=True,
                )
        findings, restarts = fuzzer.findings, fuzzer.pool.restarts
        pids = worker_pids(fuzzer.pool)
        worker_peak = _status_kib(pids[0], "VmHWM") if pids else None
    seconds = time.perf_counter() - began
    mib = 1 / 2**20
    return {
        "benchmark": "decoder fuzzing: mutated DICOM through read_dicom in a decode pool",
        "cases": cases,
        "seed": seed,
        "first_case": start,
        "seconds": round(seconds, 1),
        "cases_per_second": round(cases / seconds, 1),
        "limits": {
            "max_pixels": FUZZ_MAX_PIXELS,
            "case_timeout_s": CASE_TIMEOUT_S,
            "worker_memory_mb": MEMORY_MB,
            "rss_growth_bound_mib": RSS_BOUND_BYTES >> 20,
        },
        "outcomes": total.as_dict(),
        "with_min_side": with_min_side,
        "reduced_decodes": reduced,
        "worker_restarts": restarts,
        "slowest_case_s": round(slowest, 3),
        "rss_growth_mib": {
            "max": round(max(growths, default=0) * mib, 1),
            "p99": round(float(np.percentile(growths, 99)) * mib, 1) if growths else 0.0,
            "measured_cases": len(growths),
        },
        "worker_peak_rss_mib": round(worker_peak / 1024, 1) if worker_peak else None,
        "runner_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "by_transfer_syntax": {k: v.as_dict() for k, v in sorted(by_syntax.items())},
        "by_mutator": {k: v.as_dict() for k, v in sorted(by_mutator.items())},
        "by_seed": {k: v.as_dict() for k, v in sorted(by_seed.items())},
        "findings": findings[:100],
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--start", type=int, default=0, help="first case index")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decoder_fuzz.json"))
    parser.add_argument("--findings-dir", type=Path, default=Path("/tmp/sharpcxr-fuzz-findings"))
    parser.add_argument("--progress-every", type=int, default=500)
    parser.add_argument(
        "--codec-stderr", action="store_true", help="keep the codecs' stderr (noisy)"
    )
    args = parser.parse_args()
    if not args.codec_stderr:  # libjpeg, OpenJPEG and GDCM print a line per bad input
        saved = os.dup(2)  # this process's own errors still reach the terminal
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        sys.stderr = os.fdopen(saved, "w", buffering=1)
    report = fuzz(
        args.cases,
        args.seed,
        start=args.start,
        findings_dir=args.findings_dir,
        progress_every=args.progress_every,
    )
    report["command"] = (
        f"nice -n 10 .venv/bin/python -m benchmarks.fuzz_decoders --cases {args.cases} "
        f"--seed {args.seed} --out {args.out}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: report[k]
                for k in ("cases", "seconds", "cases_per_second", "outcomes", "rss_growth_mib")
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
