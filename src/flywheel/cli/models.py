"""``flywheel models``: versions, aliases, stages, rollback and lineage queries.

Registered on the main group with ``cli.add_command(models)``. Each command opens the project
from ``ctx.obj["project_dir"]``, calls one :class:`~flywheel.registry.store.ModelRegistry`
method and formats the answer; ``FlywheelError`` reaches ``main()``, which prints it on one
line and exits with its code (3 not found, 4 conflict, 2 bad argument). Commands that change
state record ``$USER`` (or ``cli``) as the actor.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from flywheel.registry.store import ModelRegistry, ModelVersion

__all__ = ["models"]

_STAGES = ("none", "staging", "production", "archived")


@contextmanager
def _registry(ctx: click.Context) -> Iterator[ModelRegistry]:
    from flywheel.project import Project

    project = Project.open(ctx.find_root().obj["project_dir"])
    try:
        yield project.registry
    finally:
        project.close()


def _actor() -> str:
    return os.environ.get("USER") or "cli"


def _summary(v: ModelVersion) -> dict[str, Any]:
    return {
        "name": v.name,
        "version": v.version,
        "stage": v.stage,
        "format": v.format,
        "run_id": v.run_id,
        "created_at": v.created_at.isoformat(),
        "metrics": v.metrics,
    }


def _echo_json(record: object) -> None:
    click.echo(json.dumps(record, indent=2, sort_keys=True))


@click.group()
def models() -> None:
    """Registered models: versions, aliases, stages, rollback and lineage."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def models_list(ctx: click.Context, as_json: bool) -> None:
    """List registered models with their versions, stages and aliases."""
    with _registry(ctx) as registry:
        rows = []
        for name in registry.list_models():
            aliases = registry.list_aliases(name)
            for v in registry.list_versions(name):
                tags = sorted(a for a, ver in aliases.items() if ver == v.version)
                rows.append((v, tags))
    if as_json:
        _echo_json([{**_summary(v), "aliases": tags} for v, tags in rows])
        return
    for v, tags in rows:
        metrics = " ".join(
            f"{k}={val:.4f}" if isinstance(val, float) else f"{k}={val}"
            for k, val in sorted(v.metrics.items())
        )
        click.echo(
            f"{v.ref}  {v.created_at:%Y-%m-%d %H:%M}  {v.stage:<10}  [{', '.join(tags)}]  {metrics}"
        )


@models.command("show")
@click.argument("ref")
@click.pass_context
def models_show(ctx: click.Context, ref: str) -> None:
    """Show a model version (NAME/VERSION or NAME@ALIAS) as JSON: stage, metrics, signature
    and lineage."""
    with _registry(ctx) as registry:
        v = registry.resolve(ref)
        aliases = sorted(a for a, n in registry.list_aliases(v.name).items() if n == v.version)
    record = {
        **_summary(v),
        "artifact_digest": v.artifact_digest,
        "profile_digest": v.profile_digest,
        "created_by": v.created_by,
        "description": v.description,
        "aliases": aliases,
        "signature": v.signature,
        "lineage": v.lineage,
    }
    _echo_json(record)


@models.command("alias")
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int)
@click.option("--reason", default="", help="Why (recorded in the event log).")
@click.option(
    "--expected-version",
    type=int,
    default=None,
    help="Only move the alias if it points at this version now (compare-and-set).",
)
@click.pass_context
def models_alias(
    ctx: click.Context,
    name: str,
    alias: str,
    version: int,
    reason: str,
    expected_version: int | None,
) -> None:
    """Point ALIAS of model NAME at VERSION (production/staging also set the stage)."""
    from flywheel.registry.store import UNSET

    with _registry(ctx) as registry:
        previous = registry.set_alias(
            name,
            alias,
            version,
            expected_version=UNSET if expected_version is None else expected_version,
            actor=_actor(),
            reason=reason,
        )
    click.echo(f"{name}@{alias}: {previous} -> {version}")


@models.command("stage")
@click.argument("name")
@click.argument("version", type=int)
@click.argument("stage", type=click.Choice(_STAGES))
@click.option("--reason", required=True, help="Why (recorded in the event log).")
@click.option(
    "--keep-existing",
    is_flag=True,
    help="Do not archive the versions already in STAGE (staging/production only).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def models_stage(
    ctx: click.Context,
    name: str,
    version: int,
    stage: str,
    reason: str,
    keep_existing: bool,
    as_json: bool,
) -> None:
    """Move VERSION of model NAME to STAGE; production/staging also move that alias."""
    with _registry(ctx) as registry:
        before = registry.get_version(name, version).stage
        after = registry.transition_stage(
            name,
            version,
            stage,
            actor=_actor(),
            reason=reason,
            archive_existing=not keep_existing,
        )
        aliases = registry.list_aliases(name)
    if as_json:
        _echo_json({**_summary(after), "from": before, "aliases": aliases})
        return
    click.echo(f"{after.ref}: {before} -> {after.stage}")


