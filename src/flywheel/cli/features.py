"""``flywheel features``: how fresh each feature view is, offline and online.

Registered on the main group with ``cli.add_command(features)``; like every command it reads the
project directory from ``ctx.obj["project_dir"]`` and lets ``FlywheelError`` reach ``main()``,
which maps it to a one-line message and an exit code.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from flywheel.data.stats import ViewStatus

__all__ = ["features"]

_COLUMNS = ("VIEW", "KIND", "SOURCE", "LAST EVENT", "LAST MATERIALIZED", "SLA", "STATUS")


def _parse_now(value: str) -> datetime:
    from flywheel.errors import ValidationError

    try:
        ts = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(
            "--now", f"expected an ISO-8601 timestamp, got {value[:40]!r}"
        ) from exc
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValidationError("--now", "expected a timezone offset (e.g. 2013-07-01T00:00:00Z)")
    return ts.astimezone(UTC)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _sla(value: timedelta | None) -> str:
    return "-" if value is None else str(value)


def _table(found: list[ViewStatus]) -> list[str]:
    rows = [_COLUMNS] + [
        (
            s.view,
            s.kind,
            s.source,
            _when(s.last_event_ts),
            _when(s.last_materialized),
            _sla(s.freshness_sla),
            s.status,
        )
        for s in found
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


@click.group()
def features() -> None:
    """Feature views: freshness of the offline data and of the online values."""


@features.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--now",
    "now_text",
    default=None,
    help="Judge freshness as of this ISO time, e.g. 2013-07-01T00:00:00Z (default: the clock).",
)
@click.pass_context
def status(ctx: click.Context, as_json: bool, now_text: str | None) -> None:
    """Show, per feature view: last event time, last materialization, SLA and status.

    A view is "no data" without rows in the offline store, "never materialized" without a
    materialization, "stale" when now is past its last materialization's end plus its
    freshness SLA, and "ok" otherwise. Times are UTC.
    """
    from flywheel.data.specs import FeatureView, WindowAggregation
    from flywheel.data.stats import view_status
    from flywheel.project import Project

    now = _parse_now(now_text) if now_text else datetime.now(UTC)
    project = Project.open(ctx.obj["project_dir"])
    try:
        views = [
            s for s in project.definitions.specs if isinstance(s, FeatureView | WindowAggregation)
        ]
        found = view_status(views, project.offline, project.online, now=now)
    finally:
        if "online" in project.__dict__:
            project.online.close()
        project.close()
    if as_json:
        record = {"now": now.isoformat(), "views": [s.to_dict() for s in found]}
        click.echo(json.dumps(record, indent=2))
        return
    for line in _table(found):
        click.echo(line)
    counts: dict[str, int] = {}
    for s in found:
        counts[s.status] = counts.get(s.status, 0) + 1
    summary = ", ".join(f"{n} {name}" for name, n in counts.items()) or "no feature views"
    click.echo(f"{summary} (as of {_when(now)} UTC)")
