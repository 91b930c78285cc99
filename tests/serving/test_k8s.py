"""Kubernetes manifests: valid against the bundled 1.30 schema (strict), with probes and drain."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from flywheel.errors import InvalidArgument, ValidationError
from flywheel.serving.k8s import DRAIN_S, PRESTOP_SLEEP_S, k8s_name, manifests, write_manifests

K8S_VERSION = "1.30"  # bundled offline by kubernetes-validate (1.25 .. 1.37 at the time of writing)

ARGS: dict[str, Any] = {
    "image": "registry.example.com/flywheel/flights:1.2.3",
    "replicas": 3,
    "min_replicas": 2,
    "max_replicas": 6,
    "cpu": "1",
    "memory": "1Gi",
}


def _docs(**overrides: Any) -> dict[str, dict[str, Any]]:
    docs = manifests("flights", "delays", **{**ARGS, **overrides})
    return {d["kind"]: d for d in docs}


def test_manifests_validate_strictly_against_the_kubernetes_schema() -> None:
    docs = manifests("flights", "delays_v2", **ARGS)
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        kubernetes_validate.validate(doc, kubernetes_validate.utils.latest_version(), strict=True)


def test_the_validator_rejects_an_unknown_field() -> None:
    """The schema check above can fail: strict mode refuses a misspelt field."""
    bad = copy.deepcopy(_docs()["Deployment"])
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_deployment_has_probes_drain_threads_resources_and_public_bind() -> None:
    docs = _docs(port=9000)
    dep = docs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["OMP_NUM_THREADS"] == "1"
    args = container["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0" and "--allow-remote" in args
    assert args[args.index("--port") + 1] == "9000"
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"memory": "1Gi"},
    }
    assert "exec" in container["lifecycle"]["preStop"]
    assert pod["terminationGracePeriodSeconds"] > PRESTOP_SLEEP_S + DRAIN_S
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_service_and_autoscaler_point_at_the_deployment() -> None:
    docs = _docs(target_cpu_utilisation=70)
    dep, svc, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    name = dep["metadata"]["name"]
    assert name == "flights-delays"
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    target = hpa["spec"]["metrics"][0]["resource"]["target"]
    assert target == {"type": "Utilization", "averageUtilization": 70}
    assert dep["metadata"]["annotations"]["flywheel.dev/deployment"] == "delays"


@pytest.mark.parametrize(
    ("project", "deployment", "expected"),
    [("flights", "delays", "flights-delays"), ("Flights", "delays_v2.1", "flights-delays-v2-1")],
)
def test_k8s_name_maps_flywheel_names_to_dns_labels(
    project: str, deployment: str, expected: str
) -> None:
    assert k8s_name(project, deployment) == expected


@pytest.mark.parametrize(
    ("project", "deployment"),
    [
        ("9flights", "delays"),  # must start with a letter
        ("flights", "delays-"),  # must end with a letter or digit
        ("flights", "d" * 60),  # longer than 63
        ("flights", "de lays"),
        ("flights", ""),
    ],
)
def test_k8s_name_refuses_names_that_are_not_dns_labels(project: str, deployment: str) -> None:
    with pytest.raises(ValidationError):
        k8s_name(project, deployment)
    with pytest.raises(ValidationError):
        manifests(project, deployment, **ARGS)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"replicas": 0}, "replicas"),
        ({"replicas": 7}, "replicas"),  # above max_replicas
        ({"replicas": 1}, "replicas"),  # below min_replicas
        ({"min_replicas": 0}, "min_replicas"),
        ({"replicas": True}, "replicas"),
        ({"cpu": "lots"}, "cpu"),
        ({"cpu": "0"}, "cpu"),
        ({"memory": "-1Gi"}, "memory"),
        ({"image": "bad image"}, "image"),
        ({"image": ""}, "image"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"target_cpu_utilisation": 101}, "target_cpu_utilisation"),
        ({"project_path": "app"}, "project_path"),
    ],
)
def test_manifests_refuse_bad_values_naming_the_field(override: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        manifests("flights", "delays", **{**ARGS, **override})
    assert info.value.field == field


def test_write_manifests_round_trips_yaml_into_a_new_directory(tmp_path: Path) -> None:
    docs = manifests("flights", "delays", **ARGS)
    out = tmp_path / "a" / "b"
    paths = write_manifests(docs, out)
    assert sorted(p.name for p in out.iterdir()) == ["deployment.yaml", "hpa.yaml", "service.yaml"]
    assert [yaml.safe_load(p.read_text(encoding="utf-8")) for p in paths] == docs
    assert not any("&id" in p.read_text(encoding="utf-8") for p in paths)  # no YAML anchors
    write_manifests(docs, out)  # rewriting an existing directory is fine
    assert len(list(out.iterdir())) == 3  # no temporary files left


def test_write_manifests_refuses_a_file_as_the_output_directory(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("keep me", encoding="utf-8")
    with pytest.raises(InvalidArgument):
        write_manifests(manifests("flights", "delays", **ARGS), target)
    assert target.read_text(encoding="utf-8") == "keep me"
