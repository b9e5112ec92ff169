"""The data queue: files waiting to be trained, being trained, trained, failed or thrown away.

Layout under the storage root (``cfg.root``)::

    inbox/  queue/{high,normal,low}/  processing/  done/  failed/  trash/

A data file ``NAME.jsonl`` always travels with its companions ``NAME.meta.json`` (the sidecar, see
``dojo.sidecar``) and, once it has failed, ``NAME.reason.txt``. A file's identity is the sha256 of its content;
its ID is the first 12 hex characters. The state of a file is the folder its data file is in.

Moves are ``os.rename`` on one filesystem (atomic) and idempotent: asking for a move that has already happened
returns the entry unchanged. Nothing is deleted here: ``delete`` moves to ``trash/``, which retention
(``dojo.maintenance``) empties after ``retention.trash_days``.

Order of a move, and why: the **data file is renamed first** -- that rename is the commit point and the
claim, so of two processes moving the same file exactly one wins, and only the winner then moves the
companions. (Sidecar-first would let a loser, which finds the sidecar already gone, still win the data rename
towards a *different* folder and split the pair.) If the process dies between the two renames, the sidecar is
left as an orphan, and it names its data file by ID in its ``queue`` block, so the next move of that file
finds it and re-pairs them (``_adopt_orphan_sidecar``): the pairing is never lost. ``add`` is the one place that
writes the sidecar first, because there the data file does not exist anywhere yet: the data rename still
publishes the entry, and by then its sidecar is already beside it.

All moves also hold a short blocking lock (``storage.locked``: ``state/.queue.lock``), so choosing a free
destination name and renaming cannot interleave with another mover (``os.rename`` would silently replace a same-named file). The
claim still treats a failed rename as "someone else won" and tries the next file, so it stays correct even
against a mover that does not take the lock.

Plain functions, used by the CLI (``dojo queue …``) and by the training flow's tasks; no prefect here.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dojo import mirror
from dojo.sidecar import read_sidecar, sidecar_path
from dojo.storage import copy_private, locked, open_regular, read_json, write_json
from dojo.text import human_size, printable

PRIORITIES = ("high", "normal", "low")
STATES = ("inbox", "queued", "processing", "done", "failed", "trash")
ID_LEN = 12
MIN_PREFIX = 4
MAX_STEM = 100          # sanitised stems are capped; room stays for a "-{id}" suffix and ".jsonl"
SUFFIX = ".jsonl"
REASON = ".reason.txt"
RETIRED = Path("state") / "retired.jsonl"     # written by dojo.maintenance when it removes a trained file
# what a URL root shares between hosts (inbox/ is each host's own staging area)
SHARED = ["queue/high", "queue/normal", "queue/low", "processing", "done", "failed", "trash", RETIRED.as_posix()]
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class QueueEntry:
    """One data file in the storage root, as found on disk."""
    id: str                 # first 12 hex chars of the content's sha256
    name: str               # file name in its folder
    path: Path              # where the data file is now
    state: str              # inbox | queued | processing | done | failed | trash
    priority: str | None    # the queue folder when queued, else the priority it was queued with (or None)
    size_bytes: int
    examples: int           # non-blank lines
    added_at: str           # ISO time it was added (sidecar queue block), else the file's mtime
    age_seconds: float      # now - added_at, when listed
    sha256: str             # full content hash


# ---------------------------------------------------------------- small helpers
def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(when: dt.datetime) -> str:
    return when.isoformat(timespec="microseconds")   # microseconds: "oldest first" must order fast adds


def _write_json(path: Path, data: dict) -> None:
    """Atomic JSON write that leaves no temp file behind on failure (``dojo.storage.write_json``)."""
    write_json(path, data)


def _scan(path: Path) -> tuple[str, int]:
    """(sha256, non-blank line count) in one pass over the file."""
    h = hashlib.sha256()
    examples = 0
    with open_regular(path) as f:
        for line in f:
            h.update(line)
            if line.strip():
                examples += 1
    return h.hexdigest(), examples


def _companion(data: Path, suffix: str) -> Path:
    return data.with_name(data.stem + suffix)


def _folder(cfg, state: str, priority: str | None = None) -> Path:
    if state == "queued":
        return cfg.root / "queue" / priority
    return cfg.root / state


def _folders(cfg) -> list[tuple[str, str | None, Path]]:
    """(state, priority, folder) in listing order: queued high > normal > low, then the other states."""
    out = [("queued", p, _folder(cfg, "queued", p)) for p in PRIORITIES]
    out += [(s, None, _folder(cfg, s)) for s in ("processing", "done", "failed", "trash", "inbox")]
    return out


def _check_priority(priority: str) -> str:
    if priority not in PRIORITIES:
        raise ValueError(f"priority {priority!r} is not allowed; use one of {', '.join(PRIORITIES)}")
    return priority


@contextlib.contextmanager
def _lock(cfg):
    """A blocking flock held for the few renames of one queue operation. (storage.exclusive_lock refuses when
    held, which suits long singletons like a training run; queue moves take milliseconds and should wait.)
    On a URL root the operation also holds the queue's lease on the store and runs on a freshly pulled working
    copy, and what it changed is pushed before the lease goes (``dojo.mirror.synced``): a claim on one host is
    seen by every other, and two hosts never claim the same file."""
    with mirror.synced(cfg, SHARED, "queue"), locked(cfg.root / "state" / "queue"):
        if cfg.remote:
            _repair_split_moves(cfg)
        yield


def _refresh(cfg) -> None:
    """Reads on a URL root see the store as it is now (no lease: a listing is a snapshot anyway)."""
    mirror.refresh(cfg, SHARED, "queue")


def _repair_split_moves(cfg) -> None:
    """A push killed between its uploads and its removals leaves one data file in two folders of the store.
    The copy whose sidecar records the longer history is where the move got to (sidecars are pushed after their
    data files); the other copy and its companions are removed (the push that follows removes them remotely)."""
    seen: dict[str, list[Path]] = {}
    for _, _, folder in _folders(cfg):
        if folder.is_dir():
            for data in folder.glob("*" + SUFFIX):
                if not data.name.startswith(".") and not data.name.endswith(".rejected.jsonl"):
                    seen.setdefault(f"{data.name}:{data.stat().st_size}", []).append(data)
    for copies in seen.values():
        if len(copies) < 2 or len({_scan(p)[0] for p in copies}) > 1:
            continue

        def history(p: Path) -> int:
            try:
                return len(((read_sidecar(p) or {}).get("queue") or {}).get("history") or [])
            except ValueError:
                return -1
        keep = max(copies, key=history)
        for p in copies:
            if p != keep:
                for companion in (p, sidecar_path(p), _companion(p, REASON)):
                    companion.unlink(missing_ok=True)


def _safe_meta(data: Path) -> dict | None:
    """The sidecar for listing: a broken one is reported by the operations that rewrite it, not by `list`."""
    try:
        return read_sidecar(data)
    except ValueError:
        return None


def _sidecar_error(data: Path) -> str | None:
    """Why the sidecar of ``data`` cannot be read (the message names the sidecar file and the JSON error), or
    None when it is readable or absent."""
    try:
        read_sidecar(data)
    except ValueError as exc:
        return str(exc)
    return None


def _entry(path: Path, state: str, priority: str | None, now: dt.datetime) -> QueueEntry:
    st = path.stat()
    meta = _safe_meta(path) or {}
    block = meta.get("queue") if isinstance(meta.get("queue"), dict) else {}
    # Files are immutable once added, so the hash recorded at add time is trusted while the size still
    # matches; anything else (a file dropped in by hand, a stale block) is hashed.
    if isinstance(block.get("sha256"), str) and block.get("size_bytes") == st.st_size \
            and isinstance(block.get("examples"), int):
        sha, examples = block["sha256"], block["examples"]
    else:
        sha, examples = _scan(path)
    added_at = block.get("added_at")
    try:
        added = dt.datetime.fromisoformat(added_at)
    except (TypeError, ValueError):
        added = dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc)
        added_at = _iso(added)
    if priority is None:
        priority = block.get("priority") if block.get("priority") in PRIORITIES else None
    return QueueEntry(id=sha[:ID_LEN], name=path.name, path=path, state=state, priority=priority,
                      size_bytes=st.st_size, examples=examples, added_at=added_at,
                      age_seconds=max(0.0, (now - added).total_seconds()), sha256=sha)


def _entries_in(cfg, state: str, priority: str | None, folder: Path, now: dt.datetime) -> list[QueueEntry]:
    if not folder.is_dir():
        return []
    out = []
    for path in folder.glob("*" + SUFFIX):
        if path.name.startswith(".") or not path.is_file():   # our temp files start with a dot
            continue
        try:
            out.append(_entry(path, state, priority, now))
        except FileNotFoundError:    # moved away while we looked
            continue
    return sorted(out, key=lambda e: (e.added_at, e.name))


# ---------------------------------------------------------------- names
def sanitize_name(name: str) -> str:
    """A safe file name for the queue: the basename only, characters outside ``[A-Za-z0-9._-]`` replaced by
    ``_`` (path separators, NUL and control characters included), no leading dots, the stem capped at
    ``MAX_STEM`` characters. The name must end in ``.jsonl``; otherwise ValueError."""
    if not isinstance(name, str):
        raise ValueError(f"file name must be a string, got {type(name).__name__}")
    base = re.split(r"[/\\]", name)[-1]
    if not base.endswith(SUFFIX):
        raise ValueError(f"{name!r}: queued data files must end in {SUFFIX}")
    stem = _UNSAFE.sub("_", base[: -len(SUFFIX)]).lstrip(".")
    if not stem.strip("._-"):
        raise ValueError(f"{name!r}: nothing usable is left of the name once sanitised; rename the file")
    return stem[:MAX_STEM] + SUFFIX


def _free_name(folder: Path, name: str, file_id: str) -> str:
    """``name`` if neither it nor its companions exist in ``folder``, else ``{stem}-{id}.jsonl`` (then with a
    counter): a different file of the same name is never overwritten."""
    stem = name[: -len(SUFFIX)]
    candidates = [name, f"{stem}-{file_id}{SUFFIX}"]
    candidates += [f"{stem}-{file_id}-{n}{SUFFIX}" for n in range(2, 1000)]
    for candidate in candidates:
        data = folder / candidate
        if not any(p.exists() for p in (data, sidecar_path(data), _companion(data, REASON))):
            return candidate
    raise AssertionError(f"no free name for {name} in {folder}")


# ---------------------------------------------------------------- reading
def retired(cfg) -> dict[str, dict]:
    """Trained files whose file retention removed from done/ (``state/retired.jsonl``), by content sha256: the
    queue still refuses to train them again. Torn or foreign lines are skipped."""
    path = cfg.root / RETIRED
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    with open_regular(path, "retired-files log") as f:
        for raw in f:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict) and isinstance(line.get("sha256"), str):
                out[line["sha256"]] = line
    return out


def list_entries(cfg) -> list[QueueEntry]:
    """Every data file in every state: queued ones first (high > normal > low, oldest first within each),
    then processing, done, failed, trash and inbox, oldest first."""
    _refresh(cfg)
    now = _now()
    return [e for state, prio, folder in _folders(cfg) for e in _entries_in(cfg, state, prio, folder, now)]


def queued(cfg) -> list[QueueEntry]:
    """Queued entries in claim order."""
    _refresh(cfg)
    now = _now()
    return [e for p in PRIORITIES for e in _entries_in(cfg, "queued", p, _folder(cfg, "queued", p), now)]


def depth(cfg) -> dict[str, int]:
    """How many files wait at each priority (counts names only; nothing is hashed)."""
    _refresh(cfg)
    out = {}
    for p in PRIORITIES:
        folder = _folder(cfg, "queued", p)
        out[p] = sum(1 for f in folder.glob("*" + SUFFIX) if not f.name.startswith(".")) if folder.is_dir() else 0
    return out


def find(cfg, id_prefix: str) -> QueueEntry:
    """The entry whose ID starts with ``id_prefix`` (at least 4 hex characters; a full sha256 works too).

    A copy left in ``inbox/`` never makes a match ambiguous: the queued/processed copy wins."""
    prefix = str(id_prefix).strip().lower()
    if len(prefix) < MIN_PREFIX or not re.fullmatch(r"[0-9a-f]+", prefix):
        raise ValueError(f"ID {id_prefix!r}: give at least {MIN_PREFIX} hex characters of an ID "
                         f"(see `dojo queue list`)")
    matches = [e for e in list_entries(cfg) if e.sha256.startswith(prefix)]
    if not matches:
        raise ValueError(f"no queue entry has an ID starting with {prefix!r} (see `dojo queue list`)")
    outside_inbox = [e for e in matches if e.state != "inbox"]
    matches = outside_inbox or matches
    if len(matches) > 1:
        listed = "; ".join(f"{e.id} {e.state} {e.path}" for e in matches)
        raise ValueError(f"ID {prefix!r} is ambiguous, it matches: {listed}; give more characters")
    return matches[0]


# ---------------------------------------------------------------- moving
class _Gone(Exception):
    """The data file was no longer where we looked: another process moved it first."""


def _adopt_orphan_sidecar(cfg, file_id: str, dest: Path) -> None:
    """Re-pair ``dest`` with a sidecar left behind by a move that died between its two renames."""
    for _, _, folder in _folders(cfg):
        if not folder.is_dir():
            continue
        for side in folder.glob("*.meta.json"):
            data = side.with_name(side.name[: -len(".meta.json")] + SUFFIX)
            if data.exists():
                continue
            try:
                block = (read_json(side, what="sidecar") or {}).get("queue") or {}
            except (OSError, ValueError, AttributeError):
                continue
            if block.get("id") == file_id:
                os.rename(side, sidecar_path(dest))
                return


def _with_block(meta: dict | None, **fields) -> dict:
    """The sidecar ``meta`` with its queue block updated by ``fields`` (``event`` appends to the history)."""
    meta = dict(meta) if meta is not None else {"generator": None}
    block = dict(meta.get("queue") or {})
    event = fields.pop("event", None)
    block.update(fields)
    if event:
        block["history"] = list(block.get("history") or []) + [event]
    meta["queue"] = block
    return meta


def _update_block(data: Path, **fields) -> None:
    _write_json(sidecar_path(data), _with_block(read_sidecar(data), **fields))


def _write_private(path: Path, text: str, like: Path) -> None:
    """Write a new file with no wider mode than ``like`` (a reason may quote a line of a private file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, os.stat(like).st_mode & 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def _move(cfg, entry: QueueEntry, state: str, priority: str | None = None, reason: str | None = None,
          event: str = "moved") -> QueueEntry:
    """Move ``entry`` (data first, then its companions) into ``state``; call with the lock held.

    Everything that needs disk space (the updated sidecar, a new reason) is written to temp files in the
    destination *before* the data rename, which is the commit point; after it only renames follow. So a full
    or read-only disk fails the move before anything moved (no half-moved pair, no temp file left), and the
    sidecar always tells the state the folder tells.

    Raises _Gone when the data file is not where ``entry`` says (someone else moved it). A broken sidecar
    (e.g. written by hand) is kept byte-for-byte and nothing is recorded in it, so such a file may only go to
    failed/ or trash/; any other move is refused (ValueError) before anything is renamed."""
    broken = _sidecar_error(entry.path)
    if broken is not None and state not in ("failed", "trash"):
        raise ValueError(f"{entry.id} ({entry.name}): {broken}; fix the sidecar (or delete it), then try again")
    folder = _folder(cfg, state, priority)
    folder.mkdir(parents=True, exist_ok=True)
    src = entry.path
    if not src.exists():
        raise _Gone(str(src))
    dest = folder / _free_name(folder, entry.name, entry.id)
    if not sidecar_path(src).exists():
        _adopt_orphan_sidecar(cfg, entry.id, src)      # re-pair a sidecar a killed move left behind
    staged: list[Path] = []
    try:
        new_reason = None
        if reason is not None:
            new_reason = folder / f".{dest.stem}{REASON}.tmp-{os.getpid()}"
            staged.append(new_reason)
            _write_private(new_reason, reason.rstrip("\n") + "\n", src)
        new_side = None
        if broken is None:
            record = {"at": _iso(_now()), "event": event, "from": entry.state, "to": state}
            if reason is not None:
                record["reason"] = reason
            fields = {"state": state, "event": record}
            if state == "queued":
                fields["priority"] = priority
            meta = read_sidecar(src) or {}
            if not isinstance(meta.get("queue"), dict) or not meta["queue"].get("sha256"):
                # a file dropped in by hand (no queue block yet): record what add would have recorded
                fields.update(id=entry.id, sha256=entry.sha256, size_bytes=entry.size_bytes,
                              examples=entry.examples, added_at=entry.added_at)
                fields.setdefault("priority", entry.priority)
            new_side = folder / f".{dest.stem}.meta.json.tmp-{os.getpid()}"
            staged.append(new_side)
            write_json(new_side, _with_block(meta, **fields))
        try:
            os.rename(src, dest)                  # the commit point: exactly one mover wins
        except FileNotFoundError:
            raise _Gone(str(src)) from None
    except BaseException:
        for tmp in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    # after the commit: renames and unlinks only (they need no free space)
    if new_side is not None:
        os.replace(new_side, sidecar_path(dest))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sidecar_path(src))
    elif sidecar_path(src).exists():
        os.rename(sidecar_path(src), sidecar_path(dest))        # a broken sidecar travels untouched
    if new_reason is not None:
        os.replace(new_reason, _companion(dest, REASON))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_companion(src, REASON))
    elif _companion(src, REASON).exists():
        os.rename(_companion(src, REASON), _companion(dest, REASON))
    return _entry(dest, state, priority if state == "queued" and broken is None else None, _now())


