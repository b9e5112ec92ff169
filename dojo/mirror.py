"""A URL storage root (``storage.root: s3://bucket/prefix``) and its local working copy (``cfg.root``).

Every dojo module reads and writes local files under ``cfg.root``; with a URL root that folder is a working copy
of the shared root and the object store is the authority. This module keeps the two one root, at the commit
points, so the same queue, state and checkpoint code serves one box and many:

- **Shared folders and state files** (the queue's folders, ``state/curriculum.json``, ``state/promoted.json``, …)
  change only inside ``synced(cfg, keys, lease)``: a lease on the store (``locks/{lease}``, taken by exclusive
  create, so exactly one holder on any host; a lease whose holder died is taken over after ``LEASE_SECONDS``, or at
  once when the holder was a dead process on this host), then the keys are pulled (objects whose ETag changed are
  downloaded; local files the store does not have are dropped: they were never committed), the block runs on the
  local files with the local code, and what it changed is pushed: new objects first (data files before sidecars),
  changed state files by compare-and-swap against the ETag pulled (``replace_if``), removed objects last. A
  process killed mid-push leaves a data file in two folders at worst; the queue repairs that on the next pull
  (``dojo.queue``: the copy whose sidecar has the longer history wins).
- **Checkpoints** are committed trees (``dojo.objstore.upload_tree``: every file, then the manifest last):
  ``push_checkpoint`` after a save, ``latest`` — the newest *committed* checkpoint, downloaded and verified on
  demand — before training resumes or evaluation starts. A checkpoint saved here whose upload never finished is
  not committed, so no host (this one included) resumes from it.
- **Reports** (``eval/``) and ledgers are pushed after they are written.

A local root makes every function here a no-op (``synced`` is then ``storage.locked`` or nothing), so the local
behaviour is exactly what it was.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from dojo.storage import locked

log = logging.getLogger("dojo.mirror")

LEASE_SECONDS = 120.0
WAIT_SECONDS = 600.0
INDEX = ".mirror-index.json"       # key -> ETag of what the working copy holds, beside the working copy's folders
_stores: dict[tuple, object] = {}
_held = threading.local()


def store(cfg):
    """The object store behind a URL root (one per process and root), or None for a local root."""
    if not cfg.remote:
        return None
    key = (cfg.remote, json.dumps(cfg.storage.options, sort_keys=True), str(cfg.root))
    if key not in _stores:
        from dojo.objstore import open_store

        _stores[key] = open_store(cfg.remote, cfg.storage.options, cfg.root)
    return _stores[key]


# ---------------------------------------------------------------- the working copy's index
def _index_path(cfg) -> Path:
    return Path(cfg.root) / INDEX


def _read_index(cfg) -> dict[str, str]:
    try:
        data = json.loads(_index_path(cfg).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_index(cfg, index: dict[str, str]) -> None:
    from dojo.storage import write_json

    Path(cfg.root).mkdir(parents=True, exist_ok=True)
    write_json(_index_path(cfg), index)


def _local_files(cfg, keys: list[str]) -> dict[str, os.stat_result]:
    """Regular files under the working copy for ``keys`` (folders or single files); dot files (temps, locks)
    are the working copy's own and never shared."""
    root, out = Path(cfg.root), {}
    for key in keys:
        path = root / key
        if path.is_file():
            out[key] = path.stat()
            continue
        if not path.is_dir():
            continue
        for p in path.rglob("*"):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and not p.is_symlink() and not any(part.startswith(".") for part in rel.split("/")):
                out[rel] = p.stat()
    return out


def _remote_versions(st, keys: list[str]) -> dict[str, str]:
    """key -> ETag of the objects the store holds for ``keys`` (folders or single objects): one listing per
    parent folder (a listing of ``state/promoted.json`` as a folder would miss the object itself)."""
    parents = sorted({k.rsplit("/", 1)[0] if "/" in k else "" for k in keys})
    out: dict[str, str] = {}
    for parent in parents:
        for k, v in st.versions(parent).items():
            if any(k == key or k.startswith(key.rstrip("/") + "/") for key in keys) \
                    and not any(part.startswith(".") for part in k.split("/")):
                out[k] = v
    return out


def pull(cfg, keys: list[str]) -> dict[str, str]:
    """Make the working copy of ``keys`` (folders or files) what the store holds: changed objects downloaded,
    local files the store lacks removed. Returns the store's versions (key -> ETag). No-op on a local root."""
    st = store(cfg)
    if st is None:
        return {}
    remote = _remote_versions(st, keys)
    index = _read_index(cfg)
    root = Path(cfg.root)
    for key, version in remote.items():
        local = root / key
        if index.get(key) != version or not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            st.get_file(key, local)
            index[key] = version
    for key in _local_files(cfg, keys):
        if key not in remote:
            (root / key).unlink(missing_ok=True)      # never committed to the store (or removed there)
            index.pop(key, None)
    for key in [k for k in index if any(k == p or k.startswith(p.rstrip("/") + "/") for p in keys)]:
        if key not in remote:
            index.pop(key, None)
    _write_index(cfg, index)
    return remote


