"""Feature definitions for the NYC flights 2013 example (written by ``flywheel init``).

Predict whether a flight arrives more than 15 minutes late from the weather at its origin airport,
the aircraft's attributes, the origin's recent departure delays and request-time features.
``flywheel apply`` registers every definition in this module and prints the plan first.
"""

from __future__ import annotations

import bisect
from datetime import timedelta

from flywheel.data import request_transformation
from flywheel.data.specs import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Source,
    WindowAggregation,
)

# Sources: the tables ingested into the offline store, with their schemas.
flights = Source(
    name="flights",
    timestamp_field="sched_dep_ts",
    description="Departures from NYC in 2013; dep_ts is the actual departure (null if cancelled).",
    fields=[
        Field(name="year", dtype="int64", nullable=False, min=2013, max=2013),
        Field(name="month", dtype="int64", nullable=False, min=1, max=12),
        Field(name="day", dtype="int64", nullable=False, min=1, max=31),
        Field(name="carrier", dtype="string", nullable=False),
        Field(name="flight", dtype="int64", nullable=False),
        Field(name="tailnum", dtype="string"),
        Field(name="origin", dtype="string", nullable=False),
        Field(name="dest", dtype="string", nullable=False),
        Field(name="distance", dtype="float64", nullable=False, min=0, max=10000),
        Field(name="sched_dep_ts", dtype="timestamp", nullable=False),
        Field(name="dep_ts", dtype="timestamp"),
        Field(name="dep_delay", dtype="float64"),
        Field(name="arr_delay", dtype="float64"),
    ],
)

weather = Source(
    name="weather",
    timestamp_field="time_hour",
    description="Hourly weather observations at the three NYC airports.",
    fields=[
        Field(name="origin", dtype="string", nullable=False),
        Field(name="time_hour", dtype="timestamp", nullable=False),
        Field(name="temp", dtype="float64"),
        Field(name="dewp", dtype="float64"),
        Field(name="humid", dtype="float64", min=0, max=100),
        Field(name="wind_dir", dtype="float64"),
        Field(name="wind_speed", dtype="float64", min=0),
        Field(name="wind_gust", dtype="float64", min=0),
        Field(name="precip", dtype="float64", min=0),
        Field(name="pressure", dtype="float64"),
        Field(name="visib", dtype="float64", min=0),
    ],
)

planes = Source(
    name="planes",
    timestamp_field=None,
    description="Aircraft attributes by tail number (static).",
    fields=[
        Field(name="tailnum", dtype="string", nullable=False),
        Field(name="year", dtype="float64"),
        Field(name="engines", dtype="int64", nullable=False),
        Field(name="seats", dtype="int64", nullable=False),
    ],
)

# Entities: what features are keyed by.
airport = Entity(name="airport", join_key="origin")
aircraft = Entity(name="aircraft", join_key="tailnum")
airline = Entity(name="airline", join_key="carrier")

# Feature views.
weather_hourly = FeatureView(
    name="weather_hourly",
    entity="airport",
    join_key="origin",
    source="weather",
    timestamp_field="time_hour",
    features=["temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib"],
    ttl=timedelta(hours=3),
    freshness_sla=timedelta(hours=2),
    description="Latest hourly weather at the origin airport, at most 3 hours old.",
    owner="demo",
)

aircraft_attributes = FeatureView(
    name="aircraft",
    entity="aircraft",
    join_key="tailnum",
    source="planes",
    timestamp_field=None,
    features=["year", "engines", "seats"],
    ttl=None,
    description="Static aircraft attributes.",
    owner="demo",
)

origin_delay_7d = WindowAggregation(
    name="origin_dep_delay_mean_7d",
    entity="airport",
    join_key="origin",
    source="flights",
    timestamp_field="dep_ts",
    column="dep_delay",
    function="mean",
    window=timedelta(days=7),
    freshness_sla=timedelta(hours=1),
    description="Mean departure delay at the origin over the previous 7 days of departures.",
)

carrier_delay_7d = WindowAggregation(
    name="carrier_dep_delay_mean_7d",
    entity="airline",
    join_key="carrier",
    source="flights",
    timestamp_field="dep_ts",
    column="dep_delay",
    function="mean",
    window=timedelta(days=7),
    freshness_sla=timedelta(hours=1),
    description="Mean departure delay of the carrier's NYC departures over the previous 7 days.",
)


# A request-time transformation: plain Python over request fields, run by the same code in
# training (per row of the training set) and serving (per request). Its source is hashed, so
# editing it shows up in `flywheel apply`'s plan, and servers refuse code that was not applied.
@request_transformation(inputs=["distance"], dtype="int64")
def distance_band(distance: float) -> int:
    """Haul band: 0 under 500 miles, 1 under 1,000, 2 under 2,000, 3 from 2,000 miles."""
    return bisect.bisect_right((500.0, 1000.0, 2000.0), distance)


delay_model_features = FeatureService(
    name="delay_model",
    features=[
        *(f"weather_hourly:{f}" for f in weather_hourly.features),
        *(f"aircraft:{f}" for f in aircraft_attributes.features),
        "origin_dep_delay_mean_7d",
        "carrier_dep_delay_mean_7d",
    ],
    request_features=["hour_of_day", "day_of_week", distance_band.name],
)
