"""Alerts from drift reports: a log, a webhook guarded against SSRF, and Prometheus metrics.

:func:`publish` turns one :class:`~flywheel.monitoring.drift.DriftReport` into

* gauges in a :class:`MetricsRegistry`: ``flywheel_drift_score{monitor,feature,check}`` (every
  statistic the report holds: PSI, KS D, chi-square, ...) and ``flywheel_monitor_status{monitor}``
  (0 ok, 1 warning: some feature shifted moderately, 2 alert: some feature drifted);
* one :class:`Alert` sent to every :class:`AlertSink` when features at or above
  :attr:`AlertRules.min_severity` exist, each delivery counted in
  ``flywheel_alerts_total{monitor,sink,outcome}`` (``sent``, ``refused`` or ``failed``).

A sink that fails is logged and counted; nothing it raises reaches the monitor run.

:class:`WebhookSink` posts the alert as JSON with httpx, behind an SSRF guard
(:func:`check_webhook_url`): the scheme must be http or https, the URL carries no credentials,
every address the host resolves to must be public (not loopback, private, link-local,
multicast, reserved, unspecified or otherwise non-global, IPv4 and IPv6 alike, IPv4 embedded in
IPv6 -- mapped, 6to4, Teredo, NAT64 -- unwrapped first) unless ``allow_private=True`` or the host
is listed in ``allowed_hosts``; redirects are never followed. The request goes to the very
address that was checked (the URL's host is replaced by it; the ``Host`` header and, for https,
the TLS server name and certificate check keep the original name), so a DNS answer that changes
between the check and the connection (DNS rebinding) cannot redirect it. Environment proxies are
ignored (``trust_env=False``), since a proxy would resolve the name itself.

Examples:
    >>> import pandas as pd
    >>> from flywheel.monitoring.drift import compare
    >>> from flywheel.monitoring.profile import build_profile
    >>> reference = pd.DataFrame({"delay": [float(i % 60) for i in range(1000)]})
    >>> report = compare(build_profile(reference), reference + 30)
    >>> registry, sink = MetricsRegistry(), MemorySink()
    >>> alert = publish(report, "delays", registry, [sink])
    >>> alert.severity, list(alert.features) == ["delay"], len(sink.alerts)
    ('major', True, 1)
    >>> registry.get("flywheel_monitor_status", monitor="delays")
    2.0
    >>> registry.get("flywheel_drift_score", monitor="delays", feature="delay", check="psi") > 1
    True
    >>> registry.get("flywheel_alerts_total", monitor="delays", sink="memory", outcome="sent")
    1.0
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import httpx

from flywheel.errors import BackendUnavailable, FlywheelError, ValidationError
from flywheel.serving.metrics import escape_label

if TYPE_CHECKING:
    from flywheel.monitoring.drift import DriftReport

__all__ = [
    "Alert",
    "AlertRules",
    "AlertSink",
    "LogSink",
    "MemorySink",
    "MetricsRegistry",
    "WebhookSink",
    "WebhookTarget",
    "check_webhook_url",
    "publish",
]

log = logging.getLogger(__name__)

AlertSeverity = Literal["moderate", "major"]
_RANK = {"none": 0, "moderate": 1, "major": 2}
Resolver = Callable[[str, int], Sequence[str]]


@dataclass(frozen=True)
class Alert:
    """One alert: which monitor, how bad, a one-line summary and the offending features' PSI.

    Examples:
        >>> at = datetime(2026, 1, 1, tzinfo=UTC)
        >>> Alert("delays", "major", "1 feature drifted", {"delay": 0.31}, at).to_dict()["at"]
        '2026-01-01T00:00:00+00:00'
    """

    monitor: str
    severity: AlertSeverity
    summary: str
    features: dict[str, float]
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-safe payload a sink sends."""
        return {
            "monitor": self.monitor,
            "severity": self.severity,
            "summary": self.summary,
            "features": dict(self.features),
            "at": self.at.isoformat(),
        }


@runtime_checkable
class AlertSink(Protocol):
    """Where alerts go. ``send`` raises a :class:`~flywheel.errors.FlywheelError` on failure."""

    name: str

    def send(self, alert: Alert) -> None:
        """Deliver ``alert``."""


