"""Tests of the streaming drift detectors (ADWIN, Page-Hinkley) against River's detections.

The expected indices were recorded with ``river==0.26.1`` (``river.drift.ADWIN`` and
``river.drift.PageHinkley``, one ``update`` per value, index recorded when ``drift_detected``)
on the streams :func:`make_stream` generates; River is not needed to run these tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from flywheel.errors import ValidationError
from flywheel.monitoring import streaming
from flywheel.monitoring.streaming import ADWIN, PageHinkley


def make_stream(kind: str, seed: int = 0, n: int = 20_000) -> np.ndarray:
    """Seeded stream: PCG64 ``standard_normal``/``random`` are stable across numpy versions."""
    rng = np.random.default_rng(seed)
    if kind == "abrupt":  # mean 0 -> 1 at n/2
        z = rng.standard_normal(n)
        return z + np.where(np.arange(n) < n // 2, 0.0, 1.0)
    if kind == "multi":  # mean alternates 0, 0.5, 0, 0.5 by quarters
        z = rng.standard_normal(n)
        return z + ((np.arange(n) // (n // 4)) % 2) * 0.5
    if kind == "gradual":  # mean ramps 0 -> 1 between 30% and 70% of the stream
        z = rng.standard_normal(n)
        t = np.arange(n)
        return z + np.asarray(np.clip((t - n * 0.3) / (n * 0.4), 0.0, 1.0), dtype=np.float64)
    if kind == "none":
        return rng.standard_normal(n)
    if kind == "bernoulli":  # error stream, error rate 0.1 -> 0.2 at n/2
        u = rng.random(n)
        return (u < np.where(np.arange(n) < n // 2, 0.1, 0.2)).astype(np.float64)
    raise AssertionError(kind)


DEFAULT = dict[str, object]()
SMALL_CLOCK = {
    "delta": 0.05,
    "clock": 8,
    "max_buckets": 3,
    "min_window_length": 3,
    "grace_period": 20,
}
EDGE = {"delta": 0.1, "clock": 1, "max_buckets": 2, "min_window_length": 1, "grace_period": 0}

ADWIN_GOLDEN = [
    ("abrupt", 1, 20_000, DEFAULT, [10047]),
    ("multi", 2, 20_000, DEFAULT, [5087, 10079, 15135]),
    ("gradual", 3, 20_000, DEFAULT, [7647, 10303, 13055]),
    ("none", 4, 100_000, DEFAULT, []),
    ("bernoulli", 5, 20_000, DEFAULT, [10367]),
    ("abrupt", 1, 20_000, SMALL_CLOCK, [10023]),
    ("multi", 2, 20_000, SMALL_CLOCK, [5055, 10031, 15087]),
    ("gradual", 3, 20_000, SMALL_CLOCK, [6919, 7727, 8599, 10463, 12263, 14503, 19807]),
    ("none", 4, 100_000, SMALL_CLOCK, [15175, 21879, 41271, 77503, 82887]),
    ("bernoulli", 5, 20_000, SMALL_CLOCK, [10175]),
    ("multi", 2, 5_000, EDGE, [1297, 2559, 3825]),
    ("bernoulli", 5, 5_000, EDGE, [2547]),
]

PH_GOLDEN = [
    ("abrupt", 1, 20_000, {}, [1781, 2461, 2861, 3635, 4993, 6201, 7689, 8552, 9380, 10021,
                                12269, 13025, 15056, 15658, 16854, 18198]),
    ("multi", 2, 20_000, {}, [2705, 4630, 5102, 9466, 10023, 11291, 12770, 14857, 15163, 16393,
                               16947, 17626, 19842]),
    ("gradual", 3, 20_000, {}, [2521, 5623, 6560, 7599, 8595, 9203, 9828, 10155, 10877, 12281,
                                 13041, 14529, 16750, 17416, 18102, 19627]),
    ("bernoulli", 5, 20_000, {}, [10491]),
    (
        "bernoulli",
        5,
        20_000,
        {"min_instances": 20, "delta": 0.01, "threshold": 20.0, "alpha": 0.999, "mode": "up"},
        [8419, 10218, 11636, 15119, 18915],
    ),
    ("bernoulli", 5, 20_000, {"mode": "down", "threshold": 20.0}, [7237]),
]  # fmt: skip


def _in_batches(detector: ADWIN | PageHinkley, xs: np.ndarray, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    hits: list[int] = []
    start = 0
    while start < xs.size:
        size = int(rng.integers(1, 3000))
        hits += (detector.update_many(xs[start : start + size]) + start).tolist()
        start += size
    return hits


def _state(d: ADWIN) -> tuple[object, ...]:
    return (d.width, d.total, d.total_variance, d._tick, d._totals, d._variances)


@pytest.mark.parametrize(("kind", "seed", "n", "params", "expected"), ADWIN_GOLDEN)
def test_adwin_flags_the_same_indices_as_river(
    kind: str, seed: int, n: int, params: dict[str, object], expected: list[int]
) -> None:
    xs = make_stream(kind, seed, n)
    batch = ADWIN(**params)  # type: ignore[arg-type]
    assert batch.update_many(xs).tolist() == expected
    one = ADWIN(**params)  # type: ignore[arg-type]
    assert [i for i, x in enumerate(xs.tolist()) if one.update(x)] == expected
    mixed = ADWIN(**params)  # type: ignore[arg-type]
    assert _in_batches(mixed, xs, seed) == expected
    assert _state(batch) == _state(one) == _state(mixed)  # bit-identical windows
    assert batch.n_detections == len(expected)


def test_adwin_matches_river_state_on_large_offsets() -> None:
    """Values near 1e9: the window statistics agree with River to the last bit."""
    xs = make_stream("multi", 8, 20_000) * 1e3 + 1e9
    adwin = ADWIN()
    assert adwin.update_many(xs).tolist() == [5087, 10079, 15071]
    # River 0.26.1 after the last value: width, total, variance (its sum of squared deviations)
    assert (adwin.width, adwin.total, adwin.total_variance) == (
        4928,
        4928002511205.763,
        4811831354.549833,
    )
    assert adwin.estimation == adwin.total / 4928
    assert adwin.variance == pytest.approx(4811831354.549833 / 4928)


def test_adwin_batches_across_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    xs = make_stream("multi", 2, 20_000)
    monkeypatch.setattr(streaming, "_CHUNK", 777)
    small = ADWIN()
    assert small.update_many(xs).tolist() == [5087, 10079, 15135]
    reference = ADWIN()
    for x in xs.tolist():
        reference.update(x)
    assert _state(small) == _state(reference)


def test_adwin_resets_after_a_detection() -> None:
    adwin = ADWIN()
    hits = [i for i in range(128) if adwin.update(0.0 if i < 100 else 1.0)]
    assert hits == [127]
    assert adwin.drift_detected and 0 < adwin.width < 128
    assert adwin.update(1.0) is False
    assert (adwin.width, adwin.estimation, adwin.variance) == (1, 1.0, 0.0)
    assert not adwin.drift_detected and adwin.n_detections == 1
    assert adwin.update_many([]).tolist() == []


def test_adwin_no_drift_on_constant_stream_and_empty_state() -> None:
    adwin = ADWIN()
    assert (adwin.width, adwin.estimation, adwin.variance) == (0, 0.0, 0.0)
    assert adwin.update_many(np.full(5000, 3.0)).size == 0
    assert (adwin.width, adwin.estimation, adwin.variance) == (5000, 3.0, 0.0)


@pytest.mark.parametrize(("kind", "seed", "n", "params", "expected"), PH_GOLDEN)
def test_page_hinkley_flags_the_same_indices_as_river(
    kind: str, seed: int, n: int, params: dict[str, object], expected: list[int]
) -> None:
    xs = make_stream(kind, seed, n)
    batch = PageHinkley(**params)  # type: ignore[arg-type]
    assert batch.update_many(xs).tolist() == expected
    one = PageHinkley(**params)  # type: ignore[arg-type]
    assert [i for i, x in enumerate(xs.tolist()) if one.update(x)] == expected
    mixed = PageHinkley(**params)  # type: ignore[arg-type]
    assert _in_batches(mixed, xs, seed) == expected
    assert (batch.width, batch.estimation) == (one.width, one.estimation)
    assert batch.n_detections == len(expected)


def test_page_hinkley_resets_after_a_detection() -> None:
    ph = PageHinkley(threshold=10.0)
    assert [i for i, x in enumerate([1.0] * 50 + [3.0] * 6) if ph.update(x)] == [55]
    assert ph.drift_detected and ph.width == 56
    assert ph.update(3.0) is False
    assert (ph.width, ph.estimation, ph.drift_detected) == (1, 3.0, False)


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: ADWIN(delta=0.0), "delta"),
        (lambda: ADWIN(delta=1.5), "delta"),
        (lambda: ADWIN(clock=0), "clock"),
        (lambda: ADWIN(max_buckets=1), "max_buckets"),
        (lambda: ADWIN(min_window_length=0), "min_window_length"),
        (lambda: ADWIN(grace_period=-1), "grace_period"),
        (lambda: ADWIN(clock=True), "clock"),
        (lambda: PageHinkley(min_instances=0), "min_instances"),
        (lambda: PageHinkley(threshold=-1.0), "threshold"),
        (lambda: PageHinkley(delta=math.nan), "delta"),
        (lambda: PageHinkley(alpha=0.0), "alpha"),
        (lambda: PageHinkley(mode="sideways"), "mode"),  # type: ignore[arg-type]
    ],
)
def test_invalid_parameters_name_the_field(factory: Callable[[], object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        factory()
    assert info.value.field == field


@pytest.mark.parametrize("detector", [ADWIN, PageHinkley])
def test_non_finite_or_non_1d_values_are_refused(detector: type[ADWIN | PageHinkley]) -> None:
    d = detector()
    with pytest.raises(ValidationError, match="at index 2") as info:
        d.update_many([1.0, 2.0, math.nan])
    assert info.value.field == "xs"
    with pytest.raises(ValidationError) as info:
        d.update(math.inf)
    assert info.value.field == "x"
    with pytest.raises(ValidationError, match="1-D"):
        d.update_many(np.zeros((2, 2)))
    assert d.width == 0  # nothing was consumed
