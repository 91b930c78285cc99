"""How many serving replicas a request rate needs: measure the model, then apply Little's law.

:func:`measure` loads the model a deployment serves (``model@alias``, digest verified), warms it
and times single-row ``predict`` calls on one thread, which is how the server calls it (the
predictors run native math single-threaded). Rows are drawn from the version's reference
profile when it has one (numeric features by inverse-CDF sampling of the profile's quantile grid,
categorical features by the reference frequencies, missing at the reference rate); without a
profile every row is zeros of the signature's width. The timing covers the model call only:
the online feature read, request parsing and HTTP add to it: pass that as ``overhead_s``.

:func:`plan` turns a request rate and a per-request service time into a replica count. By
Little's law the requests in service at once are ``L = rps x service_s``, where the service time
is the model latency plus ``overhead_s`` (server time outside the model); one replica runs one
request at a time per worker, and we keep each replica at ``target_utilisation`` so queues stay
short, then add ``headroom`` for spikes and a replica lost to a rollout or a node drain::

    replicas = ceil(rps x (inference_s + overhead_s) / target_utilisation x (1 + headroom)),
               at least 1

Examples:
    >>> p = plan(200, 0.005)
    >>> p.replicas
    3
    >>> p.reasoning[0]
    "Little's law: 200 req/s x 5.000 ms = 1.000 requests in service at once"
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from flywheel.errors import InvalidArgument, ValidationError

if TYPE_CHECKING:
    import numpy as np

    from flywheel.monitoring.profile import ReferenceProfile
    from flywheel.project import Project
    from flywheel.serving.deployments import Deployment
    from flywheel.training.signature import ModelSignature

__all__ = ["CapacityPlan", "LatencyProfile", "Percentile", "measure", "plan"]

Percentile = Literal["p50", "p90", "p99"]
PERCENTILES: tuple[Percentile, ...] = ("p50", "p90", "p99")
_WARMUP_CALLS = 50
_MAX_SAMPLES = 1_000_000


@dataclass(frozen=True)
class LatencyProfile:
    """Single-row model latency of one deployment, in seconds."""

    deployment: str
    model_ref: str
    model_version: int
    samples: int
    rows_from: Literal["reference_profile", "zeros"]
    p50: float
    p90: float
    p99: float
    mean: float

    def percentile(self, which: str) -> float:
        """Return the latency at ``which`` (``p50``, ``p90`` or ``p99``) in seconds."""
        if which not in PERCENTILES:
            raise ValidationError("percentile", f"expected one of {', '.join(PERCENTILES)}")
        return float(getattr(self, which))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict."""
        return {
            "deployment": self.deployment,
            "model_ref": self.model_ref,
            "model_version": self.model_version,
            "samples": self.samples,
            "rows_from": self.rows_from,
            "p50_s": self.p50,
            "p90_s": self.p90,
            "p99_s": self.p99,
            "mean_s": self.mean,
        }