class LogSink:
    """Write alerts to a logger as one JSON line, the payload also under ``extra["alert"]``.

    ``major`` alerts log at ERROR, ``moderate`` ones at WARNING.

    Examples:
        >>> LogSink().name
        'log'
    """

    name = "log"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("flywheel.monitoring.alert")

    def send(self, alert: Alert) -> None:
        """Log ``alert``."""
        payload = alert.to_dict()
        level = logging.ERROR if alert.severity == "major" else logging.WARNING
        self.logger.log(
            level, "alert %s", json.dumps(payload, sort_keys=True), extra={"alert": payload}
        )


class MemorySink:
    """Keep alerts in a list (tests, notebooks).

    Examples:
        >>> MemorySink().alerts
        []
    """

    name = "memory"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        """Append ``alert``."""
        self.alerts.append(alert)


# --------------------------------------------------------------------------- SSRF guard


@dataclass(frozen=True)
class WebhookTarget:
    """A checked webhook URL: the original, its host and port, and the addresses it may use."""

    url: httpx.URL
    host: str
    port: int
    addresses: tuple[str, ...]


def _redact(url: httpx.URL) -> str:
    """Return ``scheme://host[:port]`` only; paths and queries of webhooks are often secrets."""
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = []
    if addr.ipv4_mapped is not None:
        found.append(addr.ipv4_mapped)
    if addr.sixtofour is not None:
        found.append(addr.sixtofour)
    if addr.teredo is not None:
        found.extend(addr.teredo)
    if addr in ipaddress.IPv6Network("64:ff9b::/96"):  # NAT64
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return found


