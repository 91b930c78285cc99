"""Load and register models by name: ``flywheel.models.load("delays@production")``.

This is the public front door of the registry plane for user code. ``load`` opens the project
(``flywheel.yaml`` in the current directory unless told otherwise), resolves the reference, checks
the artifact's sha256 and deserializes it with a safe format handler
(:func:`flywheel.registry.loader.load_model`). ``register`` does the reverse: it picks the format
from the model's type, serializes, stores the bytes by digest and creates the version.

Both accept ``project`` as a :class:`~flywheel.project.Project` (used as is, left open), or a path
to the project directory (opened and closed around the call).

Importing this module imports no ML library; each is imported when a model of its kind is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.project import Project
from flywheel.registry.formats import get_format, infer_format
from flywheel.registry.loader import LoadedModel, load_model

if TYPE_CHECKING:
    from flywheel.registry.store import ModelVersion
    from flywheel.training.signature import ModelSignature

__all__ = ["LoadedModel", "load", "register"]


@contextlib.contextmanager
def _opened(project: Project | str | Path | None) -> Iterator[Project]:
    """Yield ``project`` as is, or open the project at a path (default ``.``) and close it."""
    if isinstance(project, Project):
        yield project
        return
    opened = Project.open("." if project is None else project)
    try:
        yield opened
    finally:
        opened.close()


def load(
    ref: str, *, project: Project | str | Path | None = None, trust_pickle: bool = False
) -> LoadedModel:
    """Load model ``ref`` (``name@alias`` or ``name/3``) from a project's registry.

    Args:
        ref: The model reference.
        project: A project, or the directory holding ``flywheel.yaml`` (default: the current
            directory).
        trust_pickle: Allow a ``pickle`` version to be unpickled after its digest is verified.
            Only for artifacts you produced: unpickling runs code.

    Raises:
        NotFound: no ``flywheel.yaml``, or no such model, version, alias or artifact.
        DigestMismatch: the artifact's bytes are not the registered ones.
        InvalidArgument: the format is not loadable (e.g. pickle without ``trust_pickle``).

    Examples:
        >>> import tempfile
        >>> from flywheel.project import init_project
        >>> root = init_project(tempfile.mkdtemp())
        >>> load("delays@production", project=root)
        Traceback (most recent call last):
        ...
        flywheel.errors.NotFound: model 'delays' has no alias 'production'
    """
    with _opened(project) as opened:
        return load_model(opened.registry, opened.blobs, ref, trust_pickle=trust_pickle)


def register(
    model: Any,
    name: str,
    *,
    project: Project | str | Path | None = None,
    signature: ModelSignature | Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
    format: str | None = None,
    run_id: str | None = None,
    description: str = "",
    profile_digest: str | None = None,
    actor: str = "flywheel",
) -> ModelVersion:
    """Serialize ``model``, store its bytes by digest and register the next version of ``name``.

    Args:
        model: A LightGBM or XGBoost booster (or their scikit-learn wrappers), a scikit-learn
            estimator, an ``onnx.ModelProto`` or exported ONNX bytes.
        name: The registered model's name.
        project: A project, or the directory holding ``flywheel.yaml`` (default: ``.``).
        signature: The model's inputs (a :class:`ModelSignature` or its ``to_dict()``).
        metrics: Metrics to record on the version.
        lineage: Where the model came from (run, training set, feature views...).
        format: The storage format; inferred from the model's type when None. ``pickle`` is
            never inferred and loads only with ``trust_pickle=True``.
        run_id: The tracked run that produced the model.
        description: Free text.
        profile_digest: Digest of the training-feature profile used by monitoring.
        actor: Who registers (recorded on the version and its event).

    Raises:
        InvalidArgument: no format fits the model, or the format refuses it (e.g. a skops
            artifact would hold types outside the allow-list).
        ValidationError: a name, digest or document is malformed.

    Examples:
        >>> import tempfile
        >>> import numpy as np
        >>> from sklearn.linear_model import LogisticRegression
        >>> from flywheel.project import Project, init_project
        >>> from flywheel.training.signature import ModelSignature
        >>> project = Project.open(init_project(tempfile.mkdtemp()))
        >>> x = np.array([[0.0], [1.0], [2.0], [3.0]])
        >>> clf = LogisticRegression().fit(x, [0, 0, 1, 1])
        >>> version = register(clf, "toy", project=project,
        ...                    signature=ModelSignature(inputs=("x",)), metrics={"auc": 1.0})
        >>> (version.ref, version.format)
        ('toy/1', 'sklearn-skops')
        >>> loaded = load("toy/1", project=project)
        >>> bool(np.allclose(loaded.predict(x), clf.predict_proba(x)[:, 1]))
        True
        >>> project.close()
    """
    from flywheel.training.signature import ModelSignature

    fmt = infer_format(model) if format is None else format
    data = get_format(fmt).serialize(model)
    sig = signature.to_dict() if isinstance(signature, ModelSignature) else dict(signature)
    with _opened(project) as opened:
        digest = opened.blobs.put_bytes(data)
        return opened.registry.create_version(
            name,
            artifact_digest=digest,
            format=fmt,
            signature=sig,
            metrics=dict(metrics or {}),
            lineage=dict(lineage or {}),
            profile_digest=profile_digest,
            run_id=run_id,
            description=description,
            actor=actor,
        )
