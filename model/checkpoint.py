"""Checkpoints and their ledger.

A checkpoint is ``checkpoints/checkpoint-{step}-{YYYYMMDD}-{HHMM}/`` (UTC) under the storage root: an HF model
directory (safetensors only) + ``.ledger.json`` + ``training_state/`` (optimizer, scheduler, RNG and data
position, for exact resume). It is written under ``.tmp-…`` and renamed when complete, so a crash never
leaves a directory that looks finished. The ledger says what made it: step, time, losses, learning rate,
data files with hashes, skill and level, examples trained, size, whether optimizer state is inside, the
resolved config, the system prompt and the code version. Evaluation adds its accuracies to the ledger.

Optimizer and RNG state are stored as safetensors (tensors) + JSON (everything else): no pickle anywhere.

**Trust.** ``.manifest.json`` lists every file but the ledger (relative path, size, sha256); it is written
inside the temp directory after every file it covers, so the rename commits both. The ledger is left out because
evaluation adds its accuracies to it; its name and step must agree with the directory's name instead.
``latest_checkpoint`` verifies the newest candidate (structure, ledger, training state, manifest sizes and
hashes) and moves one that fails to ``{root}/quarantine/`` with a warning and a ``state/quarantine.jsonl``
line, then tries the next: the lineage continues from the newest *valid* checkpoint, never silently forks.
Checkpoints written before manifests existed are accepted on their structure and ledger, and a log line says so.
Hashing cost, measured (one core, dev box): sha256 reads ~1.4 GB/s (10 MiB in 7 ms); a tiny-model checkpoint
(10.5 MB, 15 files) verifies in ~9 ms with hashes, ~2 ms sizes only. A Qwen3-0.6B checkpoint with AdamW state
(~3.6 GB) takes ~2.5 s, against minutes of training per chunk, and only the newest candidate is hashed. So
hashes are always checked, once per process per unchanged checkpoint (``_hash_verified``, keyed by each file's
size, mtime, ctime and inode); ``list_checkpoints`` checks sizes only.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dojo.storage import StateError, read_json, sha256_file, tree_size, write_json
from validation.model_dir import check_model_dir, safetensors_problem

log = logging.getLogger("dojo.checkpoint")

NAME_RE = re.compile(r"^checkpoint-(\d+)-(\d{8})-(\d{4})$")
LEDGER = ".ledger.json"
MANIFEST = ".manifest.json"
STATE_DIR = "training_state"
QUARANTINE_DIR = "quarantine"
QUARANTINE_LOG = Path("state") / "quarantine.jsonl"
LEDGER_VERSION = 1
MANIFEST_VERSION = 1


def canonical_name(step: int, when: dt.datetime) -> str:
    return f"checkpoint-{step}-{when.astimezone(dt.timezone.utc):%Y%m%d-%H%M}"


def parse_name(name: str) -> int | None:
    """The step of a canonical checkpoint name, or None for anything else (temp dirs included)."""
    m = NAME_RE.match(name)
    return int(m.group(1)) if m else None


def candidates(root: Path) -> list[Path]:
    """Every entry of ``root/checkpoints`` with a canonical name, oldest step first (nothing verified)."""
    folder = Path(root) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(parse_name(d.name), d.name, d) for d in folder.iterdir()]
    return [d for step, _, d in sorted(f for f in found if f[0] is not None)]


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root/checkpoints``, oldest step first: structure, ledger and manifest sizes
    checked (no hashes, nothing moved; ``latest_checkpoint`` is the verified one)."""
    return [d for d in candidates(root) if not verify_checkpoint(d, hashes=False)]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest valid checkpoint, fully verified (``verify_checkpoint``). Newer ones that fail are moved to
    ``root/quarantine/`` with a warning naming them and why (``quarantine``), so the lineage continues from the
    last valid checkpoint instead of stalling on, or silently skipping, a broken one."""
    for d in reversed(candidates(root)):
        problems = verify_checkpoint(d)
        if not problems:
            return d
        quarantine(root, d, "; ".join(problems))
    return None


def latest(cfg, set_aside: bool = False) -> Path | None:
    """The checkpoint the lineage continues from (what ``latest`` names): on a local root the newest valid one
    (``latest_checkpoint``); on a URL root the newest one *committed on the store*, downloaded into the working
    copy and verified on demand (``dojo.mirror``) — a checkpoint saved here whose upload never finished is not
    it, so every host resumes from the same one. ``set_aside`` (the trainer, which alone writes checkpoints)
    moves such uncommitted ones out of the working copy's ``checkpoints/`` into ``uncommitted/`` (kept, with a
    warning), so the next save can take their name."""
    if not cfg.remote:
        return latest_checkpoint(cfg.root)
    from dojo import mirror
    from dojo.objstore import StoreError

    names = mirror.committed_checkpoints(cfg)
    if set_aside:
        for d in candidates(cfg.root):
            if d.name not in names:
                dest = Path(cfg.root) / "uncommitted" / f"{d.name}-{int(d.stat().st_mtime)}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.rename(d, dest)
                log.warning("%s was saved here but never committed to %s (its upload did not finish); moved to "
                            "%s, training continues from the last committed checkpoint", d.name, cfg.remote, dest)
    for name in sorted(names, key=lambda n: parse_name(n) or -1, reverse=True):
        if parse_name(name) is None:
            continue
        try:
            path = mirror.fetch_checkpoint(cfg, name)
        except StoreError as exc:
            log.warning("committed checkpoint %s cannot be used: %s; trying the one before", name, exc)
            continue
        problems = verify_checkpoint(path)
        if not problems:
            return path
        log.warning("committed checkpoint %s fails verification (%s); trying the one before", name,
                    "; ".join(problems))
    return None


def code_version() -> dict:
    """Package version and, when running from a git checkout, the commit and whether it was dirty."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("dojo")
    except PackageNotFoundError:
        package = None
    repo = Path(__file__).resolve().parent.parent
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        if commit:
            dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                        capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": package, "git_commit": commit, "git_dirty": dirty}


