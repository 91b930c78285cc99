"""Project configuration: ``flywheel.yaml``.

A project is a directory with a ``flywheel.yaml`` naming its backends by URI and a Python module of
definitions. Relative paths in the file are resolved against the project directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from flywheel.errors import InvalidArgument, NotFound, ValidationError

__all__ = ["CONFIG_FILE", "CiConfig", "ProjectConfig", "ServingConfig", "load_config"]

CONFIG_FILE = "flywheel.yaml"


class ServingConfig(BaseModel):
    """Where ``flywheel serve`` listens and what it accepts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=1 << 20, gt=0)
    admin_token: str | None = None


class CiConfig(BaseModel):
    """What ``flywheel ci`` runs: a job (``"module:attr"``), its gates, where it promotes.

    ``gates`` are rule dicts for :func:`flywheel.training.gates.parse_rules`, e.g.
    ``{kind: no_regression, metric: auc, tolerance: 0.005}``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    job: str | None = None
    gates: list[dict[str, Any]] = Field(default_factory=list)
    promote_to: Literal["staging", "production"] = "staging"
    max_quarantine_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    report: str = "ci-report.md"


class ProjectConfig(BaseModel):
    """The validated contents of ``flywheel.yaml`` with every location made absolute."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    metadata: str = "sqlite:///.flywheel/metadata.db"
    artifacts: str = ".flywheel/artifacts"
    offline: str = ".flywheel/offline"
    online: str = "sqlite:///.flywheel/online.db"
    predictions: str = ".flywheel/predictions"
    reports: str = "reports"
    definitions: str = "definitions.py"
    serving: ServingConfig = ServingConfig()
    ci: CiConfig = CiConfig()
    root: Path = Path(".")

    def resolved(self, root: Path) -> ProjectConfig:
        """Return a copy whose relative paths and ``sqlite:///`` URIs are anchored at ``root``."""
        root = root.resolve()

        def path(value: str) -> str:
            if "://" in value:
                return value
            p = Path(value).expanduser()
            return str(p if p.is_absolute() else root / p)

        def sqlite(value: str) -> str:
            prefix = "sqlite:///"
            if value.startswith(prefix) and not value.startswith(prefix + "/"):
                rest = value[len(prefix) :]
                if rest and rest != ":memory:":
                    return prefix + str(root / rest)
            return value

        return self.model_copy(
            update={
                "metadata": sqlite(self.metadata),
                "artifacts": path(self.artifacts),
                "offline": path(self.offline),
                "online": sqlite(self.online),
                "predictions": path(self.predictions),
                "reports": path(self.reports),
                "definitions": path(self.definitions),
                "root": root,
            }
        )


def load_config(root: Path | str = ".") -> ProjectConfig:
    """Read ``flywheel.yaml`` from ``root`` and validate it.

    Raises:
        NotFound: there is no ``flywheel.yaml`` in ``root``.
        ValidationError: a key is unknown or a value has the wrong type (the key is named).
    """
    root = Path(root)
    file = root / CONFIG_FILE
    if not file.is_file():
        raise NotFound(
            f"no {CONFIG_FILE} in {root.resolve()} (run `flywheel init DIR` to create a project)"
        )
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValidationError(CONFIG_FILE, "expected a mapping of keys to values")
    raw.pop("root", None)
    try:
        config = ProjectConfig.model_validate(raw)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or CONFIG_FILE
        raise ValidationError(field, f"{err['msg']} (in {file})") from exc
    return config.resolved(root)
