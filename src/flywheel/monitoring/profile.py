"""Reference profiles: what the training data looked like, captured once, compared against later.

A :class:`ReferenceProfile` holds one :class:`FeatureProfile` per feature and is all the drift
checks need, so the raw training data never has to be kept around for monitoring:

* numeric features: count, missing rate, mean/std/min/max, fixed bin edges at the reference
  deciles (``bins`` quantiles; repeated edges of heavily tied data are merged; the first and last
  bins are open-ended so every future value has a bin), the count per bin, and a 101-point
  quantile grid with the exact reference CDF at each grid point (for KS without the raw data);
* categorical features: the 50 most frequent categories with their counts, one ``other`` bucket
  for the rest, the names in ``other`` (up to 1,000; beyond that unseen categories cannot be told
  from rare ones), and an ``unseen`` bucket that is empty at reference time by definition.

Every feature also has an explicit missing bucket. ``to_json`` is canonical (sorted keys, no
whitespace, no NaN), so equal profiles have equal bytes and a profile can be stored as a
content-addressed blob.

Examples:
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"distance": [100.0, 250.0, 900.0, None], "carrier": list("AABA")})
    >>> profile = build_profile(frame, categorical=["carrier"], bins=2)
    >>> profile.feature("distance").bin_labels()
    ('≤ 250', '> 250', 'missing')
    >>> profile.feature("carrier").fractions()
    (0.75, 0.25, 0.0, 0.0, 0.0)
    >>> ReferenceProfile.from_json(profile.to_json()) == profile
    True
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flywheel.errors import NotFound, ValidationError
from flywheel.monitoring._buckets import (
    as_category_strings,
    as_float_array,
    count_categorical,
    count_numeric,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pandas as pd

__all__ = [
    "GRID_POINTS",
    "MAX_KNOWN_CATEGORIES",
    "TOP_CATEGORIES",
    "FeatureProfile",
    "ReferenceProfile",
    "build_profile",
]

GRID_POINTS = 101
"""Quantiles kept per numeric feature: 0%, 1%, ..., 100%."""
TOP_CATEGORIES = 50
"""Categories that get a bucket of their own; the rest share ``other``."""
MAX_KNOWN_CATEGORIES = 1000
"""Most names kept for ``other``; past this, unseen categories are counted as ``other``."""

_FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


class FeatureProfile(BaseModel):
    """The reference distribution of one feature (see the module docstring for the buckets)."""

    model_config = _FROZEN

    name: str
    kind: Literal["numeric", "categorical"]
    count: int = Field(ge=0)
    missing_count: int = Field(ge=0)
    bucket_counts: tuple[int, ...]
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    bin_edges: tuple[float, ...] = ()
    quantiles: tuple[float, ...] = ()
    quantile_cdf: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    other_categories: tuple[str, ...] | None = ()

    @model_validator(mode="after")
    def _check_shape(self) -> FeatureProfile:
        expected = len(self.bin_edges) + 1 if self.kind == "numeric" else len(self.categories) + 2
        if len(self.bucket_counts) != expected:
            raise ValueError(f"{self.name}: expected {expected} bucket counts")
        if any(c < 0 for c in self.bucket_counts):
            raise ValueError(f"{self.name}: bucket counts must be >= 0")
        if sum(self.bucket_counts) + self.missing_count != self.count:
            raise ValueError(f"{self.name}: bucket counts and missing do not add up to count")
        if any(b <= a for a, b in itertools.pairwise(self.bin_edges)):
            raise ValueError(f"{self.name}: bin edges must increase strictly")
        if len(self.quantiles) != len(self.quantile_cdf) or len(self.quantiles) not in (
            0,
            GRID_POINTS,
        ):
            raise ValueError(f"{self.name}: expected {GRID_POINTS} quantiles and CDF values")
        return self

    @property
    def missing_rate(self) -> float:
        """Return the share of reference rows without a value (0.0 for an empty reference)."""
        return self.missing_count / self.count if self.count else 0.0

    @property
    def n_valid(self) -> int:
        """Return the number of reference rows with a value."""
        return self.count - self.missing_count

    def fractions(self) -> tuple[float, ...]:
        """Return the reference share of rows per bucket, the missing bucket last."""
        total = max(self.count, 1)
        return tuple(c / total for c in (*self.bucket_counts, self.missing_count))

    def bin_labels(self) -> tuple[str, ...]:
        """Return a display label per bucket, matching :meth:`fractions`."""
        if self.kind == "categorical":
            return (*self.categories, "(other)", "(unseen)", "missing")
        edges = self.bin_edges
        if not edges:
            return ("all values", "missing")
        inner = [f"({_fmt(a)}, {_fmt(b)}]" for a, b in itertools.pairwise(edges)]
        return (f"≤ {_fmt(edges[0])}", *inner, f"> {_fmt(edges[-1])}", "missing")


class ReferenceProfile(BaseModel):
    """Per-feature reference distributions of a model's training data."""

    model_config = _FROZEN

    kind: Literal["flywheel.reference_profile"] = "flywheel.reference_profile"
    version: Literal[1] = 1
    n_rows: int = Field(ge=0)
    bins: int = Field(ge=1)
    features: tuple[FeatureProfile, ...]

    @model_validator(mode="after")
    def _check_names(self) -> ReferenceProfile:
        names = self.feature_names()
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        return self

    def feature_names(self) -> list[str]:
        """Return the profiled feature names, in column order."""
        return [f.name for f in self.features]

    def feature(self, name: str) -> FeatureProfile:
        """Return the profile of feature ``name``.

        Raises:
            NotFound: If the profile has no such feature.
        """
        for feature in self.features:
            if feature.name == name:
                return feature
        raise NotFound(f"no feature {name!r} in the reference profile", context={"name": name})

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (lists, numbers, strings; no NaN or infinity)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any) -> ReferenceProfile:
        """Rebuild a profile from :meth:`to_dict` output.

        Raises:
            ValidationError: If ``data`` is not a valid profile.
        """
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise ValidationError("profile", str(exc)) from exc

    def to_json(self) -> bytes:
        """Return canonical JSON bytes: sorted keys, no whitespace, UTF-8."""
        text = json.dumps(
            self.to_dict(),
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
            ensure_ascii=False,
        )
        return text.encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> ReferenceProfile:
        """Rebuild a profile from :meth:`to_json` bytes.

        Raises:
            ValidationError: If ``data`` is not JSON or not a valid profile.
        """
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise ValidationError("profile", f"not JSON: {exc}") from exc
        return cls.from_dict(parsed)


