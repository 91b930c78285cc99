"""``import flywheel`` stays light, and the CLI's console script is wired."""

from __future__ import annotations

import subprocess
import sys


def test_import_flywheel_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys, flywheel, flywheel.errors, flywheel.config, flywheel.project;"
        "heavy = [m for m in ('pandas', 'pyarrow', 'duckdb', 'lightgbm', 'sklearn', 'scipy',"
        " 'sqlalchemy', 's3fs', 'starlette', 'redis') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_version_is_exposed() -> None:
    import flywheel

    assert flywheel.__version__.count(".") == 2


def test_public_api_is_pinned() -> None:
    import flywheel

    assert flywheel.__all__ == [
        "AlreadyExists",
        "BackendUnavailable",
        "Conflict",
        "DigestMismatch",
        "FlywheelError",
        "IntegrityError",
        "InvalidArgument",
        "NotFitted",
        "NotFound",
        "ValidationError",
        "__version__",
        "models",
    ]
    for name in flywheel.__all__:
        assert hasattr(flywheel, name)
