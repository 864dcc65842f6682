"""The Kubernetes manifests under ``deploy/k8s`` (see its README).

Three layers, none needing a cluster or kustomize:

* schema: every built-in object validates with kubernetes-validate in strict mode (unknown
  fields fail) against pinned Kubernetes versions; the KServe InferenceService validates
  against the vendored CRD schema (``deploy/schemas/kserve-inferenceservice-v1beta1.json``),
  made strict the way the API server's field validation is. Broken copies must fail both.
* structure: the objects agree with each other (probes on the container's port, selectors
  match the pod labels, the HPA targets the Deployment and the metric prometheus-adapter
  exposes) and with the service (ConfigMap keys are real settings, the metric exists).
* variants: the GPU set asks for a GPU and CUDA, the CPU set does not.

Each variant directory holds complete manifests listed by its kustomization.yaml (no
patches), so validating the files one by one validates what ``kubectl apply -k`` applies.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.metrics import Metrics
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
SCHEMAS = REPO / "deploy" / "schemas"
KSERVE_SCHEMA = SCHEMAS / "kserve-inferenceservice-v1beta1.json"
ADAPTER_CONFIG = K8S / "prometheus-adapter" / "config.yaml"

# The oldest Kubernetes the manifests claim (autoscaling/v2 behavior, the emptyDir `medium`
# handler, PDB unhealthyPodEvictionPolicy are all on by default from 1.31) and the newest the
# locked kubernetes-validate ships, to catch a field a newer release removed.
KUBERNETES_VERSIONS = ("1.31", "1.37")
VARIANTS = ("base", "gpu")
CONTAINER_PORT = 8000
SERVICE_UID = 10001  # the Dockerfile's non-root user

Doc = dict[str, Any]


# ---------------------------------------------------------------- loading


def _manifest_files() -> list[Path]:
    """Every manifest: kustomization files are kustomize's, not the API's, and the
    prometheus-adapter config is the adapter's own format."""
    return sorted(
        path
        for path in K8S.rglob("*.y*ml")
        if path.name != "kustomization.yaml" and ADAPTER_CONFIG.parent not in path.parents
    )


def _documents(path: Path) -> list[Doc]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path} holds no YAML document"
    return docs


def _all_documents() -> list[tuple[str, Doc]]:
    return [
        (f"{path.relative_to(K8S)}#{i}", doc)
        for path in _manifest_files()
        for i, doc in enumerate(_documents(path))
    ]


ALL_DOCUMENTS = _all_documents()


def _is_kserve(doc: Doc) -> bool:
    return str(doc.get("apiVersion", "")).startswith("serving.kserve.io/")


BUILTIN = [(ref, doc) for ref, doc in ALL_DOCUMENTS if not _is_kserve(doc)]
KSERVE = [(ref, doc) for ref, doc in ALL_DOCUMENTS if _is_kserve(doc)]


def _variant(name: str) -> dict[str, Doc]:
    """A variant's objects by kind (each variant has one object of each kind)."""
    objects: dict[str, Doc] = {}
    for path in sorted((K8S / name).glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _documents(path):
            assert doc["kind"] not in objects, f"{name}: two {doc['kind']} objects"
            objects[doc["kind"]] = doc
    return objects


def _container(pod_spec: Doc) -> Doc:
    containers = pod_spec["containers"]
    assert len(containers) == 1, "one container per pod: the service"
    return containers[0]


def _kserve() -> Doc:
    assert len(KSERVE) == 1, "one InferenceService, in deploy/k8s/kserve"
    return KSERVE[0][1]


# ---------------------------------------------------------------- schema: built-in kinds


def test_every_manifest_is_found() -> None:
    """The glob finds the layout the README describes (a typo would silently test less)."""
    kinds = {(ref.split("/")[0], doc["kind"]) for ref, doc in ALL_DOCUMENTS}
    for variant in VARIANTS:
        for kind in (
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
        ):
            assert (variant, kind) in kinds
    assert ("kserve", "InferenceService") in kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("ref", "doc"), BUILTIN, ids=[ref for ref, _ in BUILTIN])
