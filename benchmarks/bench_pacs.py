"""Benchmark: PACS intake (STOW-RS, C-STORE) and results delivery against ``/v1/predict``.

In one run on this machine, for ``--instances`` distinct phantom DICOMs (``--size``
square, default 2048x2048, 12-bit, Explicit VR Little Endian; one base image whose SOP
Instance UID is rewritten per instance, a fresh study per mode) and one model
(``--models-dir``, ``--resolution``):

1. **Baseline**: ``POST /v1/predict?resolution=R&mask_format=rle`` (raw
   ``application/dicom`` body, JSON answer: the work a job does, Grad-CAM mask as RLE)
   with each ``--concurrency`` (1 and 4) clients in flight: instances/s and latency.
2. **STOW-RS ingest**: the instances as ``POST /dicomweb/studies`` (``--stow-batch``
   instances per request, default 1) from 1 and 4 concurrent senders. *Ingest rate*:
   instances acknowledged (ReferencedSOPSequence of 200 answers) per second until the last
   answer came back. *Delivered rate*: instances per second from the first send until the
   last of every instance's result objects (SEG, SR, GSPS) reached the receiver.
3. **C-STORE ingest**: the same through the service's storage SCP from 1 and 4
   concurrent pynetdicom SCUs (one association each, sending its share): ingest rate of
   C-STORE Success responses, and delivered rate.

The receiver is a pynetdicom storage SCP in this process (Segmentation, Comprehensive SR,
GSPS; Explicit/Implicit VR LE) the service delivers to (``SHARPCXR_RESULTS_AE``); it counts
distinct SOP Instance UIDs and duplicates (which must be 0). Every rate is also given as a
ratio against ``/v1/predict`` at the same concurrency in the same run. Per ingest mode
also: the job rate implied (jobs done per second from the first send to the last job
done), the tail from the last job done to the last object received, the peaks of
``sharpcxr_jobs_pending`` and ``sharpcxr_outbox_depth`` (sampled every
``--sample-interval-s``), the job and delivery counters, and the server's warnings.

Every mode gets a fresh server (``python -m service`` on a free loopback port, polled on
``/readyz``, always terminated) with a fresh ``SHARPCXR_DATA_DIR``, the same settings, and
``--warmup`` untimed predicts (and, for an ingest mode, ``--warmup-jobs`` untimed STOW-RS
jobs, delivered, in a study of their own: the counters include them) before timing; so no
mode sees another's jobs or database. Senders, the receiver and the server share this
machine's cores (the client side is Python threads in this process, and costs CPU too).
The load average is recorded before and after; ratios travel better than absolute numbers.

    uv run python -m benchmarks.bench_pacs --out benchmarks/results/pacs.json
    # smoke (~30 s, mostly server start-ups; M: a models dir with a 256 px model):
    uv run python -m benchmarks.bench_pacs --out /tmp/pacs.json --models-dir M \\
        --resolution 256 --size 256 --instances 4 --predict-requests 2 --concurrency 2 \\
        --warmup 1 --grace-s 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import pacs_peers as peers
from benchmarks.bench_decode import BASELINE, BITS_STORED, phantom_bytes
from benchmarks.bench_service import (
    DEMO_MODELS_DIR,
    REPO_ROOT,
    _fmt,
    _int_list,
    free_port,
    post_predict,
    run_cli,
    run_load,
    server,
    service_argv,
    service_env,
)
from benchmarks.bench_training import cores, machine_info

INGEST_MODES = ("stow", "cstore")


# ---- the run ---------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    base: bytes
    receiver: peers.ResultReceiver
    work: Path
    log_dir: Path
    failures: list[str] = field(default_factory=list)


def pacs_env(ctx: Context, data_dir: Path, dicom_port: int) -> dict[str, str]:
    args = ctx.args
    return {
        **service_env(args.models_dir, [args.resolution], args),
        "SHARPCXR_DEFAULT_RESOLUTION": str(args.resolution),
        "SHARPCXR_DATA_DIR": str(data_dir),
        "SHARPCXR_JOBS_URL": "",  # the SQLite default under the fresh data dir
        "SHARPCXR_JOB_WORKERS": str(args.job_workers),
        "SHARPCXR_DICOM_PORT": str(dicom_port),
        "SHARPCXR_DICOM_HOST": "127.0.0.1",
        "SHARPCXR_DICOM_AE_TITLE": peers.SERVICE_AE,
        "SHARPCXR_DICOM_ALLOWED_AES": "",
        "SHARPCXR_RESULTS_AE": ctx.receiver.address,
        "SHARPCXR_RESULTS_STOW_URL": "",
        "SHARPCXR_API_KEYS": "",
    }


@contextlib.contextmanager
def pacs_server(ctx: Context, name: str) -> Iterator[tuple[Any, int]]:
    """A fresh server (own data dir) with the SCP and the receiver configured, warmed up
    with ``--warmup`` untimed predicts; ``(server, its DICOM port)``."""
    import httpx

    data_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=ctx.work))
    dicom_port = free_port()
    env = pacs_env(ctx, data_dir, dicom_port)
    try:
        with server(name, service_argv(), env, ctx.log_dir, ctx.args.startup_timeout_s) as srv:
            with httpx.Client(timeout=300) as client:
                for _ in range(ctx.args.warmup):
                    post_predict(
                        client, srv.base_url + "/v1/predict", ctx.base, predict_params(ctx)
                    )
            yield srv, dicom_port
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def predict_params(ctx: Context) -> dict[str, Any]:
    return {"resolution": ctx.args.resolution, "mask_format": "rle"}


def warm_up_jobs(ctx: Context, base_url: str, timeout_s: float = 300.0) -> dict[str, Any]:
    """``--warmup-jobs`` instances (a study of their own) by STOW-RS, untimed, until their
    results arrived: the first job pays first-call costs (result building, the first
    association to the receiver) that ``/v1/predict`` warm-ups do not touch."""
    import httpx

    n = ctx.args.warmup_jobs
    if n <= 0:
        return {"jobs": 0}
    instances, _ = peers.make_instances(ctx.base, n, "warmup")
    [(content_type, body, _)] = peers.stow_bodies(instances, n)
    start = time.perf_counter()
    response = httpx.post(
        base_url + "/dicomweb/studies",
        content=body,
        headers={"Content-Type": content_type},
        timeout=300,
    )
    deadline = time.monotonic() + timeout_s
    while ctx.receiver.distinct() < 3 * n and time.monotonic() < deadline:
        time.sleep(0.05)
    out = {
        "jobs": n,
        "status": response.status_code,
        "received": ctx.receiver.distinct(),
        "seconds": round(time.perf_counter() - start, 3),
    }
    time.sleep(0.5)  # let the deliverer settle before the receiver is reset
    ctx.receiver.reset()
    return out


@contextlib.contextmanager
def recording(
    ctx: Context, out: dict[str, Any], name: str, label: str | None = None
) -> Iterator[None]:
    """Around one part of the run (server ``name``): an exception ends the part, not the
    run, and is recorded (``out["error"]``, a failure under ``label``); the server log's
    warnings are added to ``out`` either way."""
    label = label or name
    try:
        yield
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
        ctx.failures.append(f"{label}: {out['error'][:200]}")
        print(f"{label} failed: {out['error']}", flush=True)
    out["server_warnings"] = peers.log_warnings(ctx.log_dir / f"{name}.log")


def run_predict(ctx: Context) -> dict[str, Any]:
    """``/v1/predict`` at each concurrency, on one fresh server."""
    out: dict[str, Any] = {}
    name = "pacs-predict"
    with recording(ctx, out, name, "predict"), pacs_server(ctx, name) as (srv, _):
        url = srv.base_url + "/v1/predict"
        for c in ctx.args.concurrency:
            r = run_load(url, ctx.base, predict_params(ctx), ctx.args.predict_requests, c)
            r["instances_per_s"] = r.pop("requests_per_s")
            out[str(c)] = r
            print(f"predict c={c}: {json.dumps(r)}", flush=True)
    return out


def run_ingest(ctx: Context, mode: str, concurrency: int) -> dict[str, Any]:
    """One ingest mode at one concurrency, on a fresh server: ingest, then wait for the
    results to arrive; a ``--grace-s`` pause after, for duplicates."""
    args = ctx.args
    name = f"pacs-{mode}-c{concurrency}"
    instances, study = peers.make_instances(ctx.base, args.instances, name)
    out: dict[str, Any] = {"mode": mode, "concurrency": concurrency, "instances": len(instances)}
    bodies = peers.stow_bodies(instances, args.stow_batch) if mode == "stow" else []
    ctx.receiver.reset()
    with recording(ctx, out, name), pacs_server(ctx, name) as (srv, dicom_port):
        out["warmup_jobs"] = warm_up_jobs(ctx, srv.base_url)
        with peers.MetricsSampler(srv.base_url, args.sample_interval_s) as sampler:
            before = peers.metric_value(sampler.sample(), "sharpcxr_jobs_total", state="received")
            t0 = time.time()
            if mode == "stow":
                ingest = peers.stow_ingest(srv.base_url, bodies, concurrency)
            else:
                ingest = peers.cstore_ingest(dicom_port, instances, concurrency)
            out["ingest"] = ingest
            print(f"{mode} c={concurrency} ingest: {json.dumps(ingest)}", flush=True)
            finished = peers.wait_finished(
                ctx.receiver, sampler, ingest["acknowledged"], 3, args.deliver_timeout_s,
                jobs_before=before,
            )  # fmt: skip
            time.sleep(args.grace_s)  # anything sent twice arrives now
            final = sampler.sample()
        out["finished"] = finished
        out["delivery"] = peers.delivery_summary(
            peers.study_jobs(srv.base_url, study), ctx.receiver.snapshot(), t0, len(instances)
        )
        out["peaks"] = dict(sampler.peaks)
        out["metrics_samples"] = sampler.samples
        out["metrics"] = {
            "jobs_total": peers.metric_table(final, "sharpcxr_jobs_total", ("source", "state")),
            "deliveries_total": peers.metric_table(
                final, "sharpcxr_deliveries_total", ("destination", "outcome")
            ),
        }
        print(f"{mode} c={concurrency} delivery: {json.dumps(out['delivery'])}", flush=True)
        if not finished:
            ctx.failures.append(f"{name}: not finished in {args.deliver_timeout_s:.0f} s")
    return out


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base`` (3 decimals); None when either is missing, not finite or 0."""
    if value is None or not base or not math.isfinite(value) or not math.isfinite(base):
        return None
    return round(value / base, 3)


