"""Provenance: code version and packages tagged on every run; the training set recorded and read."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flywheel.errors import Conflict, ValidationError
from flywheel.storage.blobs import BlobStore
from flywheel.storage.sql import Database
from flywheel.tracking import TrainingSet
from flywheel.tracking.client import TrackingClient
from flywheel.tracking.provenance import package_versions
from flywheel.tracking.store import RunStore

DIGEST = "ab" * 32


@pytest.fixture
def client(database: Database, tmp_path: Path) -> Iterator[TrackingClient]:
    with TrackingClient(RunStore(database), BlobStore(str(tmp_path / "blobs"))) as c:
        yield c


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    _git(path, "init", "-q")
    (path / "train.py").write_text("print('v1')\n")
    _git(path, "add", "train.py")
    _git(path, "commit", "-q", "-m", "v1")
    monkeypatch.chdir(path)
    return path


def test_runs_record_the_commit_and_whether_the_tree_is_dirty(
    client: TrackingClient, repo: Path
) -> None:
    head = _git(repo, "rev-parse", "HEAD").strip()
    with client.start_run("prov") as clean:
        pass
    tags = clean.get().tags
    assert tags["flywheel.git.commit"] == head and tags["flywheel.git.dirty"] == "false"

    (repo / "notes.txt").write_text("untracked files do not make the tree dirty\n")
    with client.start_run("prov") as untracked:
        pass
    assert untracked.get().tags["flywheel.git.dirty"] == "false"

    (repo / "train.py").write_text("print('v2')\n")
    with client.start_run("prov") as dirty, client.start_run("prov") as child:
        pass
    assert dirty.get().tags["flywheel.git.dirty"] == "true"
    assert child.get().tags["flywheel.git.commit"] == head  # nested runs carry it too

    page = client.search_runs(["prov"], "tags.`flywheel.git.dirty` = 'true'")
    assert {r.run_id for r in page.runs} == {dirty.run_id, child.run_id}


def test_outside_a_repository_there_are_no_git_tags_and_no_error(
    client: TrackingClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(plain)
    with client.start_run("prov") as run:
        pass
    tags = run.get().tags
    assert "flywheel.git.commit" not in tags and "flywheel.git.dirty" not in tags
    packages = json.loads(tags["flywheel.packages"])
    assert packages == package_versions()
    for name in ("python", "flywheel", "numpy", "pandas", "scikit-learn", "lightgbm"):
        assert packages[name].count(".") >= 1


def test_without_git_installed_there_are_no_git_tags(
    client: TrackingClient, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(repo / "no-such-dir"))
    with client.start_run("prov") as run:
        pass
    assert "flywheel.git.commit" not in run.get().tags


def test_capture_can_be_turned_off_and_user_tags_win(
    database: Database, tmp_path: Path, repo: Path
) -> None:
    runs, blobs = RunStore(database), BlobStore(str(tmp_path / "blobs"))
    with TrackingClient(runs, blobs, capture_code=False) as quiet, quiet.start_run("p") as run:
        pass
    assert run.get().tags == {}
    with (
        TrackingClient(runs, blobs) as loud,
        loud.start_run("p", tags={"flywheel.git.dirty": "unknown"}) as run,
    ):
        pass
    assert run.get().tags["flywheel.git.dirty"] == "unknown"


def test_training_set_is_recorded_and_read_back(client: TrackingClient) -> None:
    start, end = datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 7, 1, tzinfo=UTC)
    spec = dict(
        feature_service="delays",
        service_version=3,
        entity_digest=DIGEST,
        start=start,
        end=end,
        rows=1000,
        view_versions={"weather": 2, "planes": 1},
    )
    with client.start_run("prov") as run:
        assert run.get().training_set is None
        recorded = run.log_training_set(**spec)  # type: ignore[arg-type]
        run.log_training_set(**spec)  # type: ignore[arg-type]  # the same again: no-op
        with pytest.raises(Conflict):
            run.log_training_set(**{**spec, "rows": 999})  # type: ignore[arg-type]
    stored = client.runs.get_run(run.run_id)
    assert (
        stored.training_set
        == recorded
        == TrainingSet("delays", 3, DIGEST, start, end, 1000, {"weather": 2, "planes": 1})
    )
    assert stored.tags["flywheel.training_set.feature_service"] == "delays"
    page = client.search_runs(["prov"], "tags.`flywheel.training_set.rows` >= 1000")
    assert [r.run_id for r in page.runs] == [run.run_id]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"feature_service": "../x"}, "feature_service"),
        ({"service_version": 0}, "service_version"),
        ({"service_version": True}, "service_version"),
        ({"entity_digest": "AB" * 32}, "entity_digest"),
        ({"start": datetime(2013, 1, 1)}, "start"),
        ({"end": datetime(2012, 1, 1, tzinfo=UTC)}, "end"),
        ({"rows": -1}, "rows"),
        ({"view_versions": {"weather": 0}}, "view_versions['weather']"),
        ({"view_versions": {"../w": 1}}, "view_versions"),
    ],
)
def test_bad_training_sets_are_refused(
    client: TrackingClient, change: dict[str, object], field: str
) -> None:
    spec: dict[str, object] = dict(
        feature_service="delays",
        service_version=1,
        entity_digest=DIGEST,
        start=datetime(2013, 1, 1, tzinfo=UTC),
        end=datetime(2013, 2, 1, tzinfo=UTC),
        rows=10,
    )
    with client.start_run("prov") as run:
        with pytest.raises(ValidationError) as info:
            run.log_training_set(**{**spec, **change})  # type: ignore[arg-type]
        assert info.value.field == field
        assert run.get().training_set is None
