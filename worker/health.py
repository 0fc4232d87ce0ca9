"""Container health check of a worker: `python3 -m worker.health` exits 0 when a worker in this
container (sharing its temporary directory) has written its heartbeat to Redis within its
heartbeat window. The upkeep thread marks each beat that reached Redis in a file (`mark`); the
check reads that file's age and nothing else, with the standard library only: it used to import
the worker's settings and store (torch), 1.5 s of CPU every 10 s, a sixth of a core per worker
container. And on a host network every container has the host's name, so a check by host name
found any worker of the host alive."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def alive_file() -> Path:
    return Path(tempfile.gettempdir()) / "rapid-adapt-worker-alive"


def mark(window: float) -> None:
    """A heartbeat reached Redis: the file's time is the beat's, its text the heartbeat window."""
    path = alive_file()
    part = path.with_name(f"{path.name}.{os.getpid()}")
    part.write_text(str(window))
    os.replace(part, path)  # whole or not at all for a check reading it meanwhile


def healthy() -> bool:
    try:
        path = alive_file()
        return time.time() - path.stat().st_mtime <= float(path.read_text())
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(0 if healthy() else 1)