# ---------------------------------------------------------------- ledger
def read_ledger(checkpoint: Path) -> dict:
    """A checkpoint's ledger. Raises StateError (a ValueError) naming the file when it is missing, not a JSON
    object, or not a regular file."""
    path = Path(checkpoint) / LEDGER
    ledger = read_json(path, expect=dict, what="checkpoint ledger")
    if ledger is None:
        raise StateError(f"{path}: the checkpoint ledger is missing; {Path(checkpoint).name} is not a complete "
                         f"dojo checkpoint")
    return ledger


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def update_ledger(checkpoint: Path, **fields) -> dict:
    """Merge ``fields`` into a checkpoint's ledger (atomic replace)."""
    ledger = read_ledger(checkpoint)
    ledger.update(fields)
    write_json(Path(checkpoint) / LEDGER, ledger)
    return ledger


# ---------------------------------------------------------------- trust: manifest, verification, quarantine
def _unmanifested(rel: str) -> bool:
    """Files a manifest does not cover: itself, the ledger (evaluation adds to it) and the ledger's temp files."""
    return rel in (MANIFEST, LEDGER) or rel.startswith(f".{LEDGER}.tmp-")


def _entries(folder: Path) -> dict[str, os.stat_result]:
    """Every non-directory entry under ``folder`` by relative path, lstat'ed (symlinks are not followed)."""
    out = {}
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(top) / name
            try:
                st = p.lstat()
            except FileNotFoundError:   # e.g. the ledger's temp file, renamed over the ledger meanwhile
                continue
            if not stat.S_ISDIR(st.st_mode):
                out[p.relative_to(folder).as_posix()] = st
    return out


def build_manifest(folder: Path) -> dict:
    """Relative path, size and sha256 of every file under ``folder`` but the ledger."""
    files = {rel: {"size": st.st_size, "sha256": sha256_file(Path(folder) / rel)}
             for rel, st in sorted(_entries(Path(folder)).items()) if not _unmanifested(rel)}
    return {"manifest_version": MANIFEST_VERSION, "algorithm": "sha256", "files": files}


_hash_verified: dict[str, tuple] = {}   # checkpoint path -> stat signature of the files whose hashes matched
_said_legacy: set[str] = set()