def _move_checked(cfg, entry: QueueEntry, state: str, priority: str | None = None, **kw) -> QueueEntry:
    try:
        return _move(cfg, entry, state, priority, **kw)
    except _Gone:
        raise ValueError(f"{entry.id} ({entry.name}) was moved by another process while this ran; "
                         f"see `dojo queue list`") from None


# ---------------------------------------------------------------- operations
def add(cfg, file, priority: str = "normal", original_path: str | Path | None = None) -> QueueEntry:
    """Copy ``file`` (and its sidecar, when it has one) into ``queue/{priority}/`` under a sanitised name.

    The user's file is never moved or changed. Refuses (ValueError) a file whose content is already queued,
    processing or done (a file is not trained twice), or in failed/ or trash/ (use retry). A different file
    of the same name is kept beside it as ``{stem}-{id}.jsonl``. The sidecar gets a ``queue`` block
    {id, sha256, priority, added_at, original_path, size_bytes, examples, state, history}; a file without a
    sidecar gets one with ``generator: null``. Only a regular file (or a symlink to one) is copied, and the copy
    is never more readable than the source. ``original_path`` is the user's file the gate staged ``file`` from
    (recorded in the queue block instead of the staging path)."""
    _check_priority(priority)
    src = Path(file)
    name = sanitize_name(src.name)
    meta = read_sidecar(src)                       # a broken sidecar is an error, not silently replaced
    meta = dict(meta) if meta is not None else {"generator": None}
    folder = _folder(cfg, "queued", priority)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp-{os.getpid()}"
    try:
        copy_private(src, tmp)
        sha, examples = _scan(tmp)                 # the identity of what we stored, not of what we read
        file_id = sha[:ID_LEN]
        with _lock(cfg):
            for e in list_entries(cfg):
                if e.sha256 != sha or e.state == "inbox":
                    continue
                if e.state in ("failed", "trash"):
                    raise ValueError(f"{src}: the same content is already in {e.state}/ as {e.id} ({e.path}); "
                                     f"use `dojo queue retry {e.id}` to queue it again")
                why = " (a file is not trained twice)" if e.state == "done" else ""
                raise ValueError(f"{src}: the same content is already {e.state} as {e.id} ({e.path}){why}")
            gone = retired(cfg).get(sha)
            if gone is not None:
                raise ValueError(f"{src}: the same content was trained as {file_id} ({gone.get('name')}; its file "
                                 f"was removed from done/ by retention on {gone.get('removed_at')}); a file is not "
                                 f"trained twice")
            dest = folder / _free_name(folder, name, file_id)
            now = _iso(_now())
            meta["queue"] = {"id": file_id, "sha256": sha, "priority": priority, "added_at": now,
                             "original_path": str(Path(original_path or src).resolve()),
                             "size_bytes": tmp.stat().st_size,
                             "examples": examples, "state": "queued",
                             "history": [{"at": now, "event": "added", "from": None, "to": "queued"}]}
            _write_json(sidecar_path(dest), meta)  # sidecar first: the data rename below publishes the pair
            os.rename(tmp, dest)
            tmp = None
            return _entry(dest, "queued", priority, _now())
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()                           # our own temp copy, never user data


