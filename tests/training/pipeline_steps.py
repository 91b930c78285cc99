"""Module-level steps for the process-pool tests: a spawned worker imports them by name."""

from __future__ import annotations

import os
import time
from pathlib import Path

from flywheel.errors import ValidationError
from flywheel.training.pipeline import step


def rendezvous(mine: Path, theirs: Path, timeout_s: float) -> None:
    """Announce this step, then wait for the other one: only concurrent steps both get through."""
    mine.touch()
    deadline = time.monotonic() + timeout_s
    while not theirs.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{theirs.name} never appeared: the steps did not run concurrently")
        time.sleep(0.01)


@step(outputs=("left_pid",))
def left(meeting: str, timeout_s: float) -> dict[str, int]:
    rendezvous(Path(meeting) / "left", Path(meeting) / "right", timeout_s)
    return {"left_pid": os.getpid()}


@step(outputs=("right_pid",))
def right(meeting: str, timeout_s: float) -> dict[str, int]:
    rendezvous(Path(meeting) / "right", Path(meeting) / "left", timeout_s)
    return {"right_pid": os.getpid()}


@step(outputs=("pids",))
def join(left_pid: int, right_pid: int) -> dict[str, list[int]]:
    return {"pids": [left_pid, right_pid]}


@step(outputs=("square",))
def square(x: int, calls: str) -> dict[str, int]:
    """Square ``x`` and append a line to the ``calls`` file (counts runs across processes)."""
    with open(calls, "a") as out:
        out.write(f"{os.getpid()}\n")
    return {"square": x * x}


@step(outputs=("cube",))
def cube(x: int, calls: str) -> dict[str, int]:
    with open(calls, "a") as out:
        out.write(f"{os.getpid()}\n")
    return {"cube": x**3}


@step(outputs=("never",))
def refuse(x: int) -> dict[str, int]:
    raise ValidationError("x", f"expected an even number, got {x}")


@step(outputs=("pid",))
def crash(x: int) -> dict[str, int]:
    os._exit(3)
