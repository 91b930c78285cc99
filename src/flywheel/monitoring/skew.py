"""Training-serving skew: served features against their point-in-time offline recomputation.

:func:`detect_skew` reads what the serving path logged for each request (the request row and
the model inputs as served, from :func:`flywheel.serving.predlog.predictions_frame`), recomputes
the same features through the training path at each request's timestamp (the point-in-time join
of :func:`flywheel.data.retrieval.get_historical_features` over the service's views, then the
service's request transformations, exactly as the training frame computes them) and compares
them feature by feature.

The comparison rule, per row and feature: both null (None/NaN) is equal; null against a value
is a mismatch; two numbers are equal when ``|served - offline| <= atol + rtol * |offline|``;
anything else (strings, booleans) must be exactly equal. A feature is *skewed* when its share of
mismatched rows exceeds ``max_mismatch_rate``.

What a mismatch means. The online store answers as of what was materialized when the request
was served; the recomputation answers as of the request time over the offline store *now*:

* materialization lag (online values materialized as of a time before the request, so the
  served value is older than the point-in-time one) is reported as skew, and it is real skew:
  the model scored inputs that training would not have given it;
* the one known benign source is late-arriving data: source rows whose event time is before the
  request but that reached the offline store after the request was served. The point-in-time
  join is by event time, not arrival time, so it sees them and the server could not. Compare
  windows whose data had landed when they were served, or read a mismatch on a freshly
  back-filled source with that in mind.

Examples:
    >>> FeatureSkew("temp", 100, 97, 0.97, 18.4, 30.1, 0.0, 0.0, True).skewed
    True
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from flywheel.errors import ValidationError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

    from flywheel.project import Project

__all__ = ["FeatureSkew", "SkewReport", "detect_skew", "values_match"]


@dataclass(frozen=True)
class FeatureSkew:
    """The served-against-offline comparison of one feature.

    ``mean_abs_diff`` and ``max_abs_diff`` are over the rows where both values are numbers
    (None when there are none); the null rates are over the compared rows.
    """

    name: str
    compared: int
    mismatched: int
    mismatch_rate: float
    mean_abs_diff: float | None
    max_abs_diff: float | None
    served_null_rate: float
    offline_null_rate: float
    skewed: bool


@dataclass(frozen=True)
class SkewReport:
    """Per-feature skew of one feature service over a window of logged predictions."""

    service: str
    rows: int
    max_mismatch_rate: float
    features: list[FeatureSkew] = field(default_factory=list)

    @property
    def skewed_features(self) -> list[str]:
        """The names of the skewed features, in report order."""
        return [f.name for f in self.features if f.skewed]

    def feature(self, name: str) -> FeatureSkew:
        """Return the comparison of feature ``name``.

        Raises:
            ValidationError: the report has no such feature.
        """
        for f in self.features:
            if f.name == name:
                return f
        raise ValidationError(
            "name", f"no feature {name!r} in the report (have {[f.name for f in self.features]})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-able types."""
        return asdict(self)


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    try:
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, list | tuple | dict) else False
    except (TypeError, ValueError):
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def values_match(served: Any, offline: Any, *, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    """Return whether one served value equals its offline recomputation under the skew rule.

    Examples:
        >>> values_match(None, float("nan")), values_match(None, 1.0)
        (True, False)
        >>> values_match(3, 3.0000000001), values_match(50.0, 10.0)
        (True, False)
        >>> values_match("EWR", "EWR"), values_match("EWR", "JFK")
        (True, False)
    """
    s_null, o_null = _is_null(served), _is_null(offline)
    if s_null or o_null:
        return s_null and o_null
    if _is_number(served) and _is_number(offline):
        return abs(float(served) - float(offline)) <= atol + rtol * abs(float(offline))
    if isinstance(served, datetime | date) or isinstance(offline, datetime | date):
        import pandas as pd

        try:
            return bool(pd.Timestamp(served) == pd.Timestamp(offline))
        except (TypeError, ValueError):
            return False
    return bool(served == offline)


def _check_options(rtol: float, atol: float, max_mismatch_rate: float, sample: int | None) -> None:
    if not rtol >= 0:
        raise ValidationError("rtol", f"got {rtol!r}, expected a number >= 0")
    if not atol >= 0:
        raise ValidationError("atol", f"got {atol!r}, expected a number >= 0")
    if not 0 <= max_mismatch_rate <= 1:
        raise ValidationError(
            "max_mismatch_rate", f"got {max_mismatch_rate!r}, expected a rate in [0, 1]"
        )
    if sample is not None and (isinstance(sample, bool) or sample < 1):
        raise ValidationError("sample", f"got {sample!r}, expected None or an integer >= 1")


def _entity_frame(
    requests: Sequence[str], timestamp_field: str, fields: Sequence[str]
) -> pd.DataFrame:
    """Parse the logged request JSON into entity rows (``fields`` + the timestamp, UTC)."""
    import pandas as pd

    parsed: list[dict[str, Any]] = []
    for i, text in enumerate(requests):
        try:
            row = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                "request_json", f"row {i}: got {str(text)[:80]!r}, expected a JSON object"
            ) from exc
        if not isinstance(row, dict):
            raise ValidationError("request_json", f"row {i}: got {row!r}, expected a JSON object")
        for name in (*fields, timestamp_field):
            if name not in row:
                raise ValidationError(
                    name, f"row {i}: the logged request has no {name!r} (has {sorted(row)})"
                )
        parsed.append({name: row[name] for name in (*fields, timestamp_field)})
    frame = pd.DataFrame(parsed, columns=[*fields, timestamp_field])
    try:
        frame[timestamp_field] = pd.to_datetime(frame[timestamp_field], utc=True, format="ISO8601")
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            timestamp_field, f"expected ISO 8601 timestamps with an offset ({exc})"
        ) from exc
    return frame


