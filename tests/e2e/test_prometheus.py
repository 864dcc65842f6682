"""The dashboard and the rules against a real Prometheus scraping a real service.

Prometheus (Debian's package; ``.ci/run`` installs it) scrapes the test service every
second with the repository's rules loaded. After traffic at 128 and 256 px (in-distribution
and out-of-distribution phantoms, and a bad upload), every query of every panel of
deploy/grafana/dashboards/sharpcxr.json must answer, per resolution where the panel is
per resolution, and the recording and alerting rules must evaluate on the live series.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from imaging.phantoms.dataset import generate_phantom
from tests.e2e.conftest import Server, free_port
from tests.service.conftest import make_client, phantom, phantom_dicom

REPO = Path(__file__).resolve().parents[2]
RULES_GLOB = REPO / "deploy" / "prometheus" / "rules" / "*.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "sharpcxr.json"
RESOLUTIONS = ("128", "256")
#: what Grafana puts for $__rate_interval is at least 4 scrapes; 1 minute spans all of the
#: test's traffic, which takes well under a minute
RATE_INTERVAL = "1m"
DICOM = {"Content-Type": "application/dicom"}


def prometheus_path() -> str:
    found = shutil.which("prometheus")
    if found is None and Path("/usr/bin/prometheus").exists():
        found = "/usr/bin/prometheus"
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Prometheus is missing in CI: .ci/run should have installed it")
        pytest.skip("Prometheus is not installed (apt-get install prometheus; .ci/run does)")
    return found


def panel_targets() -> list[tuple[str, str]]:
    """(panel title and refId, expression) of every query of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    return [
        (f"{panel['title']} {target['refId']}", target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def prometheus(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    binary = prometheus_path()  # before the service starts: a skip should cost nothing
    server: Server = request.getfixturevalue("server")
    root = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_GLOB)],
        # the job name the alerts expect (deploy/prometheus/prometheus.yml)
        "scrape_configs": [
            {"job_name": "sharpcxr", "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = root / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Prometheus exited at start-up:\n{prom.log()}")
            try:
                if httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus not ready after 30 s:\n{prom.log()}")
            time.sleep(0.2)
        yield prom
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(what: str, check: Any, prom: Prometheus, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout_s} s\n{prom.log()[-3000:]}")
        time.sleep(0.5)


def by_resolution(samples: list[dict[str, Any]]) -> dict[str, float]:
    return {s["metric"].get("resolution", ""): float(s["value"][1]) for s in samples}


@pytest.fixture(scope="module")
def traffic(prometheus: Prometheus, server: Server) -> Prometheus:
    """Requests spread over several scrapes, then rules evaluated on them.

    Counter children appear on first use, so the first round only creates them; the
    rounds after it are what rate() sees (Prometheus never sees a series' first increase).
    """
    up = 'up{job="sharpcxr"} == 1'
    wait_for("first scrape", lambda: bool(prometheus.query(up)), prometheus)
    in_distribution = phantom_dicom(phantom(1, size=512))
    # site b is another acquisition: out of distribution for both test models (README)
    other_site = phantom_dicom(generate_phantom(5, 1, "b", 512, pneumothorax=False))
    for _ in range(3):
        for resolution in RESOLUTIONS:
            for body in (in_distribution, other_site):
                r = httpx.post(
                    f"{server.url}/v1/predict?resolution={resolution}",
                    content=body,
                    headers=DICOM,
                    timeout=60,
                )
                assert r.status_code == 200, r.text
        bad = httpx.post(f"{server.url}/v1/predict", content=b"not a dicom", headers=DICOM)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "not_dicom"
        time.sleep(2.5)  # two scrapes between rounds

    def evaluated() -> bool:
        p95 = by_resolution(prometheus.query("sharpcxr:request_duration_seconds:p95_5m"))
        ood = by_resolution(prometheus.query("sharpcxr:assessments:ood_ratio_rate5m"))
        return all(math.isfinite(p95.get(r, math.nan)) and ood.get(r, 0) > 0 for r in RESOLUTIONS)

    wait_for("recording rules on the traffic", evaluated, prometheus)
    return prometheus


def test_the_resolution_variable_lists_the_loaded_resolutions(traffic: Prometheus) -> None:
    """The dashboard variable: label_values(sharpcxr_model_info, resolution)."""
    values = traffic.api("label/resolution/values", **{"match[]": "sharpcxr_model_info"})
    assert sorted(values, key=int) == list(RESOLUTIONS)


@pytest.mark.parametrize(("panel", "expr"), panel_targets(), ids=[t for t, _ in panel_targets()])
def test_every_dashboard_query_answers(traffic: Prometheus, panel: str, expr: str) -> None:
    """What Grafana would send with "All" resolutions selected: a multi-value variable
    becomes ``(128|256)``. A query filtered by resolution answers for both; the others
    (errors, readiness, PACS) answer at least one series; no value is NaN (every rate()
    has increases to see)."""
    selected = "(" + "|".join(RESOLUTIONS) + ")"
    query = expr.replace("$resolution", selected).replace("$__rate_interval", RATE_INTERVAL)
    assert "$" not in query, query
    samples = traffic.query(query)
    assert samples, f"{panel}: no series for {query}"
    if "$resolution" in expr:
        assert set(by_resolution(samples)) >= set(RESOLUTIONS), (panel, samples)
    for sample in samples:
        assert math.isfinite(float(sample["value"][1])), (panel, sample)


def test_recording_rules_evaluate_on_live_series(traffic: Prometheus) -> None:
    p95 = by_resolution(traffic.query("sharpcxr:request_duration_seconds:p95_5m"))
    assert all(0 < p95[r] < 30 for r in RESOLUTIONS), p95
    print(f"p95 of /v1/predict (512 px phantoms, 5 min window): {p95}")
    assert by_resolution(traffic.query("sharpcxr:slo_p95_seconds:loaded")) == {
        "128": 0.5,
        "256": 0.5,
    }
    # one site-b phantom in two judged images at each resolution, all out of distribution
    ood = by_resolution(traffic.query("sharpcxr:assessments:ood_ratio_rate5m"))
    assert all(0.3 < ood[r] <= 0.5 for r in RESOLUTIONS), ood
    assert by_resolution(traffic.query("sharpcxr_ready")) == {"": 1.0}
    # the bad upload is a 400: a client's error, not the service's
    [ratio] = traffic.query("sharpcxr:requests:error_ratio_rate5m")
    assert float(ratio["value"][1]) == 0
    stages = {
        (s["metric"]["resolution"], s["metric"]["stage"])
        for s in traffic.query("sharpcxr:stage_duration_seconds:p95_5m")
    }
    assert {stage for r, stage in stages if r == "256"} >= {"decode", "inference", "queue"}


def test_every_rule_is_healthy_and_alerts_see_live_labels(traffic: Prometheus) -> None:
    """No rule fails to evaluate on the real series (a bad join shows up here as
    ``health: err``), and the OOD alert is pending for both resolutions (50% OOD traffic,
    ``for: 30m``) while the deterministic alerts stay silent."""
    groups = traffic.api("rules")["groups"]
    assert {g["name"] for g in groups} == {
        "sharpcxr-config",
        "sharpcxr-recording",
        "sharpcxr-alerts",
    }
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule

    def alerts() -> list[dict[str, Any]]:
        return list(traffic.api("alerts")["alerts"])

    def ood_pending() -> bool:
        return {
            a["labels"].get("resolution")
            for a in alerts()
            if a["labels"]["alertname"] == "SharpcxrOutOfDistributionHigh"
            and a["state"] == "pending"
        } == set(RESOLUTIONS)

    wait_for("SharpcxrOutOfDistributionHigh pending", ood_pending, traffic, timeout_s=10)
    active = {a["labels"]["alertname"] for a in alerts()}
    assert not active & {"SharpcxrDown", "SharpcxrNotReady", "SharpcxrErrorRatioHigh"}, active
    assert not [a for a in alerts() if a["state"] == "firing"]


def ready_value(metrics_text: str) -> float:
    [line] = [x for x in metrics_text.splitlines() if x.startswith("sharpcxr_ready ")]
    return float(line.split()[1])


def test_the_ready_gauge_follows_readiness(models_dir: Path) -> None:
    """sharpcxr_ready is 0 before start-up, 1 while ready (as /readyz), 0 after shutdown;
    in process, needing no Prometheus."""
    client = make_client(models_dir)
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert runtime.metrics.registry.get_sample_value("sharpcxr_ready") == 0
    with client:
        assert client.get("/readyz").status_code == 200
        assert ready_value(client.get("/metrics").text) == 1
    assert runtime.metrics.registry.get_sample_value("sharpcxr_ready") == 0
