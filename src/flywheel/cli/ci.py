"""``flywheel ci``: data checks, training, evaluation, gates, then registration and promotion.

The job and its gates come from the ``ci:`` section of ``flywheel.yaml`` (see
:class:`flywheel.config.CiConfig`); ``--job`` and ``--gates FILE`` override them. Exit status:
0 when the candidate passed every gate and was registered and promoted, 1 when a data check or
a gate failed (the report says which), and the usual error codes for bad input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["ci"]


def _load_gates(path: Path | None, configured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import yaml

    from flywheel.errors import InvalidArgument, ValidationError

    if path is None:
        return configured
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidArgument(f"--gates {path}: cannot read: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("gates")
    if not isinstance(data, list):
        raise ValidationError("--gates", f"{path}: expected a list of rules (or a 'gates:' key)")
    return data


@click.command("ci")
@click.option("--job", "job_ref", help="The CI job as 'package.module:attr' (default: ci.job).")
@click.option(
    "--gates",
    "gates_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A YAML file of gate rules (default: ci.gates in flywheel.yaml).",
)
@click.option(
    "--promote-to",
    type=click.Choice(["staging", "production"]),
    help="The stage a passing candidate moves to (default: ci.promote_to, staging).",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the Markdown report (default: <reports>/ci-report.md).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_context
def ci(
    ctx: click.Context,
    job_ref: str | None,
    gates_file: Path | None,
    promote_to: str | None,
    report_path: Path | None,
    as_json: bool,
) -> None:
    """Run data checks, train, evaluate against production, apply the gates, and promote.

    A candidate is registered (and moved to staging) only when every gate passes; exit status
    1 means a data check or a gate failed.
    """
    from flywheel.errors import ValidationError
    from flywheel.project import Project
    from flywheel.tracking.client import TrackingClient
    from flywheel.training.ci import load_job, run_ci
    from flywheel.training.gates import parse_rules

    project = Project.open(ctx.obj["project_dir"])
    try:
        conf = project.config.ci
        ref = job_ref or conf.job
        if ref is None:
            raise ValidationError("ci.job", "no CI job: set ci.job in flywheel.yaml or pass --job")
        rules = parse_rules(_load_gates(gates_file, conf.gates))
        if not rules:
            raise ValidationError("ci.gates", "no gates declared: CI would pass anything")
        job = load_job(ref, root=project.root)
        report = report_path or Path(project.config.reports) / conf.report
        stage = promote_to or conf.promote_to
        tracking = TrackingClient(project.runs, project.blobs)
        try:
            result = run_ci(
                project,
                job,
                rules,
                tracking=tracking,
                promote_to=stage,  # type: ignore[arg-type]
                max_quarantine_rate=conf.max_quarantine_rate,
                report_path=report,
                on_step=None if as_json else lambda s: click.echo(f"ci: {s}", err=True),
            )
        finally:
            close = getattr(tracking, "close", None)
            if callable(close):
                close()
    finally:
        project.close()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "passed": result.passed,
                    "stage": result.stage,
                    "version": None if result.version is None else result.version.version,
                    "production_version": result.production_version,
                    "failed_checks": [c.name for c in result.checks if not c.passed],
                    "failed_gates": [o.rule for o in result.gates.failures] if result.gates else [],
                    "report": str(result.report_path),
                }
            )
        )
    else:
        click.echo(result.report)
        click.echo(f"report written to {result.report_path}")
    ctx.exit(result.exit_code)
