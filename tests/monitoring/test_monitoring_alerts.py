"""Alerts: webhook delivery to a local receiver, the SSRF guard, retries, Prometheus metrics."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pandas as pd
import pytest

from flywheel.errors import BackendUnavailable, ValidationError
from flywheel.monitoring.alerts import (
    Alert,
    AlertRules,
    LogSink,
    MemorySink,
    MetricsRegistry,
    WebhookSink,
    check_webhook_url,
    publish,
)
from flywheel.monitoring.drift import DriftReport, FeatureDrift, compare
from flywheel.monitoring.profile import build_profile

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ALERT = Alert("delays", "major", "1 feature drifted", {"delay": 0.5}, AT)


class Receiver:
    """A webhook receiver on 127.0.0.1 recording every request it gets."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.flaky_failures = 2
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                status, extra = 200, {}
                if self.path == "/redirect":
                    status, extra = 302, {"Location": "/hook"}
                elif self.path == "/fail":
                    status = 503
                elif self.path == "/missing":
                    status = 404
                elif self.path == "/flaky" and receiver.flaky_failures > 0:
                    receiver.flaky_failures -= 1
                    status = 500
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    rec.thread.start()
    try:
        yield rec
    finally:
        rec.server.shutdown()
        rec.server.server_close()
        rec.thread.join(5)


def _sink(url: str, **kwargs: Any) -> WebhookSink:
    kwargs.setdefault("timeout_s", 2.0)
    kwargs.setdefault("sleep", lambda s: None)
    return WebhookSink(url, **kwargs)


@pytest.fixture(scope="module")
def reports() -> tuple[DriftReport, DriftReport]:
    reference = pd.DataFrame(
        {"delay": [float(i % 60) for i in range(1000)], "carrier": ["AA", "UA"] * 500}
    )
    profile = build_profile(reference)
    shifted = reference.assign(delay=reference["delay"] + 30)
    return compare(profile, reference), compare(profile, shifted)


# --------------------------------------------------------------------------- webhook delivery


def test_webhook_delivers_json_to_an_allowed_local_receiver(
    receiver: Receiver, reports: tuple[DriftReport, DriftReport]
) -> None:
    registry = MetricsRegistry()
    sink = _sink(receiver.url(), allowed_hosts=("127.0.0.1",))
    alert = publish(reports[1], "delays", registry, [sink], at=AT)
    assert alert is not None
    assert receiver.paths() == ["/hook"]
    request = receiver.requests[0]
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Host"] == f"127.0.0.1:{receiver.port}"
    payload = json.loads(request["body"])
    assert payload["monitor"] == "delays"
    assert payload["severity"] == "major"
    assert payload["at"] == "2026-01-02T03:04:05+00:00"
    assert payload["features"] == {"delay": pytest.approx(reports[1].feature("delay").psi)}
    outcome = {"monitor": "delays", "sink": "webhook"}
    assert registry.get("flywheel_alerts_total", **outcome, outcome="sent") == 1.0


def test_without_the_allowance_a_loopback_literal_is_refused_at_construction(
    receiver: Receiver,
) -> None:
    with pytest.raises(ValidationError, match="loopback") as info:
        _sink(receiver.url())
    assert info.value.field == "url"
    assert receiver.requests == []


def test_a_name_resolving_to_loopback_is_refused_before_any_connection(
    receiver: Receiver, reports: tuple[DriftReport, DriftReport]
) -> None:
    registry = MetricsRegistry()
    sink = _sink(receiver.url(host="localhost"))
    with pytest.raises(ValidationError, match="loopback"):
        sink.send(ALERT)
    alert = publish(reports[1], "delays", registry, [sink])
    assert alert is not None
    assert receiver.requests == []
    labels = {"monitor": "delays", "sink": "webhook"}
    assert registry.get("flywheel_alerts_total", **labels, outcome="refused") == 1.0
    assert registry.get("flywheel_alerts_total", **labels, outcome="sent") is None


def test_the_request_goes_to_the_checked_address_with_the_original_host_header(
    receiver: Receiver,
) -> None:
    calls: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return ["127.0.0.1"]

    # "hooks.invalid" cannot resolve through DNS: delivery proves httpx used the pinned address.
    url = f"http://hooks.invalid:{receiver.port}/hook"
    _sink(url, resolver=resolver, allowed_hosts=("HOOKS.invalid",)).send(ALERT)
    assert calls == [("hooks.invalid", receiver.port)]
    assert receiver.requests[0]["headers"]["Host"] == f"hooks.invalid:{receiver.port}"