def _upload_order(key: str) -> tuple:
    # data files first, then their sidecars, then reasons and the rest: a sidecar committed means its move did
    return (0 if key.endswith(".jsonl") else 1 if key.endswith(".meta.json") else 2, key)


def push(cfg, keys: list[str], before: dict[str, os.stat_result], versions: dict[str, str]) -> None:
    """Send what changed in the working copy of ``keys`` since ``before`` (a ``_local_files`` snapshot taken
    after the pull that gave ``versions``): new objects, then changed ones (compare-and-swap against the version
    pulled), then removals. A file renamed locally is copied on the store side, not uploaded again."""
    from dojo.objstore import Conflict

    st = store(cfg)
    now = _local_files(cfg, keys)
    root = Path(cfg.root)
    gone = {k: s for k, s in before.items() if k not in now}
    by_inode = {(s.st_dev, s.st_ino): k for k, s in gone.items()}
    for key in sorted(now, key=_upload_order):
        s = now[key]
        old = before.get(key)
        if old is not None and (old.st_size, old.st_mtime_ns, old.st_ino) == (s.st_size, s.st_mtime_ns, s.st_ino):
            continue
        source = by_inode.get((s.st_dev, s.st_ino))
        if old is None and source is not None and source in versions:
            st.copy(source, key)                       # a local rename: copy on the store side
        elif key in versions:
            try:
                st.replace_if(key, (root / key).read_bytes(), versions[key])
            except Conflict as exc:
                raise Conflict(f"{exc} — another writer changed it while this process held the lease "
                               f"(a holder that outlived its {LEASE_SECONDS:.0f} s lease?); nothing more was "
                               f"pushed, run the command again") from None
        else:
            st.put_file(root / key, key)
    for key in sorted(gone):
        st.delete(key)
    index = _read_index(cfg)
    index.update(_remote_versions(st, keys))
    for key in gone:
        index.pop(key, None)
    _write_index(cfg, index)


# ---------------------------------------------------------------- the lease
def _lease_body() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "until": time.time() + LEASE_SECONDS}


def _holder_dead(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _take(st, key: str) -> tuple[dict | None, dict]:
    """One attempt at the lease ``key``: (our lease body, {}) when taken — created, or taken over because it
    expired or its holder is a dead process on this host — else (None, the live holder's record)."""
    from dojo.objstore import Conflict, parse_json

    body = _lease_body()
    if st.create(key, json.dumps(body).encode()):
        return body, {}
    data, version = st.read_versioned(key)
    try:
        holder = parse_json(data, st.url_for(key)) if data is not None else {}
    except ValueError:
        holder = {}
    if data is not None and isinstance(holder.get("until"), (int, float)) and holder["until"] >= time.time() \
            and not _holder_dead(holder):
        return None, holder
    try:
        st.replace_if(key, json.dumps(body).encode(), version)
    except Conflict:
        return None, holder                 # someone else took it (or released it) meanwhile
    if data is not None:
        log.warning("took over the lease %s from %s (expired or its process is gone)", key, holder)
    return body, {}


def _ours(st, key: str, body: dict) -> tuple[bool, str | None]:
    """Whether ``key`` still holds our lease ``body`` (same host and pid), and its version."""
    from dojo.objstore import parse_json

    data, version = st.read_versioned(key)
    try:
        record = parse_json(data, st.url_for(key)) if data is not None else {}
    except ValueError:
        return False, version
    return (record.get("host"), record.get("pid")) == (body["host"], body["pid"]), version


@contextlib.contextmanager
def lease(cfg, name: str, wait: float = WAIT_SECONDS):
    """Hold ``locks/{name}`` on the store for the block (``_take``: exactly one holder on any host), waiting up
    to ``wait`` seconds for a live holder; released after."""
    st = store(cfg)
    key = f"locks/{name}"
    deadline, said = time.monotonic() + wait, False
    while True:
        body, holder = _take(st, key)
        if body is not None:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{st.url_for(key)}: held by {holder.get('host')} pid {holder.get('pid')} for more "
                               f"than {wait:.0f} s; if that process is gone, delete the object or wait "
                               f"{LEASE_SECONDS:.0f} s for it to expire")
        if not said:
            log.info("waiting for the lease %s (held by %s pid %s)", key, holder.get("host"), holder.get("pid"))
            said = True
        time.sleep(0.05 + 0.2 * (time.monotonic() % 1))
    try:
        yield
    finally:
        if _ours(st, key, body)[0]:
            st.delete(key)