@models.command("rollback")
@click.argument("name")
@click.option("--alias", default="production", show_default=True, help="The alias to roll back.")
@click.option(
    "--reason",
    default="rolled back with flywheel models rollback",
    show_default=True,
    help="Why (recorded in the event log).",
)
@click.option(
    "--expected-version",
    type=int,
    default=None,
    help="Only roll back if the alias points at this version now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def models_rollback(
    ctx: click.Context,
    name: str,
    alias: str,
    reason: str,
    expected_version: int | None,
    as_json: bool,
) -> None:
    """Move ALIAS of model NAME back to the version it pointed at before its last move."""
    with _registry(ctx) as registry:
        before = registry.get_alias(name, alias).version
        target = registry.rollback(
            name,
            alias,
            actor=_actor(),
            reason=reason,
            expected_version=before if expected_version is None else expected_version,
        )
    if as_json:
        _echo_json({"model": name, "alias": alias, "from": before, "to": target.version})
        return
    click.echo(f"{name}@{alias}: {before} -> {target.version} (rolled back)")


@models.command("lineage")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the document and the rows).")
@click.pass_context
def models_lineage(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show what a version (NAME/VERSION or NAME@ALIAS) was trained on."""
    with _registry(ctx) as registry:
        v = registry.resolve(ref)
        found = registry.lineage(v.name, v.version)
    if as_json:
        _echo_json(found)
        return
    click.echo(f"{v.ref} (run {found['run_id'] or '-'})")
    rows = [("KIND", "NAME", "VERSION", "DIGEST")] + [
        (
            r["kind"],
            r["name"],
            "-" if r["version"] is None else str(r["version"]),
            "-" if r["digest"] is None else r["digest"][:12],
        )
        for r in found["refs"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


_USING = {
    "feature_view": "--feature-view",
    "feature_service": "--feature-service",
    "source": "--source",
    "run": "--run",
    "training_set": "--training-set",
}


@models.command("using")
@click.option("--feature-view", default=None, help="Versions trained on this feature view.")
@click.option("--feature-service", default=None, help="...on this feature service.")
@click.option("--source", default=None, help="...on data from this source.")
@click.option("--run", default=None, help="...by this run.")
@click.option("--training-set", default=None, help="...on this training set (sha256).")
@click.option(
    "--version",
    "ref_version",
    type=click.IntRange(min=1),
    default=None,
    help="Only this version of the feature view or service.",
)
@click.option(
    "--digest", default=None, help="Only this snapshot of the source (sha256, from `lineage`)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def models_using(
    ctx: click.Context,
    feature_view: str | None,
    feature_service: str | None,
    source: str | None,
    run: str | None,
    training_set: str | None,
    ref_version: int | None,
    digest: str | None,
    as_json: bool,
) -> None:
    """List the model versions that used a feature view, service, source, run or training set."""
    from flywheel.errors import InvalidArgument

    given = {
        kind: value
        for kind, value in {
            "feature_view": feature_view,
            "feature_service": feature_service,
            "source": source,
            "run": run,
            "training_set": training_set,
        }.items()
        if value is not None
    }
    if len(given) != 1:
        raise InvalidArgument(f"give exactly one of {', '.join(_USING.values())}")
    if ref_version is not None and digest is not None:
        raise InvalidArgument("give --version or --digest, not both")
    ((kind, name),) = given.items()
    with _registry(ctx) as registry:
        found = registry.versions_using(kind, name, ref_version if digest is None else digest)
    if as_json:
        _echo_json([_summary(v) for v in found])
        return
    for v in found:
        click.echo(f"{v.ref}  {v.created_at:%Y-%m-%d %H:%M}  {v.stage}")
    if not found:
        click.echo(f"no model version used {kind.replace('_', ' ')} {name!r}", err=True)


@models.command("import-mlflow")
@click.argument("path", type=click.Path(path_type=Path, file_okay=False))
@click.option("--name", required=True, help="The registered model's name in Flywheel.")
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow MLflow's pickled model to be unpickled once (to convert it to skops).",
)
@click.option("--description", default="", help="The version's description.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def models_import_mlflow(
    ctx: click.Context,
    path: Path,
    name: str,
    trust_pickle: bool,
    description: str,
    as_json: bool,
) -> None:
    """Register the scikit-learn model of MLflow model directory PATH (stored as skops).

    A pickled model (MLflow's default) is refused unless --trust-pickle is given: unpickling
    runs code. The registry never stores the pickle.
    """
    from flywheel.project import Project
    from flywheel.registry.mlflow_import import import_mlflow_model

    project = Project.open(ctx.find_root().obj["project_dir"])
    try:
        version = import_mlflow_model(
            path,
            name,
            project=project,
            trust_pickle=trust_pickle,
            description=description,
            actor=_actor(),
        )
    finally:
        project.close()
    if as_json:
        _echo_json(_summary(version))
        return
    click.echo(f"imported {path} as {version.ref} (format {version.format})")
