"""Kubernetes manifests for one deployment: a Deployment, a Service and an autoscaler.

:func:`manifests` returns plain dicts (``apps/v1`` Deployment, ``v1`` Service,
``autoscaling/v2`` HorizontalPodAutoscaler) that validate against the Kubernetes 1.30 schema in
strict mode; :func:`write_manifests` writes them as YAML files. The pod runs
``flywheel --project <project_path> serve --host 0.0.0.0 --port <port> --allow-remote``: inside the
pod the server must listen on every interface, because the kubelet's probes and the Service's
traffic come from outside the container's loopback. Nothing else is exposed: the Service is a
``ClusterIP``, so putting it behind an ingress (and authentication) is a deliberate step.

What each piece is for:

* readiness ``/v2/health/ready`` (503 until every model is loaded and warmed, and at once on
  shutdown) takes a pod out of the Service; liveness ``/v2/health/live`` restarts a wedged one; a
  startup probe on the liveness route gives model loading up to ``startup_timeout_s`` before
  liveness counts.
* graceful drain: on termination the ``preStop`` hook sleeps ``PRESTOP_SLEEP_S`` seconds so the
  endpoint removal reaches every kube-proxy before uvicorn stops accepting, then uvicorn lets
  in-flight requests finish for up to ``DRAIN_S`` seconds (the server's
  ``timeout_graceful_shutdown``); ``terminationGracePeriodSeconds`` covers both plus a margin.
* ``OMP_NUM_THREADS=1`` (and the MKL/OpenBLAS equivalents): one thread of native math per
  worker, as the server's predictors assume; more threads per pod only contend for the CPU
  request.
* resources: CPU and memory requests (the autoscaler's utilisation is relative to the CPU
  request) and a memory limit equal to the request; no CPU limit, so a pod is never throttled
  below its request by CFS quotas.
* rolling updates with ``maxUnavailable: 0``: a new pod must be ready before an old one goes.
* the autoscaler scales on CPU utilisation between ``min_replicas`` and ``max_replicas`` and
  waits 5 minutes before scaling down.

Kubernetes names must be DNS labels: the object name is ``<project>-<deployment>`` lower-cased
with ``_`` and ``.`` turned into ``-``, and it must then match ``[a-z]([-a-z0-9]*[a-z0-9])?`` with
at most 63 characters (RFC 1035, which a Service name needs; it is also a valid RFC 1123 name).
The original names are kept as annotations.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flywheel.errors import InvalidArgument, ValidationError

__all__ = [
    "DRAIN_S",
    "PRESTOP_SLEEP_S",
    "k8s_name",
    "manifests",
    "write_manifests",
]

DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
"""An RFC 1035 label (Service names); every match is also an RFC 1123 label."""
_MAX_NAME = 63
_QUANTITY = re.compile(r"(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-/:@+]*")
_MAX_IMAGE = 512
PRESTOP_SLEEP_S = 5
"""Seconds the preStop hook waits for endpoint removal to propagate."""
DRAIN_S = 30
"""Seconds uvicorn lets in-flight requests finish (``timeout_graceful_shutdown``)."""
_GRACE_MARGIN_S = 5
_FILES = {"Deployment": "deployment.yaml", "Service": "service.yaml"}


def k8s_name(project_name: str, deployment: str) -> str:
    """Return the Kubernetes object name for ``deployment`` of ``project_name``.

    Examples:
        >>> k8s_name("flights", "delays_v2")
        'flights-delays-v2'

    Raises:
        ValidationError: the result is not a DNS label of at most 63 characters.
    """
    for field, value in (("project_name", project_name), ("deployment", deployment)):
        if not isinstance(value, str) or not value:
            raise ValidationError(field, "expected a non-empty string")
    name = f"{project_name}-{deployment}".lower().replace("_", "-").replace(".", "-")
    if len(name) > _MAX_NAME or DNS_LABEL.fullmatch(name) is None:
        raise ValidationError(
            "name",
            f"{name[:80]!r} is not a DNS label: expected lower-case letters, digits and '-', "
            f"starting with a letter, ending with a letter or digit, at most {_MAX_NAME} "
            "characters (shorten the project or deployment name)",
        )
    return name


def _int(field: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(field, f"expected an integer in [{low}, {high}], got {value!r:.40}")
    return value


def _quantity(field: str, value: object) -> str:
    if not isinstance(value, str) or _QUANTITY.fullmatch(value) is None:
        raise ValidationError(
            field, f"expected a Kubernetes quantity such as '500m', '1', '512Mi', got {value!r:.40}"
        )
    if float(re.sub(r"[a-zA-Z]+$", "", value)) <= 0:
        raise ValidationError(field, f"expected a quantity > 0, got {value!r}")
    return value


def manifests(
    project_name: str,
    deployment: str,
    *,
    image: str,
    replicas: int,
    min_replicas: int,
    max_replicas: int,
    cpu: str,
    memory: str,
    port: int = 8000,
    target_cpu_utilisation: int = 60,
    project_path: str = "/app",
    startup_timeout_s: int = 120,
) -> list[dict[str, Any]]:
    """Return the Deployment, Service and HorizontalPodAutoscaler for ``deployment``.

    Args:
        project_name: The Flywheel project (``flywheel.yaml``'s ``project``).
        deployment: The Flywheel deployment the pods serve.
        image: Container image holding Flywheel and the project at ``project_path``.
        replicas: Initial replica count (``flywheel capacity`` computes one).
        min_replicas: Autoscaler floor; ``min_replicas <= replicas <= max_replicas``.
        max_replicas: Autoscaler ceiling.
        cpu: CPU request per pod (``"1"``, ``"500m"``).
        memory: Memory request and limit per pod (``"1Gi"``).
        port: Container and Service port.
        target_cpu_utilisation: Autoscaler target, percent of the CPU request.
        project_path: Project directory inside the image.
        startup_timeout_s: How long model loading may take before liveness counts.

    Raises:
        ValidationError: a name is not a DNS label, or a value is out of range (named).
    """
    name = k8s_name(project_name, deployment)
    if not isinstance(image, str) or len(image) > _MAX_IMAGE or _IMAGE.fullmatch(image) is None:
        raise ValidationError(
            "image", f"expected a container image reference (registry/name:tag), got {image!r:.60}"
        )
    replicas = _int("replicas", replicas, 1, 10_000)
    min_replicas = _int("min_replicas", min_replicas, 1, 10_000)
    max_replicas = _int("max_replicas", max_replicas, 1, 10_000)
    if not min_replicas <= replicas <= max_replicas:
        raise ValidationError(
            "replicas",
            f"expected min_replicas <= replicas <= max_replicas, got {min_replicas} <= "
            f"{replicas} <= {max_replicas}",
        )
    cpu = _quantity("cpu", cpu)
    memory = _quantity("memory", memory)
    port = _int("port", port, 1, 65535)
    target_cpu_utilisation = _int("target_cpu_utilisation", target_cpu_utilisation, 1, 100)
    startup_timeout_s = _int("startup_timeout_s", startup_timeout_s, 1, 3600)
    if not isinstance(project_path, str) or not project_path.startswith("/"):
        raise ValidationError("project_path", "expected an absolute path inside the image")

    def labels() -> dict[str, str]:
        # A fresh dict per use: shared objects would come out of the YAML dumper as anchors.
        return {
            "app.kubernetes.io/name": name,
            "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/managed-by": "flywheel",
        }

    def annotations() -> dict[str, str]:
        return {"flywheel.dev/project": project_name, "flywheel.dev/deployment": deployment}

    def metadata() -> dict[str, Any]:
        return {"name": name, "labels": labels(), "annotations": annotations()}

    period_s = 2
    probe_port = "http"
    container: dict[str, Any] = {
        "name": "server",
        "image": image,
        "command": ["flywheel"],
        "args": [
            "--project",
            project_path,
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--allow-remote",
        ],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": [
            {"name": "OMP_NUM_THREADS", "value": "1"},
            {"name": "MKL_NUM_THREADS", "value": "1"},
            {"name": "OPENBLAS_NUM_THREADS", "value": "1"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "resources": {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"memory": memory},
        },
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": probe_port},
            "periodSeconds": period_s,
            "timeoutSeconds": 2,
            "failureThreshold": max(1, -(-startup_timeout_s // period_s)),
        },
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": probe_port},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 1,
            "successThreshold": 1,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": probe_port},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "lifecycle": {
            "preStop": {
                # exec rather than the newer ``sleep`` action, which older clusters refuse;
                # the image has Python whatever else it lacks.
                "exec": {"command": ["python", "-c", f"import time; time.sleep({PRESTOP_SLEEP_S})"]}
            }
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    deployment_doc: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": labels(), "annotations": annotations()},
                "spec": {
                    "terminationGracePeriodSeconds": PRESTOP_SLEEP_S + DRAIN_S + _GRACE_MARGIN_S,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                },
            },
        },
    }
    service_doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(),
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    hpa_doc: dict[str, Any] = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": target_cpu_utilisation,
                        },
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }
    return [deployment_doc, service_doc, hpa_doc]


def _file_name(doc: dict[str, Any]) -> str:
    return _FILES.get(str(doc["kind"]), "hpa.yaml")


def write_manifests(docs: Sequence[dict[str, Any]], out: Path | str) -> list[Path]:
    """Write each document to ``out/<kind>.yaml`` (created if absent); return the paths.

    Each file is written to a temporary file in ``out`` and renamed into place.

    Raises:
        InvalidArgument: ``out`` exists and is not a directory.
    """
    import yaml

    directory = Path(out)
    if directory.exists() and not directory.is_dir():
        raise InvalidArgument(
            f"--out {str(directory)[:200]!r} is a file; expected a directory",
            context={"field": "out", "expected": "a directory (created if absent)"},
        )
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for doc in docs:
        path = directory / _file_name(doc)
        text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".yaml", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    return written
