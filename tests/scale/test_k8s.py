"""deploy/k8s/: every overlay renders with kustomize, validates against the Kubernetes schemas, hangs together,
and the gateway serves the config it ships."""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import openai
import pytest
import yaml

from gateway.auth import hash_key, new_key
from gateway.config import parse_config
from gateway.metrics import UPSTREAM_ATTEMPTS
from policies.metrics import QUEUE_DEPTH
from tests.conftest import UPSTREAM_KEY
from tests.gateway.test_server import start_serve_with

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["dev", "production"]
# The oldest Kubernetes the manifests target (autoscaling/v2 and policy/v1 are GA since 1.23; 1.30 is the
# oldest minor still maintained by the big clouds).
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
# kubernetes-validate knows only built-in kinds: custom resources are validated against schemas we ship.
CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): K8S / "schemas" / "keda.sh_v1alpha1_scaledobject.json"}


def render(target: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is installed by .ci/run"
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def validate(doc: dict[str, Any], version: str) -> None:
    schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if schema is not None:
        jsonschema.validate(doc, json.loads(schema.read_text()))
    else:
        kubernetes_validate.validate(doc, version, strict=True)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [doc] = find(docs, kind, name)
    return doc


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_overlay_renders_and_validates_against_the_schemas(overlay, version):
    docs = render(f"overlays/{overlay}")
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
        "StatefulSet",
        "Namespace",
    } <= kinds
    for doc in docs:
        validate(doc, version)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == f"llm-gateway{'-dev' if overlay == 'dev' else ''}"