def test_a_redirect_is_not_followed(receiver: Receiver) -> None:
    registry = MetricsRegistry()
    sink = _sink(receiver.url("/redirect"), allowed_hosts=("127.0.0.1",))
    with pytest.raises(ValidationError, match="redirect"):
        sink.send(ALERT)
    assert receiver.paths() == ["/redirect"]
    report = _report(_feature("delay", 0.5, "major"))
    publish(report, "m", registry, [sink])
    assert receiver.paths() == ["/redirect", "/redirect"]
    assert registry.get("flywheel_alerts_total", monitor="m", sink="webhook", outcome="refused")


def test_transient_failures_are_retried_with_backoff(receiver: Receiver) -> None:
    waits: list[float] = []
    sink = _sink(
        receiver.url("/flaky"),
        allowed_hosts=("127.0.0.1",),
        retries=2,
        backoff_s=0.25,
        sleep=waits.append,
    )
    sink.send(ALERT)
    assert receiver.paths() == ["/flaky"] * 3
    assert waits == [0.25, 0.5]


def test_retries_are_bounded_and_failures_are_counted_not_raised(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    sink = _sink(receiver.url("/fail"), allowed_hosts=("127.0.0.1",), retries=1)
    with pytest.raises(BackendUnavailable, match="HTTP 503"):
        sink.send(ALERT)
    assert receiver.paths() == ["/fail"] * 2

    registry, memory = MetricsRegistry(), MemorySink()
    with caplog.at_level(logging.WARNING, logger="flywheel.monitoring.alerts"):
        alert = publish(_report(_feature("delay", 0.5, "major")), "m", registry, [sink, memory])
    assert memory.alerts == [alert]  # the failing sink did not stop the next one
    assert registry.get("flywheel_alerts_total", monitor="m", sink="webhook", outcome="failed")
    assert any("failed in sink webhook" in r.getMessage() for r in caplog.records)
    assert "/fail" not in caplog.text  # webhook paths may be secrets: only scheme://host logged


def test_a_client_error_is_not_retried(receiver: Receiver) -> None:
    sink = _sink(receiver.url("/missing"), allowed_hosts=("127.0.0.1",), retries=3)
    with pytest.raises(BackendUnavailable, match="HTTP 404"):
        sink.send(ALERT)
    assert receiver.paths() == ["/missing"]


def test_an_unreachable_receiver_fails_after_the_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # https: the pinned request carries the TLS server name (sni_hostname) of the original host
    sink = _sink(f"https://127.0.0.1:{port}/", allow_private=True, retries=1, timeout_s=1.0)
    with pytest.raises(BackendUnavailable, match="ConnectError") as info:
        sink.send(ALERT)
    assert info.value.context["attempts"] == 2


def test_a_sink_that_raises_anything_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        name = "broken"

        def send(self, alert: Alert) -> None:
            raise RuntimeError("boom")

    registry = MetricsRegistry()
    with caplog.at_level(logging.ERROR, logger="flywheel.monitoring.alerts"):
        publish(_report(_feature("x", 0.5, "major")), "m", registry, [Broken()])
    assert registry.get("flywheel_alerts_total", monitor="m", sink="broken", outcome="failed")
    assert "boom" in caplog.text


# --------------------------------------------------------------------------- the guard table


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]/", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://192.168.1.1:8080/", "private"),
        ("http://[::ffff:127.0.0.1]/", "127.0.0.1 is loopback"),
        ("http://[::ffff:a9fe:a9fe]/", "169.254.169.254 is link-local"),
        ("http://[2002:7f00:1::1]/", "127.0.0.1 is loopback"),  # 6to4 wrapping loopback
        ("http://[64:ff9b::a00:1]/", "10.0.0.1 is private"),  # NAT64 wrapping 10.0.0.1
        ("http://[fe80::1]/", "link-local"),
        ("http://[fc00::1]/", "private"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://100.64.0.1/", "not a global address"),  # carrier-grade NAT
        ("http://2130706433/", "loopback"),  # 127.0.0.1 as one decimal number
        ("http://127.1/", "loopback"),
        ("http://localhost:8000/hook", "loopback"),
        ("ftp://example.com/hook", "scheme 'ftp' refused"),
        ("file:///etc/passwd", "scheme 'file' refused"),
        ("gopher://example.com/", "scheme 'gopher' refused"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://user@example.com/", "credentials"),
        ("http:///nohost", "host"),
    ],
)
def test_the_guard_refuses(url: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(reason)) as info:
        check_webhook_url(url)
    assert info.value.field == "url"