def _manifest_problems(d: Path, hashes: bool) -> list[str]:
    path = d / MANIFEST
    try:
        manifest = read_json(path, expect=dict, what="checkpoint manifest")
    except StateError as exc:
        return [str(exc)]
    if manifest is None:   # written before manifests: judged on the rest (see verify_checkpoint)
        return []
    files = manifest.get("files")
    if not (isinstance(files, dict) and all(
            isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str)
            for e in files.values())):
        return [f"{path}: the checkpoint manifest has no valid files table ({{path: {{size, sha256}}}})"]
    on_disk = _entries(d)
    problems = []
    for rel, entry in sorted(files.items()):
        st = on_disk.get(rel)
        if st is None:
            problems.append(f"{rel} is missing (listed in {MANIFEST})")
        elif not stat.S_ISREG(st.st_mode):
            problems.append(f"{rel} is not a regular file")
        elif st.st_size != entry["size"]:
            problems.append(f"{rel} is {st.st_size} bytes, {MANIFEST} says {entry['size']} (truncated or changed)")
    extra = sorted(rel for rel in on_disk if rel not in files and not _unmanifested(rel))
    if extra:
        problems.append(f"files not in {MANIFEST}: {', '.join(extra[:5])}{' …' if len(extra) > 5 else ''}")
    if problems or not hashes:
        return problems
    signature = tuple((rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                      for rel, st in sorted(on_disk.items()) if rel in files)
    if _hash_verified.get(str(d)) == signature:
        return []
    try:
        problems = [f"{rel} does not match its sha256 in {MANIFEST} (changed or corrupted)"
                    for rel, entry in sorted(files.items()) if sha256_file(d / rel) != entry["sha256"]]
    except OSError as exc:
        return [f"cannot read it to check its hashes ({exc})"]
    if not problems:
        _hash_verified[str(d)] = signature
    return problems


def read_trainer_state(checkpoint: Path) -> dict:
    """``training_state/trainer.json``: global step and data position. Raises StateError naming the file when it
    is unreadable or lacks ``global_step`` or ``data`` {sha256, epoch, offset}."""
    path = Path(checkpoint) / STATE_DIR / "trainer.json"
    state = load_state(path.parent, "trainer")
    data = state.get("data") if isinstance(state, dict) else None
    ok = (isinstance(state, dict) and type(state.get("global_step")) is int and isinstance(data, dict)
          and isinstance(data.get("sha256"), str) and type(data.get("epoch")) is int
          and type(data.get("offset")) is int)
    if not ok:
        raise StateError(f"{path}: the trainer state must hold global_step and data {{sha256, epoch, offset}}")
    return state


def _training_state_problems(d: Path, ledger: dict | None) -> list[str]:
    folder = d / STATE_DIR
    if not folder.exists():
        return ["its ledger says it holds optimizer state, but training_state/ is missing"] \
            if ledger and ledger.get("has_optimizer_state") else []
    problems = [f"{STATE_DIR}/{bad}" for path in sorted(folder.glob("*.safetensors"))
                if (bad := safetensors_problem(path))]
    for path in sorted(folder.glob("*.json")):
        try:
            read_json(path, expect=dict, what="training state")
        except StateError as exc:
            problems.append(str(exc))
    if problems:
        return problems
    if not (folder / "trainer.json").is_file():
        return [f"{folder / 'trainer.json'} is missing"] if ledger and ledger.get("has_optimizer_state") else []
    try:
        trainer = read_trainer_state(d)
    except StateError as exc:
        return [str(exc)]
    if ledger and trainer["global_step"] != ledger.get("step"):
        return [f"trainer.json says global step {trainer['global_step']}, its ledger says {ledger.get('step')}"]
    return []


def verify_checkpoint(path: Path, hashes: bool = True) -> list[str]:
    """Every reason ``path`` cannot be trusted as a checkpoint (empty when it can): a usable model directory
    (safetensors only), a ledger that is a JSON object whose ``step`` (and ``name``, when present) agree with a
    canonical directory name, readable training state that agrees with the ledger, and the manifest: every file
    listed, present, of its recorded size, no file unlisted, and with ``hashes`` the sha256 of each. A directory
    without a manifest (written before manifests) passes on the rest, and a log line says so."""
    d = Path(path)
    check = check_model_dir(d)
    if not d.is_dir():
        return list(check.problems)
    problems = list(check.problems)
    try:
        ledger = read_ledger(d)
    except StateError as exc:
        problems.append(str(exc))
        ledger = None
    name_step = parse_name(d.name)
    if ledger is not None:
        step = ledger.get("step")
        if type(step) is not int:
            problems.append(f"{d / LEDGER}: the ledger's step is {step!r}, not an integer")
        elif name_step is not None and step != name_step:
            problems.append(f"its name says step {name_step} but its ledger says step {step}")
        if name_step is not None and "name" in ledger and ledger["name"] != d.name:
            problems.append(f"its ledger names it {ledger['name']!r}")
    problems += _training_state_problems(d, ledger)
    problems += _manifest_problems(d, hashes and not problems)
    if not problems and not (d / MANIFEST).exists() and str(d) not in _said_legacy:
        _said_legacy.add(str(d))
        log.info("%s has no %s (written before manifests): accepted on its structure and ledger", d.name, MANIFEST)
    return problems


def looks_like_checkpoint(path: Path) -> bool:
    """Whether ``path`` claims to be a dojo checkpoint (a ledger, a manifest, or a canonical name), so that it is
    held to ``verify_checkpoint`` rather than judged as a plain model directory."""
    d = Path(path)
    return parse_name(d.name) is not None or (d / LEDGER).exists() or (d / MANIFEST).exists()


def quarantine(root: Path, checkpoint: Path, reason: str) -> Path | None:
    """Move an invalid checkpoint to ``root/quarantine/`` (never delete it), warn naming it and why, and append
    ``{time, name, from, to, reason}`` to ``root/state/quarantine.jsonl``. Returns where it went; None when another
    process moved it first, or when it cannot be moved (then ``to`` is null: it stays, skipped, and is warned
    about again on every look-up)."""
    root, checkpoint = Path(root), Path(checkpoint)
    folder = root / QUARANTINE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    dest, n = folder / checkpoint.name, 1
    while dest.exists() or dest.is_symlink():
        dest, n = folder / f"{checkpoint.name}.{n}", n + 1
    try:
        os.rename(checkpoint, dest)
    except FileNotFoundError:
        return None
    except OSError as exc:      # cannot move it (permissions, another filesystem): still skipped, still said
        log.warning("checkpoint %s is invalid and is skipped, but could not be moved to %s (%s): %s. The lineage "
                    "continues from the newest valid checkpoint before it.", checkpoint.name, folder, exc, reason)
        dest = None
    else:
        log.warning("checkpoint %s is invalid and was moved to %s: %s. The lineage continues from the newest valid "
                    "checkpoint before it.", checkpoint.name, dest, reason)
    record = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "name": checkpoint.name,
              "from": str(checkpoint), "to": dest and str(dest), "reason": reason}
    (root / QUARANTINE_LOG).parent.mkdir(parents=True, exist_ok=True)
    with open(root / QUARANTINE_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return dest


# ---------------------------------------------------------------- optimizer / RNG state without pickle
def _split_state(obj, prefix: str, tensors: dict) -> object:
    """Replace every tensor in a nested dict/list with a reference, collecting tensors by key."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _split_state(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__":
                [_split_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    assert obj is None or isinstance(obj, (int, float, str, bool)), f"cannot store {type(obj)} at {prefix}"
    return obj


def _join_state(obj, tensors: dict):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _join_state(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            return [_join_state(v, tensors) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(_join_state(v, tensors) for v in obj["__tuple__"])
    return obj


def save_state(folder: Path, name: str, state) -> None:
    """Store a nested state (dicts, lists, tensors, scalars) as ``name.safetensors`` + ``name.json``."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_state(state, name, tensors)
    if tensors:
        save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(skeleton), encoding="utf-8")


