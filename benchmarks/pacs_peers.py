"""The peers and measuring instruments of :mod:`benchmarks.bench_pacs`.

The senders (STOW-RS over httpx, C-STORE by pynetdicom SCUs, Python threads in this
process), the results receiver (a pynetdicom storage SCP the service delivers SEG, SR and
GSPS to), a ``/metrics`` sampler, and the accounting afterwards: waiting until a mode's
results arrived, what became of its jobs and objects, the server log's warnings. No
servers are started here, and no timing is judged.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.bench_service import free_port, latency_stats, run_threads, throughput

RECEIVER_AE = "RECEIVER"
SERVICE_AE = "SHARPCXR"
#: DICOM JSON tags of a STOW-RS answer (PS3.18 10.5.3)
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
#: parsed ``/metrics``: ``[(name, labels, value)]``
Samples = list[tuple[str, dict[str, str], float]]


# ---- instances -------------------------------------------------------------------------


def make_instances(base: bytes, n: int, tag: str) -> tuple[list[bytes], str]:
    """``n`` copies of the Part 10 file ``base``, each with its own SOP Instance UID, all
    in one new study and series (so a mode's jobs are its own); ``(instances, study UID)``.
    Only the header changes: the pixel data are the base image's."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(base))
    study = generate_uid(entropy_srcs=[tag, "study", repr(time.time_ns())])
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[tag, "series", repr(time.time_ns())])
    out = []
    for _ in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out, str(study)


# ---- the results receiver --------------------------------------------------------------


@dataclass
class Arrival:
    uid: str
    sop_class: str
    t: float  # time.time(), comparable with the server's timestamps


class ResultReceiver:
    """A pynetdicom storage SCP (the PACS the service delivers results to): records the
    SOP Instance UID, class and arrival time of every C-STORE, answers Success."""

    def __init__(self) -> None:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            ComprehensiveSRStorage,
            GrayscaleSoftcopyPresentationStateStorage,
            SegmentationStorage,
        )

        self.port = free_port()
        self.lock = threading.Lock()
        self.arrivals: list[Arrival] = []
        self.ae = AE(ae_title=RECEIVER_AE)
        for sop in (
            SegmentationStorage,
            ComprehensiveSRStorage,
            GrayscaleSoftcopyPresentationStateStorage,
        ):
            self.ae.add_supported_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server: Any = None

    @property
    def address(self) -> str:
        return f"{RECEIVER_AE}@127.0.0.1:{self.port}"

    def _on_store(self, event: Any) -> int:
        request = event.request  # the UIDs are in the request: no need to decode the dataset
        arrival = Arrival(
            str(request.AffectedSOPInstanceUID), str(request.AffectedSOPClassUID), time.time()
        )
        with self.lock:
            self.arrivals.append(arrival)
        return 0x0000

    def start(self) -> ResultReceiver:
        from pynetdicom import evt

        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def reset(self) -> None:
        with self.lock:
            self.arrivals.clear()

    def snapshot(self) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals)

    def distinct(self) -> int:
        with self.lock:
            return len({a.uid for a in self.arrivals})


# ---- metrics ---------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> Samples:
    """Prometheus text exposition -> ``[(name, labels, value)]`` (comments skipped)."""
    out = []
    for name, labels, value in _SAMPLE.findall(text):
        try:
            number = float(value)
        except ValueError:
            continue
        out.append((name, dict(_LABEL.findall(labels or "")), number))
    return out


def metric_value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(
        v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items())
    )


def metric_table(samples: Samples, name: str, keys: Sequence[str]) -> dict[str, float]:
    """``{"label1/label2": value}`` of ``name``'s samples, by the labels ``keys``."""
    return {"/".join(ls.get(k, "") for k in keys): v for n, ls, v in samples if n == name}


class MetricsSampler:
    """Polls ``/metrics`` in a thread: the peaks of the job and outbox gauges, the latest
    samples. ``peaks`` are over the samples taken (the gauges move between samples)."""

    GAUGES = ("sharpcxr_jobs_pending", "sharpcxr_outbox_depth")

    def __init__(self, base_url: str, interval_s: float) -> None:
        self.url = base_url + "/metrics"
        self.interval_s = interval_s
        self.peaks = dict.fromkeys(self.GAUGES, 0)
        self.latest: Samples = []
        self.samples = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)
        self._lock = threading.Lock()

    def sample(self) -> Samples:
        import httpx

        try:
            samples = parse_metrics(httpx.get(self.url, timeout=10).text)
        except httpx.HTTPError:
            with self._lock:
                self.errors += 1
                return list(self.latest)
        with self._lock:
            self.latest = samples
            self.samples += 1
            for gauge in self.GAUGES:
                value = int(metric_value(samples, gauge))  # counts of jobs and objects
                self.peaks[gauge] = max(self.peaks[gauge], value)
        return samples

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MetricsSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


# ---- ingest ----------------------------------------------------------------------------