@pytest.mark.parametrize(
    "url", ["http://93.184.215.14/hook", "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/"]
)
def test_the_guard_accepts_public_addresses(url: str) -> None:
    assert len(check_webhook_url(url).addresses) == 1


def test_every_resolved_address_must_be_public() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.1.2.3"]

    with pytest.raises(ValidationError, match=r"10\.1\.2\.3"):
        check_webhook_url("https://hooks.example.com/x", resolver=resolver)
    target = check_webhook_url(
        "https://hooks.example.com/x", resolver=lambda h, p: ["93.184.215.14"]
    )
    assert (target.host, target.port, target.addresses) == (
        "hooks.example.com",
        443,
        ("93.184.215.14",),
    )


def test_a_host_that_does_not_resolve_is_refused() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise socket.gaierror("no such host")

    with pytest.raises(ValidationError, match="does not resolve"):
        check_webhook_url("http://nowhere.invalid/", resolver=resolver)


def test_allowances_skip_the_address_rules_only() -> None:
    assert check_webhook_url("http://10.0.0.1/", allow_private=True).addresses == ("10.0.0.1",)
    assert check_webhook_url("http://[::1]/", allowed_hosts=["[::1]"]).addresses == ("::1",)
    with pytest.raises(ValidationError, match="private"):
        check_webhook_url("http://10.0.0.1/", allowed_hosts=["10.0.0.2"])
    with pytest.raises(ValidationError, match="scheme"):
        check_webhook_url("ftp://10.0.0.1/", allow_private=True)
    with pytest.raises(ValidationError, match="credentials"):
        check_webhook_url("http://u:p@10.0.0.1/", allowed_hosts=["10.0.0.1"])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"retries": -1}, "retries"),
        ({"backoff_s": -1}, "backoff_s"),
    ],
)
def test_webhook_settings_are_validated(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        WebhookSink("http://93.184.215.14/", **kwargs)
    assert info.value.field == field


# --------------------------------------------------------------------------- metrics and publish


def _feature(name: str, psi: float, severity: Any) -> FeatureDrift:
    return FeatureDrift(name, "numeric", "ok", psi, severity, severity == "major", 500)


def _report(*features: FeatureDrift) -> DriftReport:
    return DriftReport(list(features), 1000, 500, 0.2, 100, checks=("psi", "ks", "chi2"))


def test_the_drift_gauge_moves_from_zero_to_the_psi(
    reports: tuple[DriftReport, DriftReport],
) -> None:
    stable, drifted = reports
    registry, sink = MetricsRegistry(), MemorySink()
    labels = {"monitor": "delays", "feature": "delay", "check": "psi"}
    assert registry.get("flywheel_drift_score", **labels) is None
    assert publish(stable, "delays", registry, [sink]) is None
    assert registry.get("flywheel_drift_score", **labels) == 0.0
    assert registry.get("flywheel_monitor_status", monitor="delays") == 0.0
    assert sink.alerts == []

    alert = publish(drifted, "delays", registry, [sink])
    psi = drifted.feature("delay").psi
    assert psi is not None and psi > 1
    assert registry.get("flywheel_drift_score", **labels) == psi
    assert registry.get("flywheel_monitor_status", monitor="delays") == 2.0
    ks = registry.get("flywheel_drift_score", **{**labels, "check": "ks"})
    assert ks == drifted.feature("delay").ks_statistic
    chi2 = {"monitor": "delays", "feature": "carrier", "check": "chi2"}
    assert registry.get("flywheel_drift_score", **chi2) == drifted.feature("carrier").chi2_statistic
    assert sink.alerts == [alert]
    assert alert is not None and list(alert.features) == ["delay"]
    assert f'flywheel_drift_score{{monitor="delays",feature="delay",check="psi"}} {psi!r}' in (
        registry.render()
    )


def test_rules_decide_on_moderate_shifts_and_status_is_a_warning() -> None:
    report = _report(_feature("a", 0.15, "moderate"), _feature("b", 0.01, "none"))
    registry, sink = MetricsRegistry(), MemorySink()
    assert publish(report, "m", registry, [sink]) is None
    assert registry.get("flywheel_monitor_status", monitor="m") == 1.0
    alert = publish(report, "m", registry, [sink], rules=AlertRules(min_severity="moderate"))
    assert alert is not None
    assert (alert.severity, alert.features) == ("moderate", {"a": 0.15})
    assert "a (PSI 0.150)" in alert.summary
    with pytest.raises(ValidationError, match="min_severity"):
        AlertRules(min_severity="none")  # type: ignore[arg-type]


def test_features_leaving_the_report_leave_the_gauges() -> None:
    registry = MetricsRegistry()
    publish(_report(_feature("a", 0.05, "none")), "m", registry)
    publish(_report(_feature("a", 0.05, "none")), "other", registry)
    publish(_report(_feature("b", 0.05, "none")), "m", registry)
    score = "flywheel_drift_score"
    assert registry.get(score, monitor="m", feature="a", check="psi") is None
    assert registry.get(score, monitor="m", feature="b", check="psi") == 0.05
    assert registry.get(score, monitor="other", feature="a", check="psi") == 0.05


_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*",?)*)\}'
    r" (?P<value>[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|Inf|NaN))$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def test_render_is_valid_prometheus_text_with_escaped_labels() -> None:
    registry = MetricsRegistry()
    nasty = 'we"ird\\name\nline'
    registry.set("flywheel_drift_score", 0.25, monitor=nasty, feature="f", check="psi")
    registry.set("flywheel_monitor_status", 2, monitor=nasty)
    registry.inc("flywheel_alerts_total", monitor=nasty, sink="log", outcome="sent")
    registry.set("flywheel_drift_score", float("nan"), monitor="m", feature="g", check="ks")
    text = registry.render()
    assert text.endswith("\n")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
    types = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        assert match["name"] in types  # TYPE comes first
        labels = tuple((k, _unescape(v)) for k, v in _LABEL.findall(match["labels"]))
        samples[(match["name"], labels)] = match["value"]
    assert types == {
        "flywheel_drift_score": "gauge",
        "flywheel_monitor_status": "gauge",
        "flywheel_alerts_total": "counter",
    }
    key = ("flywheel_drift_score", (("monitor", nasty), ("feature", "f"), ("check", "psi")))
    assert samples[key] == "0.25"
    assert (
        samples[
            ("flywheel_alerts_total", (("monitor", nasty), ("sink", "log"), ("outcome", "sent")))
        ]
        == "1.0"
    )
    assert (
        samples[("flywheel_drift_score", (("monitor", "m"), ("feature", "g"), ("check", "ks")))]
        == "NaN"
    )


def test_registry_rejects_misuse() -> None:
    registry = MetricsRegistry()
    with pytest.raises(ValidationError, match="labels"):
        registry.set("flywheel_monitor_status", 1, monitor="m", extra="x")
    with pytest.raises(ValidationError, match="expected a counter"):
        registry.inc("flywheel_monitor_status", monitor="m")
    with pytest.raises(ValidationError, match="expected a gauge"):
        registry.set("flywheel_alerts_total", 1, monitor="m", sink="s", outcome="sent")
    with pytest.raises(ValidationError, match=">= 0"):
        registry.inc("flywheel_alerts_total", -1, monitor="m", sink="s", outcome="sent")
    with pytest.raises(ValidationError, match="no metric"):
        registry.get("nope")
    with pytest.raises(ValidationError, match="differently"):
        registry.declare("flywheel_monitor_status", "counter", "x", ("monitor",))


def test_registry_counts_are_exact_under_threads() -> None:
    registry = MetricsRegistry()

    def work() -> None:
        for _ in range(2000):
            registry.inc("flywheel_alerts_total", monitor="m", sink="s", outcome="sent")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.get("flywheel_alerts_total", monitor="m", sink="s", outcome="sent") == 16000


def test_log_sink_writes_structured_records(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flywheel.monitoring.alert"):
        LogSink().send(ALERT)
        LogSink().send(Alert("m", "moderate", "s", {"a": 0.12}, AT))
    major, moderate = caplog.records
    assert (major.levelno, moderate.levelno) == (logging.ERROR, logging.WARNING)
    assert major.alert == ALERT.to_dict()  # type: ignore[attr-defined]
    assert json.loads(major.getMessage().removeprefix("alert ")) == ALERT.to_dict()


def test_a_monitoring_gauge_is_scraped_from_the_serving_metrics_route() -> None:
    # The serving app's /metrics carries the monitoring registry: a drift score set by a
    # monitor run shows on the next scrape.
    from starlette.testclient import TestClient

    from flywheel.monitoring.alerts import MetricsRegistry
    from flywheel.serving.app import create_app

    registry = MetricsRegistry()
    app = create_app({}, None, extra_metrics=[registry.render])
    with TestClient(app) as client:
        assert "flywheel_monitor_status{" not in client.get("/metrics").text
        registry.set("flywheel_monitor_status", 2.0, monitor="delays")
        text = client.get("/metrics").text
    assert 'flywheel_monitor_status{monitor="delays"} 2' in text