def build_profile(
    data: pd.DataFrame, *, categorical: Sequence[str] = (), bins: int = 10
) -> ReferenceProfile:
    """Profile every column of ``data``; ``categorical`` names the categorical ones.

    Columns that are not numeric (strings, booleans, pandas categoricals) are profiled as
    categorical even when not listed; datetime columns must be converted first.

    Args:
        data: The reference (training) features, one column per feature.
        categorical: Columns to profile as categories.
        bins: Quantile bins per numeric feature (fewer when the data has heavy ties).

    Raises:
        ValidationError: On a bad ``bins``, a categorical name that is not a column, a
            non-string column name, or a datetime column.
    """
    import pandas as pd

    if not isinstance(bins, int) or not 1 <= bins <= 1000:
        raise ValidationError("bins", "expected an integer between 1 and 1000")
    missing = [c for c in categorical if c not in data.columns]
    if missing:
        raise ValidationError("categorical", f"not columns of the data: {missing}")
    features: list[FeatureProfile] = []
    for name in data.columns:
        if not isinstance(name, str):
            raise ValidationError("data", f"column names must be strings, got {name!r}")
        column = data[name]
        dtype = column.dtype
        if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
            raise ValidationError("data", f"column {name!r} is {dtype}; convert it to a number")
        is_numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        if name in categorical or not is_numeric:
            features.append(_categorical_profile(name, column))
        else:
            features.append(_numeric_profile(name, as_float_array(column), bins))
    return ReferenceProfile(n_rows=len(data), bins=bins, features=tuple(features))


def _numeric_profile(name: str, values: npt.NDArray[np.float64], bins: int) -> FeatureProfile:
    import numpy as np

    finite = values[np.isfinite(values)]
    stats: dict[str, float | None] = {"mean": None, "std": None, "min": None, "max": None}
    edges: tuple[float, ...] = ()
    grid: tuple[float, ...] = ()
    if finite.size:
        # Quantiles by the inverted CDF (the smallest value with F(x) >= p) are data values, so
        # edges and grid points are finite and readable, and the exact reference CDF at them is
        # well defined. One sort serves every level; integer arithmetic keeps ceil(n * p) exact.
        ordered = np.sort(finite)
        n = ordered.size

        def pick(numerators: range, denominator: int) -> list[float]:
            return [
                float(ordered[max((n * k + denominator - 1) // denominator - 1, 0)])
                for k in numerators
            ]

        edges = tuple(sorted(set(pick(range(1, bins), bins))))
        grid = tuple(pick(range(GRID_POINTS), GRID_POINTS - 1))
        with np.errstate(all="ignore"):
            raw = {
                "mean": float(np.mean(finite)),
                "std": float(np.std(finite, ddof=1)) if finite.size > 1 else 0.0,
                "min": float(finite.min()),
                "max": float(finite.max()),
            }
        stats = {k: (v if np.isfinite(v) else None) for k, v in raw.items()}
    counts = count_numeric(values, edges, grid)
    n_valid = max(counts.n_valid, 1)
    return FeatureProfile(
        name=name,
        kind="numeric",
        count=counts.n_rows,
        missing_count=counts.missing,
        bucket_counts=counts.buckets,
        bin_edges=edges,
        quantiles=grid,
        quantile_cdf=tuple(c / n_valid for c in counts.at_grid),
        **stats,
    )


def _categorical_profile(name: str, column: pd.Series) -> FeatureProfile:
    frequencies = as_category_strings(column).value_counts(dropna=True)
    # Most frequent first, ties by name, so the same data always gives the same profile.
    ranked = sorted(
        ((str(k), int(v)) for k, v in frequencies.items()), key=lambda kv: (-kv[1], kv[0])
    )
    top = tuple(k for k, _ in ranked[:TOP_CATEGORIES])
    rest = sorted(k for k, _ in ranked[TOP_CATEGORIES:])
    others = tuple(rest) if len(rest) <= MAX_KNOWN_CATEGORIES else None
    counts = count_categorical(column, top, others)
    return FeatureProfile(
        name=name,
        kind="categorical",
        count=counts.n_rows,
        missing_count=counts.missing,
        bucket_counts=counts.buckets,
        categories=top,
        other_categories=others,
    )