def detect_skew(
    project: Project,
    service: str,
    predictions: pd.DataFrame,
    *,
    timestamp_field: str,
    entity_fields: Sequence[str],
    rtol: float = 1e-6,
    atol: float = 1e-9,
    max_mismatch_rate: float = 0.01,
    sample: int | None = None,
) -> SkewReport:
    """Compare served features with their point-in-time offline recomputation, per feature.

    Args:
        project: the project whose offline store and definitions recompute the features.
        service: the feature service the deployment serves.
        predictions: the log as :func:`~flywheel.serving.predlog.predictions_frame` reads it
            (no prefix); rows with a ``status`` other than ``"ok"`` are left out.
        timestamp_field: the request field holding each request's lookup time.
        entity_fields: the request fields the recomputation needs besides the timestamp: the
            views' join keys and the request transformations' inputs.
        rtol: relative tolerance for numbers.
        atol: absolute tolerance for numbers.
        max_mismatch_rate: a feature is skewed when its mismatch rate exceeds this.
        sample: compare a seeded random sample of this many rows instead of all of them.

    Returns:
        One :class:`FeatureSkew` per service feature that was logged (views' features, then
        request features), in service order.

    Raises:
        ValidationError: a bad option, a missing ``request_json`` column, a logged request
            without one of ``entity_fields`` or the timestamp, an unparseable timestamp, or a
            log that holds none of the service's features.
    """
    from flywheel.data.retrieval import get_historical_features
    from flywheel.data.transforms import apply_transformation_rows, apply_vectorized

    _check_options(rtol, atol, max_mismatch_rate, sample)
    if "request_json" not in predictions.columns:
        raise ValidationError(
            "request_json", "predictions has no request_json column; read it with predictions_frame"
        )
    rows = predictions
    if "status" in rows.columns:
        rows = rows[rows["status"] == "ok"]
    if sample is not None and sample < len(rows):
        rows = rows.sample(n=sample, random_state=0)
    rows = rows.reset_index(drop=True)

    svc, views = project.definitions.service(service)
    view_columns: list[str] = []
    for view in views:
        view_columns += view.output_columns()
    expected = [*view_columns, *svc.request_features]
    names = [n for n in expected if n in predictions.columns]
    if not names:
        raise ValidationError(
            "predictions",
            f"the log holds none of service {service!r}'s features ({', '.join(expected)})",
        )
    if rows.empty:
        empty = [FeatureSkew(n, 0, 0, 0.0, None, None, 0.0, 0.0, False) for n in names]
        return SkewReport(service, 0, max_mismatch_rate, empty)

    entities = _entity_frame(list(rows["request_json"]), timestamp_field, list(entity_fields))
    offline = get_historical_features(
        project.offline, entities, views, timestamp_column=timestamp_field
    ).to_pandas()
    user = {t.name: t for t in project.definitions.transformations(service)}
    for name in svc.request_features:
        if name in user:
            offline[name] = apply_transformation_rows(user[name], offline)
        else:
            offline[name] = apply_vectorized(name, offline[timestamp_field])

    features: list[FeatureSkew] = []
    n = len(rows)
    for name in names:
        served_col, offline_col = rows[name].tolist(), offline[name].tolist()
        mismatched = 0
        diffs: list[float] = []
        for s, o in zip(served_col, offline_col, strict=True):
            if not values_match(s, o, rtol=rtol, atol=atol):
                mismatched += 1
            if _is_number(s) and _is_number(o) and not (_is_null(s) or _is_null(o)):
                diffs.append(abs(float(s) - float(o)))
        rate = mismatched / n
        features.append(
            FeatureSkew(
                name=name,
                compared=n,
                mismatched=mismatched,
                mismatch_rate=rate,
                mean_abs_diff=sum(diffs) / len(diffs) if diffs else None,
                max_abs_diff=max(diffs) if diffs else None,
                served_null_rate=sum(_is_null(v) for v in served_col) / n,
                offline_null_rate=sum(_is_null(v) for v in offline_col) / n,
                skewed=rate > max_mismatch_rate,
            )
        )
    return SkewReport(service, n, max_mismatch_rate, features)
