"""The ``flywheel`` command line: thin commands over the SDK; errors are exit codes."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from flywheel._version import __version__
from flywheel.cli.ci import ci
from flywheel.cli.deploy import capacity, deploy
from flywheel.cli.features import features
from flywheel.cli.models import models
from flywheel.errors import FlywheelError

__all__ = ["cli", "main"]


def _project(ctx: click.Context) -> Any:
    from flywheel.project import Project

    return Project.open(ctx.obj["project_dir"])


def _parse_ts(value: str, field: str) -> datetime:
    from flywheel.errors import ValidationError

    try:
        ts = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(field, f"expected an ISO-8601 timestamp, got {value[:40]!r}") from exc
    if ts.tzinfo is None:
        raise ValidationError(field, "expected a timezone offset (e.g. 2013-07-01T00:00:00+00:00)")
    return ts.astimezone(UTC)


def _short(value: object, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flywheel")
@click.option(
    "--project",
    "project_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Project directory (holds flywheel.yaml).",
)
@click.pass_context
def cli(ctx: click.Context, project_dir: Path) -> None:
    """Flywheel: data, training, serving, monitoring and control for production ML."""
    ctx.ensure_object(dict)
    ctx.obj["project_dir"] = project_dir


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="flights", show_default=True, help="Project name.")
@click.option("--force", is_flag=True, help="Overwrite an existing flywheel.yaml.")
def init(directory: Path, name: str, force: bool) -> None:
    """Create a project in DIRECTORY for the NYC flights example."""
    from flywheel.project import init_project

    init_project(directory, name=name, force=force)
    click.echo(f"Created project {name!r} in {directory} (flywheel.yaml, definitions.py)")
    click.echo(f"Next: cd {directory} && flywheel apply")


@cli.command()
@click.option("--dry-run", is_flag=True, help="Print the plan without registering anything.")
@click.pass_context
def apply(ctx: click.Context, dry_run: bool) -> None:
    """Register the project's definitions, printing the plan first."""
    project = _project(ctx)
    plan = project.plan()
    for kind, name in plan.added:
        click.echo(f"  + {kind} {name}")
    for kind, name in plan.changed:
        click.echo(f"  ~ {kind} {name}")
        for key, (old, new) in project.changes(kind, name).items():
            click.echo(f"      {key}: {_short(old)} -> {_short(new)}")
    for kind, name in plan.removed:
        click.echo(f"  - {kind} {name}")
    click.echo(
        f"Plan: {len(plan.added)} to add, {len(plan.changed)} to change, "
        f"{len(plan.removed)} to remove, {len(plan.unchanged)} unchanged."
    )
    if dry_run:
        return
    project.apply(actor=os.environ.get("USER", "cli"))
    click.echo("Applied.")


@cli.command()
@click.argument("source")
@click.argument("location", required=False)
@click.option("--batch-id", default=None, help="Idempotency key (default: content hash).")
@click.option("--postgres", "pg_uri", default=None, help="Read rows from this PostgreSQL URI...")
@click.option("--query", default=None, help="...with this query (columns named as the source).")
@click.pass_context
def ingest(
    ctx: click.Context,
    source: str,
    location: str | None,
    batch_id: str | None,
    pg_uri: str | None,
    query: str | None,
) -> None:
    """Validate LOCATION (a CSV or Parquet path or s3:// URL) or a PostgreSQL query against
    SOURCE's schema and ingest it; a bad batch is refused whole, naming the column."""
    from flywheel.data.sources import PostgresQuery
    from flywheel.errors import InvalidArgument

    project = _project(ctx)
    spec = project.definitions.source(source)
    data: str | PostgresQuery
    if pg_uri is not None or query is not None:
        if pg_uri is None or query is None or location is not None:
            raise InvalidArgument("give either LOCATION, or both --postgres URI and --query SQL")
        data = PostgresQuery(pg_uri, query)
    elif location is None:
        raise InvalidArgument("missing LOCATION (a file path or URL), or --postgres with --query")
    else:
        data = location
    result = project.offline.ingest(spec, data, batch_id=batch_id, events=project.events)
    verb = "already ingested" if result.skipped else "ingested"
    click.echo(f"{source}: batch {result.batch_id} {verb} ({result.rows} rows)")


@cli.command()
@click.option("--end", default=None, help="Materialize values as of this ISO time (default: now).")
@click.pass_context
def materialize(ctx: click.Context, end: str | None) -> None:
    """Write the latest feature values into the online store."""
    from flywheel.data.materialize import materialize as run

    project = _project(ctx)
    at = _parse_ts(end, "--end") if end else datetime.now(UTC)
    views = [
        *project.definitions.of_kind("feature_view"),
        *project.definitions.of_kind("window_aggregation"),
    ]
    for result in run(project.offline, project.online, views, end=at, events=project.events):
        click.echo(f"{result.view}: {result.rows} rows")


def _drain(handlers: list[Any]) -> None:
    """Turn every handler's readiness off (they keep answering what is in flight)."""
    for handler in handlers:
        handler.drain()