def _forbidden_reason(address: str) -> str | None:
    """Return why ``address`` is not a public unicast address, or ``None`` when it is."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    if isinstance(ip, ipaddress.IPv6Address):
        candidates.extend(_embedded_ipv4(ip))  # judge the wrapped address first
    candidates.append(ip)
    for candidate in candidates:
        for attr in (
            "is_unspecified",
            "is_loopback",
            "is_link_local",
            "is_multicast",
            "is_reserved",
            "is_site_local",
            "is_private",
        ):
            if getattr(candidate, attr, False):
                return f"{candidate} is {attr[3:].replace('_', '-')}"
        if not candidate.is_global:
            return f"{candidate} is not a global address"
    return None


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _parse(url: str | httpx.URL) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValidationError(
            "url", f"expected an http(s) URL, got an invalid one ({exc})"
        ) from exc
    if parsed.scheme not in ("http", "https"):
        raise ValidationError("url", f"scheme {parsed.scheme!r} refused; expected http or https")
    if parsed.userinfo:
        raise ValidationError("url", "credentials in the URL refused; expected none")
    if not parsed.host:
        raise ValidationError("url", "expected a host in the URL")
    return parsed


def _is_allowed(host: str, allowed_hosts: Iterable[str]) -> bool:
    def norm(name: str) -> str:
        name = name.strip().lower().strip("[]").rstrip(".")
        try:
            return str(ipaddress.ip_address(name))
        except ValueError:
            return name

    return norm(host) in {norm(h) for h in allowed_hosts}


def check_webhook_url(
    url: str | httpx.URL,
    *,
    allow_private: bool = False,
    allowed_hosts: Iterable[str] = (),
    resolver: Resolver | None = None,
) -> WebhookTarget:
    """Check ``url`` against the SSRF rules and return the addresses it may connect to.

    The host is resolved (all addresses); any forbidden address refuses the URL, so a name with
    one public and one private address is refused too. ``allow_private`` or listing the host (a
    name or an address, compared case-insensitively) in ``allowed_hosts`` skips the address
    rules only; scheme and credential rules always apply.

    Examples:
        >>> check_webhook_url("http://93.184.215.14/hook").addresses
        ('93.184.215.14',)
        >>> check_webhook_url("http://169.254.169.254/latest")
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: url: host '169.254.169.254' resolves to 169.254.169.254 ...
        >>> check_webhook_url("http://[::1]:8080/", allowed_hosts=["::1"]).addresses
        ('::1',)

    Raises:
        ValidationError: (field ``url``) on a non-http(s) scheme, credentials, no host, a host
            that does not resolve, or a forbidden address.
    """
    parsed = _parse(url)
    host = parsed.host
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = tuple((resolver or _system_resolver)(host, port))
    except (OSError, UnicodeError) as exc:
        raise ValidationError(
            "url", f"host {host!r} does not resolve ({exc}); expected a resolvable host"
        ) from exc
    if not addresses:
        raise ValidationError("url", f"host {host!r} resolves to no address")
    if not (allow_private or _is_allowed(host, allowed_hosts)):
        for address in addresses:
            reason = _forbidden_reason(address)
            if reason is not None:
                raise ValidationError(
                    "url",
                    f"host {host!r} resolves to {address} ({reason}); expected public addresses"
                    " only, or allow_private=True, or the host in allowed_hosts",
                    context={"value": _redact(parsed)},
                )
    return WebhookTarget(parsed, host, port, addresses)


class WebhookSink:
    """POST alerts as JSON to a webhook, behind the SSRF guard of :func:`check_webhook_url`.

    Each send checks the URL again (DNS answers change) and connects to the first checked
    address. Transport errors, timeouts, 429 and 5xx are retried ``retries`` times, waiting
    ``backoff_s * 2**attempt`` seconds between attempts; other 4xx fail at once, and 3xx are
    refused (redirects are not followed).

    Args:
        url: The webhook, http or https, without credentials.
        timeout_s: Timeout of each attempt.
        allow_private: Accept non-public addresses (a webhook inside the network).
        allowed_hosts: Host names or addresses accepted whatever they resolve to.
        retries: Extra attempts after the first.
        backoff_s: First wait between attempts.
        resolver: ``(host, port) -> addresses``; the system resolver by default.
        sleep: How to wait (tests pass a no-op).

    Examples:
        >>> WebhookSink("ftp://example.com/hook")
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: url: scheme 'ftp' refused; expected http or https

    Raises:
        ValidationError: If the URL breaks a rule that needs no DNS (scheme, credentials, an
            address literal that is forbidden), or a setting is out of range.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        allow_private: bool = False,
        allowed_hosts: Iterable[str] = (),
        retries: int = 2,
        backoff_s: float = 0.5,
        resolver: Resolver | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValidationError("timeout_s", f"expected a positive number, got {timeout_s!r}")
        if not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ValidationError("retries", f"expected an integer in [0, 10], got {retries!r}")
        if not (isinstance(backoff_s, int | float) and 0 <= backoff_s <= 60):
            raise ValidationError("backoff_s", f"expected a number in [0, 60], got {backoff_s!r}")
        self.url = _parse(url)
        self.timeout_s = float(timeout_s)
        self.allow_private = bool(allow_private)
        self.allowed_hosts = tuple(allowed_hosts)
        self.retries = retries
        self.backoff_s = float(backoff_s)
        self.resolver = resolver
        self.sleep = sleep
        try:  # an address literal can be judged now, without DNS
            ipaddress.ip_address(self.url.host)
        except ValueError:
            pass
        else:
            self.check()

    def __repr__(self) -> str:
        return f"WebhookSink({_redact(self.url)!r})"

    def check(self) -> WebhookTarget:
        """Run the SSRF guard on the URL now; see :func:`check_webhook_url`."""
        return check_webhook_url(
            self.url,
            allow_private=self.allow_private,
            allowed_hosts=self.allowed_hosts,
            resolver=self.resolver,
        )

    def send(self, alert: Alert) -> None:
        """POST ``alert`` to the webhook.

        Raises:
            ValidationError: The guard refused the URL, or the receiver answered a redirect.
            BackendUnavailable: Every attempt failed, or the receiver answered another 4xx.
        """
        target = self.check()
        address = target.addresses[0]
        pinned = self.url.copy_with(host=address)
        headers = {"Host": self.url.netloc.decode("ascii"), "User-Agent": "flywheel-alerts"}
        extensions = {"sni_hostname": target.host} if self.url.scheme == "https" else {}
        body = json.dumps(alert.to_dict(), allow_nan=False).encode()
        last = ""
        with httpx.Client(
            timeout=self.timeout_s, follow_redirects=False, trust_env=False
        ) as client:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.sleep(self.backoff_s * 2 ** (attempt - 1))
                try:
                    request = client.build_request(
                        "POST",
                        pinned,
                        content=body,
                        headers={**headers, "Content-Type": "application/json"},
                        extensions=extensions,
                    )
                    # stream=True and no read: a hostile receiver cannot make us buffer a body
                    response = client.send(request, stream=True)
                    response.close()
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    continue
                status = response.status_code
                if 200 <= status < 300:
                    return
                if 300 <= status < 400:
                    raise ValidationError(
                        "url",
                        f"the receiver answered {status} (a redirect); redirects are not"
                        " followed, expected a 2xx",
                        context={"value": _redact(self.url)},
                    )
                last = f"HTTP {status}"
                if status != 429 and status < 500:
                    break
        raise BackendUnavailable(
            f"webhook {_redact(self.url)} failed: {last}",
            context={"url": _redact(self.url), "attempts": self.retries + 1, "last": last},
        )


