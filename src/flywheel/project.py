"""A Flywheel project: its config, its definitions module, and the stores they name.

``Project.open(root)`` is the one place the stores are built from ``flywheel.yaml``; the CLI, the
server and the demo all go through it. Stores are created lazily so that a command only opens
what it uses.
"""

from __future__ import annotations

import importlib.util
import linecache
import shutil
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.config import CONFIG_FILE, ProjectConfig, load_config
from flywheel.errors import AlreadyExists, InvalidArgument, NotFound

if TYPE_CHECKING:
    from flywheel.control.events import EventLog
    from flywheel.data.offline import OfflineStore
    from flywheel.data.online_base import OnlineStore
    from flywheel.data.push import PushResult
    from flywheel.data.specs import (
        Entity,
        FeatureService,
        FeatureView,
        RequestTransformation,
        Source,
        WindowAggregation,
    )
    from flywheel.data.transforms import UserTransformation
    from flywheel.registry.store import ModelRegistry
    from flywheel.serving.deployments import DeploymentStore
    from flywheel.storage.blobs import BlobStore
    from flywheel.storage.definitions import DefinitionStore, Plan
    from flywheel.storage.sql import Database
    from flywheel.tracking.store import RunStore

    Spec = (
        Source | Entity | FeatureView | WindowAggregation | RequestTransformation | FeatureService
    )

__all__ = ["Definitions", "Project", "init_project"]

_TEMPLATE_CONFIG = """\
# Flywheel project: backends are chosen by URI; relative paths are relative to this file.
project: {name}
metadata: sqlite:///.flywheel/metadata.db      # or postgresql://user@host:5432/db
artifacts: .flywheel/artifacts                 # or s3://bucket/prefix
offline: .flywheel/offline                     # Parquet, queried with DuckDB
online: sqlite:///.flywheel/online.db          # online feature store
predictions: .flywheel/predictions             # prediction log segments (Parquet)
reports: reports                               # drift reports (HTML)
definitions: definitions.py                    # the module of feature definitions
serving:
  host: 127.0.0.1
  port: 8000
ci:                                             # `flywheel ci`: checks, training, gates
  job: flywheel.examples.flights.ci:FlightsCiJob
  promote_to: staging                           # a passing candidate's stage
  gates:                                        # candidate vs production, same holdout
    - {{kind: metric_threshold, metric: auc, min: 0.62}}
    - {{kind: no_regression, metric: auc, tolerance: 0.01}}
    - {{kind: no_regression, metric: logloss, tolerance: 0.01}}
    - {{kind: slice_check, slice_column: carrier, metric: auc, max_regression: 0.05,
       min_rows: 300}}
"""

# Order matters for apply: what a definition refers to is registered before it.
SPEC_KINDS = (
    "source",
    "entity",
    "feature_view",
    "window_aggregation",
    "request_transformation",
    "feature_service",
)


def init_project(root: Path | str, *, name: str = "flights", force: bool = False) -> Path:
    """Write a new project for the NYC flights example into ``root``.

    Raises:
        AlreadyExists: ``root`` already holds a ``flywheel.yaml`` (and ``force`` is False).
    """
    from flywheel.naming import validate_name

    validate_name("project", name)
    root = Path(root)
    if (root / CONFIG_FILE).exists() and not force:
        raise AlreadyExists(f"{root / CONFIG_FILE} exists already (use --force to overwrite)")
    root.mkdir(parents=True, exist_ok=True)
    (root / CONFIG_FILE).write_text(_TEMPLATE_CONFIG.format(name=name), encoding="utf-8")
    template = Path(__file__).parent / "examples" / "flights" / "definitions.py"
    shutil.copyfile(template, root / "definitions.py")
    return root


