"""The cost sweep: what each resolution of a running sharpcxr service costs and buys.

For every resolution x concurrency step, ``C`` closed-loop clients (threads, one keep-alive
httpx connection each) send ``N`` requests in all, ``POST /v1/predict?resolution=R`` with
the same synthetic 12-bit phantom DICOM (default 2048 x 2048, synthetic patient attributes
only). Per step: throughput (200s per second of wall time), client latency p50/p95/p99 of
the 200s, status counts (200 / 503 / other, transport errors counted as other), the mean
server-side ``timings_ms`` per stage, and the mean batch size from the deltas of
``sharpcxr_batch_size_sum`` / ``_count{resolution=R}`` scraped from ``/metrics`` around the
step. Each model's test-set AUROCs come from ``GET /v1/models``.

    uv run python -m load_tests.sweep --url http://127.0.0.1:8000 \
        --out load_tests/results/sweep.json

Writes the JSON and a Markdown table beside it (``.md``) and prints the table. Exit 0;
1 when a step saw responses other than 200/503; 2 when the service cannot be used.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

DESCRIPTION = "Per-resolution cost sweep against a running sharpcxr service."
STAGES = ("decode", "preprocess", "queue", "inference", "postprocess", "total")
BITS_STORED = 12
DICOM = {"Content-Type": "application/dicom"}
TIMEOUT = httpx.Timeout(300.0, connect=5.0)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class SweepError(Exception):
    """Stops the sweep with a one-line message (exit 2)."""


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolating linearly like numpy; nan when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def parse_metrics(text: str) -> Samples:
    """Prometheus text exposition -> ``{(sample name, sorted label pairs): value}``."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def metric_value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, pairs), v in samples.items() if n == name and wanted <= set(pairs))


def batch_delta(before: Samples, after: Samples, resolution: int) -> tuple[int, float]:
    """(batches run, mean images per batch) at ``resolution`` between two scrapes."""
    label = str(resolution)

    def delta(name: str) -> float:
        return metric_value(after, name, resolution=label) - metric_value(
            before, name, resolution=label
        )

    count, total = delta("sharpcxr_batch_size_count"), delta("sharpcxr_batch_size_sum")
    return round(count), (total / count if count > 0 else math.nan)


def aurocs_of(metrics: dict[str, Any]) -> dict[str, float]:
    """``{test set: AUROC}`` from a ``/v1/models`` entry's metrics (the sets named ``test*``)."""
    return {
        name: float(block["auroc"])
        for name, block in sorted(metrics.items())
        if name.startswith("test")
        and isinstance(block, dict)
        and isinstance(block.get("auroc"), int | float)
    }


def phantom_dicom(size: int) -> bytes:
    """A ``size`` x ``size`` 12-bit phantom with a pneumothorax, as uncompressed DICOM bytes."""
    from imaging.dicom_writer import write_dicom
    from imaging.phantoms.dataset import generate_phantom

    phantom = generate_phantom(0, 0, "a", size, pneumothorax=True)
    stored = np.round(phantom.pixels * ((1 << BITS_STORED) - 1)).astype(np.uint16)
    spacing = 0.14 * 2048 / size  # keep a ~29 cm film whatever the matrix
    buffer = io.BytesIO()  # default (synthetic) patient attributes: no identifiers
    write_dicom(buffer, stored, bits_stored=BITS_STORED, pixel_spacing_mm=(spacing, spacing))
    return buffer.getvalue()


@dataclass
class Step:
    """What the clients saw during one step."""

    elapsed_s: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    others: list[str] = field(default_factory=list)