def test_the_validation_catches_mistakes():
    """The checks above can fail: a misspelt field, a wrong type, or a bad ScaledObject is refused."""
    docs = render("overlays/production")
    gateway = copy.deepcopy(one(docs, "Deployment", "gateway"))
    gateway["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(gateway, "1.30.0")
    hpa = copy.deepcopy(one(docs, "HorizontalPodAutoscaler", "gateway"))
    hpa["spec"]["minReplicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(hpa, "1.30.0")
    scaled = copy.deepcopy(one(docs, "ScaledObject", "engine"))
    scaled["spec"]["minReplicas"] = 0  # KEDA spells it minReplicaCount
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled, "1.30.0")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_resources_refer_to_each_other(overlay):
    docs = render(f"overlays/{overlay}")
    workloads = {
        (d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
    }
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads.values()]
    for workload in workloads.values():
        assert (
            workload["spec"]["selector"]["matchLabels"].items()
            <= workload["spec"]["template"]["metadata"]["labels"].items()
        )
    for service in find(docs, "Service"):
        selector = service["spec"]["selector"].items()
        [labels] = [labels for labels in pod_labels if selector <= labels.items()]
        [workload] = [w for w in workloads.values() if w["spec"]["template"]["metadata"]["labels"] == labels]
        ports = {p["name"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    for pdb in find(docs, "PodDisruptionBudget"):
        assert any(pdb["spec"]["selector"]["matchLabels"].items() <= labels.items() for labels in pod_labels)
    for scaler in (*find(docs, "HorizontalPodAutoscaler"), *find(docs, "ScaledObject")):
        target = scaler["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) in workloads
    # the generated (hash-suffixed) ConfigMap and Secret are the ones the gateway mounts
    gateway = workloads[("Deployment", "gateway")]["spec"]["template"]["spec"]
    [volume] = gateway["volumes"]
    one(docs, "ConfigMap", volume["configMap"]["name"])
    [source] = gateway["containers"][0]["envFrom"]
    one(docs, "Secret", source["secretRef"]["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscalers_read_metrics_the_gateway_exports(overlay):
    docs = render(f"overlays/{overlay}")
    gateway_hpa = one(docs, "HorizontalPodAutoscaler", "gateway")
    by_type = {m["type"]: m for m in gateway_hpa["spec"]["metrics"]}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    assert by_type["Pods"]["pods"]["metric"]["name"] == next(iter(QUEUE_DEPTH.describe())).name
    engine_scalers = [
        d
        for d in docs
        if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
        and d["spec"]["scaleTargetRef"]["name"] == "engine"
    ]
    # exactly one owner of the engine's replica count: KEDA in production (it makes its own HPA), else the HPA
    [scaler] = engine_scalers
    if overlay != "production":
        assert scaler["kind"] == "HorizontalPodAutoscaler" and scaler["spec"]["minReplicas"] >= 1
        return
    assert scaler["kind"] == "ScaledObject" and scaler["spec"]["minReplicaCount"] == 0
    [prometheus] = [t for t in scaler["spec"]["triggers"] if t["type"] == "prometheus"]
    query = prometheus["metadata"]["query"]
    metric, labels = re.search(r"(\w+)\{(.*?)\}", query).groups()  # type: ignore[union-attr]
    assert metric == next(iter(UPSTREAM_ATTEMPTS.describe())).name + "_total"
    label, value = labels.split("=")
    assert label in UPSTREAM_ATTEMPTS._labelnames
    # the label names the gateway deployment that calls the engine Service
    config = yaml.safe_load(one(docs, "ConfigMap", gateway_configmap(docs))["data"]["config.yaml"])
    engine = [d for m in config["models"] for d in m["deployments"] if d.get("name") == json.loads(value)]
    assert engine and engine[0]["api_base"] == "http://engine:8000/v1"
    service = one(docs, "Service", "engine")
    assert service["spec"]["ports"][0]["port"] == 8000
    # scale to zero needs a trigger that is not CPU or memory (KEDA cannot read CPU of zero pods)
    assert {t["type"] for t in scaler["spec"]["triggers"]} - {"cpu", "memory"}


def gateway_configmap(docs: list[dict[str, Any]]) -> str:
    gateway = one(docs, "Deployment", "gateway")
    return gateway["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]


def pod_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The gateway container's environment as Kubernetes would build it: the Secret, then the env list."""
    gateway = one(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
    secret = one(docs, "Secret", gateway["envFrom"][0]["secretRef"]["name"])
    env = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    env.update({e["name"]: e["value"] for e in gateway["env"]})
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_shipped_config_validates_with_the_pod_environment(overlay):
    docs = render(f"overlays/{overlay}")
    text = one(docs, "ConfigMap", gateway_configmap(docs))["data"]["config.yaml"]
    env = pod_env(docs)
    loaded = parse_config(text, env=env)
    assert loaded.config.server.port == 8080
    assert loaded.config.stores.redis_url == "redis://redis:6379/0" == env["REDIS_URL"]
    # every ${VAR} without a default is provided by the Secret or the env list
    required = set(re.findall(r"\$\{(\w+)\}", text))
    assert required <= env.keys()


def test_the_gateway_serves_the_kubernetes_config(tmp_path, upstream, redis_server):
    """The gateway container's command on the rendered ConfigMap, outside Kubernetes: Redis is a real
    redis-server standing in for the `redis` Service, the OpenAI upstream a fake."""
    docs = render("overlays/dev")
    config = tmp_path / "config.yaml"
    config.write_text(one(docs, "ConfigMap", gateway_configmap(docs))["data"]["config.yaml"])
    key = new_key()
    env = {
        **pod_env(docs),
        "GATEWAY_TENANT_KEY_HASH": hash_key(key),
        "REDIS_URL": redis_server.url,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_API_BASE": upstream[0].url + "/v1",
        "GATEWAY_WORKERS": "1",
    }
    process, url = start_serve_with(config, env)
    try:
        with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60) as client:
            assert {m.id for m in client.models.list().data} == {"gpt-4o-mini", "local"}
            answer = client.chat.completions.create(
                model="gpt-4o-mini", temperature=0, messages=[{"role": "user", "content": "hi there"}]
            )
        assert answer.choices[0].message.content == "Echo: hi there"
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
