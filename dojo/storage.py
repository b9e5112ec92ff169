"""Storage-root helpers: content hashes and an exclusive lock for work that must not run twice at once."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """A file's identity: the sha256 of its content (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class LockedError(RuntimeError):
    """Someone else holds the lock."""


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str):
    """Hold an exclusive, non-blocking flock on ``path`` for the duration of the block.

    The lock dies with the process (a SIGKILLed trainer never leaves a stale lock). A second holder gets a
    LockedError naming the pid that holds it, instead of silently forking the checkpoint lineage.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise LockedError(f"{what} is already running under this storage root (pid {holder}, lock {path}); "
                               f"wait for it or use another DOJO_HOME") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
