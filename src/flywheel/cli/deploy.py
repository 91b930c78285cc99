"""``flywheel capacity`` and ``flywheel deploy k8s``: size a deployment and write its manifests.

Registered on the main group with ``cli.add_command(capacity)`` and ``cli.add_command(deploy)``.
``capacity`` measures the single-row latency of the model a deployment serves and applies
Little's law (:mod:`flywheel.serving.capacity`); ``deploy k8s`` writes a Deployment, Service and
HorizontalPodAutoscaler (:mod:`flywheel.serving.k8s`), taking the replica count from the same
measurement when given ``--rps``. Bad input is a ``FlywheelError`` that ``main()`` prints on one
line with exit code 2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from flywheel.project import Project
    from flywheel.serving.capacity import CapacityPlan, LatencyProfile

__all__ = ["capacity", "deploy"]

_PERCENTILES = ("p50", "p90", "p99")
DEFAULT_OVERHEAD_MS = 2.5
"""Per-request server time outside the model: the flights reference deployment saturates one
worker at about 400 req/s (the reliability plan's load-test notes), about 2.5 ms a request."""


@contextmanager
def _open_project(ctx: click.Context) -> Iterator[Project]:
    from flywheel.project import Project

    project = Project.open(ctx.find_root().obj["project_dir"])
    try:
        yield project
    finally:
        project.close()


def _deployment_name(project: Project, name: str | None) -> str:
    """Return ``name``, or the only deployment when none is given."""
    from flywheel.errors import InvalidArgument

    if name is not None:
        return str(project.deployments.get(name).name)  # NotFound (exit 3) if absent
    names = [d.name for d in project.deployments.list_deployments()]
    if len(names) != 1:
        listed = ", ".join(names[:20]) or "none registered"
        raise InvalidArgument(
            f"--deployment: expected one of the project's deployments ({listed})",
            context={"field": "deployment", "choices": names[:20]},
        )
    return names[0]


def _check_inputs(
    rps: float, target_utilisation: float, headroom: float, overhead_ms: float
) -> None:
    """Refuse bad numbers before loading anything."""
    from flywheel.errors import ValidationError
    from flywheel.serving.capacity import plan

    if not overhead_ms >= 0 or overhead_ms == float("inf"):
        raise ValidationError("overhead_ms", f"expected a finite time >= 0 ms, got {overhead_ms:g}")
    plan(rps, 1.0, target_utilisation=target_utilisation, headroom=headroom)


def _size(
    project: Project,
    deployment: str,
    *,
    rps: float,
    target_utilisation: float,
    headroom: float,
    percentile: str,
    samples: int,
    overhead_ms: float,
) -> tuple[LatencyProfile, CapacityPlan]:
    from flywheel.serving.capacity import measure, plan

    _check_inputs(rps, target_utilisation, headroom, overhead_ms)
    profile = measure(project, deployment, samples=samples)
    result = plan(
        rps,
        profile.percentile(percentile),
        target_utilisation=target_utilisation,
        headroom=headroom,
        percentile=percentile,
        overhead_s=overhead_ms / 1000.0,
    )
    return profile, result


_rps_required = click.option(
    "--rps", type=float, required=True, help="Peak requests per second to serve."
)
_rps_optional = click.option(
    "--rps", type=float, default=None, help="Peak requests per second to size the replicas for."
)

_utilisation_option = click.option(
    "--target-utilisation",
    type=float,
    default=0.6,
    show_default=True,
    help="Busy share each replica is sized for, in (0, 1].",
)
_headroom_option = click.option(
    "--headroom",
    type=float,
    default=0.3,
    show_default=True,
    help="Extra share of replicas on top (spikes, rollouts, overheads).",
)
_percentile_option = click.option(
    "--percentile",
    type=click.Choice(_PERCENTILES),
    default="p99",
    show_default=True,
    help="Which measured latency sizes the replicas.",
)
_overhead_option = click.option(
    "--overhead-ms",
    type=float,
    default=DEFAULT_OVERHEAD_MS,
    show_default=True,
    help="Server time per request outside the model (parsing, feature read, HTTP), added to "
    "the measured model latency. The default is the reference deployment's single-worker cost "
    "(about 400 req/s saturation); measure yours from /metrics.",
)
_samples_option = click.option(
    "--samples",
    type=int,
    default=500,
    show_default=True,
    help="Single-row predictions to time.",
)


@click.command()
@_rps_required
@click.option("--deployment", default=None, help="Deployment to size (default: the only one).")
@_utilisation_option
@_headroom_option
@_percentile_option
@_overhead_option
@_samples_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def capacity(
    ctx: click.Context,
    rps: float,
    deployment: str | None,
    target_utilisation: float,
    headroom: float,
    percentile: str,
    overhead_ms: float,
    samples: int,
    as_json: bool,
) -> None:
    """Measure a deployment's model latency and print the replicas needed for --rps."""
    _check_inputs(rps, target_utilisation, headroom, overhead_ms)
    with _open_project(ctx) as project:
        name = _deployment_name(project, deployment)
        profile, result = _size(
            project,
            name,
            rps=rps,
            target_utilisation=target_utilisation,
            headroom=headroom,
            percentile=percentile,
            samples=samples,
            overhead_ms=overhead_ms,
        )
    if as_json:
        record = {"latency": profile.to_dict(), "percentile": percentile, **result.to_dict()}
        click.echo(json.dumps(record, indent=2, sort_keys=True))
        return
    click.echo(
        f"{profile.deployment} ({profile.model_ref} = version {profile.model_version}): "
        f"{profile.samples} single-row predictions on rows from {profile.rows_from}"
    )
    click.echo(
        f"  latency p50 {profile.p50 * 1000:.3f} ms, p90 {profile.p90 * 1000:.3f} ms, "
        f"p99 {profile.p99 * 1000:.3f} ms (model call only, this machine)"
    )
    click.echo(f"Replicas: {result.replicas}")
    for line in result.reasoning:
        click.echo(f"  - {line}")


@click.group()
def deploy() -> None:
    """Write deployment manifests for a target platform."""


@deploy.command("k8s")
@click.option("--deployment", required=True, help="Deployment the pods serve.")
@click.option("--image", required=True, help="Container image with Flywheel and the project.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option(
    "--replicas",
    type=int,
    default=None,
    help="Replicas (default: from capacity with --rps, else 2).",
)
@_rps_optional
@_utilisation_option
@_headroom_option
@_percentile_option
@_overhead_option
@_samples_option
@click.option(
    "--min-replicas", type=int, default=None, help="Autoscaler floor (default: replicas)."
)
@click.option(
    "--max-replicas", type=int, default=None, help="Autoscaler ceiling (default: 2 x replicas)."
)
@click.option("--cpu", default="1", show_default=True, help="CPU request per pod.")
@click.option(
    "--memory", default="1Gi", show_default=True, help="Memory request and limit per pod."
)
@click.option("--port", type=int, default=8000, show_default=True, help="Container port.")
@click.option(
    "--target-cpu", type=int, default=60, show_default=True, help="Autoscaler CPU target, percent."
)
@click.option(
    "--project-path", default="/app", show_default=True, help="Project directory in the image."
)
@click.pass_context
def k8s(
    ctx: click.Context,
    deployment: str,
    image: str,
    out: Path,
    replicas: int | None,
    rps: float | None,
    target_utilisation: float,
    headroom: float,
    percentile: str,
    overhead_ms: float,
    samples: int,
    min_replicas: int | None,
    max_replicas: int | None,
    cpu: str,
    memory: str,
    port: int,
    target_cpu: int,
    project_path: str,
) -> None:
    """Write a Deployment, Service and HorizontalPodAutoscaler as YAML files in --out."""
    from flywheel.errors import InvalidArgument
    from flywheel.serving.k8s import manifests, write_manifests

    if out.exists() and not out.is_dir():
        raise InvalidArgument(
            f"--out {str(out)[:200]!r} is a file; expected a directory",
            context={"field": "out", "expected": "a directory (created if absent)"},
        )
    if rps is not None:
        _check_inputs(rps, target_utilisation, headroom, overhead_ms)
    with _open_project(ctx) as project:
        name = _deployment_name(project, deployment)
        project_name = project.config.project
        if replicas is None and rps is not None:
            _, result = _size(
                project,
                name,
                rps=rps,
                target_utilisation=target_utilisation,
                headroom=headroom,
                percentile=percentile,
                samples=samples,
                overhead_ms=overhead_ms,
            )
            replicas = result.replicas
            click.echo(f"capacity: {result.replicas} replicas for {rps:g} req/s")
    replicas = 2 if replicas is None else replicas
    docs = manifests(
        project_name,
        name,
        image=image,
        replicas=replicas,
        min_replicas=replicas if min_replicas is None else min_replicas,
        max_replicas=2 * replicas if max_replicas is None else max_replicas,
        cpu=cpu,
        memory=memory,
        port=port,
        target_cpu_utilisation=target_cpu,
        project_path=project_path,
    )
    for path in write_manifests(docs, out):
        click.echo(f"wrote {path}")