@dataclass(frozen=True)
class Definitions:
    """The spec objects a definitions module declares, by kind.

    ``functions`` holds the module's user-defined request transformations by name (their specs
    are in ``specs`` too); definitions read back from the metadata store have none.
    """

    specs: tuple[Spec, ...]
    functions: Mapping[str, UserTransformation] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[Spec]:
        """Return the specs of one kind, in declaration order."""
        return [s for s in self.specs if s.kind == kind]

    def get(self, kind: str, name: str) -> Spec:
        """Return one spec by kind and name (NotFound otherwise)."""
        for spec in self.specs:
            if spec.kind == kind and spec.name == name:
                return spec
        raise NotFound(f"no {kind} named {name!r} in the project's definitions")

    def source(self, name: str) -> Source:
        """Return the source named ``name``."""
        from flywheel.data.specs import Source

        spec = self.get("source", name)
        assert isinstance(spec, Source)
        return spec

    def service(self, name: str) -> tuple[FeatureService, list[FeatureView | WindowAggregation]]:
        """Return the feature service ``name`` and the views it reads, in reference order.

        Raises:
            NotFound: the service, or a view it references, is not defined.
        """
        from flywheel.data.specs import FeatureService, FeatureView, WindowAggregation

        service = self.get("feature_service", name)
        assert isinstance(service, FeatureService)
        views: list[FeatureView | WindowAggregation] = []
        for view_name in service.view_names():
            found = [
                s
                for s in self.specs
                if isinstance(s, FeatureView | WindowAggregation) and s.name == view_name
            ]
            if not found:
                raise NotFound(
                    f"feature service {name!r} references {view_name!r}, which is not defined"
                )
            views.append(found[0])
        self.request_transformations(name)  # every request feature must be known
        return service, views

    def request_transformations(self, service_name: str) -> list[RequestTransformation]:
        """Return the specs of the user-defined request features a service names, in order.

        Built-in transformations (``hour_of_day`` ...) need no spec and are not listed.

        Raises:
            NotFound: the service, or a request feature it names, is not defined.
            InvalidArgument: a defined transformation has a built-in's name.
        """
        from flywheel.data.specs import FeatureService, RequestTransformation
        from flywheel.data.transforms import TRANSFORMS

        service = self.get("feature_service", service_name)
        assert isinstance(service, FeatureService)
        defined = {s.name: s for s in self.specs if isinstance(s, RequestTransformation)}
        out: list[RequestTransformation] = []
        for name in service.request_features:
            if name in TRANSFORMS:
                if name in defined:
                    raise InvalidArgument(
                        f"request_transformation {name!r} has the name of a built-in"
                        " transformation; rename it"
                    )
                continue
            if name not in defined:
                raise NotFound(
                    f"feature service {service_name!r} names request feature {name!r}, which is"
                    f" neither a built-in ({', '.join(TRANSFORMS)}) nor a defined"
                    " request_transformation",
                    context={"service": service_name, "request_feature": name},
                )
            out.append(defined[name])
        return out

    def transformations(
        self, service_name: str, functions: Mapping[str, UserTransformation] | None = None
    ) -> list[UserTransformation]:
        """Return the service's user-defined request transformations, ready to run.

        Each spec is resolved with ``flywheel.data.transforms.resolve_transformation``: the
        function comes from ``functions`` (default: this module's own) for functions of the
        definitions module, else by import path, and its source digest must match the spec's.

        Raises:
            NotFound: a function cannot be found.
            Conflict: a function's code differs from the spec's ``code_digest``.
        """
        from flywheel.data.transforms import resolve_transformation

        pool = self.functions if functions is None else functions
        return [resolve_transformation(s, pool) for s in self.request_transformations(service_name)]

    def as_triples(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Return ``(kind, name, spec dict)`` for the definition store, in apply order."""
        ordered = sorted(self.specs, key=lambda s: SPEC_KINDS.index(s.kind))
        return [(s.kind, s.name, s.model_dump(mode="json")) for s in ordered]


def load_definitions(path: Path) -> Definitions:
    """Execute the project's definitions module and collect its specs and transformations.

    The module is the project's own Python code (as with Feast's repo files) and is executed,
    from its source text every time (never from a cached ``.pyc``, whose staleness check
    cannot see a same-size edit within a second), under the module name ``__definitions__``
    (``flywheel.data.transforms.DEFINITIONS_MODULE``), so the function references of the
    transformations it defines do not depend on where the project lives. The source text is
    pinned in ``linecache`` so that ``inspect.getsource`` (the transformations' code digests)
    reads exactly the code that ran.
    """
    from flywheel.data import specs as spec_module
    from flywheel.data.transforms import DEFINITIONS_MODULE, UserTransformation

    kinds = (
        spec_module.Source,
        spec_module.Entity,
        spec_module.FeatureView,
        spec_module.WindowAggregation,
        spec_module.RequestTransformation,
        spec_module.FeatureService,
    )
    if not path.is_file():
        raise NotFound(f"definitions module {path} does not exist")
    filename = str(path)
    try:
        source = importlib.util.decode_source(path.read_bytes())
        code = compile(source, filename, "exec", dont_inherit=True)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"{path}: failed to import: {type(exc).__name__}: {exc}") from exc
    lines = source.splitlines(keepends=True)
    # mtime None: linecache keeps the entry (no stat check), i.e. the text that was executed.
    linecache.cache[filename] = (len(source), None, lines, filename)
    module = types.ModuleType(DEFINITIONS_MODULE, f"Flywheel definitions module {path}")
    module.__file__ = filename
    try:
        exec(code, module.__dict__)
    except Exception as exc:
        raise InvalidArgument(f"{path}: failed to import: {type(exc).__name__}: {exc}") from exc
    values = list(vars(module).values())
    found: list[Spec] = [v for v in values if isinstance(v, kinds)]
    # One object bound to two names (an alias) is one definition.
    objects = {id(v): v for v in values if isinstance(v, UserTransformation)}
    found.extend(t.spec for t in objects.values())
    functions = {t.spec.name: t for t in objects.values()}
    seen: set[tuple[str, str]] = set()
    for s in found:
        if (s.kind, s.name) in seen:
            raise InvalidArgument(f"{path}: two {s.kind} definitions are named {s.name!r}")
        seen.add((s.kind, s.name))
    return Definitions(tuple(found), functions)


class Project:
    """A project directory and the stores its config names (opened lazily)."""

    def __init__(self, config: ProjectConfig) -> None:
        self.config = config

    @classmethod
    def open(cls, root: Path | str = ".") -> Project:
        """Load ``flywheel.yaml`` from ``root``."""
        return cls(load_config(root))

    @property
    def root(self) -> Path:
        """The project directory."""
        return self.config.root

    @cached_property
    def db(self) -> Database:
        """The metadata database, migrated to the latest schema."""
        from flywheel.storage.sql import open_database

        return open_database(self.config.metadata)

    @cached_property
    def events(self) -> EventLog:
        """The append-only event log."""
        from flywheel.control.events import EventLog

        return EventLog(self.db)

    @cached_property
    def definitions_store(self) -> DefinitionStore:
        """Versioned definitions in the metadata store."""
        from flywheel.storage.definitions import DefinitionStore

        return DefinitionStore(self.db, self.events)

    @cached_property
    def registry(self) -> ModelRegistry:
        """The model registry."""
        from flywheel.registry.store import ModelRegistry

        return ModelRegistry(self.db)

    @cached_property
    def runs(self) -> RunStore:
        """The run store (experiment tracking)."""
        from flywheel.tracking.store import RunStore

        return RunStore(self.db)

    @cached_property
    def deployments(self) -> DeploymentStore:
        """Deployments known to the serving plane."""
        from flywheel.serving.deployments import DeploymentStore

        return DeploymentStore(self.db)

    @cached_property
    def blobs(self) -> BlobStore:
        """The content-addressed artifact store."""
        from flywheel.storage.blobs import BlobStore

        return BlobStore(self.config.artifacts)

    @cached_property
    def offline(self) -> OfflineStore:
        """The offline feature store (Parquet + DuckDB)."""
        from flywheel.data.offline import OfflineStore

        return OfflineStore(self.config.offline)

    @cached_property
    def online(self) -> OnlineStore:
        """The online feature store: SQLite (embedded) or Redis, chosen by URI."""
        from flywheel.data.online_base import open_online_store

        return open_online_store(self.config.online)

    @cached_property
    def definitions(self) -> Definitions:
        """The spec objects declared by the project's definitions module."""
        return load_definitions(Path(self.config.definitions))

    def registered_definitions(self) -> Definitions:
        """Return the definitions as applied to the metadata store (what servers serve).

        The definitions module is what the user is editing; the store holds what was applied
        (``flywheel apply``), versioned. Running servers follow the store.
        """
        from flywheel.data.specs import spec_from_dict

        return Definitions(
            tuple(spec_from_dict(d.spec) for d in self.definitions_store.list_definitions())
        )

    def serving_transformations(
        self, service: str, registered: Definitions | None = None
    ) -> list[UserTransformation]:
        """Return the applied user-defined request transformations of a service, for serving.

        The specs are the applied ones (``registered``, default: read from the store). Functions
        of the definitions module come from that module as it is on disk now (executed afresh);
        others are imported. Each function's source digest must equal the applied spec's.

        Raises:
            NotFound: a transformation's function cannot be found.
            Conflict: its code changed since ``flywheel apply`` (both digests in the message).
        """
        from flywheel.data.transforms import DEFINITIONS_MODULE

        defs = self.registered_definitions() if registered is None else registered
        specs = defs.request_transformations(service)
        functions: Mapping[str, UserTransformation] = {}
        if any(s.function.partition(":")[0] == DEFINITIONS_MODULE for s in specs):
            functions = load_definitions(Path(self.config.definitions)).functions
        return defs.transformations(service, functions)

    def watch_service(
        self, name: str
    ) -> Callable[[], list[FeatureView | WindowAggregation] | None]:
        """Return a poll function giving the service's views when definitions changed, else None.

        Each call is one indexed query on the event log (definition events after the last seen).
        """
        state = {"after": self.events.last_id()}

        def poll() -> list[FeatureView | WindowAggregation] | None:
            changed = [
                e
                for kind in ("definition.applied", "definition.deleted")
                for e in self.events.list_events(kind=kind, after_id=state["after"], limit=10_000)
            ]
            if not changed:
                return None
            state["after"] = max(e.id for e in changed)
            return self.registered_definitions().service(name)[1]

        return poll

    def push_rows(self, source: str, rows: list[Any], *, now: datetime | None = None) -> PushResult:
        """Push JSON-like ``rows`` to a registered source and the views it feeds (online too)."""
        from flywheel.data.push import push, table_from_rows
        from flywheel.data.specs import FeatureView, WindowAggregation

        defs = self.registered_definitions()
        spec = defs.source(source)
        views = [s for s in defs.specs if isinstance(s, FeatureView | WindowAggregation)]
        return push(
            self.offline,
            self.online,
            spec,
            views,
            table_from_rows(spec, rows),
            now=now,
            events=self.events,
        )

    def plan(self) -> Plan:
        """Compare the definitions module with the registered definitions."""
        return self.definitions_store.plan(self.definitions.as_triples(), kinds=SPEC_KINDS)

    def changes(self, kind: str, name: str) -> dict[str, tuple[Any, Any]]:
        """Return ``{field: (registered, desired)}`` for a definition the plan marks changed."""
        current = self.definitions_store.get(kind, name).spec
        desired = self.definitions.get(kind, name).model_dump(mode="json")
        keys = sorted(set(current) | set(desired))
        return {
            k: (current.get(k), desired.get(k)) for k in keys if current.get(k) != desired.get(k)
        }

    def apply(self, *, actor: str = "cli") -> Plan:
        """Register every definition (new versions for changed ones, tombstones for removed)."""
        plan = self.plan()
        for kind, name, spec in self.definitions.as_triples():
            self.definitions_store.apply(kind, name, spec, actor=actor)
        for kind, name in plan.removed:
            self.definitions_store.delete(kind, name, actor=actor)
        return plan

    def view_versions(self, names: Sequence[str]) -> dict[str, int]:
        """Return the registered version of each named feature view or aggregation."""
        out: dict[str, int] = {}
        for name in names:
            for kind in ("feature_view", "window_aggregation"):
                try:
                    out[name] = self.definitions_store.get(kind, name).version
                    break
                except NotFound:
                    continue
            else:
                raise NotFound(f"feature view {name!r} is not registered (run `flywheel apply`)")
        return out

    def close(self) -> None:
        """Release database connections."""
        if "db" in self.__dict__:
            self.db.dispose()
        if "online" in self.__dict__:
            self.online.close()
