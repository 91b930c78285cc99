"""Streaming drift detectors for error and metric streams: ADWIN and Page-Hinkley.

Both detectors take one value at a time (:meth:`ADWIN.update` returns whether drift was detected
at that point) or a whole batch (``update_many`` returns the indices, within the batch, where drift
was detected). After a detection the next update starts from a fresh state, as River does.

:class:`ADWIN` reproduces River's ``river.drift.ADWIN`` (0.26): the exponential histogram of
bucket rows (row ``i`` holds up to ``max_buckets`` summaries of ``2**i`` values; a row that
reaches ``max_buckets + 1`` merges its two oldest into the next row), a cut test every ``clock``
updates once the window is longer than ``grace_period``, at every bucket boundary with both
sides at least ``min_window_length`` long::

    |mean(W0) - mean(W1)| > sqrt(2 m' var d') + 2/3 d' m',   d' = ln(2 ln(width) / delta),
    m' = 1 / (n0 - min_window_length + 1) + 1 / (n1 - min_window_length + 1)

with ``var`` the variance of the whole window. The arithmetic follows River's order operation by
operation, so both flag drift at the same indices. ``update_many`` is vectorised: between two
detections the bucket layout depends only on how many values arrived, so each bucket total is a
pairwise (tree) sum computed per level with numpy, and every cut test of every checkpoint of a
chunk is evaluated in one array expression, with the same IEEE operations in the same order.

Differences from River, all outside the detection indices: ``n_detections`` counts every
detection since construction (River's restarts at each reset), ``variance`` is the variance of
the window (River's ``variance`` is the sum of squared deviations, :attr:`ADWIN.total_variance`
here), values must be finite, and ``max_buckets`` must be at least 2.

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> stream = np.concatenate([rng.standard_normal(2000), rng.standard_normal(2000) + 1.0])
    >>> adwin = ADWIN()
    >>> hits = adwin.update_many(stream)
    >>> len(hits), bool(2000 <= hits[0] < 2200)
    (1, True)
    >>> ph = PageHinkley(threshold=20.0, mode="up")
    >>> [i for i, x in enumerate([0.0] * 100 + [5.0] * 20) if ph.update(x)]
    [104]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from flywheel.errors import ValidationError

__all__ = ["ADWIN", "PageHinkley"]

_CHUNK = 1 << 15
"""Values per vectorised block in :meth:`ADWIN.update_many` (bounds memory and the re-work
after a detection)."""

FloatArray = npt.NDArray[np.float64]


def _as_values(xs: Sequence[float] | npt.ArrayLike) -> FloatArray:
    arr = np.asarray(xs, dtype=np.float64)
    if arr.ndim != 1:
        raise ValidationError("xs", f"expected a 1-D array of numbers, got shape {arr.shape}")
    if arr.size and not bool(np.isfinite(arr).all()):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValidationError("xs", f"expected finite values, got {arr[bad]!r} at index {bad}")
    return arr


def _running_sum(a: FloatArray) -> FloatArray:
    """Cumulative sum down the rows of ``a``, in place, one addition after another.

    Row by row is much faster than ``np.cumsum(axis=0)`` on a wide C-ordered array and adds in
    the same order as a scalar loop.
    """
    for j in range(1, a.shape[0]):
        np.add(a[j - 1], a[j], out=a[j])
    return a


def _check_value(x: float) -> float:
    value = float(x)
    if not math.isfinite(value):
        raise ValidationError("x", f"expected a finite number, got {x!r}")
    return value


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValidationError(name, f"expected an integer >= {minimum}, got {value!r}")
    return int(value)


class ADWIN:
    """ADaptive WINdowing drift detector (Bifet & Gavaldà 2007), identical in decisions to River's.

    Args:
        delta: confidence of the cut test, in (0, 1); smaller means fewer false alarms.
        clock: test for a cut every ``clock`` updates.
        max_buckets: summaries kept per bucket row before the two oldest merge (>= 2).
        min_window_length: smallest sub-window a cut may leave on either side (>= 1).
        grace_period: no test until the window holds more than this many values.

    Examples:
        >>> adwin = ADWIN()
        >>> [i for i in range(128) if adwin.update(0.0 if i < 100 else 1.0)]
        [127]
        >>> adwin.drift_detected, adwin.n_detections
        (True, 1)
        >>> adwin.update(1.0), adwin.width
        (False, 1)
    """

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        if not isinstance(delta, int | float) or not 0.0 < float(delta) < 1.0:
            raise ValidationError("delta", f"expected a number in (0, 1), got {delta!r}")
        self.delta = float(delta)
        self.clock = _check_int("clock", clock, 1)
        self.max_buckets = _check_int("max_buckets", max_buckets, 2)
        self.min_window_length = _check_int("min_window_length", min_window_length, 1)
        self.grace_period = _check_int("grace_period", grace_period, 0)
        self.drift_detected = False
        self.n_detections = 0
        self._reset()

    # -- state ---------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._totals: list[list[float]] = [[]]
        self._variances: list[list[float]] = [[]]
        self._total = 0.0
        self._var = 0.0
        self._width = 0.0
        self._tick = 0

    @property
    def width(self) -> int:
        """Number of values in the current window."""
        return int(self._width)

    @property
    def total(self) -> float:
        """Sum of the values in the window."""
        return self._total

    @property
    def estimation(self) -> float:
        """Mean of the window (0.0 when it is empty)."""
        return 0.0 if self._width == 0 else self._total / self._width

    @property
    def total_variance(self) -> float:
        """Sum of squared deviations from the window mean (River's ``ADWIN.variance``)."""
        return self._var

    @property
    def variance(self) -> float:
        """Variance of the values in the window (0.0 when it is empty)."""
        return 0.0 if self._width == 0 else self._var / self._width

    # -- one value -----------------------------------------------------------------------------

    def update(self, x: float) -> bool:
        """Add one value; return whether drift is detected at this point.

        Raises:
            ValidationError: ``x`` is not a finite number.
        """
        value = _check_value(x)
        if self.drift_detected:
            self._reset()
        self._insert(value)
        self._tick += 1
        found = False
        if self._tick % self.clock == 0 and self._width > self.grace_period:
            found = self._detect()
        if found:
            self.n_detections += 1
        self.drift_detected = found
        return found

    def _insert(self, value: float) -> None:
        self._totals[0].append(value)
        self._variances[0].append(0.0)
        width = self._width + 1.0
        self._width = width
        increment = 0.0
        if width > 1.0:
            dev = value - self._total / (width - 1.0)
            increment = (width - 1.0) * dev * dev / width
        self._var += increment
        self._total += value
        self._compress()

    def _compress(self) -> None:
        totals, variances, cap = self._totals, self._variances, self.max_buckets + 1
        idx = 0
        while len(totals[idx]) == cap:
            size = float(1 << idx)
            t0, t1 = totals[idx][0], totals[idx][1]
            mu1, mu2 = t0 / size, t1 / size
            merged_var = (
                variances[idx][0] + variances[idx][1] + size * 0.5 * (mu1 - mu2) * (mu1 - mu2)
            )
            if idx + 1 >= len(totals):
                totals.append([])
                variances.append([])
            totals[idx + 1].append(t0 + t1)
            variances[idx + 1].append(merged_var)
            del totals[idx][:2]
            del variances[idx][:2]
            if len(totals[idx + 1]) <= self.max_buckets:
                break
            idx += 1

    def _cut(self, n0: float, n1: float, delta_mean: float) -> bool:
        delta_prime = math.log(2.0 * math.log(self._width) / self.delta)
        mwl = self.min_window_length
        m_recip = 1.0 / (n0 - mwl + 1.0) + 1.0 / (n1 - mwl + 1.0)
        radicand = 2.0 * m_recip * (self._var / self._width) * delta_prime
        if not radicand >= 0.0:  # River takes sqrt of a negative: NaN, never a cut
            return False
        epsilon = math.sqrt(radicand) + 2.0 / 3.0 * delta_prime * m_recip
        return abs(delta_mean) > epsilon

    def _detect(self) -> bool:
        found = False
        mwl = self.min_window_length
        reduce_width = True
        while reduce_width:
            reduce_width = False
            n0, n1, u0, u1 = 0.0, self._width, 0.0, self._total
            deleted = False
            for idx in range(len(self._totals) - 1, -1, -1):
                size = float(1 << idx)
                row = self._totals[idx]
                for bucket_total in row:
                    n0 += size
                    n1 -= size
                    u0 += bucket_total
                    u1 -= bucket_total
                    # River stops before the newest bucket; there n1 == 0 < min_window_length.
                    if n1 >= mwl and n0 >= mwl and self._cut(n0, n1, u0 / n0 - u1 / n1):
                        reduce_width = True
                        found = True
                        if self._width > 0.0:
                            self._delete_oldest()
                            deleted = True
                            break
                if deleted:
                    break
        return found

    def _delete_oldest(self) -> None:
        last = len(self._totals) - 1
        size = float(1 << last)
        u, v = self._totals[last][0], self._variances[last][0]
        mu = u / size
        self._width -= size
        self._total -= u
        mu_window = self._total / self._width
        self._var -= v + size * self._width * (mu - mu_window) * (mu - mu_window) / (
            size + self._width
        )
        del self._totals[last][0]
        del self._variances[last][0]
        if not self._totals[last]:
            self._totals.pop()
            self._variances.pop()

    # -- a batch -------------------------------------------------------------------------------

    def update_many(self, xs: Sequence[float] | npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Add a batch of values; return the batch indices where drift was detected.

        The result and the state afterwards are exactly those of calling :meth:`update` on each
        value in turn.

        Raises:
            ValidationError: ``xs`` is not 1-D or holds a NaN or an infinity.
        """
        values = _as_values(xs)
        hits: list[int] = []
        start = 0
        while start < values.size:
            if self.drift_detected:
                self._reset()
                self.drift_detected = False
            stop = min(start + _CHUNK, values.size)
            consumed, found = self._advance(values[start:stop])
            if found:
                hits.append(start + consumed - 1)
            start += consumed
        return np.asarray(hits, dtype=np.int64)

    def _advance(self, x: FloatArray) -> tuple[int, bool]:
        """Consume ``x`` up to and including its first detection; return (consumed, found)."""
        n, cap_keep = x.size, self.max_buckets
        # Bucket totals (and variances) per level over the whole run: the existing row, then the
        # pairwise merges of the level below, consumed two at a time from its front.
        levels_t: list[FloatArray] = []
        levels_v: list[FloatArray] = []
        below_t = np.concatenate([np.asarray(self._totals[0], dtype=np.float64), x])
        below_v = np.concatenate(
            [np.asarray(self._variances[0], dtype=np.float64), np.zeros(n, dtype=np.float64)]
        )
        levels_t.append(below_t)
        levels_v.append(below_v)
        level = 0
        while below_t.size >= 2 or level + 1 < len(self._totals):
            size = float(1 << level)
            pairs = below_t.size // 2
            a, b = below_t[0 : 2 * pairs : 2], below_t[1 : 2 * pairs : 2]
            mu1, mu2 = a / size, b / size
            merged_v = below_v[0 : 2 * pairs : 2] + below_v[1 : 2 * pairs : 2]
            merged_v = merged_v + size * 0.5 * (mu1 - mu2) * (mu1 - mu2)
            level += 1
            old_t = self._totals[level] if level < len(self._totals) else []
            old_v = self._variances[level] if level < len(self._variances) else []
            below_t = np.concatenate([np.asarray(old_t, dtype=np.float64), a + b])
            below_v = np.concatenate([np.asarray(old_v, dtype=np.float64), merged_v])
            levels_t.append(below_t)
            levels_v.append(below_v)
        existing = [len(r) for r in self._totals] + [0] * (len(levels_t) - len(self._totals))

        def layout(
            arrivals: npt.NDArray[np.int64],
        ) -> tuple[list[npt.NDArray[np.int64]], list[npt.NDArray[np.int64]]]:
            """(first kept index, count) per level after ``arrivals`` new values."""
            firsts, counts = [], []
            incoming = arrivals
            for c in existing:
                filled = c + incoming
                out = np.where(filled >= cap_keep + 1, (filled - cap_keep + 1) // 2, 0)
                firsts.append(2 * out)
                counts.append(filled - 2 * out)
                incoming = out
            return firsts, counts

        # Running total, variance and width after each new value (River's sequential order).
        totals = np.cumsum(np.concatenate([[self._total], x]))
        widths = self._width + np.arange(n + 1, dtype=np.float64)
        prev = widths[1:] - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = x - totals[:-1] / prev
            inc = np.where(widths[1:] > 1.0, prev * dev * dev / widths[1:], 0.0)
        variances = np.cumsum(np.concatenate([[self._var], inc]))

        ticks = self._tick + np.arange(1, n + 1, dtype=np.int64)
        steps = np.flatnonzero((ticks % self.clock == 0) & (widths[1:] > self.grace_period)) + 1
        first_hit = -1
        if steps.size:
            first_hit = self._scan(steps, widths, totals, variances, levels_t, layout)
        consumed = n if first_hit < 0 else int(first_hit)
        # Materialise the state after `consumed` values.
        firsts, counts = layout(np.asarray([consumed], dtype=np.int64))
        top = max((i for i, c in enumerate(counts) if c[0] > 0), default=0)
        self._totals = [
            levels_t[i][firsts[i][0] : firsts[i][0] + counts[i][0]].tolist() for i in range(top + 1)
        ]
        self._variances = [
            levels_v[i][firsts[i][0] : firsts[i][0] + counts[i][0]].tolist() for i in range(top + 1)
        ]
        self._total = float(totals[consumed])
        self._var = float(variances[consumed])
        self._width = float(widths[consumed])
        self._tick += consumed
        found = False
        if first_hit >= 0:
            found = self._detect()  # the same test on the same state; also shrinks the window
            if found:
                self.n_detections += 1
        self.drift_detected = found
        return consumed, found

    def _scan(
        self,
        steps: npt.NDArray[np.int64],
        widths: FloatArray,
        totals: FloatArray,
        variances: FloatArray,
        levels_t: list[FloatArray],
        layout: Any,
    ) -> int:
        """Evaluate every cut of every checkpoint; return the first step with a cut, or -1."""
        firsts, counts = layout(steps)
        width = widths[steps]
        rows = [i for i in range(len(counts) - 1, -1, -1) if bool((counts[i] > 0).any())]
        n_cols = steps.size
        # One row per bucket slot (oldest first), one column per checkpoint; row 0 of `bucket`
        # is left for the window total so that u1 = total - t1 - t2 ... is one cumsum.
        bucket = np.zeros((len(rows) * self.max_buckets + 1, n_cols))
        sizes = np.zeros((len(rows) * self.max_buckets, n_cols))
        slots = np.arange(self.max_buckets)[:, None]
        for j, i in enumerate(rows):
            level = levels_t[i]
            valid = slots < counts[i]
            pos = np.minimum(firsts[i] + slots, max(level.size - 1, 0))
            block = slice(j * self.max_buckets, (j + 1) * self.max_buckets)
            np.copyto(bucket[1:][block], level[pos], where=valid)
            np.copyto(sizes[block], float(1 << i), where=valid)
        n0 = _running_sum(sizes)
        u0 = _running_sum(bucket[1:].copy())
        np.negative(bucket, out=bucket)
        bucket[0] = totals[steps]
        u1 = _running_sum(bucket)[1:]
        n1 = width - n0
        # A window of one value has no cut (River's ln(0) = -inf is never used there).
        delta_prime = np.asarray(
            [
                math.log(2.0 * math.log(w) / self.delta) if w >= 2.0 else math.nan
                for w in width.tolist()
            ],
            dtype=np.float64,
        )
        mwl = float(self.min_window_length)
        with np.errstate(divide="ignore", invalid="ignore"):
            cut = (n0 >= mwl) & (n1 >= mwl)
            # |u0/n0 - u1/n1|, in place
            np.divide(u0, n0, out=u0)
            np.divide(u1, n1, out=u1)
            np.subtract(u0, u1, out=u0)
            np.abs(u0, out=u0)
            # m' = 1/(n0 - mwl + 1) + 1/(n1 - mwl + 1)
            np.subtract(n0, mwl, out=n0)
            n0 += 1.0
            np.divide(1.0, n0, out=n0)
            np.subtract(n1, mwl, out=n1)
            n1 += 1.0
            np.divide(1.0, n1, out=n1)
            m_recip = np.add(n0, n1, out=n0)
            # epsilon = sqrt(2 m' var d') + 2/3 d' m', River's order of operations
            epsilon = np.multiply(m_recip, 2.0, out=n1)
            epsilon *= variances[steps] / width
            epsilon *= delta_prime
            np.sqrt(epsilon, out=epsilon)
            m_recip *= 2.0 / 3.0 * delta_prime
            epsilon += m_recip
            cut &= u0 > epsilon
        hit_rows = np.flatnonzero(cut.any(axis=0))
        return int(steps[hit_rows[0]]) if hit_rows.size else -1


class PageHinkley:
    """Page-Hinkley test for a change in the mean, with River's semantics.

    Args:
        min_instances: values seen before a drift may be reported.
        delta: tolerated change per value.
        threshold: cumulative deviation that signals drift.
        alpha: forgetting factor of the cumulative sums, in (0, 1].
        mode: ``"up"`` (increase), ``"down"`` (decrease) or ``"both"``.

    Examples:
        >>> ph = PageHinkley(threshold=10.0)
        >>> [i for i, x in enumerate([1.0] * 50 + [3.0] * 20) if ph.update(x)]
        [55]
        >>> ph.update_many([1.0, 1.0]).tolist()
        []
    """

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: Literal["up", "down", "both"] = "both",
    ) -> None:
        self.min_instances = _check_int("min_instances", min_instances, 1)
        for name, value in (("delta", delta), ("threshold", threshold)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValidationError(name, f"expected a finite number >= 0, got {value!r}")
        if not isinstance(alpha, int | float) or not 0.0 < float(alpha) <= 1.0:
            raise ValidationError("alpha", f"expected a number in (0, 1], got {alpha!r}")
        if mode not in ("up", "down", "both"):
            raise ValidationError("mode", f"expected 'up', 'down' or 'both', got {mode!r}")
        self.delta, self.threshold, self.alpha = float(delta), float(threshold), float(alpha)
        self.mode = mode
        self.drift_detected = False
        self.n_detections = 0
        self._reset()

    def _reset(self) -> None:
        self._n = 0.0
        self._mean = 0.0
        self._sum_increase = 0.0
        self._sum_decrease = 0.0
        self._min_increase = math.inf
        self._max_decrease = -1.0  # River's initial value

    @property
    def width(self) -> int:
        """Values seen since the last reset."""
        return int(self._n)

    @property
    def estimation(self) -> float:
        """Mean of the values seen since the last reset."""
        return self._mean

    def update(self, x: float) -> bool:
        """Add one value; return whether drift is detected at this point.

        Raises:
            ValidationError: ``x`` is not a finite number.
        """
        return bool(self.update_many([_check_value(x)]).size)

    def update_many(self, xs: Sequence[float] | npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Add a batch of values; return the batch indices where drift was detected.

        Raises:
            ValidationError: ``xs`` is not 1-D or holds a NaN or an infinity.
        """
        values = _as_values(xs).tolist()
        up, down = self.mode in ("up", "both"), self.mode in ("down", "both")
        alpha, delta, threshold, min_n = self.alpha, self.delta, self.threshold, self.min_instances
        n, mean = self._n, self._mean
        s_inc, s_dec, min_inc, max_dec = (
            self._sum_increase,
            self._sum_decrease,
            self._min_increase,
            self._max_decrease,
        )
        drift = self.drift_detected
        hits: list[int] = []
        for i, x in enumerate(values):
            if drift:
                n, mean, s_inc, s_dec, min_inc, max_dec = 0.0, 0.0, 0.0, 0.0, math.inf, -1.0
                drift = False
            n += 1.0
            mean += (1.0 / n) * (x - mean)
            dev = x - mean
            s_inc = alpha * s_inc + dev - delta
            s_dec = alpha * s_dec + dev + delta
            if s_inc < min_inc:
                min_inc = s_inc
            if s_dec > max_dec:
                max_dec = s_dec
            if n >= min_n:
                drift = (up and s_inc - min_inc > threshold) or (
                    down and max_dec - s_dec > threshold
                )
                if drift:
                    hits.append(i)
        self._n, self._mean = n, mean
        self._sum_increase, self._sum_decrease = s_inc, s_dec
        self._min_increase, self._max_decrease = min_inc, max_dec
        self.drift_detected = drift
        self.n_detections += len(hits)
        return np.asarray(hits, dtype=np.int64)