def test_builtin_manifest_validates(ref: str, doc: Doc, version: str) -> None:
    # SchemaNotFoundError (an unknown kind or apiVersion) fails the test too, not a skip.
    kubernetes_validate.validate(doc, version, strict=True)


def _deployment() -> Doc:
    return copy.deepcopy(_variant("base")["Deployment"])


@pytest.mark.parametrize(
    ("breakage", "path_part"),
    [
        # A misspelt field: accepted by a lenient parser, a silent no-op in the cluster.
        (lambda d: _container(d["spec"]["template"]["spec"]).update(imagePullPolcy="Always"),
         "containers"),
        (lambda d: d["spec"].update(replicas="two"), "replicas"),
        (lambda d: _container(d["spec"]["template"]["spec"])["ports"][0].update(
            containerPort="8000"), "containerPort"),
    ],
    ids=["unknown-field", "wrong-type", "port-as-string"],
)  # fmt: skip
def test_broken_builtin_manifest_fails(breakage: Any, path_part: str) -> None:
    doc = _deployment()
    breakage(doc)
    with pytest.raises(kubernetes_validate.ValidationError) as caught:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
    assert path_part in ".".join(str(p) for p in caught.value.path) + caught.value.message


def test_unknown_kind_is_not_silently_accepted() -> None:
    """A CRD kind is no built-in: kubernetes-validate must refuse it, which is why the
    InferenceService goes through the vendored schema instead."""
    with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
        kubernetes_validate.validate(_kserve(), KUBERNETES_VERSIONS[0], strict=True)


# ---------------------------------------------------------------- schema: KServe CRD


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused.

    A structural CRD schema never says ``additionalProperties: false``: the API server
    prunes unknown fields (or, with field validation Strict, the kubectl default since
    1.27, rejects them). JSON Schema would accept them, so close every object that lists
    its properties and does not opt out with ``x-kubernetes-preserve-unknown-fields``.
    """
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if "properties" in schema:  # property names are not schema keywords: keep them verbatim
        out["properties"] = {name: _strict(sub) for name, sub in schema["properties"].items()}
    return out


@pytest.fixture(scope="module")
def kserve_schema() -> Doc:
    schema: Doc = json.loads(KSERVE_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


@pytest.fixture(scope="module")
def kserve_validator(kserve_schema: Doc) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(_strict(kserve_schema))


def test_vendored_schema_is_the_recorded_one(kserve_schema: Doc) -> None:
    """The vendored file is what README-kserve.md says it is (provenance, licence, hash)."""
    readme = (SCHEMAS / "README-kserve.md").read_text()
    assert "Apache-2.0" in readme or "Apache License 2.0" in readme
    assert hashlib.sha256(KSERVE_SCHEMA.read_bytes()).hexdigest() in readme
    commit = re.search(r"commit ([0-9a-f]{40})", kserve_schema["$comment"])
    assert commit is not None and commit.group(1) in readme
    assert set(kserve_schema["properties"]) >= {"apiVersion", "kind", "metadata", "spec"}


def test_inferenceservice_validates(kserve_validator: jsonschema.Draft7Validator) -> None:
    doc = _kserve()
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert doc["kind"] == "InferenceService"
    kserve_validator.validate(doc)
    # metadata is `type: object` in the CRD (the API server checks ObjectMeta): check the
    # parts that matter here by hand.
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: _container(d["spec"]["predictor"]).update(imagee="sharpcxr:cpu"),
        lambda d: d["spec"]["predictor"].update(minReplicas="two"),
        lambda d: d["spec"].update(predicter=d["spec"]["predictor"]),
    ],
    ids=["unknown-container-field", "wrong-type", "unknown-spec-field"],
)
def test_broken_inferenceservice_fails(
    breakage: Any, kserve_schema: Doc, kserve_validator: jsonschema.Draft7Validator
) -> None:
    doc = copy.deepcopy(_kserve())
    breakage(doc)
    with pytest.raises(jsonschema.ValidationError):
        kserve_validator.validate(doc)


def test_strictness_is_what_catches_unknown_fields(kserve_schema: Doc) -> None:
    """Without :func:`_strict` the CRD schema accepts a misspelt field: the closing is needed."""
    doc = copy.deepcopy(_kserve())
    _container(doc["spec"]["predictor"])["imagee"] = "sharpcxr:cpu"
    jsonschema.Draft7Validator(kserve_schema).validate(doc)


# ---------------------------------------------------------------- prometheus-adapter


def _adapter_metric_names() -> set[str]:
    """The custom metric names the adapter config exposes (its ``name.as``, Go-regexp style
    ``$1`` / ``${1}`` expanded against the series name in ``seriesQuery``)."""
    config = yaml.safe_load(ADAPTER_CONFIG.read_text())
    names = set()
    for rule in config["rules"]:
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"].strip("'\""))
        assert series is not None, f"rule without a plain series name: {rule['seriesQuery']}"
        match = re.search(rule["name"]["matches"], series.group(0))
        assert match is not None, f"{rule['name']['matches']} does not match {series.group(0)}"
        default = "$1" if match.groups() else "$0"
        template = rule["name"].get("as", default)
        # Go's $1 / ${1} in Python's expand syntax
        names.add(match.expand(re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", template)))
    return names


def test_adapter_rule_maps_pods_and_sums_per_pod() -> None:
    config = yaml.safe_load(ADAPTER_CONFIG.read_text())
    (rule,) = [r for r in config["rules"] if "sharpcxr_queue_depth" in r["seriesQuery"]]
    overrides = rule["resources"]["overrides"]
    # A Pods metric needs the series tied to pods (and their namespace).
    assert overrides["pod"] == {"resource": "pod"}
    assert overrides["namespace"] == {"resource": "namespace"}
    query = rule["metricsQuery"]
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in query
    # One value per pod: the per-resolution series are aggregated by the adapter's GroupBy.
    assert re.search(r"\bsum\b.*\bby \(<<\.GroupBy>>\)", query)


def test_adapter_metric_is_a_real_service_metric() -> None:
    """The series the adapter reads is the gauge the service exports, labelled by resolution."""
    gauge = Metrics().queue_depth
    assert gauge._name == "sharpcxr_queue_depth"  # what the rule's seriesQuery names
    assert gauge._labelnames == ("resolution",)
    assert "sharpcxr_queue_depth" in _adapter_metric_names()


# ---------------------------------------------------------------- structure, per variant


def _port_number(container: Doc, port: int | str) -> int:
    """A probe's or Service's port (number or container port name) as a number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def _subset(labels: dict[str, str], of: dict[str, str]) -> bool:
    return all(of.get(key) == value for key, value in labels.items())


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> dict[str, Doc]:
    return _variant(request.param)