def set_priority(cfg, file_id: str, priority: str) -> QueueEntry:
    """Move a queued entry to another priority folder (a no-op when it is already there)."""
    _check_priority(priority)
    with _lock(cfg):
        entry = find(cfg, file_id)
        if entry.state != "queued":
            raise ValueError(f"{entry.id} is {entry.state}, not queued; only queued files have a priority to change")
        if entry.priority == priority:
            return entry
        return _move_checked(cfg, entry, "queued", priority, event="priority")


def delete(cfg, file_id: str) -> QueueEntry:
    """Move an entry to trash/ (nothing is deleted; retention empties trash/ after retention.trash_days, or the user
    removes it). Refused while it is being trained."""
    with _lock(cfg):
        entry = find(cfg, file_id)
        if entry.state == "processing":
            raise ValueError(f"{entry.id} ({entry.name}) is being trained; cancel the run first "
                             f"(it is released back to the queue), then delete it")
        if entry.state == "trash":
            return entry
        return _move_checked(cfg, entry, "trash", event="deleted")


def retry(cfg, file_id: str, validate: Callable) -> QueueEntry:
    """Validate a failed (or trashed) file again with ``validate(path) -> report`` (``.accepted``,
    ``.format()``). Accepted: back to ``queue/{its priority, else normal}``. Rejected: it stays in (or goes
    to) failed/ with ``{stem}.reason.txt`` rewritten from the report, and ValueError carries the report."""
    with _lock(cfg):
        entry = find(cfg, file_id)
        if entry.state not in ("failed", "trash"):
            raise ValueError(f"{entry.id} is {entry.state}; only failed or trashed files can be retried")
    report = validate(entry.path)            # may be slow: not under the lock
    text = report.format()
    with _lock(cfg):
        if report.accepted:
            return _move_checked(cfg, entry, "queued", entry.priority or "normal", event="retried")
        if not entry.path.exists():
            raise ValueError(f"{entry.id} ({entry.name}) was moved by another process while it was validated; "
                             f"see `dojo queue list`")
        if entry.state == "failed":
            tmp = entry.path.with_name(f".{entry.path.stem}{REASON}.tmp-{os.getpid()}")
            tmp.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
            os.replace(tmp, _companion(entry.path, REASON))
            _update_block(entry.path, event={"at": _iso(_now()), "event": "retry rejected", "from": "failed",
                                             "to": "failed", "reason": text})
            path = entry.path
        else:
            path = _move_checked(cfg, entry, "failed", reason=text, event="retry rejected").path
    raise ValueError(f"{entry.id} ({entry.name}) was rejected again; it stays in failed/ "
                     f"({_companion(path, REASON)}):\n{text}")