def add_ratios(report: dict[str, Any]) -> None:
    """Each ingest row's rates over ``/v1/predict``'s at the same concurrency."""
    predict = report.get("predict") or {}
    for row in report.get("ingest", []):
        base = (predict.get(str(row["concurrency"])) or {}).get("instances_per_s")
        ingest = (row.get("ingest") or {}).get("instances_per_s")
        delivered = (row.get("delivery") or {}).get("delivered_per_s")
        jobs = (row.get("delivery") or {}).get("jobs_per_s")

        row["ratios"] = {
            "predict_instances_per_s": base,
            "ingest_over_predict": ratio(ingest, base),
            "delivered_over_predict": ratio(delivered, base),
            "jobs_over_predict": ratio(jobs, base),
        }


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    for name in ("pynetdicom", "dicomweb_client"):
        logging.getLogger(name).setLevel(logging.WARNING)
    base = phantom_bytes(args.size, args.size, BASELINE)
    manifest = json.loads((args.models_dir / "manifest.json").read_text())
    model = next((m for m in manifest["models"] if int(m["resolution"]) == args.resolution), None)
    report: dict[str, Any] = {
        "benchmark": "PACS intake (STOW-RS, C-STORE) and results delivery by C-STORE, "
        "against /v1/predict at the same concurrency, CPU",
        "command": "uv run python -m benchmarks.bench_pacs " + shlex.join(argv),
        "machine": machine_info(),
        "settings": {
            "models_dir": str(args.models_dir),
            "model": None if model is None else model.get("name"),
            "architecture": None if model is None else model.get("architecture"),
            "resolution": args.resolution,
            "instances": args.instances,
            "predict_requests": args.predict_requests,
            "predict_params": {"resolution": args.resolution, "mask_format": "rle"},
            "concurrency": args.concurrency,
            "modes": args.modes,
            "stow_batch": args.stow_batch,
            "warmup": args.warmup,
            "warmup_jobs": args.warmup_jobs,
            "job_workers": args.job_workers,
            "intra_op_threads": args.threads,
            "decode_workers": args.decode_workers,
            "max_batch_size": args.max_batch_size,
            "batch_timeout_ms": args.batch_timeout_ms,
            "grace_s": args.grace_s,
            "sample_interval_s": args.sample_interval_s,
            "servers": "a fresh server and SHARPCXR_DATA_DIR per mode and concurrency "
            "(predict: one for both concurrencies); a new study per ingest mode",
        },
        "image": {
            "rows": args.size,
            "columns": args.size,
            "bits_stored": BITS_STORED,
            "transfer_syntax": BASELINE,
            "bytes": len(base),
            "distinct": "one phantom; SOP Instance UID rewritten per instance",
        },
    }
    work = Path(tempfile.mkdtemp(prefix="bench_pacs_"))
    log_dir = work / "logs"
    log_dir.mkdir()
    report["logs"] = str(log_dir)
    receiver = peers.ResultReceiver().start()
    ctx = Context(args, base, receiver, work, log_dir)
    try:
        report["predict"] = run_predict(ctx)
        report["ingest"] = [
            run_ingest(ctx, mode, c) for mode in args.modes for c in args.concurrency
        ]
    finally:
        receiver.stop()
        for child in work.iterdir():
            if child != log_dir:
                shutil.rmtree(child, ignore_errors=True)
    add_ratios(report)
    report["failures"] = ctx.failures
    if not ctx.failures:
        shutil.rmtree(work, ignore_errors=True)  # a failed run keeps its server logs
        report["logs"] = None
    report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


