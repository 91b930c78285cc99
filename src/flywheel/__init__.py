"""Flywheel: the whole life of a production ML model on one coherent system.

The planes are subpackages: ``flywheel.data`` (sources, feature views, offline and online
stores), ``flywheel.training`` and ``flywheel.tracking`` (pipelines, runs), ``flywheel.registry``
(model versions, aliases, safe loading), ``flywheel.serving`` (HTTP server, prediction log),
``flywheel.monitoring`` (profiles, drift, reports) and ``flywheel.control`` (events, retraining
decisions). ``flywheel.project.Project`` wires them from a project's ``flywheel.yaml``.
Importing ``flywheel`` imports no heavy library; each plane imports what it needs when used.
"""

from __future__ import annotations

from flywheel._version import __version__
from flywheel.errors import (
    AlreadyExists,
    BackendUnavailable,
    Conflict,
    DigestMismatch,
    FlywheelError,
    IntegrityError,
    InvalidArgument,
    NotFitted,
    NotFound,
    ValidationError,
)

__all__ = [
    "AlreadyExists",
    "BackendUnavailable",
    "Conflict",
    "DigestMismatch",
    "FlywheelError",
    "IntegrityError",
    "InvalidArgument",
    "NotFitted",
    "NotFound",
    "ValidationError",
    "__version__",
    "models",
]


def __getattr__(name: str) -> object:
    # ``flywheel.models`` is imported on first use: ``import flywheel`` stays light.
    if name == "models":
        import importlib

        return importlib.import_module("flywheel.models")
    raise AttributeError(f"module 'flywheel' has no attribute {name!r}")