def claim_from(cfg, candidates: list[QueueEntry]) -> QueueEntry | None:
    """Claim the first of ``candidates`` still there by renaming it into processing/; a rename that fails
    means another claimer won that file, so try the next. A file whose sidecar is broken (dropped into queue/
    by hand) is not claimed: it goes to failed/ with a reason, both files unchanged, and the next is tried.
    Call with the lock held."""
    for entry in candidates:
        try:
            broken = _sidecar_error(entry.path)
            if broken is not None:
                _move(cfg, entry, "failed", event="rejected",
                      reason=f"not claimed for training: {broken}\nThe data file and its sidecar are kept "
                             f"unchanged; fix the sidecar (or delete it), then `dojo queue retry {entry.id}`.")
                continue
            return _move(cfg, entry, "processing", event="claimed")
        except _Gone:
            continue
    return None


def claim(cfg, skip: Callable[[QueueEntry], bool] | None = None) -> QueueEntry | None:
    """Atomically take the highest-priority, oldest queued file into processing/; None when the queue is empty.
    Files for which ``skip(entry)`` is true stay queued, untouched (the sparring share cap)."""
    with _lock(cfg):
        return claim_from(cfg, [e for e in queued(cfg) if skip is None or not skip(e)])


def finish(cfg, file_id: str, outcome: str = "done", reason: str | None = None) -> QueueEntry:
    """processing → done/ or failed/ (failed writes ``{stem}.reason.txt``; so does done with a ``reason``: a file
    retired without training, e.g. stale sparring data). Repeating a finish is a no-op."""
    if outcome not in ("done", "failed"):
        raise ValueError(f"outcome {outcome!r} is not allowed; use done or failed")
    with _lock(cfg):
        entry = find(cfg, file_id)
        if entry.state == outcome:
            return entry
        if entry.state != "processing":
            raise ValueError(f"{entry.id} is {entry.state}, not processing; only a claimed file can be finished")
        if outcome == "failed":
            return _move_checked(cfg, entry, "failed", reason=reason or "failed (no reason given)", event="failed")
        if reason is not None:
            return _move_checked(cfg, entry, "done", reason=reason, event="retired")
        return _move_checked(cfg, entry, "done", event="done")