@cli.command()
@click.option("--host", default=None, help="Interface to bind (default from flywheel.yaml).")
@click.option("--port", type=int, default=None, help="Port (default from flywheel.yaml).")
@click.option("--allow-remote", is_flag=True, help="Allow binding a non-loopback interface.")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, allow_remote: bool) -> None:
    """Serve every deployment over HTTP (JSON API, Open Inference Protocol V2, /metrics).

    SIGTERM drains: readiness answers 503 at once, in-flight requests finish, exit 0.
    """
    from flywheel.serving.server import limit_native_threads

    limit_native_threads()  # one native thread per worker, before numpy or LightGBM load
    from flywheel.serving.app import create_app
    from flywheel.serving.predlog import PredictionLog
    from flywheel.serving.runtime import ALIAS_POLL_S, handlers_for_project
    from flywheel.serving.server import serve as run_server

    project = _project(ctx)
    cfg = project.config.serving
    with PredictionLog(Path(project.config.predictions)) as log:
        # The log first: a routed deployment writes its shadow's predictions there.
        handlers = handlers_for_project(project, poll_interval_s=ALIAS_POLL_S, log=log)
        app = create_app(
            {h.name: h for h in handlers},
            log,
            max_body_bytes=cfg.max_body_bytes,
            admin_token=cfg.admin_token,
            pusher=lambda source, rows: project.push_rows(source, rows).to_dict(),
        )
        click.echo(f"Serving {', '.join(h.name for h in handlers)}")
        # Everything loaded so far lives as long as the server: keep the collector off it, so
        # full collections (7-10 ms here, the online read's p99) stay rare and short.
        import gc

        gc.collect()
        gc.freeze()
        run_server(
            app,
            host=host or cfg.host,
            port=port or cfg.port,
            allow_remote=allow_remote,
            on_drain=lambda: _drain(handlers),
        )
    for h in handlers:
        h.stop()


@cli.command()
@click.option("--kind", default=None, help="Only events of this kind (e.g. alias.moved).")
@click.option("--subject", default=None, help="Only events about this subject.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_context
def events(
    ctx: click.Context, kind: str | None, subject: str | None, limit: int, as_json: bool
) -> None:
    """List the event log: every state change, oldest first."""
    project = _project(ctx)
    found = project.events.list_events(kind=kind, subject=subject, limit=limit)
    if as_json:
        for ev in found:
            record = {
                "id": ev.id,
                "ts": ev.ts.isoformat(),
                "kind": ev.kind,
                "subject": ev.subject,
                "actor": ev.actor,
                "payload": ev.payload,
            }
            click.echo(json.dumps(record, sort_keys=True))
        return
    kind_w = max((len(ev.kind) for ev in found), default=4)
    subject_w = max((len(ev.subject) for ev in found), default=7)
    actor_w = max((len(ev.actor) for ev in found), default=5)
    for ev in found:
        detail = json.dumps(ev.payload, sort_keys=True)
        if len(detail) > 90:
            detail = detail[:87] + "..."
        click.echo(
            f"{ev.id:>5}  {ev.ts:%Y-%m-%d %H:%M:%S}  {ev.kind:<{kind_w}}  {ev.subject:<{subject_w}}"
            f"  {ev.actor:<{actor_w}}  {detail}"
        )


@cli.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("flywheel-demo"),
    show_default=True,
    help="Empty (or new) directory to run the demo in.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the summary as JSON to this path.",
)
@click.option(
    "--requests",
    type=click.IntRange(100, 20_000),
    default=1500,
    show_default=True,
    help="How many July-December flights to replay through the server.",
)
def demo(directory: Path, json_path: Path | None, requests: int) -> None:
    """Run the whole loop on NYC flights 2013 and print a summary."""
    from rich.console import Console
    from rich.table import Table

    from flywheel.examples.flights.demo import run_demo

    console = Console()
    summary = run_demo(directory, console=console, requests=requests)
    table = Table(title="Flywheel demo: NYC flights 2013")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row(
        "champion AUC (Dec holdout)", f"{summary.champion_auc:.4f}  (v{summary.champion_version})"
    )
    if summary.challenger_auc is not None:
        table.add_row(
            "challenger AUC (Dec holdout)",
            f"{summary.challenger_auc:.4f}  (v{summary.challenger_version})",
        )
    table.add_row("majority-class baseline AUC", f"{summary.baseline_auc:.4f}")
    table.add_row(
        "serving p50 / p99 (HTTP)",
        f"{summary.serving_p50_ms:.2f} / {summary.serving_p99_ms:.2f} ms",
    )
    table.add_row("requests (failed)", f"{summary.requests} ({summary.failed_requests})")
    if summary.arm_requests:
        split = ", ".join(f"{arm} {n}" for arm, n in summary.arm_requests.items())
        mirrored = summary.shadow_requests.get("completed", 0)
        table.add_row("traffic by arm (shadowed)", f"{split} ({mirrored} mirrored)")
    table.add_row("drifted features", ", ".join(summary.drifted_features) or "none")
    table.add_row("decision", f"{summary.decision}: production -> v{summary.production_version}")
    table.add_row("drift report", summary.report)
    table.add_row("wall time", f"{summary.seconds:.0f} s")
    console.print(table)
    console.print(f"[dim]{summary.decision_reason}[/]")
    console.print(f"See the story: flywheel --project {directory} events")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(summary.to_json() + "\n", encoding="utf-8")


cli.add_command(capacity)
cli.add_command(ci)
cli.add_command(deploy)
cli.add_command(features)
cli.add_command(models)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map Flywheel errors to one-line messages and exit codes."""
    try:
        result = cli.main(args=argv, prog_name="flywheel", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except FlywheelError as exc:
        click.echo(f"error: {exc.message}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        click.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
