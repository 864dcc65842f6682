"""The compose stack's Prometheus config, alert and recording rules, and Grafana dashboard.

promtool (Debian's ``prometheus`` package; ``.ci/run`` installs it) checks the config and
rules and runs the rules' unit tests (deploy/prometheus/tests/). The Grafana files are
checked for what the stack relies on; tests/e2e/test_prometheus.py runs every dashboard
query against a real Prometheus scraping a real service.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "sharpcxr.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "sharpcxr.test.yml"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "sharpcxr.json"
SEVERITIES = {"critical", "warning", "info"}


def promtool_path() -> str:
    """promtool, or a skip (a failure in CI, where ``.ci/run`` installs it)."""
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: .ci/run should have installed prometheus")
        pytest.skip("promtool is not installed (apt-get install prometheus; .ci/run does)")
    return found


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_path(), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerts() -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule
        for group in load_yaml(RULES)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for group in load_yaml(RULES)["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target) for panel in board["panels"] for target in panel.get("targets", [])
    ]


def test_config_is_valid_and_loads_the_rules(tmp_path: Path) -> None:
    """The compose config, its rule glob pointed at the repository's rules (in the stack
    they are mounted at /etc/prometheus/rules): promtool reads the rules through it."""
    config = load_yaml(CONFIG)
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    [job] = config["scrape_configs"]
    assert job["job_name"] == "sharpcxr"  # SharpcxrDown reads up{job="sharpcxr"}
    assert job["static_configs"][0]["targets"] == ["sharpcxr:8000"]
    interval = int(config["global"]["scrape_interval"].removesuffix("s"))
    assert 5 <= interval <= 15
    config["rule_files"] = [str(RULES.parent / "*.yml")]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    result = promtool("check", "config", copy)
    assert result.returncode == 0, result.stdout + result.stderr
    # a glob matching nothing is valid too: make sure the rules were read
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout + result.stderr)
    assert found and int(found[1]) > 0, result.stdout + result.stderr


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_a_broken_rule_fails_the_checks(tmp_path: Path) -> None:
    """The checks above can fail: a syntax error fails ``check rules``, and a changed
    threshold fails the unit tests (they pin the numbers, not just the syntax)."""
    text = RULES.read_text()
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    broken = tmp_path / "rules" / RULES.name
    broken.write_text(text.replace("sharpcxr:requests:error_ratio_rate5m > 0.05", "rate(x[5m] > 1"))
    result = promtool("check", "rules", broken)
    assert result.returncode != 0
    assert '"SharpcxrErrorRatioHigh": could not parse' in result.stdout + result.stderr

    assert "sharpcxr:requests:error_ratio_rate5m > 0.05" in text
    broken.write_text(text.replace("error_ratio_rate5m > 0.05", "error_ratio_rate5m > 0.5"))
    assert promtool("check", "rules", broken).returncode == 0  # still valid PromQL
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    result = promtool("test", "rules", tmp_path / "tests" / RULE_TESTS.name)
    assert result.returncode != 0
    assert "SharpcxrErrorRatioHigh" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """Each alert is exercised by the unit tests both ways: some evaluation expects it to
    fire, some expects it silent."""
    suite = load_yaml(RULE_TESTS)
    assert suite["rule_files"] == ["../rules/sharpcxr.rules.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alerts())
    assert names, "no alerts in the rules file"
    assert names - firing == set(), "alerts without a firing test case"
    assert names - quiet == set(), "alerts without a non-firing test case"
    assert (firing | quiet) - names == set(), "test cases of alerts that do not exist"


def test_every_alert_says_what_to_do() -> None:
    for name, rule in alerts().items():
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"], name
        assert len(rule["annotations"]["description"]) > 100, name  # a runbook, not a title


def test_grafana_provisioning() -> None:
    [source] = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert (source["uid"], source["type"], source["url"]) == (
        "prometheus",
        "prometheus",
        "http://prometheus:9090",
    )
    # $__rate_interval is derived from it: keep it the scrape interval
    assert source["jsonData"]["timeInterval"] == load_yaml(CONFIG)["global"]["scrape_interval"]
    [provider] = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "sharpcxr.yml")[
        "providers"
    ]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_queries_follow_the_conventions() -> None:
    """Every query names the provisioned data source, every rate window is
    ``$__rate_interval``, every per-resolution query honours ``$resolution``, and every
    recording rule a panel reads exists."""
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 39
    assert board["uid"] == "sharpcxr"
    [variable] = board["templating"]["list"]
    assert variable["name"] == "resolution"
    assert variable["query"]["query"] == "label_values(sharpcxr_model_info, resolution)"
    assert variable["multi"] and variable["includeAll"]
    recorded = recorded_names()
    targets = dashboard_targets()
    assert len(targets) >= 15
    for title, target in targets:
        expr = target["expr"]
        assert target["datasource"] == {"type": "prometheus", "uid": "prometheus"}, title
        for window in re.findall(r"\b(?:rate|increase|irate)\([^\[]*\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", (title, expr)
        if re.search(r"by \([^)]*\bresolution\b", expr) or "sharpcxr_model_info" in expr:
            assert 'resolution=~"$resolution"' in expr, (title, expr)
        for name in re.findall(r"\bsharpcxr:[a-z0-9_:]+", expr):
            assert name in recorded, (title, name)
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "prometheus", panel["title"]
            assert panel.get("description"), panel["title"]
