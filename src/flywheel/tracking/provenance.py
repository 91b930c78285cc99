"""What a run was made from: code version, package versions and the training set, as run tags.

Every run started by :class:`~flywheel.tracking.client.TrackingClient` carries

- ``flywheel.git.commit`` and ``flywheel.git.dirty`` (``"true"``/``"false"``): found by running
  ``git`` in the current working directory with a short timeout. "Dirty" means tracked files
  differ from the commit (untracked files do not count, as in MLflow). Outside a repository,
  without ``git``, or when it is too slow, the tags are absent: never an error.
- ``flywheel.packages``: sorted-key JSON of the versions of python, flywheel, numpy, pandas,
  scikit-learn, lightgbm and xgboost, whichever are installed (read from package metadata, so
  nothing heavy is imported).

:meth:`ActiveRun.log_training_set <flywheel.tracking.client.ActiveRun.log_training_set>` records
the training set under the ``flywheel.training_set.`` prefix (feature service and version, entity
set digest, time range, rows, feature view versions as JSON) and
:attr:`Run.training_set <flywheel.tracking.store.Run.training_set>` reads it back as a
:class:`TrainingSet`. Tags rather than params because they are searchable like any tag
(``tags.`flywheel.training_set.feature_service` = 'delays'``) and do not mix with
hyperparameters; a run records one training set, and recording a different one is a
``Conflict``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata

from flywheel.errors import ValidationError
from flywheel.naming import validate_name

__all__ = [
    "GIT_COMMIT_TAG",
    "GIT_DIRTY_TAG",
    "PACKAGES_TAG",
    "TRAINING_SET_PREFIX",
    "TrainingSet",
    "code_version_tags",
    "package_versions",
]

GIT_COMMIT_TAG = "flywheel.git.commit"
GIT_DIRTY_TAG = "flywheel.git.dirty"
PACKAGES_TAG = "flywheel.packages"
TRAINING_SET_PREFIX = "flywheel.training_set."
GIT_TIMEOUT_S = 2.0
PACKAGES = ("flywheel", "numpy", "pandas", "scikit-learn", "lightgbm", "xgboost")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_FIELDS = (
    "feature_service",
    "service_version",
    "entity_digest",
    "start",
    "end",
    "rows",
    "view_versions",
)


def _git(args: list[str], cwd: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_version_tags(cwd: str | None = None) -> dict[str, str]:
    """Return the git commit and dirty flag of ``cwd`` (default: the working directory) as tags.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as empty:
        ...     code_version_tags(empty)  # not a repository: no tags, no error
        {}
    """
    where = os.getcwd() if cwd is None else cwd
    commit = _git(["rev-parse", "--verify", "HEAD"], where)
    if commit is None or re.fullmatch(r"[0-9a-f]{40,64}", commit.strip()) is None:
        return {}
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    tags = {GIT_COMMIT_TAG: commit.strip()}
    if status is not None:
        tags[GIT_DIRTY_TAG] = "true" if status.strip() else "false"
    return tags


def package_versions() -> dict[str, str]:
    """Return the versions of python and of the installed packages that shape a model.

    Examples:
        >>> versions = package_versions()
        >>> versions["python"] == platform.python_version() and "flywheel" in versions
        True
    """
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def packages_tag() -> dict[str, str]:
    """Return ``{"flywheel.packages": <sorted-key JSON of package_versions()>}``."""
    return {PACKAGES_TAG: json.dumps(package_versions(), sort_keys=True)}


@dataclass(frozen=True)
class TrainingSet:
    """The training set a run used: which features, for which entities, over which time.

    Examples:
        >>> ts = TrainingSet("delays", 3, "ab" * 32, datetime(2013, 1, 1, tzinfo=UTC),
        ...                  datetime(2013, 7, 1, tzinfo=UTC), 1000, {"weather": 2})
        >>> TrainingSet.from_tags(ts.to_tags()) == ts
        True
    """

    feature_service: str
    service_version: int
    entity_digest: str
    start: datetime
    end: datetime
    rows: int
    view_versions: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_name("feature_service", self.feature_service)
        _count("service_version", self.service_version, minimum=1)
        if not isinstance(self.entity_digest, str) or not _DIGEST.fullmatch(self.entity_digest):
            raise ValidationError("entity_digest", "expected a sha256 digest: 64 lowercase hex")
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.utcoffset() is None:
                raise ValidationError(name, "expected a timezone-aware datetime")
        if self.start > self.end:
            raise ValidationError("end", "expected end >= start")
        _count("rows", self.rows, minimum=0)
        if not isinstance(self.view_versions, Mapping):
            raise ValidationError("view_versions", "expected a mapping of view name to version")
        for view, version in self.view_versions.items():
            validate_name("view_versions", view)
            _count(f"view_versions[{view!r}]", version, minimum=1)

    def to_tags(self) -> dict[str, str]:
        """Return the run tags that record this training set."""
        values = {
            "feature_service": self.feature_service,
            "service_version": str(self.service_version),
            "entity_digest": self.entity_digest,
            "start": self.start.astimezone(UTC).isoformat(),
            "end": self.end.astimezone(UTC).isoformat(),
            "rows": str(self.rows),
            "view_versions": json.dumps(dict(self.view_versions), sort_keys=True),
        }
        return {TRAINING_SET_PREFIX + k: v for k, v in values.items()}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> TrainingSet | None:
        """Read a training set back from run tags; ``None`` when the run recorded none."""
        values = {k: tags.get(TRAINING_SET_PREFIX + k) for k in _FIELDS}
        if values["entity_digest"] is None:
            return None
        try:
            return cls(
                feature_service=str(values["feature_service"]),
                service_version=int(str(values["service_version"])),
                entity_digest=str(values["entity_digest"]),
                start=datetime.fromisoformat(str(values["start"])),
                end=datetime.fromisoformat(str(values["end"])),
                rows=int(str(values["rows"])),
                view_versions=dict(json.loads(values["view_versions"] or "{}")),
            )
        except (ValueError, TypeError) as exc:
            raise ValidationError(
                "tags", f"the {TRAINING_SET_PREFIX}* tags do not describe a training set: {exc}"
            ) from exc


def _count(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(name, f"expected an integer >= {minimum}")
