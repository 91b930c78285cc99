"""``flywheel.yaml`` loading: defaults, resolution against the project dir, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.config import load_config
from flywheel.errors import NotFound, ValidationError


def test_relative_locations_resolve_against_the_project(tmp_path: Path) -> None:
    (tmp_path / "flywheel.yaml").write_text("project: p\nartifacts: blobs\n")
    cfg = load_config(tmp_path)
    assert cfg.artifacts == str(tmp_path.resolve() / "blobs")
    assert cfg.metadata == f"sqlite:///{tmp_path.resolve()}/.flywheel/metadata.db"
    assert cfg.serving.host == "127.0.0.1"


def test_remote_uris_are_kept(tmp_path: Path) -> None:
    (tmp_path / "flywheel.yaml").write_text(
        "project: p\nmetadata: postgresql://u@127.0.0.1:5432/db\nartifacts: s3://b/prefix\n"
    )
    cfg = load_config(tmp_path)
    assert cfg.metadata == "postgresql://u@127.0.0.1:5432/db"
    assert cfg.artifacts == "s3://b/prefix"


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="flywheel init"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("project: p\nbogus: 1\n", "bogus"),
        ("project: p\nserving:\n  port: -3\n", "serving.port"),
        ("artifacts: x\n", "project"),
        ("- a\n- b\n", "flywheel.yaml"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, field: str) -> None:
    (tmp_path / "flywheel.yaml").write_text(text)
    with pytest.raises(ValidationError) as info:
        load_config(tmp_path)
    assert info.value.field == field
