"""Lineage statistics: how good is each generator's data, and how strict is each validator?

``state/lineage.json`` under the storage root keeps one record per data file with each validator@version's
verdict on it, and the aggregates recomputed from those records on every write:

* per generator@version: files, examples, accepted, rejected, rejection_rate, rejections by rule,
  files accepted/rejected, first_seen/last_seen;
* per validator@version: files, examples checked, rejected, rejection_rate, rejections by rule, files rejected.

A record is keyed by the file's identity: the sha256 of the file the user gave (the sidecar's
``original_sha256``), else the file's own sha256, so the gate's admission of a partly rejected file and the
claim-time re-check of its split copy are one file. Recording the same file again replaces its record (never
adds to it), so ``record`` is idempotent. A file checked by two validator versions counts once for each
validator; its generator counts it once, with the latest verdict. Writes are atomic and happen under
``storage.exclusive_lock``.

``answers`` says which generator is worst, which validator is the most aggressive and, per generator,
whether the rejection rate rose with its latest version. ``dojo lineage`` prints ``format_table``.

The file is read through ``storage.read_json`` (named in every error). One bad record (a hand edit, a value of
the wrong type from an older dojo) must not poison the rest: ``load`` checks every record, leaves the bad ones
out of the statistics and lists them under ``skipped`` (``format_table`` prints them); the aggregates are always
recomputed from the good records, never trusted from the file. ``record`` keeps bad records on disk untouched
(they are evidence; the user fixes or removes them) unless the same file is recorded again.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from pathlib import Path

from dojo.storage import LockedError, StateError, exclusive_lock, read_json, write_json
from dojo.text import printable

FILE = Path("state") / "lineage.json"
LOCK = Path("state") / "lineage.lock"
VERSION = 1
LOCK_WAIT_S = 10.0


def _empty() -> dict:
    return {"version": VERSION, "files": {}, "generators": {}, "validators": {}}


def _path(cfg) -> Path:
    return cfg.root / FILE


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _locked(cfg):
    """exclusive_lock refuses instead of waiting; a stats update takes milliseconds, so wait a little."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(exclusive_lock(cfg.root / LOCK, "a lineage stats update"))
        except LockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        with stack:
            yield
        return


def generator_name(sidecar: dict | None) -> str:
    """``id@version`` from a sidecar (``generator``, else ``generator_id`` + ``generator_version``), or 'unknown'."""
    sidecar = sidecar or {}
    if isinstance(sidecar.get("generator"), str) and sidecar["generator"].strip():
        return sidecar["generator"].strip()
    gid, version = sidecar.get("generator_id"), sidecar.get("generator_version")
    if isinstance(gid, str) and gid:
        return f"{gid}@{version}" if version else gid
    return "unknown"


def _count(validation: dict, key: str) -> int:
    value = validation.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"lineage record: validation[{key!r}] must be an integer >= 0, got {value!r}")
    return value


def _by_rule(validation: dict, key: str) -> dict[str, int]:
    value = validation.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                              for k, v in value.items()):
        raise ValueError(f"lineage record: validation[{key!r}] must map rule names to counts, got {value!r}")
    return dict(value)


# ---------------------------------------------------------------- reading and writing
def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_rules(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _is_count(v) for k, v in value.items())


def _bad_verdict(v) -> str | None:
    if not isinstance(v, dict):
        return "is not a JSON object"
    for key in ("total", "accepted", "rejected"):
        if not _is_count(v.get(key)):
            return f"{key} must be an integer >= 0"
    for key in ("rejected_by_rule", "warnings_by_rule"):
        if not _is_rules(v.get(key)):
            return f"{key} must map rule names to counts"
    if not isinstance(v.get("recorded_at"), str):
        return "recorded_at must be a time string"
    if v.get("seq") is not None and not _is_count(v["seq"]):
        return "seq must be an integer >= 0"
    if v.get("outcome") is not None and not isinstance(v["outcome"], str):
        return "outcome must be a string"
    return None


