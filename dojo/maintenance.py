"""Retention: what `dojo maintenance` and the maintenance/daily deployment remove, and what they never remove.

A plan is computed first (``plan``), always; ``apply`` carries it out. The CLI shows the plan and removes nothing
unless asked (``--apply``); the deployment applies. Per folder (``retention`` in config):

- ``checkpoints/``: the newest ``keep_last_checkpoints`` stay. Whatever the config, these stay too: the promoted
  checkpoint, the best one per skill and level (highest accuracy in its ledger, ties to the newest), every one
  named in ``retention.keep``, every one not evaluated yet that is newer than the promoted one (its evaluation
  may be running), and any directory that does not verify as a dojo checkpoint (``latest_checkpoint``
  quarantines those; retention does not judge them). A broken promotion pointer stops all checkpoint removal.
- ``done/``, ``failed/``, ``trash/``: a data file and its companions once they have been there ``*_days``
  (the time of the move, from the sidecar's queue history; the file's mtime when there is none). A trained
  file's content hash is kept in ``state/retired.jsonl``, so the queue still refuses to train it again.
- ``eval/``: reports older than ``eval_days`` whose checkpoint is gone.
- ``quarantine/``: checkpoints quarantined more than ``quarantine_days`` ago (0, the default, keeps them).
- ``cache/tokenized/``: entries older than ``cache_days`` whose file is not queued or being trained.
- temp leftovers of killed writers (``.tmp-*``, ``.*.tmp-*``, ``.deleting-*``) older than ``tmp_hours``.

Removal is crash-safe: a directory is first renamed to ``.deleting-…`` (so a half-removed checkpoint never
carries a checkpoint's name), then removed. Each applied removal is a line in ``state/maintenance.jsonl``.
Checkpoint removals re-check the promotion pointer under its lock just before each one, so a promotion that
happens while maintenance runs is never removed.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from dojo import mirror, promotion, queue
from dojo.sidecar import read_sidecar
from dojo.storage import sha256_file, tree_size, usage
from dojo.text import human_size
from model import checkpoint as ckpt

log = logging.getLogger("dojo.maintenance")

QUEUE_FOLDERS = {"done": "done_days", "failed": "failed_days", "trash": "trash_days"}
TEMP_FOLDERS = ("checkpoints", "queue/high", "queue/normal", "queue/low", "inbox", "processing", "done", "failed",
                "trash", "state", "eval", "cache/tokenized")
LOG = Path("state") / "maintenance.jsonl"
DAY = 86400.0


@dataclass(frozen=True)
class Removal:
    path: Path
    kind: str          # checkpoint | done | failed | trash | eval | quarantine | cache | tmp
    bytes: int
    why: str
    remote: bool = False   # a tree on a URL root's store (its working-copy path names it)


@dataclass
class Plan:
    root: Path
    removals: list[Removal] = field(default_factory=list)
    kept: dict[str, list[str]] = field(default_factory=dict)    # checkpoint name -> why it stays
    usage: dict[str, int] = field(default_factory=dict)         # bytes per top-level folder, before

    @property
    def freed(self) -> int:
        return sum(r.bytes for r in self.removals)

    def format(self, applied: bool = False) -> str:
        verb = "removed" if applied else "would remove"
        lines = [f"{verb} {len(self.removals)} item(s), {human_size(self.freed)} under {self.root}"]
        lines += [f"  {r.kind:<10} {human_size(r.bytes):>9}  {r.path.relative_to(self.root)}  ({r.why})"
                  for r in self.removals]
        if self.kept:
            lines.append("checkpoints kept:")
            lines += [f"  {name}  ({', '.join(why)})" for name, why in self.kept.items()]
        if not applied and self.removals:
            lines.append("nothing was removed (a dry run); `dojo maintenance --apply` removes it")
        return "\n".join(lines)

    def markdown(self, applied: bool) -> str:
        rows = "\n".join(f"| {folder} | {human_size(n)} |" for folder, n in sorted(self.usage.items()))
        removed = "\n".join(f"| {r.kind} | `{r.path.relative_to(self.root)}` | {human_size(r.bytes)} | {r.why} |"
                            for r in self.removals) or "| – | nothing | – | – |"
        kept = "\n".join(f"| `{name}` | {', '.join(why)} |" for name, why in self.kept.items())
        return (f"# Storage maintenance\n\n{'Removed' if applied else 'Would remove'} {len(self.removals)} item(s), "
                f"{human_size(self.freed)}.\n\n## Usage before (per folder)\n\n| folder | size |\n|---|---|\n{rows}\n\n"
                f"## {'Removed' if applied else 'Would remove'}\n\n| kind | path | size | why |\n|---|---|---|---|\n"
                f"{removed}\n\n## Checkpoints kept\n\n| checkpoint | why |\n|---|---|\n{kept}\n")


def _size(path: Path) -> int:
    return tree_size(path) if path.is_dir() else path.lstat().st_size


def _days(seconds: float) -> str:
    return f"{seconds / DAY:.1f} days" if seconds >= DAY else f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------- checkpoints
def protected_checkpoints(cfg, found: list[Path]) -> dict[str, list[str]]:
    """Why each checkpoint in ``found`` (oldest step first) must stay; a checkpoint not in the result may go.
    Raises StateError when the promotion pointer is unreadable: then nothing can be known safe to remove."""
    ledgers = {d.name: None if ckpt.verify_checkpoint(d, hashes=False) else ckpt.read_ledger(d) for d in found}
    return _protect(cfg, [d.name for d in found], ledgers)


def _remote_ledgers(cfg) -> tuple[list[str], dict[str, dict | None]]:
    """The committed checkpoints of a URL root (oldest step first) and their ledgers as the store holds them."""
    from dojo.objstore import StateError, get_json

    st = mirror.store(cfg)
    names = sorted(mirror.committed_checkpoints(cfg), key=lambda n: ckpt.parse_name(n) or -1)
    ledgers: dict[str, dict | None] = {}
    for name in names:
        try:
            ledgers[name] = get_json(st, f"checkpoints/{name}/{ckpt.LEDGER}")
        except (StateError, ValueError):
            ledgers[name] = None
    return names, ledgers


def _protect(cfg, names: list[str], ledgers: dict[str, dict | None]) -> dict[str, list[str]]:
    r = cfg.retention
    found = [Path(n) for n in names]
    why: dict[str, list[str]] = {}

    def keep(name: str, reason: str) -> None:
        why.setdefault(name, []).append(reason)

    pointer = promotion.current(cfg.root)
    promoted = pointer["checkpoint"] if pointer else None
    if promoted:
        keep(promoted, "promoted")
    for name in r.keep:
        keep(name, "named in retention.keep")
    for d in found[-r.keep_last_checkpoints:]:
        keep(d.name, f"among the newest {r.keep_last_checkpoints}")
    for name, ledger in list(ledgers.items()):
        if ledger is None:
            keep(name, "does not verify (left for quarantine)")
    ledgers = {name: ledger for name, ledger in ledgers.items() if ledger is not None}
    promoted_step = ckpt.parse_name(promoted) if promoted else None
    best: dict[tuple[str, str], tuple[float, int, str]] = {}
    for name, ledger in ledgers.items():
        scores = ledger.get("eval")
        step = ckpt.parse_name(name) or 0
        if not isinstance(scores, dict) or not scores:
            if promoted_step is None or step > promoted_step:
                keep(name, "not evaluated yet")
            continue
        for skill, by_level in scores.items():
            for level, acc in (by_level.items() if isinstance(by_level, dict) else ()):
                if promotion.is_score(acc) and ((skill, level) not in best or (acc, step) > best[(skill, level)][:2]):
                    best[(skill, level)] = (acc, step, name)
    for (skill, level), (acc, _, name) in sorted(best.items()):
        keep(name, f"best on {skill} level {level} ({acc:.3f})")
    return why


def _plan_remote_checkpoints(cfg, plan: Plan, now: float) -> None:
    """A URL root: the committed checkpoints on the store, and uncommitted trees (a killed upload) older than
    ``tmp_hours``."""
    st = mirror.store(cfg)
    names, ledgers = _remote_ledgers(cfg)
    plan.kept = _protect(cfg, names, ledgers)
    sizes, modified = st.list("checkpoints"), st.modified("checkpoints")
    trees: dict[str, list[str]] = {}
    for key in sizes:
        trees.setdefault(key.split("/")[1], []).append(key)
    for name, keys in sorted(trees.items(), key=lambda kv: ckpt.parse_name(kv[0]) or -1):
        size = sum(sizes[k] for k in keys)
        if name in names and name not in plan.kept:
            plan.removals.append(Removal(cfg.root / "checkpoints" / name, "checkpoint", size,
                                         f"older than the newest {cfg.retention.keep_last_checkpoints}, not "
                                         f"promoted, not a best, not kept by name", remote=True))
        elif name not in names:
            age = now - max(modified.get(k, now) for k in keys)
            if age >= cfg.retention.tmp_hours * 3600:
                plan.removals.append(Removal(cfg.root / "checkpoints" / name, "tmp", size,
                                             f"an upload that never committed, {_days(age)} old", remote=True))


def _plan_checkpoints(cfg, plan: Plan) -> None:
    found = ckpt.candidates(cfg.root)
    plan.kept = protected_checkpoints(cfg, found)
    for d in found:
        if d.name not in plan.kept:
            plan.removals.append(Removal(d, "checkpoint", _size(d),
                                         f"older than the newest {cfg.retention.keep_last_checkpoints}, "
                                         f"not promoted, not a best, not kept by name"))


# ---------------------------------------------------------------- queue folders, eval, quarantine, cache, temps
def _moved_at(data: Path) -> float:
    """When the data file arrived in its folder: the last queue-history time in its sidecar, else its mtime."""
    try:
        meta = read_sidecar(data) or {}
        at = ((meta.get("queue") or {}).get("history") or [{}])[-1].get("at")
        return dt.datetime.fromisoformat(at).timestamp()
    except (ValueError, TypeError, AttributeError, KeyError, IndexError):
        return data.lstat().st_mtime


def _plan_queue_folder(cfg, plan: Plan, folder: str, days: float, now: float) -> None:
    base = cfg.root / folder
    if days <= 0 or not base.is_dir():
        return
    claimed: set[Path] = set()
    for data in sorted(base.glob("*" + queue.SUFFIX)):
        if data.name.startswith(".") or not data.is_file() or data.name.endswith(".rejected.jsonl"):
            continue
        age = now - _moved_at(data)
        if age < days * DAY:
            claimed.update(_companions(data))
            continue
        for p in _companions(data):
            claimed.add(p)
            if p.exists():
                plan.removals.append(Removal(p, folder, _size(p), f"in {folder}/ for {_days(age)}"))
    for p in sorted(base.iterdir()):     # what is left: split-off rejected lines, orphan sidecars, reasons
        if p in claimed or p.name.startswith(".") or not p.is_file():
            continue
        age = now - p.lstat().st_mtime
        if age >= days * DAY:
            plan.removals.append(Removal(p, folder, _size(p), f"in {folder}/ for {_days(age)}"))


def _companions(data: Path) -> list[Path]:
    stem = data.name[: -len(queue.SUFFIX)]
    return [data, data.with_name(stem + ".meta.json"), data.with_name(stem + queue.REASON),
            data.with_name(stem + ".rejected.jsonl")]


def _plan_eval(cfg, plan: Plan, now: float) -> None:
    days, base = cfg.retention.eval_days, cfg.root / "eval"
    if days > 0 and cfg.remote:
        st, committed = mirror.store(cfg), set(mirror.committed_checkpoints(cfg))
        sizes = st.list("eval")
        for key, when in sorted(st.modified("eval").items()):
            name = key.split("/", 1)[1][: -len(".json")] if key.endswith(".json") else None
            if name is not None and now - when >= days * DAY and name not in committed:
                plan.removals.append(Removal(cfg.root / key, "eval", sizes.get(key, 0),
                                             f"{_days(now - when)} old and its checkpoint is gone", remote=True))
        return
    if days <= 0 or not base.is_dir():
        return
    for report in sorted(base.glob("*.json")):
        name = report.name[: -len(".json")]
        age = now - report.lstat().st_mtime
        if age >= days * DAY and not (cfg.root / "checkpoints" / name).exists():
            plan.removals.append(Removal(report, "eval", _size(report),
                                         f"{_days(age)} old and its checkpoint is gone"))


def _plan_quarantine(cfg, plan: Plan, now: float) -> None:
    days, base = cfg.retention.quarantine_days, cfg.root / ckpt.QUARANTINE_DIR
    if days <= 0 or not base.is_dir():
        return
    for d in sorted(base.iterdir()):
        st = d.lstat()
        age = now - max(st.st_mtime, st.st_ctime)     # a rename into quarantine/ updates the ctime
        if age >= days * DAY:
            plan.removals.append(Removal(d, "quarantine", _size(d), f"quarantined {_days(age)} ago"))


def _plan_cache(cfg, plan: Plan, now: float) -> None:
    days, base = cfg.retention.cache_days, cfg.root / "cache" / "tokenized"
    if days <= 0 or not base.is_dir():
        return
    live = {e.sha256 for e in queue.list_entries(cfg) if e.state in ("queued", "processing")}
    for entry in sorted(base.iterdir()):
        meta = entry / "meta.json"
        if entry.name.startswith(".") or not meta.is_file():
            continue
        try:
            sha = json.loads(meta.read_text(encoding="utf-8")).get("sha256")
        except (OSError, ValueError, AttributeError):
            sha = None
        age = now - meta.lstat().st_mtime
        if age >= days * DAY and sha not in live:
            plan.removals.append(Removal(entry, "cache", _size(entry), f"built {_days(age)} ago, its file is not "
                                                                        f"queued or in training"))


def _is_temp(name: str) -> bool:
    return name.startswith(".") and (".tmp-" in name or name.startswith(".tmp") or name.startswith(".deleting-"))


def _plan_temps(cfg, plan: Plan, now: float) -> None:
    limit = cfg.retention.tmp_hours * 3600
    for folder in TEMP_FOLDERS:
        base = cfg.root / folder
        if not base.is_dir():
            continue
        for p in sorted(base.iterdir()):
            if not _is_temp(p.name):
                continue
            age = now - p.lstat().st_mtime
            if age >= limit:
                plan.removals.append(Removal(p, "tmp", _size(p), f"a temp leftover, {_days(age)} old"))


def plan(cfg, now: float | None = None) -> Plan:
    """What retention would remove now, and why each checkpoint that stays stays. Removes nothing."""
    now = time.time() if now is None else now
    out = Plan(root=Path(cfg.root), usage=mirror.usage(cfg) if cfg.remote else usage(cfg.root))
    if cfg.remote:
        mirror.refresh(cfg, list(promotion.POINTERS), "")
        mirror.refresh(cfg, queue.SHARED, "queue")
        _plan_remote_checkpoints(cfg, out, now)
    else:
        _plan_checkpoints(cfg, out)
    for folder, key in QUEUE_FOLDERS.items():
        _plan_queue_folder(cfg, out, folder, getattr(cfg.retention, key), now)
    _plan_eval(cfg, out, now)
    _plan_quarantine(cfg, out, now)
    _plan_cache(cfg, out, now)
    _plan_temps(cfg, out, now)
    return out


# ---------------------------------------------------------------- applying
def _retire(cfg, data: Path) -> None:
    """Record a trained file's content hash before its file goes, so the queue still refuses it."""
    try:
        meta = read_sidecar(data) or {}
    except ValueError:
        meta = {}
    sha = (meta.get("queue") or {}).get("sha256") or sha256_file(data)
    line = {"sha256": sha, "name": data.name, "state": "done",
            "removed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    path = cfg.root / queue.RETIRED
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        doomed = path.with_name(f".deleting-{path.name}-{os.getpid()}")
        os.rename(path, doomed)          # a half-removed checkpoint never keeps a checkpoint's name
        shutil.rmtree(doomed)
    else:
        path.unlink(missing_ok=True)


def apply(cfg, todo: Plan) -> list[Removal]:
    """Carry ``todo`` out; returns what was removed. A checkpoint is re-checked against the protections under
    the promotion pointer's lock right before it goes (a promotion since the plan keeps it)."""
    done: list[Removal] = []
    log_path = cfg.root / LOG
    log_path.parent.mkdir(parents=True, exist_ok=True)
    queue_kinds = [r for r in todo.removals if r.kind in QUEUE_FOLDERS]
    rest = [r for r in todo.removals if r.kind not in QUEUE_FOLDERS]
    with mirror.synced(cfg, queue.SHARED, "queue"):      # a URL root: removals in the queue's folders are pushed
        done += _apply(cfg, queue_kinds, log_path)
    return done + _apply(cfg, rest, log_path)


def _remove_remote(cfg, r: Removal) -> None:
    st = mirror.store(cfg)
    key = r.path.relative_to(cfg.root).as_posix()
    if r.kind in ("checkpoint", "tmp"):
        st.delete(f"{key}/{ckpt.MANIFEST}")         # uncommitted from here on: no host will use it
        for k in st.list(key):
            st.delete(k)
        if r.path.is_dir():
            _remove(r.path)                          # the working copy's copy
    else:
        st.delete(key)
        r.path.unlink(missing_ok=True)


def _apply(cfg, removals: list[Removal], log_path: Path) -> list[Removal]:
    done: list[Removal] = []
    for r in removals:
        if r.remote:
            if r.kind == "checkpoint":
                with mirror.shared_file(cfg, *promotion.POINTERS):
                    names, ledgers = _remote_ledgers(cfg)
                    if r.path.name in _protect(cfg, names, ledgers):
                        log.info("kept %s: it became protected after the plan", r.path.name)
                        continue
                    _remove_remote(cfg, r)
            else:
                _remove_remote(cfg, r)
        elif not (r.path.exists() or r.path.is_symlink()):
            continue
        elif r.kind == "checkpoint":
            with mirror.shared_file(cfg, *promotion.POINTERS):
                if r.path.name in protected_checkpoints(cfg, ckpt.candidates(cfg.root)):
                    log.info("kept %s: it became protected after the plan", r.path.name)
                    continue
                _remove(r.path)
        else:
            if r.kind == "done" and r.path.name.endswith(queue.SUFFIX) and \
                    not r.path.name.endswith(".rejected.jsonl"):
                _retire(cfg, r.path)
            _remove(r.path)
        done.append(r)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                "kind": r.kind, "path": str(r.path.relative_to(cfg.root)), "bytes": r.bytes,
                                "why": r.why}) + "\n")
    return done