# --------------------------------------------------------------------------- metrics


@dataclass
class _Metric:
    kind: Literal["gauge", "counter"]
    help: str
    labels: tuple[str, ...]
    samples: dict[tuple[str, ...], float] = field(default_factory=dict)


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class MetricsRegistry:
    """Thread-safe gauges and counters, rendered in the Prometheus text format (0.0.4).

    Holds the monitoring metrics from the start: gauges ``flywheel_drift_score`` (labels
    monitor, feature, check) and ``flywheel_monitor_status`` (monitor; 0 ok, 1 warning,
    2 alert), counter ``flywheel_alerts_total`` (monitor, sink, outcome).

    Examples:
        >>> registry = MetricsRegistry()
        >>> registry.set("flywheel_monitor_status", 1, monitor='a"b')
        >>> print(registry.render().splitlines()[4])
        flywheel_monitor_status{monitor="a\\"b"} 1.0
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}
        self.declare(
            "flywheel_drift_score",
            "gauge",
            "Drift statistic of a feature in the last window (PSI, KS D, ...).",
            ("monitor", "feature", "check"),
        )
        self.declare(
            "flywheel_monitor_status",
            "gauge",
            "Monitor status: 0 ok, 1 warning, 2 alert.",
            ("monitor",),
        )
        self.declare(
            "flywheel_alerts_total",
            "counter",
            "Alert deliveries by sink and outcome (sent, refused, failed).",
            ("monitor", "sink", "outcome"),
        )

    def declare(
        self, name: str, kind: Literal["gauge", "counter"], help: str, labels: Sequence[str]
    ) -> None:
        """Declare a metric; declaring it again with the same kind and labels is a no-op.

        Raises:
            ValidationError: On a bad name or kind, or a redeclaration that differs.
        """
        if not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise ValidationError("name", f"expected a Prometheus metric name, got {name!r}")
        if kind not in ("gauge", "counter"):
            raise ValidationError("kind", f"expected 'gauge' or 'counter', got {kind!r}")
        with self._lock:
            existing = self._metrics.get(name)
            if existing is not None:
                if existing.kind != kind or existing.labels != tuple(labels):
                    raise ValidationError("name", f"{name!r} is declared already, differently")
                return
            self._metrics[name] = _Metric(kind, help, tuple(labels))

    def _key(self, name: str, labels: Mapping[str, str]) -> tuple[_Metric, tuple[str, ...]]:
        metric = self._metrics.get(name)
        if metric is None:
            raise ValidationError("name", f"no metric {name!r}; expected a declared metric")
        if set(labels) != set(metric.labels):
            raise ValidationError(
                "labels", f"{name} takes labels {list(metric.labels)}, got {sorted(labels)}"
            )
        return metric, tuple(str(labels[label]) for label in metric.labels)

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set gauge ``name`` for ``labels`` to ``value``."""
        with self._lock:
            metric, key = self._key(name, labels)
            if metric.kind != "gauge":
                raise ValidationError("name", f"{name} is a {metric.kind}, expected a gauge")
            metric.samples[key] = float(value)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0) to counter ``name`` for ``labels``."""
        if not amount >= 0:
            raise ValidationError("amount", f"expected a number >= 0, got {amount!r}")
        with self._lock:
            metric, key = self._key(name, labels)
            if metric.kind != "counter":
                raise ValidationError("name", f"{name} is a {metric.kind}, expected a counter")
            metric.samples[key] = metric.samples.get(key, 0.0) + float(amount)

    def get(self, name: str, **labels: str) -> float | None:
        """Return the value of ``name`` for ``labels``, or ``None`` when it was never set."""
        with self._lock:
            metric, key = self._key(name, labels)
            return metric.samples.get(key)

    def clear(self, name: str, **match: str) -> None:
        """Remove the samples of ``name`` whose labels include ``match``."""
        with self._lock:
            metric = self._metrics[name]
            positions = [(metric.labels.index(k), v) for k, v in match.items()]
            metric.samples = {
                key: value
                for key, value in metric.samples.items()
                if not all(key[i] == v for i, v in positions)
            }

    def render(self) -> str:
        """Return every metric in the Prometheus text exposition format."""
        lines: list[str] = []
        with self._lock:
            for name, metric in self._metrics.items():
                help_text = metric.help.replace("\\", "\\\\").replace("\n", "\\n")
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} {metric.kind}")
                for key, value in sorted(metric.samples.items()):
                    labels = ",".join(
                        f'{label}="{escape_label(v)}"'
                        for label, v in zip(metric.labels, key, strict=True)
                    )
                    lines.append(f"{name}{{{labels}}} {_format_value(value)}")
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- publish


@dataclass(frozen=True)
class AlertRules:
    """When :func:`publish` alerts: some feature's severity is at least ``min_severity``."""

    min_severity: AlertSeverity = "major"

    def __post_init__(self) -> None:
        if self.min_severity not in ("moderate", "major"):
            raise ValidationError(
                "min_severity", f"expected 'moderate' or 'major', got {self.min_severity!r}"
            )