def _bad_record(record) -> str | None:
    """Why a per-file record cannot be aggregated, or None when it can."""
    if not isinstance(record, dict):
        return "is not a JSON object"
    for key in ("generator", "seen_at"):
        if not isinstance(record.get(key), str):
            return f"{key} must be a string, not {_show(record.get(key))}"
    if record.get("name") is not None and not isinstance(record["name"], str):
        return f"name must be a string, not {_show(record['name'])}"
    verdicts = record.get("validations")
    if verdicts is None:
        return None
    if not isinstance(verdicts, dict):
        return f"validations must be a JSON object, not {_show(verdicts)}"
    for name, v in verdicts.items():
        why = _bad_verdict(v)
        if why:
            return f"validations[{_show(name)}] {why}"
    return None


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def _read(cfg) -> tuple[dict, dict, dict]:
    """(the file's data, its good records, {identity: why} of its bad records); an empty skeleton when there is
    no file. StateError naming the file when the file itself is unusable."""
    path = _path(cfg)
    data = read_json(path, expect=dict, what="lineage stats file")
    if data is None:
        return _empty(), {}, {}
    if not isinstance(data.get("files"), dict):
        raise StateError(f"{path}: not a lineage stats file (no 'files' mapping); move it aside to start over")
    good, bad = {}, {}
    for key, record in data["files"].items():
        why = _bad_record(record)
        if why is None:
            good[key] = record
        else:
            bad[key] = why
    return data, good, bad


def _stats(data: dict, good: dict, bad: dict, path: Path) -> dict:
    """What ``load`` returns: the file's data with only the good records and aggregates recomputed from them;
    ``skipped`` (only when there are bad records) = {"file", "records": {identity: why}}."""
    generators, validators = aggregate(good)
    stats = {**data, "files": good, "generators": generators, "validators": validators}
    if bad:
        stats["skipped"] = {"file": str(path), "records": bad}
    return stats


def load(cfg) -> dict:
    """The stored stats (an empty skeleton when nothing was recorded yet), bad records left out and listed
    under ``skipped``."""
    data, good, bad = _read(cfg)
    return _stats(data, good, bad, _path(cfg))


