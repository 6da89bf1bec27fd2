"""One writer per cache file, across processes (filelock's `<file>.lock` beside it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def lock_of(path: Path):
    from filelock import FileLock  # here: a warm cache never takes a lock

    return FileLock(str(path) + ".lock")


@contextmanager
def exclusive(path: Path, say) -> Iterator[bool]:
    """Holds `path`'s lock; yields True when another process held it first (and may have written
    `path` meanwhile: the caller looks again before working)."""
    from filelock import Timeout

    lock, waited = lock_of(path), False
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"{path}: another process is extracting it; waiting for it to finish")
        lock.acquire()
        waited = True
    try:
        yield waited
    finally:
        lock.release()