def _scores(report: DriftReport) -> Iterable[tuple[str, str, float]]:
    checks = dict.fromkeys(("psi", *report.checks))
    for feature in report.features:
        for check in checks:
            value = feature.psi if check == "psi" else getattr(feature, f"{check}_statistic", None)
            if isinstance(value, int | float) and not isinstance(value, bool):
                yield feature.name, check, float(value)


def publish(
    report: DriftReport,
    monitor: str,
    registry: MetricsRegistry,
    sinks: Sequence[AlertSink] = (),
    *,
    rules: AlertRules | None = None,
    at: datetime | None = None,
) -> Alert | None:
    """Set ``monitor``'s gauges from ``report`` and alert ``sinks`` if the rules say so.

    The monitor's drift-score series are replaced (a feature that left the report leaves the
    metrics). The alert lists the features with severity >= ``rules.min_severity`` and their
    PSI, largest first. Each sink's outcome is counted; a sink's failure is logged, never
    raised.

    Returns:
        The alert sent, or ``None`` when no feature met the rules.
    """
    rules = rules or AlertRules()
    registry.clear("flywheel_drift_score", monitor=monitor)
    for feature_name, check, value in _scores(report):
        registry.set(
            "flywheel_drift_score", value, monitor=monitor, feature=feature_name, check=check
        )
    worst = max((_RANK[f.severity] for f in report.features if f.status == "ok"), default=0)
    status = 2 if report.drifted else min(worst, 1)
    registry.set("flywheel_monitor_status", status, monitor=monitor)

    threshold = _RANK[rules.min_severity]
    hits = sorted(
        (f for f in report.features if _RANK[f.severity] >= threshold and f.psi is not None),
        key=lambda f: (-(f.psi or 0.0), f.name),
    )
    if not hits:
        return None
    severity: AlertSeverity = "major" if any(f.severity == "major" for f in hits) else "moderate"
    alert = Alert(
        monitor=monitor,
        severity=severity,
        summary=(
            f"{len(hits)} of {len(report.features)} features {severity} drift: "
            + ", ".join(f"{f.name} (PSI {f.psi:.3f})" for f in hits[:5])
            + (", ..." if len(hits) > 5 else "")
        ),
        features={f.name: float(f.psi or 0.0) for f in hits},
        at=at or datetime.now(UTC),
    )
    for sink in sinks:
        sink_name = str(getattr(sink, "name", type(sink).__name__))
        try:
            sink.send(alert)
        except ValidationError as exc:
            outcome = "refused"
            log.warning("alert for %s refused by sink %s: %s", monitor, sink_name, exc)
        except Exception as exc:  # a sink must never break the monitor run
            outcome = "failed"
            level = logging.WARNING if isinstance(exc, FlywheelError) else logging.ERROR
            log.log(level, "alert for %s failed in sink %s: %s", monitor, sink_name, exc)
        else:
            outcome = "sent"
        registry.inc("flywheel_alerts_total", monitor=monitor, sink=sink_name, outcome=outcome)
    return alert
