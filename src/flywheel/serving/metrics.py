"""Prometheus metrics of the serving app: request counts and latency, and what handlers know.

:class:`ServingMetrics` counts requests by deployment and status code and keeps a latency
histogram; :func:`handler_metrics` renders each deployment arm's loaded model version, its
adaptive-batching batch sizes and a routed deployment's shadow outcomes. Both write the
Prometheus text format; :func:`escape_label` escapes label values (the monitoring registry uses
it too). No web framework is imported here.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

__all__ = ["LATENCY_BUCKETS", "ServingMetrics", "escape_label", "handler_metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Upper bounds, in seconds, of the request latency histogram (``+Inf`` is implied)."""


def escape_label(value: str) -> str:
    """Escape a Prometheus label value."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ServingMetrics:
    """Request counters and a latency histogram, rendered in the Prometheus text format.

    Examples:
        >>> metrics = ServingMetrics()
        >>> metrics.observe("delays", 200, 0.003)
        >>> print(metrics.render(dropped=0).splitlines()[2])
        flywheel_requests_total{deployment="delays",code="200"} 1
    """

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = {}
        self._bucket_counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, deployment: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        with self._lock:
            key = (deployment, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            counts = self._bucket_counts.setdefault(deployment, [0] * (len(self.buckets) + 1))
            for i, bound in enumerate(self.buckets):
                if seconds <= bound:
                    counts[i] += 1
            counts[-1] += 1
            self._sums[deployment] = self._sums.get(deployment, 0.0) + seconds

    def requests(self, deployment: str, status: int) -> int:
        """Return how many requests to ``deployment`` were answered with ``status``."""
        with self._lock:
            return self._requests.get((deployment, status), 0)

    def render(self, *, dropped: int) -> str:
        """Render every metric, plus the prediction log's ``dropped`` count."""
        lines = [
            "# HELP flywheel_requests_total Prediction requests answered, by deployment, status.",
            "# TYPE flywheel_requests_total counter",
        ]
        with self._lock:
            for (deployment, status), n in sorted(self._requests.items()):
                labels = f'deployment="{escape_label(deployment)}",code="{status}"'
                lines.append(f"flywheel_requests_total{{{labels}}} {n}")
            lines += [
                "# HELP flywheel_request_latency_seconds Prediction request latency.",
                "# TYPE flywheel_request_latency_seconds histogram",
            ]
            for deployment, counts in sorted(self._bucket_counts.items()):
                label = f'deployment="{escape_label(deployment)}"'
                bounds = [repr(b) for b in self.buckets] + ["+Inf"]
                for bound, n in zip(bounds, counts, strict=True):
                    lines.append(
                        f'flywheel_request_latency_seconds_bucket{{{label},le="{bound}"}} {n}'
                    )
                lines.append(
                    f"flywheel_request_latency_seconds_sum{{{label}}} {self._sums[deployment]!r}"
                )
                lines.append(f"flywheel_request_latency_seconds_count{{{label}}} {counts[-1]}")
        lines += [
            "# HELP flywheel_prediction_log_dropped_total Prediction records not kept.",
            "# TYPE flywheel_prediction_log_dropped_total counter",
            f"flywheel_prediction_log_dropped_total {dropped}",
        ]
        return "\n".join(lines) + "\n"


def _arms(deployment: str, handler: object) -> list[tuple[str, str, object]]:
    """Return ``(deployment, arm, handler)`` for a handler and, if routed, each of its arms."""
    arms = getattr(handler, "arm_handlers", None)
    if isinstance(arms, Mapping):
        return [(deployment, str(arm), h) for arm, h in sorted(arms.items())]
    return [(deployment, "default", handler)]


def handler_metrics(handlers: Mapping[str, object]) -> str:
    """Render what the handlers know: loaded model versions, batch sizes, shadow counts.

    Read through attributes a handler may or may not have (``model``, ``batch_histogram``,
    ``shadow_stats``, ``arm_handlers``), so any ``DeploymentHandler`` can be served.
    """
    loaded = [
        "# HELP flywheel_model_loaded The model version each deployment arm serves (value 1).",
        "# TYPE flywheel_model_loaded gauge",
    ]
    batches = [
        "# HELP flywheel_batch_size Rows per model call (adaptive batching).",
        "# TYPE flywheel_batch_size histogram",
    ]
    shadows = [
        "# HELP flywheel_shadow_requests_total Mirrored requests by outcome.",
        "# TYPE flywheel_shadow_requests_total counter",
    ]
    for name, handler in sorted(handlers.items()):
        for deployment, arm, h in _arms(name, handler):
            labels = f'deployment="{escape_label(deployment)}",arm="{escape_label(arm)}"'
            model = getattr(h, "model", None)
            version = getattr(model, "version", None)
            if version is not None:
                model_label = escape_label(str(getattr(version, "name", "")))
                loaded.append(
                    f'flywheel_model_loaded{{{labels},model="{model_label}",'
                    f'version="{int(getattr(version, "version", 0))}"}} 1'
                )
            histogram = getattr(h, "batch_histogram", None)
            if histogram is not None:
                for bound, n in histogram.cumulative():
                    le = "+Inf" if bound == float("inf") else repr(float(bound))
                    batches.append(f'flywheel_batch_size_bucket{{{labels},le="{le}"}} {n}')
                batches.append(f"flywheel_batch_size_sum{{{labels}}} {histogram.total_rows}")
                batches.append(f"flywheel_batch_size_count{{{labels}}} {histogram.count}")
        stats = getattr(handler, "shadow_stats", None)
        if isinstance(stats, Mapping):
            for outcome, n in sorted(stats.items()):
                shadows.append(
                    f'flywheel_shadow_requests_total{{deployment="{escape_label(name)}",'
                    f'outcome="{escape_label(str(outcome))}"}} {int(n)}'
                )
    return "\n".join([*loaded, *batches, *shadows]) + "\n"