def run_step(
    url: str, params: dict[str, str], body: bytes, headers: dict[str, str], n: int, clients: int
) -> Step:
    """``clients`` closed-loop clients share ``n`` requests; returns what they saw."""
    step, lock, left = Step(), threading.Lock(), [n]

    def client() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT) as http:
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                start = time.perf_counter()
                timings: dict[str, float] = {}
                try:
                    response = http.post("/v1/predict", params=params, content=body, headers=DICOM)
                    status, info = response.status_code, response.text[:200]
                    if status == 200:
                        timings = response.json()["timings_ms"]
                except httpx.HTTPError as exc:
                    status, info = 0, f"{type(exc).__name__}: {exc}"
                ms = (time.perf_counter() - start) * 1e3
                with lock:
                    key = str(status) if status in (200, 503) else "other"
                    step.statuses[key] += 1
                    if status == 200:
                        step.latencies_ms.append(ms)
                        step.timings.append(timings)
                    elif key == "other" and len(step.others) < 3:
                        step.others.append(f"{status}: {info}")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    step.elapsed_s = time.perf_counter() - start
    return step


def _num(value: float, digits: int = 2) -> float | None:
    return None if math.isnan(value) else round(value, digits)


def summarise(
    resolution: int, clients: int, step: Step, batch: tuple[int, float], model: dict[str, Any]
) -> dict[str, Any]:
    """One JSON row of the sweep."""
    ok, lat = step.statuses["200"], step.latencies_ms
    return {
        "resolution": resolution,
        "concurrency": clients,
        "requests": sum(step.statuses.values()),
        "status": {k: step.statuses[k] for k in ("200", "503", "other")},
        "elapsed_s": round(step.elapsed_s, 3),
        "throughput_rps": round(ok / step.elapsed_s, 3) if step.elapsed_s > 0 else 0.0,
        "latency_ms": {f"p{q}": _num(percentile(lat, q)) for q in (50, 95, 99)}
        | {"mean": _num(sum(lat) / len(lat) if lat else math.nan)},
        "timings_ms": {
            s: _num(sum(t[s] for t in step.timings) / ok if ok else math.nan) for s in STAGES
        },
        "batches": batch[0],
        "mean_batch_size": _num(batch[1], 3),
        "model": {k: model.get(k) for k in ("name", "version", "backend")},
        "auroc": aurocs_of(model.get("metrics", {})),
        "other_examples": step.others,
    }


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """The sweep as a Markdown table, one line per resolution x concurrency."""
    sets = sorted({name for row in rows for name in row["auroc"]})

    def cell(value: Any, fmt: str = "{:.1f}") -> str:
        return "-" if value is None else fmt.format(value)

    header = ["resolution", "clients", "req/s", "p50 ms", "p95 ms", "p99 ms", "200/503/other"]
    header += ["mean batch", "queue ms", "inference ms", "server ms"]
    header += [f"AUROC {name}" for name in sets]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for r in rows:
        lat, t, s = r["latency_ms"], r["timings_ms"], r["status"]
        cells = [str(r["resolution"]), str(r["concurrency"]), cell(r["throughput_rps"], "{:.2f}")]
        cells += [cell(lat[p]) for p in ("p50", "p95", "p99")]
        cells += [f"{s['200']}/{s['503']}/{s['other']}", cell(r["mean_batch_size"], "{:.2f}")]
        cells += [cell(t["queue"]), cell(t["inference"]), cell(t["total"])]
        cells += [cell(r["auroc"].get(name), "{:.3f}") for name in sets]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _get(http: httpx.Client, path: str) -> httpx.Response:
    try:
        response = http.get(path)
    except httpx.TransportError as exc:
        raise SweepError(
            f"no sharpcxr service at {http.base_url} ({type(exc).__name__}: {exc}); "
            "start one with `make serve`"
        ) from None
    if response.status_code == 401:
        raise SweepError(f"{http.base_url} wants an API key: pass --api-key KEY")
    return response


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Run every step and return the report (``rows`` plus the set-up)."""
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    started = datetime.now(UTC).isoformat(timespec="seconds")
    with httpx.Client(base_url=args.url, headers=headers, timeout=TIMEOUT) as http:
        ready = _get(http, "/readyz")
        if ready.status_code != 200:
            raise SweepError(f"service at {args.url} is not ready ({ready.text[:200]})")
        listing = _get(http, "/v1/models")
        if listing.status_code != 200:
            raise SweepError(f"GET {args.url}/v1/models answered {listing.status_code}")
        models = {m["resolution"]: m for m in listing.json()["models"]}
        resolutions = args.resolutions or sorted(models)
        if unknown := [r for r in resolutions if r not in models]:
            raise SweepError(f"resolutions {unknown} not served; available: {sorted(models)}")
        body = phantom_dicom(args.size)
        explain = "true" if args.explain else "false"
        rows: list[dict[str, Any]] = []
        for resolution in resolutions:
            params = {"resolution": str(resolution), "explain": explain}
            for _ in range(args.warmup):
                warm = http.post("/v1/predict", params=params, content=body, headers=DICOM)
                if warm.status_code != 200:
                    raise SweepError(
                        f"warm-up at {resolution}: {warm.status_code} {warm.text[:300]}"
                    )
            for clients in args.concurrency:
                before = parse_metrics(_get(http, "/metrics").text)
                step = run_step(args.url, params, body, headers, args.requests, clients)
                after = parse_metrics(_get(http, "/metrics").text)
                batch = batch_delta(before, after, resolution)
                row = summarise(resolution, clients, step, batch, models[resolution])
                rows.append(row)
                sys.stderr.write(
                    f"sweep: {resolution} px x {clients} clients: {row['throughput_rps']:.2f} "
                    f"req/s, statuses {row['status']}\n"
                )
    return {
        "url": args.url,
        "started_utc": started,
        "image": {"rows": args.size, "columns": args.size, "bits_stored": BITS_STORED},
        "requests_per_step": args.requests,
        "explain": args.explain,
        # the service's cores, for the cost report (cost per core-hour): this machine's when
        # the service is on loopback (clients and service then share them), else --cores
        "cores": args.cores,
        "rows": rows,
    }


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m load_tests.sweep", description=DESCRIPTION)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    p.add_argument("--resolutions", type=_ints, default=None, help="default: every served one")
    p.add_argument("--concurrency", type=_ints, default=[1, 2, 4, 8], help="clients per step")
    p.add_argument("--requests", type=int, default=32, help="requests per step (all clients)")
    p.add_argument("--size", type=int, default=2048, help="phantom rows = columns")
    p.add_argument("--warmup", type=int, default=2, help="untimed requests per resolution")
    p.add_argument("--api-key", default=None, help="sent as X-API-Key")
    p.add_argument("--explain", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", type=Path, default=Path("load_tests/results/sweep.json"))
    p.add_argument(
        "--cores",
        type=int,
        default=None,
        help="the service's CPU cores (default: this machine's when --url is loopback)",
    )
    args = p.parse_args(argv)
    if args.cores is None and urlsplit(args.url).hostname in ("127.0.0.1", "localhost", "::1"):
        args.cores = os.cpu_count()
    if args.requests < 1 or args.size < 32 or args.warmup < 0:
        p.error("--requests >= 1, --size >= 32 and --warmup >= 0 please")
    return args


def markdown_report(report: dict[str, Any]) -> str:
    return (
        f"# sharpcxr cost sweep\n\n{report['url']}, {report['started_utc']}; "
        f"{report['image']['rows']}x{report['image']['columns']} {BITS_STORED}-bit phantom, "
        f"{report['requests_per_step']} requests per step, explain={report['explain']}.\n\n"
        + render_table(report["rows"])
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = sweep(args)
    except SweepError as exc:
        sys.stderr.write(f"sweep: {exc}\n")
        return 2
    except httpx.TransportError as exc:
        sys.stderr.write(f"sweep: lost the service at {args.url} ({type(exc).__name__}: {exc})\n")
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown_report(report))
    sys.stdout.write(render_table(report["rows"]))
    failed = [r for r in report["rows"] if r["status"]["other"]]
    for row in failed:
        sys.stderr.write(f"sweep: {row['resolution']} px: errors {row['other_examples']}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