# ---- report ----------------------------------------------------------------------------


def _get(row: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(row, dict):
            return None
        row = row.get(key)
    return row


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(report: dict[str, Any]) -> str:
    m, s, img = report["machine"], report["settings"], report["image"]
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m.get('cores')} cores (cpu_count {m.get('cpu_count')}), load average "
        f"{m.get('load_average_1_5_15')} before, {m.get('load_average_after')} after, "
        f"{m.get('platform')}, onnxruntime {m.get('onnxruntime')}",
        "",
        f"Model: {s['model']} ({s['architecture']}) at {s['resolution']} px from "
        f"`{s['models_dir']}`. Image: {img['rows']}x{img['columns']} {img['bits_stored']}-bit "
        f"uncompressed phantom ({img['bytes'] / 2**20:.1f} MiB), {s['instances']} distinct "
        f"instances per ingest mode, {s['predict_requests']} predicts per concurrency. "
        f"Service: {s['job_workers']} job workers, {s['intra_op_threads']} intra-op threads, "
        f"{s['decode_workers']} decode workers, max batch {s['max_batch_size']}; STOW-RS "
        f"{s['stow_batch']} instance(s) per request; a fresh server and data dir per row, "
        f"warmed up by {s['warmup']} predicts (+ {s['warmup_jobs']} job(s) for ingest rows). "
        "Results (SEG, SR, GSPS) by C-STORE to a receiver in the benchmark process.",
        "",
        "| mode | clients | instances | ingest inst/s | ingest p50 ms | delivered inst/s | "
        "jobs/s | job p50 s | delivery tail s | ingest / predict | delivered / predict | "
        "pending peak | outbox peak | received / duplicates | problems |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    predict = report.get("predict") or {}
    for c in s["concurrency"]:
        r = predict.get(str(c))
        if not r:
            continue
        errors = "; ".join(r.get("errors") or []) or "-"
        lines.append(
            f"| /v1/predict | {c} | {r['ok']}/{r['requests']} | {_fmt(r['instances_per_s'])} | "
            f"{_fmt(_get(r, 'latency', 'median_ms'))} | - | - | - | - | 1.00x | 1.00x | - | - | "
            f"- | {errors[:120]} |"
        )
    if predict.get("error"):
        lines.append(f"| /v1/predict | failed: {predict['error'][:200]!r} |")
    for row in report.get("ingest", []):
        label = {"stow": "STOW-RS", "cstore": "C-STORE"}.get(row["mode"], row["mode"])
        if row["mode"] == "stow" and s["stow_batch"] > 1:
            label += f" ({s['stow_batch']}/request)"
        ingest, delivery = row.get("ingest") or {}, row.get("delivery") or {}
        ratios, peaks = row.get("ratios") or {}, row.get("peaks") or {}
        problems = []
        if row.get("error"):
            problems.append(f"failed: {row['error'][:150]}")
        if row.get("finished") is False:
            problems.append("timed out")
        bad = {k: v for k, v in (ingest.get("outcomes") or {}).items()
               if k not in ("HTTP 200", "0x0000")}  # fmt: skip
        problems += [f"{k} x{v}" for k, v in bad.items()]
        if delivery and not delivery.get("all_delivered"):
            problems.append(
                f"delivered {delivery.get('instances_delivered')}/{row['instances']}, "
                f"jobs {delivery.get('job_states')}"
            )
        if delivery.get("missing"):
            problems.append(f"{delivery['missing']} objects missing")
        warnings = sum((row.get("server_warnings") or {}).values())
        if warnings:
            problems.append(f"{warnings} server warnings")
        job_p50 = _get(delivery, "job_latency", "median_ms")
        received = (
            f"{delivery['received_distinct']} / {delivery['duplicates']}" if delivery else "-"
        )
        lines.append(
            f"| {label} | {row['concurrency']} | "
            f"{ingest.get('acknowledged', '-')}/{row['instances']} | "
            f"{_fmt(ingest.get('instances_per_s'))} | "
            f"{_fmt(_get(ingest, 'latency', 'median_ms'))} | "
            f"{_fmt(delivery.get('delivered_per_s'))} | {_fmt(delivery.get('jobs_per_s'))} | "
            f"{_fmt(None if job_p50 is None else round(job_p50 / 1e3, 2))} | "
            f"{_fmt(delivery.get('delivery_tail_s'))} | "
            f"{_x(ratios.get('ingest_over_predict'))} | "
            f"{_x(ratios.get('delivered_over_predict'))} | "
            f"{_fmt(peaks.get('sharpcxr_jobs_pending'))} | "
            f"{_fmt(peaks.get('sharpcxr_outbox_depth'))} | {received} | "
            f"{'; '.join(problems) or '-'} |"
        )
    lines += [
        "",
        "ingest: instances acknowledged (STOW-RS 200 ReferencedSOPSequence, C-STORE Success) "
        "per second until the last answer; delivered: instances per second from the first "
        "send until the last of their result objects reached the receiver; jobs/s: jobs done "
        "per second from the first send; job p50: median time from received to done; delivery "
        "tail: last object received - last job done; ratios: over /v1/predict at the same "
        f"number of clients; peaks: sampled every {s['sample_interval_s']} s.",
    ]
    if report.get("failures"):
        lines += ["", f"Failures: {report['failures']}; server logs kept in {report['logs']}"]
    return "\n".join(lines)