def stow_bodies(instances: Sequence[bytes], batch: int) -> list[tuple[str, bytes, int]]:
    """``(Content-Type, body, instances in it)`` per STOW-RS request, encoded up front."""
    from service.pacs.related import encode_related

    out = []
    for start in range(0, len(instances), max(1, batch)):
        chunk = instances[start : start + max(1, batch)]
        content_type, body = encode_related(chunk)
        out.append((content_type, body, len(chunk)))
    return out


class Tally:
    """What the senders of one ingest run got back, counted under one lock: outcomes,
    instances acknowledged, latencies (ms) of the acknowledged, the first errors."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self.acknowledged = 0

    def add(
        self,
        outcome: str,
        count: int = 1,
        acknowledged: int = 0,
        latency_ms: float | None = None,
        error: str | None = None,
    ) -> None:
        with self.lock:
            self.outcomes[outcome] += count
            self.acknowledged += acknowledged
            if latency_ms is not None:
                self.latencies.append(latency_ms)
            if error is not None:
                self.errors.append(error)

    def result(
        self, instances: int, concurrency: int, seconds: float, **extra: Any
    ) -> dict[str, Any]:
        return {
            "instances": instances,
            "acknowledged": self.acknowledged,
            "concurrency": concurrency,
            "seconds": round(seconds, 3),
            "instances_per_s": throughput(self.acknowledged, seconds),
            "latency": latency_stats(self.latencies) if self.latencies else None,
            "outcomes": dict(sorted(self.outcomes.items())),
            "errors": list(self.errors[:3]),
            **extra,
        }


def _exc(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def stow_ingest(
    base_url: str, bodies: Sequence[tuple[str, bytes, int]], concurrency: int
) -> dict[str, Any]:
    """The STOW-RS requests from ``concurrency`` senders (each its keep-alive connection,
    taking the next request from a shared queue); time until the last answer."""
    import httpx

    url = base_url + "/dicomweb/studies"
    tally = Tally()
    remaining = iter(bodies)

    def worker() -> None:
        with httpx.Client(timeout=600) as client:
            while True:
                with tally.lock:
                    item = next(remaining, None)
                if item is None:
                    return
                content_type, body, _ = item
                start = time.perf_counter()
                try:
                    response = client.post(
                        url, content=body, headers={"Content-Type": content_type}
                    )
                except httpx.HTTPError as exc:
                    tally.add("transport error", error=_exc(exc))
                    continue
                elapsed = (time.perf_counter() - start) * 1e3
                referenced, failed = 0, 0
                with contextlib.suppress(ValueError, AttributeError, TypeError):
                    answer = response.json()
                    referenced = len(answer.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", []))
                    failed = len(answer.get(FAILED_SOP_SEQUENCE, {}).get("Value", []))
                code, ok = response.status_code, response.status_code in (200, 202)
                tally.add(
                    f"HTTP {code}",
                    acknowledged=referenced if ok else 0,
                    latency_ms=elapsed if ok else None,
                    error=f"HTTP {code}: {response.text[:200]}" if code != 200 or failed else None,
                )

    seconds = run_threads(worker, concurrency)
    return tally.result(sum(n for *_, n in bodies), concurrency, seconds, requests=len(bodies))


def cstore_ingest(port: int, instances: Sequence[bytes], concurrency: int) -> dict[str, Any]:
    """``concurrency`` pynetdicom SCUs, one association each, sending their share
    (``instances[i::concurrency]``); time until the last C-STORE response."""
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(io.BytesIO(d)) for d in instances]  # before the clock
    shares = [datasets[i :: max(1, concurrency)] for i in range(max(1, concurrency))]
    tally = Tally()
    next_share = iter(range(len(shares)))

    def worker() -> None:
        with tally.lock:
            index = next(next_share)
        share = shares[index]
        if not share:
            return
        ae = AE(ae_title=f"BENCHSCU{index}")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
        for sop_class, syntax in {(d.SOPClassUID, d.file_meta.TransferSyntaxUID) for d in share}:
            ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate("127.0.0.1", port, ae_title=SERVICE_AE)
        if not assoc.is_established:
            how = "rejected" if assoc.is_rejected else "failed"
            tally.add("association refused", len(share), error=f"association {how}")
            return
        try:
            for ds in share:
                start = time.perf_counter()
                try:
                    status = assoc.send_c_store(ds)
                except (ValueError, RuntimeError) as exc:
                    tally.add("not sent", error=_exc(exc))
                    continue
                elapsed = (time.perf_counter() - start) * 1e3
                code = int(status.Status) if "Status" in status else None
                tally.add(
                    "no response" if code is None else f"0x{code:04X}",
                    acknowledged=int(code == 0x0000),
                    latency_ms=elapsed if code == 0x0000 else None,
                    error=None if code == 0x0000 else f"C-STORE status {code}",
                )
        finally:
            if assoc.is_established:
                assoc.release()

    seconds = run_threads(worker, len(shares))
    return tally.result(len(instances), concurrency, seconds)


# ---- waiting for the results -----------------------------------------------------------


def wait_finished(
    receiver: ResultReceiver,
    sampler: MetricsSampler,
    instances: int,
    objects_per_instance: int,
    timeout_s: float,
    jobs_before: float = 0.0,
    poll_s: float = 0.1,
) -> bool:
    """Until every instance's objects arrived (``objects_per_instance`` each), or the
    service says it has nothing left (no job pending, empty outbox, every instance
    received: ``sharpcxr_jobs_total{state="received"}`` at ``jobs_before + instances``):
    True; False after ``timeout_s``. The service's word is taken only once it held for two
    sampling intervals (its gauges are refreshed after the work)."""
    deadline = time.monotonic() + timeout_s
    idle_since: float | None = None
    while time.monotonic() < deadline:
        if receiver.distinct() >= instances * objects_per_instance:
            return True
        samples = sampler.latest
        received = metric_value(samples, "sharpcxr_jobs_total", state="received")
        idle = (
            received >= jobs_before + instances
            and metric_value(samples, "sharpcxr_jobs_pending") == 0
            and metric_value(samples, "sharpcxr_outbox_depth") == 0
        )
        if not idle:
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 2 * sampler.interval_s + 0.2:
            return True
        time.sleep(poll_s)
    return False


def study_jobs(base_url: str, study_uid: str) -> list[dict[str, Any]]:
    import httpx

    response = httpx.get(f"{base_url}/v1/studies/{study_uid}/results", timeout=120)
    if response.status_code == 404:
        return []
    response.raise_for_status()
    jobs: list[dict[str, Any]] = response.json()["instances"]
    return jobs


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def delivery_summary(
    jobs: Sequence[dict[str, Any]], arrivals: Sequence[Arrival], t0: float, instances: int
) -> dict[str, Any]:
    """What became of a mode's instances: job and delivery states, the receiver's counts
    (distinct, duplicates, unexpected), the delivered rate, the implied job rate."""
    states = collections.Counter(j["state"] for j in jobs)
    deliveries = collections.Counter(
        f"{d['destination']}/{d['state']}" for j in jobs for d in j["deliveries"]
    )
    kinds = collections.Counter(o["kind"] for j in jobs for o in j["objects"])
    expected = {o["sop_instance_uid"] for j in jobs for o in j["objects"]}
    first: dict[str, float] = {}
    for a in arrivals:
        first.setdefault(a.uid, a.t)
    received = set(first)
    done = [j for j in jobs if j["state"] == "done"]
    done_at = [_epoch(j["updated_at"]) for j in done]
    job_ms = [(_epoch(j["updated_at"]) - _epoch(j["created_at"])) * 1e3 for j in done]
    # an instance counts as delivered when it is done and all its objects arrived
    delivered_at = []
    for j in jobs:
        uids = [o["sop_instance_uid"] for o in j["objects"]]
        if j["state"] == "done" and uids and all(u in received for u in uids):
            delivered_at.append(max(first[u] for u in uids))
    all_delivered = len(delivered_at) == instances
    delivered_s = max(delivered_at) - t0 if all_delivered else None
    jobs_s = max(done_at) - t0 if done_at else None
    return {
        "jobs": len(jobs),
        "job_states": dict(sorted(states.items())),
        "retried_jobs": sum(1 for j in jobs if j.get("attempts", 1) > 1),
        # received -> done, per job: waiting for a worker included
        "job_latency": latency_stats(job_ms) if job_ms else None,
        "objects": dict(sorted(kinds.items())),
        "deliveries": dict(sorted(deliveries.items())),
        "received": len(arrivals),
        "received_distinct": len(received),
        "duplicates": len(arrivals) - len(received),
        "unexpected": len(received - expected),
        "missing": len(expected - received),
        "instances_delivered": len(delivered_at),
        "all_delivered": all_delivered,
        "delivered_s": None if delivered_s is None else round(delivered_s, 3),
        "delivered_per_s": None if delivered_s is None else throughput(instances, delivered_s),
        "jobs_done_s": None if jobs_s is None else round(jobs_s, 3),
        "jobs_per_s": None if jobs_s is None else throughput(len(done_at), jobs_s),
        "delivery_tail_s": (
            None if delivered_s is None or jobs_s is None else round(delivered_s - jobs_s, 3)
        ),
    }


def log_warnings(path: Path) -> dict[str, int]:
    """``{"LEVEL code-or-message": count}`` of the server log's WARNING and worse lines
    (JSON lines; anything else that is not JSON, e.g. a traceback on stderr, counts as
    ``"other"``)."""
    counts: collections.Counter[str] = collections.Counter()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            counts["other (not a JSON log line)"] += 1
            continue
        if not isinstance(record, dict):
            continue
        level = str(record.get("level", ""))
        if level in ("WARNING", "ERROR", "CRITICAL"):
            counts[f"{level} {record.get('code') or record.get('message', '')}"[:120]] += 1
    return dict(counts.most_common())