@dataclass(frozen=True)
class CapacityPlan:
    """A replica count and the arithmetic behind it, one line per step."""

    replicas: int
    rps: float
    inference_s: float
    target_utilisation: float
    headroom: float
    per_replica_rps: float
    overhead_s: float = 0.0
    reasoning: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict."""
        return {
            "replicas": self.replicas,
            "rps": self.rps,
            "inference_s": self.inference_s,
            "target_utilisation": self.target_utilisation,
            "headroom": self.headroom,
            "per_replica_rps": self.per_replica_rps,
            "overhead_s": self.overhead_s,
            "reasoning": list(self.reasoning),
        }


def _finite_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(name, f"expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValidationError(name, "expected a finite number")
    return number


def plan(
    rps: float,
    inference_s: float,
    *,
    target_utilisation: float = 0.6,
    headroom: float = 0.3,
    percentile: str | None = None,
    overhead_s: float = 0.0,
) -> CapacityPlan:
    """Return the replicas needed to serve ``rps`` requests/s at ``inference_s`` s each.

    ``overhead_s`` is per-request server time outside the model (parsing, the online feature
    read, HTTP), added to ``inference_s`` to give the service time Little's law uses.
    ``percentile`` only labels the reasoning (which latency ``inference_s`` is).

    Raises:
        ValidationError: ``rps`` or ``inference_s`` is not > 0, ``target_utilisation`` is outside
            (0, 1], or ``headroom`` or ``overhead_s`` is negative (each names the field and the
            value).
    """
    rps = _finite_number("rps", rps)
    inference_s = _finite_number("inference_s", inference_s)
    target_utilisation = _finite_number("target_utilisation", target_utilisation)
    headroom = _finite_number("headroom", headroom)
    overhead_s = _finite_number("overhead_s", overhead_s)
    if rps <= 0:
        raise ValidationError("rps", f"expected a request rate > 0, got {rps:g}")
    if inference_s <= 0:
        raise ValidationError("inference_s", f"expected a latency > 0 seconds, got {inference_s:g}")
    if not 0 < target_utilisation <= 1:
        raise ValidationError(
            "target_utilisation", f"expected a value in (0, 1], got {target_utilisation:g}"
        )
    if headroom < 0:
        raise ValidationError("headroom", f"expected a value >= 0, got {headroom:g}")
    if overhead_s < 0:
        raise ValidationError("overhead_s", f"expected a time >= 0 seconds, got {overhead_s:g}")

    service_s = inference_s + overhead_s
    in_flight = rps * service_s
    busy = in_flight / target_utilisation
    # Round away float noise (0.1 * 3 / 0.6 * 1.3 is 0.6500000000000001) before the ceiling, so a
    # load that is exactly a whole number of replicas does not get one more.
    raw = round(busy * (1 + headroom), 9)
    replicas = max(1, math.ceil(raw))
    per_replica = target_utilisation / service_s
    label = f"the {percentile} latency" if percentile else "the given latency"
    ms = 1000.0
    reasoning = [
        f"Little's law: {rps:g} req/s x {service_s * ms:.3f} ms = {in_flight:.3f} requests "
        "in service at once",
        f"service time: {label} of the model, {inference_s * ms:.3f} ms per single-row request "
        f"on one thread, + {overhead_s * ms:.3f} ms server overhead = {service_s * ms:.3f} ms",
        f"per-replica capacity: {target_utilisation:g} / {service_s * ms:.3f} ms = "
        f"{per_replica:.1f} req/s at {target_utilisation:.0%} target utilisation "
        "(one request at a time per replica)",
        f"replicas: ceil({in_flight:.3f} / {target_utilisation:g} x (1 + {headroom:g})) = "
        f"ceil({raw:.3f}) = {math.ceil(raw)}" + (", raised to 1" if math.ceil(raw) < 1 else ""),
        f"headroom {headroom:.0%} covers spikes, latency variance and a replica lost to a "
        "rollout or node drain",
    ]
    return CapacityPlan(
        replicas=replicas,
        rps=rps,
        inference_s=inference_s,
        target_utilisation=target_utilisation,
        headroom=headroom,
        per_replica_rps=per_replica,
        overhead_s=overhead_s,
        reasoning=reasoning,
    )


def _sample_rows(
    signature: ModelSignature, profile: ReferenceProfile | None, n: int, seed: int = 0
) -> np.ndarray:
    """Return ``n`` encoded rows: drawn from ``profile`` where it covers an input, else zeros."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.zeros((n, len(signature.inputs)), dtype=np.float64)
    if profile is None:
        return out
    by_name = {f.name: f for f in profile.features}
    for j, name in enumerate(signature.inputs):
        feat = by_name.get(name)
        if feat is None or feat.n_valid == 0:
            continue
        if name in signature.categorical:
            vocab = {v: float(i) for i, v in enumerate(signature.categorical[name])}
            codes = [vocab.get(c, np.nan) for c in feat.categories]
            counts = np.asarray(feat.bucket_counts[: len(codes)], dtype=np.float64)
            if not codes or counts.sum() <= 0:
                continue
            out[:, j] = rng.choice(np.asarray(codes), size=n, p=counts / counts.sum())
        elif feat.kind == "numeric" and feat.quantiles:
            u = rng.random(n)
            out[:, j] = np.interp(u, feat.quantile_cdf, feat.quantiles)
        elif feat.kind == "numeric" and feat.mean is not None:
            out[:, j] = feat.mean
        missing = rng.random(n) < feat.missing_rate
        out[missing, j] = np.nan
    return out


def _reference_profile(project: Project, digest: str | None) -> ReferenceProfile | None:
    if digest is None:
        return None
    from flywheel.monitoring.profile import ReferenceProfile

    return ReferenceProfile.from_json(project.blobs.get_bytes(digest))


def _quantile(sorted_s: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    rank = max(1, math.ceil(q * len(sorted_s)))
    return float(sorted_s[rank - 1])


def measure(
    project: Project, deployment: str | Deployment, *, samples: int = 500
) -> LatencyProfile:
    """Time ``samples`` single-row predictions of the model ``deployment`` serves.

    The model is loaded through :func:`flywheel.registry.loader.load_model` (digest verified),
    warmed with a batch and ``50`` single rows, then each sample is one ``predict`` of one row
    on this thread, timed with ``perf_counter``.

    Raises:
        ValidationError: ``samples`` is not an integer in [1, 1000000].
        NotFound: the deployment, its model alias or the artifact does not exist.
    """
    from flywheel.registry.loader import load_model

    if (
        isinstance(samples, bool)
        or not isinstance(samples, int)
        or not 1 <= samples <= _MAX_SAMPLES
    ):
        raise ValidationError("samples", f"expected an integer in [1, {_MAX_SAMPLES}]")
    dep = project.deployments.get(deployment) if isinstance(deployment, str) else deployment
    model = load_model(project.registry, project.blobs, dep.model_ref)
    profile = _reference_profile(project, model.version.profile_digest)
    n_rows = max(samples, _WARMUP_CALLS)
    rows = _sample_rows(model.signature, profile, n_rows)
    if rows.shape[1] == 0:
        raise InvalidArgument(
            f"model {dep.model_ref} has no inputs in its signature",
            context={"deployment": dep.name, "model_ref": dep.model_ref},
        )
    model.predict(rows)  # warm: first-call allocations, lazy init
    singles = [rows[i : i + 1] for i in range(n_rows)]
    for i in range(_WARMUP_CALLS):
        model.predict(singles[i])
    timings: list[float] = []
    clock = time.perf_counter
    for i in range(samples):
        row = singles[i]
        start = clock()
        model.predict(row)
        timings.append(clock() - start)
    timings.sort()
    return LatencyProfile(
        deployment=dep.name,
        model_ref=dep.model_ref,
        model_version=model.version.version,
        samples=samples,
        rows_from="zeros" if profile is None else "reference_profile",
        p50=_quantile(timings, 0.50),
        p90=_quantile(timings, 0.90),
        p99=_quantile(timings, 0.99),
        mean=sum(timings) / len(timings),
    )