# ---- command line ----------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks/results/pacs.json")
    parser.add_argument("--models-dir", type=Path, default=DEMO_MODELS_DIR)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--size", type=int, default=2048, help="phantom rows = columns")
    parser.add_argument("--instances", type=int, default=48, help="per ingest mode")
    parser.add_argument(
        "--predict-requests", type=int, default=None, help="per concurrency (default: instances)"
    )
    parser.add_argument("--concurrency", type=_int_list, default=[1, 4])
    parser.add_argument(
        "--modes",
        type=lambda t: [p for p in t.split(",") if p],
        default=list(INGEST_MODES),
        help="comma-separated: stow,cstore",
    )
    parser.add_argument("--stow-batch", type=int, default=1, help="instances per STOW request")
    parser.add_argument("--warmup", type=int, default=2, help="untimed predicts per server")
    parser.add_argument(
        "--warmup-jobs", type=int, default=1, help="untimed STOW-RS jobs per ingest server"
    )
    parser.add_argument("--job-workers", type=int, default=2, help="SHARPCXR_JOB_WORKERS")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads")
    parser.add_argument("--decode-workers", type=int, default=None)
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    parser.add_argument("--grace-s", type=float, default=2.0, help="wait for duplicates")
    parser.add_argument("--sample-interval-s", type=float, default=0.25)
    parser.add_argument("--deliver-timeout-s", type=float, default=600.0)
    parser.add_argument("--startup-timeout-s", type=float, default=300.0)
    args = parser.parse_args(argv)
    unknown = set(args.modes) - set(INGEST_MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {INGEST_MODES}")
    if args.instances < 1 or not args.concurrency or min(args.concurrency) < 1:
        parser.error("--instances and every --concurrency must be at least 1")
    args.models_dir = args.models_dir.resolve()
    args.predict_requests = args.predict_requests or args.instances
    args.threads = args.threads or cores()
    args.decode_workers = args.decode_workers or cores()
    return args


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