@contextlib.contextmanager
def synced(cfg, keys: list[str], name: str):
    """Change the shared ``keys`` (folders or files) in the block, as one step on every host: lease, pull, run,
    push (see the module doc). Re-entrant within a thread for the same lease. On a local root: no-op."""
    held = getattr(_held, "names", None)
    if held is None:
        held = _held.names = set()
    if store(cfg) is None or name in held:
        yield
        return
    with lease(cfg, name):
        held.add(name)
        try:
            versions = pull(cfg, keys)
            before = _local_files(cfg, keys)
            yield
            push(cfg, keys, before, versions)
        finally:
            held.discard(name)


def refresh(cfg, keys: list[str], name: str) -> None:
    """Pull ``keys`` for a read (no lease), unless this thread holds ``name``'s lease (already pulled)."""
    if store(cfg) is not None and name not in (getattr(_held, "names", None) or set()):
        pull(cfg, keys)


@contextlib.contextmanager
def shared_file(cfg, rel: str, *also: str):
    """A read-modify-write of the shared state file ``rel`` (e.g. ``state/curriculum.json``) and the files
    ``also`` that change with it: on a local root the lock beside ``rel`` (``storage.locked``), on a URL root
    also its lease, pull and compare-and-swap push."""
    if store(cfg) is None:
        with locked(Path(cfg.root) / rel):
            yield
        return
    with synced(cfg, [rel, *also], rel.replace("/", "_")):
        with locked(Path(cfg.root) / rel):
            yield


# ---------------------------------------------------------------- checkpoints and reports
def push_checkpoint(cfg, path: Path) -> None:
    """Commit a checkpoint saved in the working copy to the store (files first, the manifest last). A crash before
    the manifest leaves nothing any host will resume from."""
    st = store(cfg)
    if st is not None:
        from dojo.objstore import upload_tree

        upload_tree(st, Path(path), f"checkpoints/{Path(path).name}")


def push_file(cfg, rel: str) -> None:
    """Upload one file of the working copy (an eval report, a checkpoint's updated ledger)."""
    st = store(cfg)
    if st is not None:
        st.put_file(Path(cfg.root) / rel, rel)


def committed_checkpoints(cfg) -> list[str]:
    """Names of the committed checkpoints on the store (sorted by name; callers sort by step)."""
    from dojo.objstore import list_committed

    return [p.rsplit("/", 1)[-1] for p in list_committed(store(cfg), "checkpoints")]


def fetch_checkpoint(cfg, name: str) -> Path:
    """A committed checkpoint as a verified local folder in the working copy (downloaded when it is not there
    yet), with its ledger as the store has it now (evaluation adds to ledgers after the commit)."""
    from dojo.objstore import KeyNotFound, fetch_tree

    st = store(cfg)
    local = fetch_tree(st, f"checkpoints/{name}")
    with contextlib.suppress(KeyNotFound):
        ledger = st.read(f"checkpoints/{name}/.ledger.json")
        if not (local / ".ledger.json").is_file() or (local / ".ledger.json").read_bytes() != ledger:
            from dojo.storage import write_json

            write_json(local / ".ledger.json", json.loads(ledger))
    return local


def usage(cfg) -> dict[str, int]:
    """Bytes per top-level folder of a URL root, on the store (one listing)."""
    out: dict[str, int] = {}
    for key, size in store(cfg).list("").items():
        top = key.split("/", 1)[0] if "/" in key else "."
        out[top] = out.get(top, 0) + size
    return out


@contextlib.contextmanager
def exclusive_lease(cfg, name: str, what: str):
    """One ``what`` per URL root across every host (the local flock covers one host only): the lease
    ``locks/{name}`` (``_take``), renewed every quarter lease while the block runs, released after. A live holder
    elsewhere makes it refuse at once (LockedError, like ``storage.exclusive_lock``). No-op on a local root."""
    from dojo.objstore import Conflict
    from dojo.storage import LockedError

    st = store(cfg)
    if st is None:
        yield
        return
    key = f"locks/{name}"
    body, holder = _take(st, key)
    if body is None:
        raise LockedError(f"{what} is already running under {cfg.remote} (host {holder.get('host')}, pid "
                          f"{holder.get('pid')}, lease {st.url_for(key)}); wait for it, or if that process is gone "
                          f"wait {LEASE_SECONDS:.0f} s for its lease to expire")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_SECONDS / 4):
            mine, version = _ours(st, key, body)
            try:
                if mine:
                    st.replace_if(key, json.dumps({**body, "until": time.time() + LEASE_SECONDS}).encode(), version)
            except Conflict as exc:
                log.warning("could not renew the lease %s: %s", key, exc)

    thread = threading.Thread(target=renew, name=f"lease-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        if _ours(st, key, body)[0]:
            st.delete(key)