def record(cfg, sidecar: dict | None, validation: dict) -> dict:
    """Record one file's validation and return the updated stats.

    ``validation``: {"sha256", "validator": "name@version", "depth", "total", "accepted", "rejected",
    "rejected_by_rule": {rule: n}, "warnings_by_rule": {rule: n}, "outcome", optional "file"}. The
    generator comes from the sidecar ("unknown" without one). The file's identity is the sidecar's
    ``original_sha256`` (the user's file, when this is the gate's copy or split of it), else ``sha256``;
    recording the same identity with the same validator again replaces the earlier verdict."""
    sha = validation.get("sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ValueError(f"lineage record: validation['sha256'] must be the file's 64-hex sha256, got {sha!r}")
    original = (sidecar or {}).get("original_sha256")
    identity = original if isinstance(original, str) and re.fullmatch(r"[0-9a-f]{64}", original) else sha
    validator = validation.get("validator")
    if not isinstance(validator, str) or not validator.strip():
        raise ValueError(f"lineage record: validation['validator'] must name the validator@version, got {validator!r}")
    now = _now()
    verdict = {
        "depth": validation.get("depth"),
        "total": _count(validation, "total"),
        "accepted": _count(validation, "accepted"),
        "rejected": _count(validation, "rejected"),
        "rejected_by_rule": _by_rule(validation, "rejected_by_rule"),
        "warnings_by_rule": _by_rule(validation, "warnings_by_rule"),
        "outcome": validation.get("outcome"),
        "recorded_at": now,
    }
    sidecar = sidecar or {}
    generated_at = sidecar.get("generated_at")
    with _locked(cfg):
        data, good, bad = _read(cfg)
        data = {**data, "files": dict(data["files"])}
        old = good.get(identity) or {}                 # a bad earlier record of this file is replaced, not merged
        bad.pop(identity, None)
        seq = data.get("seq") if _is_count(data.get("seq")) else 0
        data["seq"] = verdict["seq"] = seq + 1         # orders verdicts when clocks tie
        name = validation.get("file") or old.get("name") or (sidecar.get("queue") or {}).get("original_path")
        data["files"][identity] = {
            "name": None if name is None else Path(str(name)).name,
            "generator": generator_name(sidecar),
            # when the generator made it; else when we first saw it (kept across re-records)
            "seen_at": (generated_at if isinstance(generated_at, str) and generated_at else None)
            or old.get("seen_at") or now,
            "validations": {**(old.get("validations") or {}), validator.strip(): verdict},
        }
        good[identity] = data["files"][identity]
        data["generators"], data["validators"] = aggregate(good)
        data["version"] = VERSION
        data["updated_at"] = now
        _path(cfg).parent.mkdir(parents=True, exist_ok=True)
        write_json(_path(cfg), data)
    return _stats(data, good, bad, _path(cfg))


# ---------------------------------------------------------------- aggregation
def _add_rules(into: dict, rules: dict) -> None:
    for rule, n in rules.items():
        into[rule] = into.get(rule, 0) + n


def _rate(rejected: int, examples: int) -> float:
    return round(rejected / examples, 6) if examples else 0.0


def aggregate(files: dict) -> tuple[dict, dict]:
    """(per generator@version, per validator@version) from the per-file records."""
    generators: dict[str, dict] = {}
    validators: dict[str, dict] = {}
    for record in files.values():
        verdicts = record.get("validations") or {}
        if not verdicts:
            continue
        for name, v in verdicts.items():
            s = validators.setdefault(name, {"files": 0, "examples": 0, "accepted": 0, "rejected": 0,
                                             "files_rejected": 0, "rejections_by_rule": {}})
            s["files"] += 1
            s["examples"] += v["total"]
            s["accepted"] += v["accepted"]
            s["rejected"] += v["rejected"]
            s["files_rejected"] += v.get("outcome") == "rejected"
            _add_rules(s["rejections_by_rule"], v["rejected_by_rule"])
        latest = max(verdicts.values(), key=lambda v: (v.get("seq") or 0, v["recorded_at"]))
        g = generators.setdefault(record["generator"], {
            "files": 0, "examples": 0, "accepted": 0, "rejected": 0, "files_accepted": 0, "files_rejected": 0,
            "rejections_by_rule": {}, "warnings_by_rule": {}, "first_seen": record["seen_at"],
            "last_seen": record["seen_at"]})
        g["files"] += 1
        g["examples"] += latest["total"]
        g["accepted"] += latest["accepted"]
        g["rejected"] += latest["rejected"]
        g["files_accepted"] += latest.get("outcome") == "accepted"
        g["files_rejected"] += latest.get("outcome") == "rejected"
        _add_rules(g["rejections_by_rule"], latest["rejected_by_rule"])
        _add_rules(g["warnings_by_rule"], latest["warnings_by_rule"])
        g["first_seen"] = min(g["first_seen"], record["seen_at"])
        g["last_seen"] = max(g["last_seen"], record["seen_at"])
    for s in list(generators.values()) + list(validators.values()):
        s["rejection_rate"] = _rate(s["rejected"], s["examples"])
    return generators, validators


def _split(key: str) -> tuple[str, str]:
    name, _, version = key.rpartition("@")
    return (name, version) if name else (key, "")


def _version_key(version: str) -> tuple:
    """'1.10.0' sorts after '1.9.2'; non-numeric parts sort after numeric ones, as text."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-+]", version))


def _worst(table: dict) -> dict | None:
    """The entry with the highest rejection rate (ties: more examples, then name), at least one file."""
    rows = [(s["rejection_rate"], s["examples"], k) for k, s in table.items() if s["files"] >= 1]
    if not rows:
        return None
    rate, _, key = sorted(rows, key=lambda r: (-r[0], -r[1], r[2]))[0]
    s = table[key]
    return {"name": key, "rejection_rate": rate, "files": s["files"], "examples": s["examples"],
            "rejections_by_rule": s["rejections_by_rule"]}


def answers_from(stats: dict) -> dict:
    """The questions lineage exists to answer, from loaded stats.

    ``generators[id]["versions"]`` lists each version's rejection rate, oldest version first;
    ``quality_dropped`` is True when the newest version rejects a larger share than the one before it
    (None with a single version)."""
    generators = stats.get("generators") or {}
    by_id: dict[str, list] = {}
    for key, s in generators.items():
        gid, version = _split(key)
        by_id.setdefault(gid, []).append({"version": version, "files": s["files"], "examples": s["examples"],
                                          "rejected": s["rejected"], "rejection_rate": s["rejection_rate"]})
    comparison = {}
    for gid, versions in sorted(by_id.items()):
        versions.sort(key=lambda v: _version_key(v["version"]))
        entry = {"versions": versions, "latest": versions[-1]["version"], "previous": None, "change": None,
                 "quality_dropped": None}
        if len(versions) > 1:
            prev, last = versions[-2], versions[-1]
            change = round(last["rejection_rate"] - prev["rejection_rate"], 6)
            entry.update(previous=prev["version"], change=change, quality_dropped=change > 0)
        comparison[gid] = entry
    return {"worst_generator": _worst(generators),
            "most_aggressive_validator": _worst(stats.get("validators") or {}),
            "generators": comparison}


def answers(cfg) -> dict:
    return answers_from(load(cfg))


# ---------------------------------------------------------------- text
def _top_rules(rules: dict, n: int = 3) -> str:
    top = sorted(rules.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{rule}×{count}" for rule, count in top) or "-"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in [headers, *rows]]
    return "\n".join(lines)


def generator_rows(stats: dict) -> list[dict]:
    """One flat dict per generator@version (for the CLI table and for table artifacts); names, rules and times
    come from files, so they are shown with control characters escaped (dojo.text.printable)."""
    return [{"generator": printable(k), "files": s["files"], "examples": s["examples"], "rejected": s["rejected"],
             "rejection_rate": s["rejection_rate"], "top_rules": printable(_top_rules(s["rejections_by_rule"])),
             "first_seen": printable(s["first_seen"]), "last_seen": printable(s["last_seen"])}
            for k, s in sorted((stats.get("generators") or {}).items())]


def validator_rows(stats: dict) -> list[dict]:
    """One flat dict per validator@version (escaped like generator_rows)."""
    return [{"validator": printable(k), "files": s["files"], "examples": s["examples"], "rejected": s["rejected"],
             "rejection_rate": s["rejection_rate"], "top_rules": printable(_top_rules(s["rejections_by_rule"]))}
            for k, s in sorted((stats.get("validators") or {}).items())]


def skipped_note(stats: dict) -> str | None:
    """'skipped N bad record(s) in FILE: …' when ``load`` left records out, else None."""
    skipped = stats.get("skipped")
    if not skipped:
        return None
    records = skipped["records"]
    shown = "; ".join(f"{key[:12]} {why}" for key, why in list(records.items())[:3])
    more = f"; and {len(records) - 3} more" if len(records) > 3 else ""
    return printable(f"skipped {len(records)} bad record(s) in {skipped['file']}: {shown}{more} "
                     f"(fix or remove them; they are not counted)")


def format_table(stats: dict) -> str:
    """Generators, validators and the answers, as plain text (every name escaped), then the skipped records."""
    note = skipped_note(stats)
    if not stats.get("files"):
        empty = "no lineage recorded yet (files are recorded when they are validated)"
        return empty if note is None else f"{empty}\n{note}"
    g = [[r["generator"], r["files"], r["examples"], r["rejected"], f"{r['rejection_rate']:.1%}", r["top_rules"],
          r["first_seen"][:10], r["last_seen"][:10]] for r in generator_rows(stats)]
    v = [[r["validator"], r["files"], r["examples"], r["rejected"], f"{r['rejection_rate']:.1%}", r["top_rules"]]
         for r in validator_rows(stats)]
    out = ["generators",
           _table(["GENERATOR", "FILES", "EXAMPLES", "REJECTED", "RATE", "TOP RULES", "FIRST", "LAST"], g),
           "", "validators",
           _table(["VALIDATOR", "FILES", "CHECKED", "REJECTED", "RATE", "TOP RULES"], v), ""]
    a = answers_from(stats)
    worst, strict = a["worst_generator"], a["most_aggressive_validator"]
    if worst:
        out.append(f"worst generator: {printable(worst['name'])} ({worst['rejection_rate']:.1%} of "
                   f"{worst['examples']} examples rejected)")
    if strict:
        out.append(f"most aggressive validator: {printable(strict['name'])} "
                   f"({strict['rejection_rate']:.1%} rejected)")
    for gid, c in a["generators"].items():
        if c["previous"] is None:
            continue
        trail = " → ".join(f"{v['version']} {v['rejection_rate']:.1%}" for v in c["versions"])
        verdict = "quality dropped" if c["quality_dropped"] else "no drop"
        out.append(printable(f"{gid}: {trail} ({verdict} after the bump to {c['latest']})"))
    if note is not None:
        out.append(note)
    return "\n".join(out)