def test_kustomization_lists_every_file_and_patches_none() -> None:
    for name in VARIANTS:
        kustomization = yaml.safe_load((K8S / name / "kustomization.yaml").read_text())
        files = {p.name for p in (K8S / name).glob("*.yaml")} - {"kustomization.yaml"}
        assert set(kustomization["resources"]) == files
        # Patches would make the files differ from what is applied; these tests validate
        # the files, so there must be none.
        kinds = set(kustomization) - {"apiVersion", "kind", "resources", "namespace"}
        assert not kinds, f"{name}/kustomization.yaml transforms the manifests: {kinds}"


def test_probes_use_health_endpoints_on_the_container_port(variant: dict[str, Doc]) -> None:
    container = _container(variant["Deployment"]["spec"]["template"]["spec"])
    assert [p["containerPort"] for p in container["ports"]] == [CONTAINER_PORT]
    expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert _port_number(container, get["port"]) == CONTAINER_PORT
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] in ("/healthz", "/readyz")
    assert _port_number(container, startup["httpGet"]["port"]) == CONTAINER_PORT
    # Models load before the server listens: give startup minutes, not liveness's seconds.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_rollout_and_replicas(variant: dict[str, Doc]) -> None:
    spec = variant["Deployment"]["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_selectors_match_the_pods(variant: dict[str, Doc]) -> None:
    deployment = variant["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb_selector = variant["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert pdb_selector == deployment["spec"]["selector"]["matchLabels"]
    service = variant["Service"]["spec"]
    assert service["selector"] and _subset(service["selector"], pod_labels)
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert _subset(constraint["labelSelector"]["matchLabels"], pod_labels)


def test_service_port(variant: dict[str, Doc]) -> None:
    container = _container(variant["Deployment"]["spec"]["template"]["spec"])
    service = variant["Service"]["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    (http,) = [p for p in service["ports"] if p["name"] == "http"]
    assert http["port"] == CONTAINER_PORT
    assert _port_number(container, http["targetPort"]) == CONTAINER_PORT


def test_hpa_targets_the_deployment_and_the_adapter_metric(variant: dict[str, Doc]) -> None:
    hpa = variant["HorizontalPodAutoscaler"]
    spec = hpa["spec"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": variant["Deployment"]["metadata"]["name"],
    }
    by_type = {m["type"]: m for m in spec["metrics"]}
    pods = by_type["Pods"]["pods"]
    assert pods["metric"]["name"] in _adapter_metric_names()
    assert pods["target"]["type"] == "AverageValue"
    assert float(pods["target"]["averageValue"]) > 0
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    # Leave the PDB room to let a drain evict a pod at the HPA's floor.
    assert spec["minReplicas"] > variant["PodDisruptionBudget"]["spec"]["minAvailable"]
    assert spec["minReplicas"] <= variant["Deployment"]["spec"]["replicas"] <= spec["maxReplicas"]


def test_pdb(variant: dict[str, Doc]) -> None:
    assert variant["PodDisruptionBudget"]["spec"]["minAvailable"] == 1


def test_configmap_keys_are_settings(
    variant: dict[str, Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    data: dict[str, str] = variant["ConfigMap"]["data"]
    fields = {f"SHARPCXR_{name.upper()}" for name in Settings.model_fields}
    unknown = set(data) - fields
    # Settings ignores unknown variables (extra="ignore"), so a typo would be silent.
    assert not unknown, f"not settings of service.settings.Settings: {sorted(unknown)}"
    assert all(isinstance(value, str) for value in data.values()), "ConfigMap values are strings"
    # The values parse: the service would not start on a bad one.
    for key in [k for k in os.environ if k.startswith("SHARPCXR_")]:
        monkeypatch.delenv(key)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.host == "0.0.0.0"  # probes and the Service reach the pod, not loopback
    assert settings.port == CONTAINER_PORT
    # The thread pools are sized to the pod, not to the node's core count.
    assert "SHARPCXR_INTRA_OP_THREADS" in data and "SHARPCXR_DECODE_WORKERS" in data


def test_env_comes_from_the_configmap(variant: dict[str, Doc]) -> None:
    container = _container(variant["Deployment"]["spec"]["template"]["spec"])
    refs = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
    assert refs == [variant["ConfigMap"]["metadata"]["name"]]
    secrets = [e["secretRef"] for e in container["envFrom"] if "secretRef" in e]
    assert all(s.get("optional") is True for s in secrets), "a missing Secret blocks the pod"


def _assert_locked_down(pod_spec: Doc) -> None:
    pod = pod_spec.get("securityContext", {})
    container = _container(pod_spec)["securityContext"]

    def either(key: str) -> Any:  # the container's setting wins over the pod's
        return container.get(key, pod.get(key))

    assert either("runAsNonRoot") is True
    assert either("runAsUser") == SERVICE_UID
    assert either("seccompProfile") == {"type": "RuntimeDefault"}
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    assert not container.get("capabilities", {}).get("add")
    assert container.get("privileged", False) is False


def test_container_is_locked_down(variant: dict[str, Doc]) -> None:
    _assert_locked_down(variant["Deployment"]["spec"]["template"]["spec"])


def test_volumes(variant: dict[str, Doc]) -> None:
    """With a read-only root, the service writes only to emptyDirs (/tmp, the data dir);
    models come read-only from the PVC."""
    pod_spec = variant["Deployment"]["spec"]["template"]["spec"]
    data = variant["ConfigMap"]["data"]
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    mounts = {m["mountPath"]: m for m in _container(pod_spec)["volumeMounts"]}
    for path in ("/tmp", data["SHARPCXR_DATA_DIR"]):
        assert "emptyDir" in volumes[mounts[path]["name"]]
        assert not mounts[path].get("readOnly")
    models = mounts[data["SHARPCXR_MODELS_DIR"]]
    assert models["readOnly"] is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]
    assert claim == {"claimName": "sharpcxr-models", "readOnly": True}


def test_pod_operations(variant: dict[str, Doc]) -> None:
    template = variant["Deployment"]["spec"]["template"]
    pod_spec = template["spec"]
    container = _container(pod_spec)
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == CONTAINER_PORT
    assert annotations["prometheus.io/path"] == "/metrics"
    # The drain after SIGTERM gives in-flight requests their whole deadline, and the pod's
    # grace period covers the drain (the service's own, no preStop pause needed).
    data = variant["ConfigMap"]["data"]
    deadline = float(data["SHARPCXR_REQUEST_TIMEOUT_S"])
    drain = float(data["SHARPCXR_SHUTDOWN_TIMEOUT_S"])
    assert drain >= deadline
    assert pod_spec["terminationGracePeriodSeconds"] >= drain + 10
    assert float(data["SHARPCXR_DRAIN_MIN_S"]) >= 2  # endpoints need a moment to update
    assert "lifecycle" not in container
    shm = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/dev/shm"]
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert volumes[shm]["emptyDir"]["medium"] == "Memory"
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound])


# ---------------------------------------------------------------- CPU and GPU variants


def test_cpu_variant() -> None:
    base = _variant("base")
    container = _container(base["Deployment"]["spec"]["template"]["spec"])
    assert container["image"] == "sharpcxr:cpu"
    assert base["ConfigMap"]["data"]["SHARPCXR_DEVICE"] == "cpu"
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_gpu_variant() -> None:
    gpu = _variant("gpu")
    pod_spec = gpu["Deployment"]["spec"]["template"]["spec"]
    container = _container(pod_spec)
    assert container["image"] == "sharpcxr:gpu"
    assert gpu["ConfigMap"]["data"]["SHARPCXR_DEVICE"] == "cuda"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    # Extended resources: a request, if given, must equal the limit.
    requested = container["resources"].get("requests", {}).get("nvidia.com/gpu", 1)
    assert int(requested) == 1
    assert pod_spec.get("nodeSelector") or pod_spec.get("affinity"), "GPU nodes only"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec["tolerations"])


def test_variants_can_run_side_by_side() -> None:
    """Different names and disjoint selectors: neither variant's Service, PDB or HPA picks
    up the other's pods."""
    base, gpu = _variant("base"), _variant("gpu")
    for kind in base:
        assert base[kind]["metadata"]["name"] != gpu[kind]["metadata"]["name"]
    base_pods = base["Deployment"]["spec"]["template"]["metadata"]["labels"]
    gpu_pods = gpu["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert not _subset(base["Service"]["spec"]["selector"], gpu_pods)
    assert not _subset(gpu["Service"]["spec"]["selector"], base_pods)
    assert not _subset(base["Deployment"]["spec"]["selector"]["matchLabels"], gpu_pods)
    assert not _subset(gpu["Deployment"]["spec"]["selector"]["matchLabels"], base_pods)


# ---------------------------------------------------------------- KServe predictor


def test_inferenceservice_container() -> None:
    predictor = _kserve()["spec"]["predictor"]
    container = _container(predictor)
    assert container["name"] == "kserve-container"  # the name KServe treats as the model server
    assert container["image"].startswith("sharpcxr:")
    assert [p["containerPort"] for p in container["ports"]] == [CONTAINER_PORT]
    for probe, path in {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}.items():
        assert container[probe]["httpGet"]["path"] == path
        assert _port_number(container, container[probe]["httpGet"]["port"]) == CONTAINER_PORT
    assert "startupProbe" in container
    env = {e["name"]: e["value"] for e in container["env"]}
    fields = {f"SHARPCXR_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in env if k.startswith("SHARPCXR_")} <= fields
    assert env["SHARPCXR_HOST"] == "0.0.0.0"
    # KServe mounts a STORAGE_URI at /mnt/models; pvc:// mounts the claim without a copy.
    assert env["STORAGE_URI"].startswith("pvc://sharpcxr-models")
    assert env["SHARPCXR_MODELS_DIR"] == "/mnt/models"
    _assert_locked_down(predictor)
    assert int(predictor["annotations"]["prometheus.io/port"]) == CONTAINER_PORT