def load_state(folder: Path, name: str):
    path = Path(folder) / f"{name}.json"
    skeleton = read_json(path, expect=dict, what="training state")
    if skeleton is None:
        raise StateError(f"{path}: the training state file is missing")
    tensor_file = Path(folder) / f"{name}.safetensors"
    tensors = load_file(str(tensor_file)) if tensor_file.exists() else {}
    try:
        return _join_state(skeleton, tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{path}: the training state does not match its tensors or is malformed ({exc!r})") \
            from None


# ---------------------------------------------------------------- writing
def save_checkpoint(root: Path, step: int, model, tokenizer, ledger: dict, training_state: dict | None,
                    now: dt.datetime | None = None, state_dict: dict | None = None) -> Path:
    """Write a complete checkpoint under a temporary name, then rename it into place. Returns its path.

    ``training_state`` maps a name (``optimizer``, ``scheduler``, ``rng``, ``trainer``) to a nested state; None
    stores weights only. ``state_dict``: the weights to write instead of the model's own (FSDP2: the full state
    gathered from the shards). Refuses to overwrite an existing checkpoint.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    name = canonical_name(step, now)
    folder = Path(root) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    if final.exists():
        raise FileExistsError(f"checkpoint {final} already exists; refusing to overwrite it")
    tmp = folder / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    try:
        model.save_pretrained(tmp, state_dict=state_dict)   # safetensors is the only format transformers 5 writes
        tokenizer.save_pretrained(tmp)
        if training_state is not None:
            (tmp / STATE_DIR).mkdir()
            for key, value in training_state.items():
                save_state(tmp / STATE_DIR, key, value)
        ledger = dict(ledger, ledger_version=LEDGER_VERSION, name=name, step=step,
                      time=now.astimezone(dt.timezone.utc).isoformat(timespec="seconds"),
                      has_optimizer_state=training_state is not None)
        # The manifest covers every file but the ledger (evaluation adds to it), so it is written after all it
        # covers; the ledger's size_bytes counts it. The rename below commits both.
        write_json(tmp / MANIFEST, build_manifest(tmp))
        ledger["size_bytes"] = tree_size(tmp)
        write_json(tmp / LEDGER, ledger)
        problems = check_model_dir(tmp).problems
        assert not problems, f"freshly written checkpoint is not a valid model dir: {problems}"
        os.rename(tmp, final)
    except BaseException:            # cancelled or failed mid-save: leave no half-written directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def has_training_state(checkpoint: Path) -> bool:
    return (Path(checkpoint) / STATE_DIR / "trainer.json").is_file()