def reject(cfg, file_id: str, reason: str) -> QueueEntry:
    """queued or processing → failed/ with ``{stem}.reason.txt`` (the gate turned the file away)."""
    with _lock(cfg):
        entry = find(cfg, file_id)
        if entry.state == "failed":
            return entry
        if entry.state not in ("queued", "processing"):
            raise ValueError(f"{entry.id} is {entry.state}; only a queued or processing file can be rejected")
        return _move_checked(cfg, entry, "failed", reason=reason, event="rejected")


def release(cfg, file_id: str) -> QueueEntry:
    """processing → back to its queue folder (a cancelled chunk). Releasing a queued file is a no-op."""
    with _lock(cfg):
        entry = find(cfg, file_id)
        if entry.state == "queued":
            return entry
        if entry.state != "processing":
            raise ValueError(f"{entry.id} is {entry.state}, not processing; only a claimed file can be released")
        return _move_checked(cfg, entry, "queued", entry.priority or "normal", event="released")


# ---------------------------------------------------------------- text (for `dojo queue list`)
def _age(seconds: float) -> str:
    for limit, div, unit in ((120, 1, "s"), (7200, 60, "m"), (172800, 3600, "h")):
        if seconds < limit:
            return f"{seconds / div:.0f}{unit}"
    return f"{seconds / 86400:.0f}d"


def format_list(entries: list[QueueEntry]) -> str:
    """Sections high, normal, low, processing, done, failed, trash (and inbox when it has files), one row per
    file: ID, name, examples, size, age, state."""
    sections = [(p, [e for e in entries if e.state == "queued" and e.priority == p]) for p in PRIORITIES]
    sections += [(s, [e for e in entries if e.state == s]) for s in ("processing", "done", "failed", "trash")]
    inbox = [e for e in entries if e.state == "inbox"]
    if inbox:
        sections.append(("inbox", inbox))
    header = ["ID", "NAME", "EXAMPLES", "SIZE", "AGE", "STATE"]

    def cells(e: QueueEntry) -> list[str]:
        # a file dropped in by hand keeps its name: escape control characters so it cannot forge rows
        return [e.id, printable(e.name), str(e.examples), human_size(e.size_bytes), _age(e.age_seconds), e.state]

    rows = [cells(e) for _, group in sections for e in group]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        cells = [c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  " + "  ".join(cells).rstrip()

    out = []
    for title, group in sections:
        out.append(f"{title} ({len(group)})")
        if group:
            out.append(line(header))
            out += [line(cells(e)) for e in group]
    return "\n".join(out)
