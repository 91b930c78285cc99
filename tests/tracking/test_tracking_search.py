"""Searching runs on SQLite and PostgreSQL: every operator, precedence, ordering, paging, errors."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from flywheel.errors import ValidationError
from flywheel.storage import schema
from flywheel.storage.blobs import BlobStore
from flywheel.storage.sql import Database
from flywheel.tracking.client import TrackingClient
from flywheel.tracking.search import parse_filter
from flywheel.tracking.store import Metric, RunStore


@dataclass
class Corpus:
    runs: RunStore
    ids: dict[str, str]  # label -> run id

    def labels(self, filter: str = "", experiments: object = None) -> set[str]:
        page = self.runs.search_runs(experiments, filter, max_results=1000)  # type: ignore[arg-type]
        by_id = {v: k for k, v in self.ids.items()}
        return {by_id[r.run_id] for r in page.runs}

    def ordered(self, order_by: list[str]) -> list[str]:
        page = self.runs.search_runs(order_by=order_by, max_results=1000)
        by_id = {v: k for k, v in self.ids.items()}
        return [by_id[r.run_id] for r in page.runs]


@pytest.fixture
def runs(database: Database) -> RunStore:
    return RunStore(database)


@pytest.fixture
def corpus(runs: RunStore) -> Corpus:
    """Four runs: r1 finished (auc 0.7 then 0.8), r2 failed, r3 nested in r1 (auc NaN), r4 bare."""
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    r1 = runs.create_run("alpha", name="base", tags={"team": "ml", "note": "Hello World"})
    runs.log_params(r1.run_id, {"model": "lgbm", "lr": 0.1, "trees": 100})
    runs.log_metrics(
        r1.run_id,
        [Metric("auc", 0.7, 0, t0), Metric("auc", 0.8, 1, t0), Metric("loss", 0.3)],
    )
    runs.finish_run(r1.run_id)
    r2 = runs.create_run("alpha", name="wide", tags={"team": "data"})
    runs.log_params(r2.run_id, {"model": "sklearn", "lr": 0.01, "trees": "auto"})
    runs.log_metrics(r2.run_id, [Metric("auc", 0.6), Metric("val auc", 0.5)])
    runs.finish_run(r2.run_id, status="failed")
    r3 = runs.create_run("beta", parent_run_id=r1.run_id, tags={"team": "ml"})
    runs.log_params(r3.run_id, {"model": "lgbm", "lr": 1e-05, "trees": 20})
    runs.log_metrics(r3.run_id, [Metric("auc", float("nan")), Metric("loss", 0.5)])
    r4 = runs.create_run("beta", tags={"quote": "it's"})
    return Corpus(runs, {"r1": r1.run_id, "r2": r2.run_id, "r3": r3.run_id, "r4": r4.run_id})


ALL = {"r1", "r2", "r3", "r4"}

CASES = [
    ("", ALL),
    ("   ", ALL),
    # metrics: the latest value; NaN and missing match no comparison
    ("metrics.auc > 0.65", {"r1"}),
    ("metrics.auc >= 0.6", {"r1", "r2"}),
    ("metrics.auc < 0.7", {"r2"}),
    ("metrics.auc <= 0.8", {"r1", "r2"}),
    ("metrics.auc = 0.8", {"r1"}),
    ("metrics.auc != 0.8", {"r2"}),
    ("metrics.auc <> 0.8", {"r2"}),
    ("not metrics.auc > 0.65", {"r2", "r3", "r4"}),
    ("metrics.auc in (0.6, 0.8)", {"r1", "r2"}),
    ("metrics.auc not in (0.6)", {"r1"}),
    ("metrics.`auc` > 0.65", {"r1"}),
    ('metrics."auc" > 0.65', {"r1"}),
    ("metric.auc > .65", {"r1"}),
    ("metrics.`val auc` = 5e-1", {"r2"}),
    ("metrics.loss >= 0.3 and metrics.loss < 0.4", {"r1"}),
    # params: strings, or numbers when the literal is a number
    ("params.model = 'lgbm'", {"r1", "r3"}),
    ('params.model != "lgbm"', {"r2"}),
    ("params.model in ('lgbm', 'xgb')", {"r1", "r3"}),
    ("params.model not in ('lgbm')", {"r2"}),
    ("params.trees > 50", {"r1"}),
    ("params.trees < 50", {"r3"}),
    ("params.trees = '100'", {"r1"}),
    ("params.trees > '50'", {"r2"}),  # as strings: 'auto' > '50' > '20' > '100'
    ("params.lr < 0.05", {"r2", "r3"}),
    ("params.lr = 0.1", {"r1"}),
    ("params.lr = 1E-5", {"r3"}),
    ("params.trees in (100, 'auto')", {"r1", "r2"}),
    ("params.trees not in (100, 'auto')", {"r3"}),
    ("params.missing = 'x' or params.missing != 'x'", set()),
    ("not params.missing = 'x'", ALL),
    # tags, like and ilike
    ("tags.team = 'ml'", {"r1", "r3"}),
    ("tags.quote = 'it''s'", {"r4"}),
    ('tags.quote = "it\'s"', {"r4"}),
    ("tags.note like 'Hello%'", {"r1"}),
    ("tags.note like 'hello%'", set()),
    ("tags.note ilike 'hello%'", {"r1"}),
    ("tags.note like 'Hello_World'", {"r1"}),
    ("tags.note like 'Hello\\_World'", set()),
    ("tags.note not like 'Hello%'", set()),
    ("tags.note not ilike 'x%'", {"r1"}),
    ("tags.team like '%a%'", {"r2"}),
    # attributes, bare or prefixed
    ("attributes.status = 'failed'", {"r2"}),
    ("status != 'running'", {"r1", "r2"}),
    ("status in ('finished', 'failed')", {"r1", "r2"}),
    ("attribute.name = 'base'", {"r1"}),
    ("name like 'w%'", {"r2"}),
    ("name != 'base'", {"r2"}),
    ("experiment = 'beta'", {"r3", "r4"}),
    ("end_time >= '2000-01-01T00:00:00+00:00'", {"r1", "r2"}),
    ("end_time < 946684800000", set()),
    ("not end_time < '2999-01-01T00:00:00Z'", {"r3", "r4"}),
    # precedence: not > and > or; parentheses; keywords in any case
    ("tags.team = 'data' or params.model = 'lgbm' and experiment = 'beta'", {"r2", "r3"}),
    ("(tags.team = 'data' or params.model = 'lgbm') and experiment = 'beta'", {"r3"}),
    ("not tags.team = 'ml' and experiment = 'beta'", {"r4"}),
    ("not (tags.team = 'ml' and experiment = 'beta')", {"r1", "r2", "r4"}),
    ("NOT not status = 'failed'", {"r2"}),
    ("status = 'failed' OR status = 'finished' AND name = 'nope'", {"r2"}),
    ("((status = 'failed'))", {"r2"}),
]


@pytest.mark.parametrize(("filter", "expected"), CASES)
def test_filter_operators(corpus: Corpus, filter: str, expected: set[str]) -> None:
    assert corpus.labels(filter) == expected


def test_filters_on_ids_and_times(corpus: Corpus) -> None:
    r1, r3 = (corpus.runs.get_run(corpus.ids[k]) for k in ("r1", "r3"))
    assert corpus.labels(f"attributes.parent_run_id = '{r1.run_id}'") == {"r3"}
    assert corpus.labels(f"run_id in ('{r1.run_id}', '{r3.run_id}')") == {"r1", "r3"}
    assert corpus.labels(f"start_time >= '{r3.start_time.isoformat()}'") == {"r3", "r4"}
    millis = r3.start_time.timestamp() * 1000
    assert corpus.labels(f"start_time < {millis}") == {"r1", "r2"}
    local = r3.start_time.astimezone(UTC).replace(tzinfo=None).isoformat() + "-05:00"
    assert corpus.labels(f"start_time > '{local}'") == set()  # five hours after r3's start


def test_experiments_restrict_the_search(corpus: Corpus) -> None:
    assert corpus.labels(experiments=["alpha"]) == {"r1", "r2"}
    assert corpus.labels(experiments="beta") == {"r3", "r4"}
    assert corpus.labels(experiments=[]) == set()
    assert corpus.labels("metrics.auc > 0", experiments=["beta", "alpha"]) == {"r1", "r2"}
    with pytest.raises(ValidationError) as info:
        corpus.labels(experiments=["../x"])
    assert info.value.field == "experiments"


def test_results_carry_the_whole_run(corpus: Corpus) -> None:
    (run,) = corpus.runs.search_runs(filter="name = 'base'").runs
    assert run.params == {"model": "lgbm", "lr": "0.1", "trees": "100"}
    assert run.metrics == {"auc": 0.8, "loss": 0.3}
    assert run.tags == {"team": "ml", "note": "Hello World"}
    assert run.status == "finished"


def test_ordering(corpus: Corpus) -> None:
    by_id = sorted(["r3", "r4"], key=lambda k: corpus.ids[k])
    assert corpus.ordered(["metrics.auc DESC"]) == ["r1", "r2", *by_id]  # NaN, missing last
    assert corpus.ordered(["metrics.auc asc"]) == ["r2", "r1", *by_id]
    assert corpus.ordered(["params.model", "attributes.name DESC"]) == ["r1", "r3", "r2", "r4"]
    assert corpus.ordered([]) == ["r4", "r3", "r2", "r1"]  # default: newest first
    assert corpus.ordered(["start_time"]) == ["r1", "r2", "r3", "r4"]
    assert corpus.ordered(["tags.team DESC", "metrics.loss DESC"]) == ["r3", "r1", "r2", "r4"]


@pytest.mark.parametrize(
    "order_by",
    [["metrics.auc sideways"], ["bogus"], ["metrics.auc DESC extra"], ["metrics.a;b"], ["x"] * 11],
)
def test_bad_order_by(runs: RunStore, order_by: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        runs.search_runs(order_by=order_by)
    assert info.value.field == "order_by"


def test_order_by_must_be_a_list(runs: RunStore) -> None:
    with pytest.raises(ValidationError) as info:
        runs.search_runs(order_by="metrics.auc")
    assert info.value.field == "order_by"


@pytest.mark.parametrize(
    ("filter", "position", "token"),
    [
        ("metrics.auc >", 13, ""),
        ("metrics.auc > 'x'", 12, ">"),
        ("params.lr = 0.1 and", 19, ""),
        ("foo = 1", 0, "foo"),
        ("(status = 'x'", 13, ""),
        ("status = 'x')", 12, ")"),
        ("metrics.auc ~ 1", 12, "~"),
        ("status = 'unterminated", 9, "'"),
        ("attributes.colour = 'x'", 0, "attributes.colour"),
        ("start_time > 'yesterday'", 0, "yesterday"),
        ("start_time > '2024-01-01T00:00:00'", 0, "2024-01-01T00:00:00"),
        ("metrics.auc like '0.%'", 12, "like"),
        ("params.x in ()", 13, ")"),
        ("status not = 'x'", 11, "="),
        ("metrics.a;b > 1", 9, ";"),
        ("status = 1", 7, "="),
        ("status = 'a' and and", 17, "and"),
        ("params.x like 3", 14, "3"),
        ("metrics.`` > 1", 0, "metrics.``"),
        ("metrics.x > 1e999", 12, "1e999"),
    ],
)
def test_bad_filters_name_position_and_token(
    runs: RunStore, filter: str, position: int, token: str
) -> None:
    with pytest.raises(ValidationError) as info:
        runs.search_runs(filter=filter)
    assert info.value.field == "filter"
    assert info.value.context["position"] == position
    assert info.value.context["token"] == token
    assert f"position {position}" in str(info.value)


def test_filter_size_and_depth_limits() -> None:
    with pytest.raises(ValidationError, match="10000 characters"):
        parse_filter("status = 'x' or " * 1000)
    with pytest.raises(ValidationError, match="deeper than 100"):
        parse_filter("(" * 150 + "status = 'x'" + ")" * 150)
    assert parse_filter("(" * 50 + "status = 'x'" + ")" * 50) is not None


def _make_paging_runs(runs: RunStore, count: int) -> list[str]:
    ids = []
    for i in range(count):
        run = runs.create_run("paging")
        ids.append(run.run_id)
        runs.log_params(run.run_id, {"group": str(i % 7)})
        if i % 4:  # every fourth run has no score: NULLs in the ordering
            runs.log_metrics(run.run_id, [Metric("score", float(i % 10))])
    return ids


def _all_pages(runs: RunStore, **kwargs: object) -> list[list[str]]:
    pages, token = [], None
    while True:
        page = runs.search_runs(["paging"], page_token=token, **kwargs)  # type: ignore[arg-type]
        pages.append([r.run_id for r in page.runs])
        token = page.next_page_token
        if token is None:
            return pages


def test_paging_through_250_runs_has_no_duplicates_or_gaps(runs: RunStore) -> None:
    ids = _make_paging_runs(runs, 250)
    order = ["metrics.score DESC", "params.group"]
    pages = _all_pages(runs, order_by=order, max_results=100)
    assert [len(p) for p in pages] == [100, 100, 50]
    flat = [run_id for page in pages for run_id in page]
    assert len(set(flat)) == 250 and set(flat) == set(ids)
    one_page = runs.search_runs(["paging"], order_by=order, max_results=1000)
    assert [r.run_id for r in one_page.runs] == flat and one_page.next_page_token is None
    # the order really is score desc (missing last), then group, then run id
    runs_by_id = {r.run_id: r for r in one_page.runs}

    def key(run_id: str) -> tuple[float, str, str]:
        run = runs_by_id[run_id]
        score = run.metrics.get("score")
        return (1.0 if score is None else -score, run.params["group"], run_id)

    assert flat == sorted(flat, key=key)
    # a filter and the default order page the same way
    filtered = _all_pages(runs, filter="params.group != '3'", max_results=100)
    expected = [r.run_id for r in runs.list_runs("paging") if r.params["group"] != "3"][::-1]
    assert [run_id for page in filtered for run_id in page] == expected
    assert [len(p) for p in filtered] == [100, 100, len(expected) - 200]


def test_pages_stay_correct_when_runs_are_added_between_pages(runs: RunStore) -> None:
    ids = _make_paging_runs(runs, 30)
    first = runs.search_runs(["paging"], max_results=10)  # newest first
    runs.create_run("paging")  # newer than every run: sorts before the page already seen
    rest = _all_pages_from(runs, first.next_page_token, max_results=10)
    seen = [r.run_id for r in first.runs] + rest
    assert len(seen) == len(set(seen)) == 30 and set(seen) == set(ids)


def _all_pages_from(runs: RunStore, token: str | None, **kwargs: object) -> list[str]:
    out: list[str] = []
    while token is not None:
        page = runs.search_runs(["paging"], page_token=token, **kwargs)  # type: ignore[arg-type]
        out += [r.run_id for r in page.runs]
        token = page.next_page_token
    return out


def test_page_token_and_max_results_are_checked(runs: RunStore) -> None:
    _make_paging_runs(runs, 3)
    page = runs.search_runs(["paging"], "params.group != 'x'", max_results=1)
    assert page.next_page_token is not None
    for token in ("garbage!", "e30", page.next_page_token[:-3], "x" * 200_000):
        with pytest.raises(ValidationError) as info:
            runs.search_runs(["paging"], "params.group != 'x'", page_token=token)
        assert info.value.field == "page_token"
    with pytest.raises(ValidationError) as info:  # a token is tied to its query
        runs.search_runs(["paging"], "params.group != 'y'", page_token=page.next_page_token)
    assert info.value.field == "page_token"
    for bad in (0, 10_001, True, 1.5):
        with pytest.raises(ValidationError) as info:
            runs.search_runs(max_results=bad)  # type: ignore[arg-type]
        assert info.value.field == "max_results"


def test_client_search_sees_metrics_logged_just_before(
    database: Database, tmp_path: object
) -> None:
    client = TrackingClient(RunStore(database), BlobStore(str(tmp_path)), capture_code=False)
    with client, client.start_run("live") as run:
        run.log_metric("auc", 0.9)
        page = client.search_runs(["live"], "metrics.auc > 0.5")
        assert [r.run_id for r in page.runs] == [run.run_id]


def _bulk_runs(database: Database, count: int) -> None:
    """Insert ``count`` runs with 3 params, 1 tag and 2 metrics x 5 steps each, in bulk."""
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    runs, params, tags, metrics = [], [], [], []
    for i in range(count):
        run_id = uuid.uuid4().hex
        start = t0 + timedelta(seconds=i)
        runs.append(
            dict(
                id=run_id,
                experiment="bench",
                name=f"run-{i}",
                parent_run_id=None,
                status="finished",
                start_time=start,
                end_time=start + timedelta(minutes=1),
            )
        )
        for key, value in (("model", ("lgbm", "sklearn")[i % 2]), ("lr", str(0.01 * (i % 10)))):
            params.append(dict(run_id=run_id, key=key, value=value))
        params.append(dict(run_id=run_id, key="trees", value=str(50 + i % 200)))
        tags.append(dict(run_id=run_id, key="team", value=("ml", "data", "ops")[i % 3]))
        for key in ("auc", "loss"):
            for step in range(5):
                point = (i % 100) / 100 + step / 1000
                metrics.append(
                    dict(run_id=run_id, key=key, value=point, is_nan=False, step=step, ts=start)
                )

    def insert(conn: object) -> None:
        for table, rows in (
            (schema.runs, runs),
            (schema.run_params, params),
            (schema.run_tags, tags),
            (schema.run_metrics, metrics),
        ):
            conn.execute(table.insert(), rows)  # type: ignore[attr-defined]

    database.transact(insert)


def test_search_timing_over_2000_runs(
    database: Database, runs: RunStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """Print (not assert) how long a filtered, ordered search over 2,000 runs takes."""
    _bulk_runs(database, 2000)
    if database.dialect == "postgresql":  # what autovacuum would do soon after a bulk load
        database.transact(
            lambda c: c.exec_driver_sql("ANALYZE runs, run_params, run_tags, run_metrics")
        )
    filter = "metrics.auc > 0.5 and params.model = 'lgbm' and tags.team != 'ops'"
    order = ["metrics.auc DESC"]
    runs.search_runs(["bench"], filter, order_by=order)  # warm up
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        page = runs.search_runs(["bench"], filter, order_by=order, max_results=100)
        timings.append(time.perf_counter() - started)
    # latest auc is (i % 100) / 100 + 0.004; model lgbm for even i; team ops when i % 3 == 2
    expected = sum(1 for i in range(2000) if i % 100 >= 50 and i % 2 == 0 and i % 3 != 2)
    count = len(runs.search_runs(["bench"], filter, max_results=10_000).runs)
    assert count == expected and len(page.runs) == 100
    aucs = [r.metrics["auc"] for r in page.runs]
    assert aucs == sorted(aucs, reverse=True) and aucs[0] == pytest.approx(0.984)
    with capsys.disabled():
        best = min(timings) * 1000
        print(f"\n[{database.dialect}] search over 2,000 runs, {count} match: best {best:.1f} ms")
