"""Import a scikit-learn model from an MLflow model directory into the registry, as skops.

An MLflow model directory holds an ``MLmodel`` YAML file and the files it names::

    flavors:
      python_function: {loader_module: mlflow.sklearn, model_path: model.pkl, ...}
      sklearn: {pickled_model: model.pkl, serialization_format: cloudpickle, ...}
    signature:
      inputs: '[{"type": "double", "name": "distance", "required": true}, ...]'

:func:`import_mlflow_model` reads it without MLflow installed:

* ``MLmodel`` is parsed with ``yaml.safe_load`` (size-capped); every path it names is resolved
  inside the model directory, symlinks included, and anything that escapes it (``..``, an
  absolute path, a symlink pointing out) is refused before it is opened.
* ``serialization_format: skops`` is loaded through the skops allow-list. ``pickle`` and
  ``cloudpickle`` (MLflow's default) run code when loaded, so the import refuses them unless
  ``trust_pickle=True``; then the file is read once, its sha256 recorded, and the same bytes are
  unpickled once through :func:`flywheel.registry.formats.load_artifact`.
* The estimator is re-serialized with skops (the allow-list applies: an estimator Flywheel does
  not support is refused), loaded back to prove it, and registered as ``sklearn-skops``. The
  registry never holds the pickle; the version's lineage records the source's sha256.
* The signature's column spec becomes a :class:`~flywheel.training.signature.ModelSignature`.
  Numeric columns (``double``, ``float``, ``long``, ``integer``, ``boolean``) map to inputs;
  ``string``, ``binary``, ``datetime`` and tensor specs are refused (a string column carries no
  vocabulary, so it cannot become a categorical input); pass ``signature=`` to override. When the
  estimator was fit on a frame (``feature_names_in_``) the inputs follow its column order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from flywheel.errors import InvalidArgument, NotFound, ValidationError
from flywheel.registry.formats import (
    PICKLE,
    SKLEARN_SKOPS,
    VerifiedBytes,
    check_trust,
    get_format,
    load_artifact,
)

if TYPE_CHECKING:
    from flywheel.project import Project
    from flywheel.registry.store import ModelRegistry, ModelVersion
    from flywheel.storage.blobs import BlobStore
    from flywheel.training.signature import ModelSignature

__all__ = ["MLMODEL_FILE", "MLMODEL_MAX_BYTES", "import_mlflow_model", "read_signature"]

MLMODEL_FILE = "MLmodel"
MLMODEL_MAX_BYTES = 1 << 20
"""An ``MLmodel`` file larger than this (1 MiB) is refused unparsed."""

_PICKLE_FORMATS = ("cloudpickle", "pickle")
_NUMERIC_TYPES = ("double", "float", "long", "integer", "boolean")


def import_mlflow_model(
    path: Path | str,
    name: str,
    *,
    project: Project | None = None,
    registry: ModelRegistry | None = None,
    blobs: BlobStore | None = None,
    trust_pickle: bool = False,
    signature: ModelSignature | None = None,
    description: str = "",
    actor: str = "flywheel",
) -> ModelVersion:
    """Register the scikit-learn model in MLflow model directory ``path`` as a skops version.

    Args:
        path: The MLflow model directory (the one holding ``MLmodel``).
        name: The registered model's name in Flywheel.
        project: Where to register; or pass ``registry`` and ``blobs``.
        registry: The model registry (with ``blobs``, instead of ``project``).
        blobs: The artifact store (with ``registry``).
        trust_pickle: Allow a pickled model (MLflow's default) to be unpickled once, to convert
            it to skops. Only for models you produced: unpickling runs code.
        signature: Use this signature instead of the one in ``MLmodel``.
        description: Free text for the version (default: where it came from).
        actor: Who imports (recorded on the version and its event).

    Raises:
        NotFound: ``path`` or a file ``MLmodel`` names does not exist.
        ValidationError: ``MLmodel`` is malformed, names a path outside the directory, or its
            signature cannot be mapped; the field is named.
        InvalidArgument: the model is pickled and ``trust_pickle`` is False (nothing was read),
            or it is not a scikit-learn model.
        IntegrityError: the model holds types outside the skops allow-list, or is a kind
            Flywheel cannot serve (e.g. multi-class).
    """
    if project is not None:
        registry, blobs = project.registry, project.blobs
    if registry is None or blobs is None:
        raise InvalidArgument("import_mlflow_model: pass project, or both registry and blobs")
    root = _model_dir(path)
    mlmodel = _read_mlmodel(root)
    model_file, serialization = _sklearn_flavor(root, mlmodel)
    if serialization in _PICKLE_FORMATS:
        check_trust(PICKLE, trust_pickle=trust_pickle)  # refused before the file is read
    data = model_file.read_bytes()
    source_digest = hashlib.sha256(data).hexdigest()
    source_format = PICKLE if serialization in _PICKLE_FORMATS else SKLEARN_SKOPS
    estimator = load_artifact(
        source_format, VerifiedBytes(data, source_digest), trust_pickle=trust_pickle
    ).model
    skops_handler = get_format(SKLEARN_SKOPS)
    if not skops_handler.accepts(estimator):
        raise InvalidArgument(
            f"{model_file.name}: unpickled to a {type(estimator).__name__}; expected a"
            " scikit-learn estimator (the only MLflow flavor Flywheel imports)"
        )
    skops_bytes = skops_handler.serialize(estimator)  # the allow-list applies here
    digest = hashlib.sha256(skops_bytes).hexdigest()
    loaded = load_artifact(SKLEARN_SKOPS, VerifiedBytes(skops_bytes, digest))  # proves it loads
    sig = signature or read_signature(mlmodel, classifier=hasattr(loaded.model, "predict_proba"))
    sig = _align(sig, getattr(loaded.model, "feature_names_in_", None))
    sklearn_flavor = mlmodel["flavors"].get("sklearn") or {}
    lineage = {
        "imported_from": {
            "kind": "mlflow",
            "serialization_format": serialization,
            "source_sha256": source_digest,
            "model_file": model_file.relative_to(root).as_posix(),
            "mlflow_version": _text(mlmodel.get("mlflow_version")),
            "mlflow_run_id": _text(mlmodel.get("run_id")),
            "mlflow_model_uuid": _text(mlmodel.get("model_uuid")),
            "sklearn_version": _text(sklearn_flavor.get("sklearn_version")),
        }
    }
    stored = blobs.put_bytes(skops_bytes)
    return registry.create_version(
        name,
        artifact_digest=stored,
        format=SKLEARN_SKOPS,
        signature=sig.to_dict(),
        metrics={},
        lineage=lineage,
        description=description or f"imported from an MLflow model ({serialization})",
        actor=actor,
    )


def read_signature(mlmodel: Mapping[str, Any], *, classifier: bool = True) -> ModelSignature:
    """Map an ``MLmodel``'s ``signature.inputs`` column spec to a :class:`ModelSignature`.

    Examples:
        >>> spec = '[{"type": "double", "name": "distance"}, {"type": "long", "name": "hour"}]'
        >>> read_signature({"signature": {"inputs": spec}}).inputs
        ('distance', 'hour')
        >>> read_signature({"signature": {"inputs": '[{"type": "string", "name": "carrier"}]'}})
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: signature.inputs.carrier: type 'string' ...
    """
    from flywheel.training.signature import ModelSignature

    raw = (mlmodel.get("signature") or {}).get("inputs")
    if raw is None:
        raise ValidationError(
            "signature.inputs", "MLmodel has no input signature; pass signature= explicitly"
        )
    try:
        columns = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise ValidationError("signature.inputs", f"not valid JSON: {exc}") from exc
    if not isinstance(columns, list) or not columns:
        raise ValidationError("signature.inputs", "expected a non-empty JSON list of columns")
    names: list[str] = []
    for i, column in enumerate(columns):
        if not isinstance(column, Mapping) or not isinstance(column.get("name"), str):
            raise ValidationError(
                f"signature.inputs[{i}]",
                "expected a named column spec {name, type}; tensor specs carry no column"
                " names, pass signature= explicitly",
            )
        kind = column.get("type")
        if kind not in _NUMERIC_TYPES:
            raise ValidationError(
                f"signature.inputs.{column['name']}",
                f"type {kind!r} cannot be a model input here; expected one of"
                f" {list(_NUMERIC_TYPES)} (string columns carry no vocabulary)",
            )
        if column["name"] in names:
            raise ValidationError(f"signature.inputs.{column['name']}", "duplicate column name")
        names.append(column["name"])
    return ModelSignature(inputs=tuple(names), output="probability" if classifier else "prediction")


def _align(signature: ModelSignature, fitted_names: Any) -> ModelSignature:
    """Order the inputs as the estimator was fit (``feature_names_in_``), or refuse a mismatch."""
    from flywheel.training.signature import ModelSignature

    if fitted_names is None:
        return signature
    fitted = tuple(str(n) for n in fitted_names)
    if set(fitted) != set(signature.inputs) or len(fitted) != len(signature.inputs):
        raise ValidationError(
            "signature.inputs",
            f"columns {sorted(signature.inputs)} do not match the columns the model was fit on,"
            f" {sorted(fitted)}",
        )
    return ModelSignature(
        inputs=fitted,
        categorical=signature.categorical,
        output=signature.output,
        label=signature.label,
    )


def _model_dir(path: Path | str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise NotFound(f"no MLflow model directory at {root}", context={"path": str(root)})
    return root.resolve(strict=True)


def _read_mlmodel(root: Path) -> dict[str, Any]:
    import yaml

    file = _contained(root, MLMODEL_FILE, field=MLMODEL_FILE)
    if file.stat().st_size > MLMODEL_MAX_BYTES:
        raise ValidationError(MLMODEL_FILE, f"larger than {MLMODEL_MAX_BYTES} bytes")
    try:
        doc = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValidationError(MLMODEL_FILE, f"not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("flavors"), dict):
        raise ValidationError(MLMODEL_FILE, "expected a mapping with a 'flavors' mapping")
    return doc


def _sklearn_flavor(root: Path, mlmodel: Mapping[str, Any]) -> tuple[Path, str]:
    """Return the model file and its serialization format from the sklearn flavor."""
    flavors: Mapping[str, Any] = mlmodel["flavors"]
    sklearn = flavors.get("sklearn")
    pyfunc = flavors.get("python_function")
    if isinstance(sklearn, Mapping):
        field, rel = "flavors.sklearn.pickled_model", sklearn.get("pickled_model")
        serialization = sklearn.get("serialization_format", "cloudpickle")
    elif isinstance(pyfunc, Mapping) and pyfunc.get("loader_module") == "mlflow.sklearn":
        field, rel = "flavors.python_function.model_path", pyfunc.get("model_path")
        serialization = "cloudpickle"  # what mlflow.sklearn writes unless told otherwise
    else:
        raise InvalidArgument(
            f"{MLMODEL_FILE}: flavors {sorted(flavors)} hold no scikit-learn model; expected"
            " 'sklearn' (or 'python_function' with loader_module mlflow.sklearn)"
        )
    if serialization not in (*_PICKLE_FORMATS, "skops"):
        raise ValidationError(
            "flavors.sklearn.serialization_format",
            f"{serialization!r} is not supported; expected cloudpickle, pickle or skops",
        )
    return _contained(root, rel, field=field), str(serialization)


def _contained(root: Path, rel: object, *, field: str) -> Path:
    """Resolve ``rel`` inside ``root`` (following symlinks) or refuse it; return a regular file."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise ValidationError(field, "expected a relative path inside the model directory")
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or "\\" in rel:
        raise ValidationError(field, f"{rel!r} is absolute; expected a path inside the directory")
    candidate = root / rel
    try:
        resolved = candidate.resolve(strict=True)
    except FileNotFoundError as exc:
        raise NotFound(f"{field}: {rel!r} does not exist in {root}") from exc
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise ValidationError(field, f"{rel!r} cannot be resolved: {exc}") from exc
    if not resolved.is_relative_to(root):
        raise ValidationError(field, f"{rel!r} resolves outside the model directory; refused")
    if not resolved.is_file():
        raise ValidationError(field, f"{rel!r} is not a regular file")
    return resolved


def _text(value: object) -> str | None:
    return None if value is None else str(value)
