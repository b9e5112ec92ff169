"""Storage-root helpers: content hashes, an exclusive lock for work that must not run twice at once, and the one
way every JSON state file (sidecars, ledgers, promoted.json, curriculum.json, lineage.json, stack.json, …) is
read and written: ``read_json`` names the file in every error and refuses what is not a regular file, too big,
too deep, not JSON or the wrong shape; ``write_json`` replaces a file atomically and leaves no temp file behind.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

MAX_STATE_BYTES = 64 << 20      # a state file bigger than this is not ours
MAX_JSON_DEPTH = 64             # nesting deeper than this is refused before json.loads can recurse


class StateError(ValueError):
    """A state file that cannot be used as it is; the message names the file and what to do."""


def _depth(text: str) -> int:
    """Deepest bracket nesting outside strings (a cheap scan, so a hostile file cannot exhaust the stack)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def read_json(path: str | Path, expect: type = dict, what: str = "state file", default=None,
              max_bytes: int = MAX_STATE_BYTES, max_depth: int = MAX_JSON_DEPTH):
    """The parsed content of the JSON file ``path``, which must be a ``expect`` (dict or list).

    A missing file returns ``default``. Raises StateError naming the file for anything else that is wrong: not a
    regular file (a FIFO is never opened, so nothing hangs), larger than ``max_bytes``, not UTF-8, nested deeper
    than ``max_depth``, not JSON, or JSON of another shape."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return default
    except OSError as exc:
        raise StateError(f"{path}: the {what} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise StateError(f"{path}: the {what} is not a regular file; move it away and try again")
    if st.st_size > max_bytes:
        raise StateError(f"{path}: the {what} is {st.st_size} bytes, more than the {max_bytes} allowed; "
                         f"move it away and try again")
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StateError(f"{path}: the {what} is not UTF-8 text; fix it or move it away") from None
    except OSError as exc:
        raise StateError(f"{path}: the {what} cannot be read ({exc.strerror})") from None
    if _depth(text) > max_depth:
        raise StateError(f"{path}: the {what} is nested more than {max_depth} levels deep; fix it or move it away")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"{path}: the {what} is not valid JSON ({exc.msg} at line {exc.lineno} column "
                         f"{exc.colno}); fix it or move it away") from None
    except RecursionError:
        raise StateError(f"{path}: the {what} is nested too deeply; fix it or move it away") from None
    if not isinstance(data, expect):
        shape = {dict: "a JSON object", list: "a JSON list"}.get(expect, expect.__name__)
        raise StateError(f"{path}: the {what} must be {shape}, not {type(data).__name__}; fix it or move it away")
    return data


def write_json(path: str | Path, data) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically: a temp file beside it, then a rename. On any failure
    (disk full, read-only) the temp file is removed and the old content stays; the error propagates."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def apply_umask(cfg) -> int:
    """Make everything this process writes under the storage root at most as open as ``storage.umask`` allows
    (default 077: folders 0700, files 0600). A stricter umask the user already has is kept. Returns the umask
    that was in force before, for callers that restore it."""
    wanted = int(cfg.storage.umask, 8)
    previous = os.umask(0)
    os.umask(previous | wanted)
    return previous


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | Path, what: str = "data file"):
    """Open ``path`` for reading only if it is (or a symlink leads to) a regular file. Opened non-blocking and
    checked on the open descriptor, so a FIFO never blocks and nothing can be swapped in between a check and
    the read. Raises ValueError naming the file and what it is."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ValueError(f"{path}: the {what} is {_kind(st.st_mode)}; dojo reads only regular files")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def copy_private(src: str | Path, dest: str | Path, what: str = "data file") -> os.stat_result:
    """Copy the regular file ``src`` to ``dest`` (a new file), never wider than the source's mode or the umask:
    a 0600 source stays 0600. Returns the source's stat (of what was actually read)."""
    with open_regular(src, what) as fin:
        st = os.fstat(fin.fileno())
        mask = os.umask(0)
        os.umask(mask)
        mode = stat.S_IMODE(st.st_mode) & 0o666 & ~mask
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            os.chmod(dest, mode)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(dest)
            raise
    return st


def sha256_file(path: str | Path) -> str:
    """A file's identity: the sha256 of its content (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
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


@contextlib.contextmanager
def locked(path: str | Path):
    """Hold a blocking flock on ``{path}.lock`` (beside ``path``) for a read-modify-write of ``path``: two
    writers (the training pool topping the queue up, the eval pool recording an evaluation) take turns, so
    neither overwrites the other's update. The lock dies with its process; the lock file stays (it is empty)."""
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a", encoding="utf-8") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def tree_size(path: str | Path) -> int:
    """Bytes of every regular file under ``path`` (symlinks are not followed; files vanishing meanwhile are skipped)."""
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(top, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


def usage(root: str | Path) -> dict[str, int]:
    """Bytes per top-level folder of the storage root (files directly in the root count as ``.``)."""
    root = Path(root)
    out: dict[str, int] = {}
    if not root.is_dir():
        return out
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            continue
        if entry.is_dir():
            out[entry.name] = tree_size(entry)
        elif entry.is_file():
            out["."] = out.get(".", 0) + entry.stat().st_size
    return out


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of an append-only ``.jsonl`` record, oldest first; [] when there is none. A line that is
    not a JSON object (a torn write, an edit) is skipped, not fatal."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                out.append(record)
    return out
