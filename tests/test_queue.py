"""The data queue on real files in the per-test storage root: add (copy, sidecar block, sanitised names,
duplicates, same-name collisions), ordering, priority, delete, claim/finish/release, two racing claimer
processes, retry with a real validation function, the crash-between-renames repair, and `dojo queue …`."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from dojo import cli
from dojo import config as C
from dojo import queue as Q
from dojo.sidecar import sidecar_path, write_sidecar
from tests.helpers import chat, write_jsonl


@pytest.fixture
def cfg():
    return C.load()


def data_file(folder: Path, name: str, n: int = 3, tag: str = "", sidecar: bool = True) -> Path:
    """A small chat_sft_v1 file with distinct content per (n, tag), plus a generator sidecar."""
    path = write_jsonl(folder / name, [chat(("user", f"q{i}{tag}"), ("assistant", f"a{i}{tag}")) for i in range(n)])
    if sidecar:
        write_sidecar(path, "bin", "1.0.0", {"seed": 1, "tag": tag}, n, skill="bin", level=1)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), lock files left out."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def meta(path: Path) -> dict:
    return json.loads(sidecar_path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- a real (tiny) validation function
@dataclass
class JsonLinesReport:
    accepted: bool
    problems: list[str]

    def format(self) -> str:
        return "accepted" if self.accepted else "rejected:\n" + "\n".join(self.problems)


def json_lines_validator(path: Path) -> JsonLinesReport:
    """Accepts a file iff every non-blank line parses as a JSON object."""
    problems = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            ok = isinstance(json.loads(line), dict)
        except json.JSONDecodeError:
            ok = False
        if not ok:
            problems.append(f"{Path(path).name} line {n}: not a JSON object: {line[:40]!r}")
    return JsonLinesReport(not problems, problems)


# ---------------------------------------------------------------- add
def test_add_copies_file_and_sidecar_and_records_the_queue_block(cfg, tmp_path):
    src = write_jsonl(tmp_path / "user" / "bin_l1.jsonl",
                      [chat(("user", "q1"), ("assistant", "a1")), "", chat(("user", "q2"), ("assistant", "a2"))])
    write_sidecar(src, "bin", "1.0.0", {"seed": 7}, 2, skill="bin", level=1)
    before = tree(tmp_path / "user")

    entry = Q.add(cfg, src, priority="high")

    assert tree(tmp_path / "user") == before                          # the user's files are untouched
    assert entry.state == "queued" and entry.priority == "high"
    assert entry.path == cfg.root / "queue" / "high" / "bin_l1.jsonl"
    assert entry.path.read_bytes() == src.read_bytes()
    assert entry.sha256 == sha(src) and entry.id == sha(src)[:12]
    assert entry.examples == 2 and entry.size_bytes == src.stat().st_size   # the blank line is not an example
    m = meta(entry.path)
    assert m["generator"] == "bin@1.0.0" and m["params"] == {"seed": 7}   # the generator's sidecar came along
    q = m["queue"]
    assert q["id"] == entry.id and q["priority"] == "high" and q["original_path"] == str(src.resolve())
    assert q["added_at"] == entry.added_at and entry.age_seconds < 60
    assert sorted(p.name for p in entry.path.parent.iterdir()) == ["bin_l1.jsonl", "bin_l1.meta.json"]  # no temps


def test_add_without_sidecar_creates_one_with_a_null_generator(cfg, tmp_path):
    src = data_file(tmp_path, "plain.jsonl", sidecar=False)
    entry = Q.add(cfg, src)
    assert not sidecar_path(src).exists()                              # none is created beside the original
    m = meta(entry.path)
    assert m["generator"] is None and m["queue"]["priority"] == "normal" and m["queue"]["id"] == entry.id


@pytest.mark.parametrize("name, expected", [
    ("../../evil.jsonl", "evil.jsonl"),
    ("/etc/cron.d/evil.jsonl", "evil.jsonl"),
    ("..\\..\\win.jsonl", "win.jsonl"),
    ("a b\x00c\n;rm -rf.jsonl", "a_b_c__rm_-rf.jsonl"),
    (".hidden.jsonl", "hidden.jsonl"),
    ("ünïcode.jsonl", "_n_code.jsonl"),
    ("x" * 500 + ".jsonl", "x" * Q.MAX_STEM + ".jsonl"),
])
def test_sanitize_name(name, expected):
    assert Q.sanitize_name(name) == expected


@pytest.mark.parametrize("name", ["data.json", "data.jsonl.exe", "data.txt", ".jsonl", "../.jsonl", "..jsonl",
                                  "", "dir/", "/"])
def test_sanitize_name_rejects(name):
    with pytest.raises(ValueError):
        Q.sanitize_name(name)


def test_add_stores_under_the_sanitised_name_only_inside_the_queue(cfg, tmp_path):
    src = data_file(tmp_path / "user", "my data;x.jsonl")
    Q.add(cfg, tmp_path / "user" / ".." / "user" / "my data;x.jsonl")
    assert sorted(tree(cfg.root)) == ["queue/normal/my_data_x.jsonl", "queue/normal/my_data_x.meta.json"]
    assert src.exists()

    txt = tmp_path / "user" / "data.txt"
    txt.write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match=r"\.jsonl"):
        Q.add(cfg, txt)
    with pytest.raises(ValueError, match="no such file"):
        Q.add(cfg, tmp_path / "missing.jsonl")
    assert sorted(tree(cfg.root)) == ["queue/normal/my_data_x.jsonl", "queue/normal/my_data_x.meta.json"]


def test_add_rejects_unknown_priority(cfg, tmp_path):
    with pytest.raises(ValueError, match="high, normal, low"):
        Q.add(cfg, data_file(tmp_path, "a.jsonl"), priority="urgent")
    assert not (cfg.root / "queue").exists() or not list((cfg.root / "queue").rglob("*.jsonl"))


def test_add_refuses_the_same_content_in_any_state(cfg, tmp_path):
    first = data_file(tmp_path / "a", "one.jsonl")
    copy = tmp_path / "b" / "renamed.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    entry = Q.add(cfg, first)

    with pytest.raises(ValueError, match=f"already queued as {entry.id}"):
        Q.add(cfg, copy, priority="high")                               # another name, another priority
    Q.claim(cfg)
    with pytest.raises(ValueError, match=f"already processing as {entry.id}"):
        Q.add(cfg, copy)
    Q.finish(cfg, entry.id, "done")
    with pytest.raises(ValueError, match=f"already done as {entry.id}.*not trained twice"):
        Q.add(cfg, copy)

    other = Q.add(cfg, data_file(tmp_path / "c", "two.jsonl", tag="x"))
    Q.delete(cfg, other.id)
    with pytest.raises(ValueError, match=f"in trash/ as {other.id}.*dojo queue retry {other.id}"):
        Q.add(cfg, tmp_path / "c" / "two.jsonl")
    assert len(list(cfg.root.rglob("*.jsonl"))) == 2                    # nothing was stored by the refusals


def test_same_name_different_content_keeps_both(cfg, tmp_path):
    a = data_file(tmp_path / "a", "data.jsonl", tag="a")
    b = data_file(tmp_path / "b", "data.jsonl", tag="b")
    ea = Q.add(cfg, a)
    eb = Q.add(cfg, b)
    assert ea.path.name == "data.jsonl"
    assert eb.path.name == f"data-{eb.id}.jsonl"
    assert ea.path.read_bytes() == a.read_bytes() and eb.path.read_bytes() == b.read_bytes()
    assert meta(eb.path)["queue"]["id"] == eb.id and meta(ea.path)["queue"]["id"] == ea.id


# ---------------------------------------------------------------- list, find, priority, delete
def test_list_orders_by_priority_then_age_then_the_other_states(cfg, tmp_path):
    low = Q.add(cfg, data_file(tmp_path, "low.jsonl", tag="l"), "low")
    n1 = Q.add(cfg, data_file(tmp_path, "n1.jsonl", tag="n1"), "normal")
    high = Q.add(cfg, data_file(tmp_path, "high.jsonl", tag="h"), "high")
    n2 = Q.add(cfg, data_file(tmp_path, "n2.jsonl", tag="n2"), "normal")
    gone = Q.add(cfg, data_file(tmp_path, "gone.jsonl", tag="g"), "high")
    Q.delete(cfg, gone.id)

    entries = Q.list_entries(cfg)
    assert [e.name for e in entries] == ["high.jsonl", "n1.jsonl", "n2.jsonl", "low.jsonl", "gone.jsonl"]
    assert [e.state for e in entries] == ["queued"] * 4 + ["trash"]
    assert [e.priority for e in entries] == ["high", "normal", "normal", "low", "high"]
    assert Q.depth(cfg) == {"high": 1, "normal": 2, "low": 1}
    assert [e.id for e in Q.queued(cfg)] == [high.id, n1.id, n2.id, low.id]


def test_find_needs_a_unique_prefix_of_at_least_four(cfg, tmp_path):
    # two contents whose sha256 share the first 4 hex characters
    seen: dict[str, int] = {}
    for i in range(100_000):
        h = hashlib.sha256(f'{{"i": {i}}}\n'.encode()).hexdigest()[:4]
        if h in seen:
            pair = (seen[h], i)
            break
        seen[h] = i
    entries = []
    for i in pair:
        path = tmp_path / f"f{i}.jsonl"
        path.write_text(f'{{"i": {i}}}\n')
        entries.append(Q.add(cfg, path))
    prefix = entries[0].id[:4]
    assert entries[1].id[:4] == prefix
    with pytest.raises(ValueError, match="ambiguous"):
        Q.find(cfg, prefix)
    assert Q.find(cfg, entries[1].id[:8]).id == entries[1].id
    assert Q.find(cfg, entries[0].sha256.upper()).id == entries[0].id    # the full hash, any case
    with pytest.raises(ValueError, match="at least 4"):
        Q.find(cfg, prefix[:3])
    with pytest.raises(ValueError, match="no queue entry"):
        Q.find(cfg, "ffffffffffff" if not prefix.startswith("ffff") else "000000000000")


def test_set_priority_moves_between_queue_folders(cfg, tmp_path):
    e = Q.add(cfg, data_file(tmp_path, "a.jsonl"), "low")
    moved = Q.set_priority(cfg, e.id[:6], "high")
    assert moved.path == cfg.root / "queue" / "high" / "a.jsonl" and moved.priority == "high"
    assert not e.path.exists() and not sidecar_path(e.path).exists()
    assert meta(moved.path)["queue"]["priority"] == "high"
    assert meta(moved.path)["queue"]["added_at"] == e.added_at          # its place in line is kept
    assert Q.set_priority(cfg, e.id, "high").path == moved.path        # idempotent
    with pytest.raises(ValueError, match="high, normal, low"):
        Q.set_priority(cfg, e.id, "asap")
    Q.claim(cfg)
    with pytest.raises(ValueError, match="processing, not queued"):
        Q.set_priority(cfg, e.id, "low")


def test_delete_moves_to_trash_and_never_touches_the_original(cfg, tmp_path):
    src = data_file(tmp_path / "user", "a.jsonl")
    before = tree(tmp_path / "user")
    e = Q.add(cfg, src)
    t = Q.delete(cfg, e.id)
    assert t.state == "trash" and t.path == cfg.root / "trash" / "a.jsonl"
    assert t.path.read_bytes() == src.read_bytes() and sidecar_path(t.path).exists()
    assert not e.path.exists()
    assert tree(tmp_path / "user") == before
    assert Q.delete(cfg, e.id).path == t.path                          # idempotent
    assert meta(t.path)["queue"]["history"][-1]["event"] == "deleted"

    busy = Q.add(cfg, data_file(tmp_path / "user", "b.jsonl", tag="b"))
    Q.claim(cfg)
    with pytest.raises(ValueError, match="being trained"):
        Q.delete(cfg, busy.id)
    assert Q.find(cfg, busy.id).state == "processing"


# ---------------------------------------------------------------- claim, finish, release
def test_claim_takes_high_before_normal_before_low_oldest_first(cfg, tmp_path):
    order = [("low", "l1"), ("normal", "n1"), ("high", "h1"), ("low", "l2"), ("high", "h2"), ("normal", "n2")]
    ids = {tag: Q.add(cfg, data_file(tmp_path, f"{tag}.jsonl", tag=tag), prio).id for prio, tag in order}
    claimed = []
    while (e := Q.claim(cfg)) is not None:
        assert e.state == "processing" and e.path.parent == cfg.root / "processing"
        claimed.append(e.id)
    assert claimed == [ids[t] for t in ("h1", "h2", "n1", "n2", "l1", "l2")]
    assert Q.depth(cfg) == {"high": 0, "normal": 0, "low": 0}
    assert Q.claim(cfg) is None


def test_claim_finish_release_move_the_file_and_its_sidecar(cfg, tmp_path):
    a = Q.add(cfg, data_file(tmp_path, "a.jsonl", tag="a"), "high")
    b = Q.add(cfg, data_file(tmp_path, "b.jsonl", tag="b"), "low")

    got = Q.claim(cfg)
    assert got.id == a.id and got.priority == "high" and sidecar_path(got.path).exists()
    back = Q.release(cfg, a.id)                                         # a cancelled chunk
    assert back.path == a.path and back.state == "queued" and sidecar_path(a.path).exists()
    assert Q.release(cfg, a.id).path == a.path                          # idempotent

    assert Q.claim(cfg).id == a.id                                      # kept its place: first again
    done = Q.finish(cfg, a.id, "done")
    assert done.path == cfg.root / "done" / "a.jsonl" and sidecar_path(done.path).exists()
    assert Q.finish(cfg, a.id, "done").path == done.path               # idempotent
    events = [h["event"] for h in meta(done.path)["queue"]["history"]]
    assert events == ["added", "claimed", "released", "claimed", "done"]

    assert Q.claim(cfg).id == b.id
    failed = Q.finish(cfg, b.id[:5], "failed", reason="loss went to NaN at step 12")
    assert failed.path == cfg.root / "failed" / "b.jsonl" and failed.priority == "low"
    assert (cfg.root / "failed" / "b.reason.txt").read_text() == "loss went to NaN at step 12\n"
    assert sidecar_path(failed.path).exists()

    with pytest.raises(ValueError, match="done or failed"):
        Q.finish(cfg, b.id, "ok")
    with pytest.raises(ValueError, match="not processing"):
        Q.release(cfg, b.id)
    c = Q.add(cfg, data_file(tmp_path, "c.jsonl", tag="c"))
    with pytest.raises(ValueError, match="not processing"):
        Q.finish(cfg, c.id, "done")
    assert sorted(p.relative_to(cfg.root).as_posix() for p in cfg.root.rglob("*.jsonl")) == [
        "done/a.jsonl", "failed/b.jsonl", "queue/normal/c.jsonl"]


def test_claim_skips_a_file_another_claimer_already_took(cfg, tmp_path):
    a = Q.add(cfg, data_file(tmp_path, "a.jsonl", tag="a"), "high")
    b = Q.add(cfg, data_file(tmp_path, "b.jsonl", tag="b"), "normal")
    stale = Q.queued(cfg)                                   # what a slower claimer listed
    assert Q.claim(cfg).id == a.id                          # the faster one wins a
    got = Q.claim_from(cfg, stale)                          # the slower one's rename of a fails: it takes b
    assert got.id == b.id
    assert Q.claim_from(cfg, stale) is None
    assert sorted(p.name for p in (cfg.root / "processing").iterdir()) == [
        "a.jsonl", "a.meta.json", "b.jsonl", "b.meta.json"]


def hand_dropped(cfg, tmp_path, folder: str, name: str = "hand.jsonl") -> tuple[Path, bytes, bytes]:
    """A data file copied by hand into ``folder`` with a broken sidecar: (path, data bytes, sidecar bytes)."""
    path = data_file(cfg.root / folder, name, tag="hand", sidecar=False)
    sidecar_path(path).write_text("{not json", encoding="utf-8")
    return path, path.read_bytes(), sidecar_path(path).read_bytes()


def test_claim_sends_a_file_with_a_broken_sidecar_to_failed_and_takes_the_next(cfg, tmp_path):
    b = Q.add(cfg, data_file(tmp_path, "b.jsonl", tag="b"), "low")
    path, data, side = hand_dropped(cfg, tmp_path, "queue/normal")

    got = Q.claim(cfg)
    assert got.id == b.id and got.state == "processing"
    failed = cfg.root / "failed" / "hand.jsonl"
    assert not path.exists() and not sidecar_path(path).exists()
    assert failed.read_bytes() == data and sidecar_path(failed).read_bytes() == side   # kept byte for byte
    reason = (cfg.root / "failed" / "hand.reason.txt").read_text()
    assert "hand.meta.json" in reason and "not valid JSON" in reason and "line 1 column 2" in reason
    assert Q.find(cfg, sha(failed)[:12]).state == "failed"
    assert Q.claim(cfg) is None


def test_recover_orphans_fails_a_file_with_a_broken_sidecar_in_processing(cfg, tmp_path):
    from dojo import steps

    path, data, side = hand_dropped(cfg, tmp_path, "processing")
    out = steps.recover_orphans(cfg)                                  # must not raise
    assert len(out) == 1 and "broken" in out[0]
    failed = cfg.root / "failed" / "hand.jsonl"
    assert not path.exists() and failed.read_bytes() == data and sidecar_path(failed).read_bytes() == side
    reason = (cfg.root / "failed" / "hand.reason.txt").read_text()
    assert "hand.meta.json" in reason and "not valid JSON" in reason
    assert steps.recover_orphans(cfg) == []                           # the next start is clean


def test_same_name_from_two_priorities_never_overwrites_in_processing(cfg, tmp_path):
    x = Q.add(cfg, data_file(tmp_path / "1", "data.jsonl", tag="1"), "high")
    y = Q.add(cfg, data_file(tmp_path / "2", "data.jsonl", tag="2"), "low")
    assert x.path.name == y.path.name == "data.jsonl"                   # different folders, same name
    cx, cy = Q.claim(cfg), Q.claim(cfg)
    assert {cx.id, cy.id} == {x.id, y.id} and cx.path != cy.path
    assert sha(cx.path) == x.sha256 and sha(cy.path) == y.sha256
    assert meta(cy.path)["queue"]["id"] == cy.id


def _claim_worker(root: str, barrier, out: str) -> None:
    cfg = C.from_dict({"storage": {"root": root}}, env={})
    barrier.wait()
    got = []
    while (e := Q.claim(cfg)) is not None:
        got.append(e.id)
    Path(out).write_text(json.dumps(got))


def test_two_processes_claiming_at_once_never_get_the_same_file(cfg, tmp_path):
    ids = [Q.add(cfg, data_file(tmp_path, f"f{i:02d}.jsonl", n=1, tag=str(i)), ("high", "normal", "low")[i % 3]).id
           for i in range(30)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"claimed{i}.json" for i in range(2)]
    procs = [ctx.Process(target=_claim_worker, args=(str(cfg.root), barrier, str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    claimed = [json.loads(o.read_text()) for o in outs]
    everything = claimed[0] + claimed[1]
    assert sorted(everything) == sorted(ids)               # each file claimed exactly once
    assert len(set(everything)) == len(everything)
    processing = cfg.root / "processing"
    assert len(list(processing.glob("*.jsonl"))) == 30 and len(list(processing.glob("*.meta.json"))) == 30


def test_a_sidecar_orphaned_by_a_crash_between_renames_is_re_paired(cfg, tmp_path):
    e = Q.add(cfg, data_file(tmp_path, "a.jsonl"))
    os.makedirs(cfg.root / "processing")
    os.rename(e.path, cfg.root / "processing" / "a.jsonl")            # the data rename happened, then a crash
    assert Q.find(cfg, e.id).state == "processing"
    done = Q.finish(cfg, e.id, "done")
    assert sidecar_path(done.path).exists() and meta(done.path)["generator"] == "bin@1.0.0"
    assert not sidecar_path(e.path).exists()


# ---------------------------------------------------------------- retry
def test_retry_revalidates_with_a_real_validation_function(cfg, tmp_path):
    good = Q.add(cfg, data_file(tmp_path, "good.jsonl", tag="g"), "high")
    bad_src = write_jsonl(tmp_path / "bad.jsonl", [chat(("user", "q"), ("assistant", "a")), "{broken json"])
    bad = Q.add(cfg, bad_src)
    Q.claim(cfg)
    Q.finish(cfg, good.id, "failed", reason="CUDA out of memory")
    Q.claim(cfg)
    Q.finish(cfg, bad.id, "failed", reason="validation failed")

    with pytest.raises(ValueError, match="queued; only failed"):
        Q.retry(cfg, Q.add(cfg, data_file(tmp_path, "q.jsonl", tag="q")).id, json_lines_validator)

    back = Q.retry(cfg, good.id, json_lines_validator)                  # the data was fine: queued again
    assert back.state == "queued" and back.path == cfg.root / "queue" / "high" / "good.jsonl"
    assert not (cfg.root / "failed" / "good.jsonl").exists()

    with pytest.raises(ValueError, match=r"(?s)rejected again.*bad\.jsonl line 2: not a JSON object"):
        Q.retry(cfg, bad.id, json_lines_validator)
    stays = Q.find(cfg, bad.id)
    assert stays.state == "failed" and stays.path == cfg.root / "failed" / "bad.jsonl"
    reason = (cfg.root / "failed" / "bad.reason.txt").read_text()
    assert "line 2" in reason and "validation failed" not in reason     # the reason was updated
    assert meta(stays.path)["queue"]["history"][-1]["event"] == "retry rejected"


def test_retry_brings_a_trashed_file_back(cfg, tmp_path):
    e = Q.add(cfg, data_file(tmp_path, "a.jsonl"), "low")
    Q.delete(cfg, e.id)
    back = Q.retry(cfg, e.id, json_lines_validator)
    assert back.state == "queued" and back.priority == "low"


# ---------------------------------------------------------------- CLI
def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_queue_add_list_priority_delete(cfg, tmp_path, capsys):
    a = data_file(tmp_path, "alpha.jsonl", n=4, tag="a")
    b = data_file(tmp_path, "beta.jsonl", n=2, tag="b")
    code, out, err = run_cli(capsys, "queue", "add", a, "--priority", "low")
    assert code == 0, err
    aid = sha(a)[:12]
    assert aid in out and "low" in out
    code, out, err = run_cli(capsys, "queue", "add", b)
    assert code == 0, err
    bid = sha(b)[:12]

    code, out, _ = run_cli(capsys, "queue", "list")
    assert code == 0
    lines = out.splitlines()
    row_a = next(line for line in lines if aid in line)
    row_b = next(line for line in lines if bid in line)
    assert lines.index(row_b) < lines.index(row_a)                      # normal is listed before low
    assert "alpha.jsonl" in row_a and " 4 " in row_a and "queued" in row_a

    code, out, err = run_cli(capsys, "queue", "priority", aid[:6], "high")
    assert code == 0, err
    assert "high" in out
    assert (cfg.root / "queue" / "high" / "alpha.jsonl").exists()

    code, out, err = run_cli(capsys, "queue", "delete", bid)
    assert code == 0, err
    assert (cfg.root / "trash" / "beta.jsonl").exists() and b.exists()

    code, out, err = run_cli(capsys, "queue", "add", b)                 # same content, now in trash
    assert code == 2 and "dojo: error:" in err and f"dojo queue retry {bid}" in err
    code, out, err = run_cli(capsys, "queue", "delete", "zz")
    assert code == 2 and "at least 4" in err


def test_cli_queue_retry_uses_the_real_validator(cfg, tmp_path, capsys):
    pytest.importorskip("validation.validate")                           # written by another part of the project
    e = Q.add(cfg, write_jsonl(tmp_path / "x.jsonl", ["{not json"]))
    Q.claim(cfg)
    Q.finish(cfg, e.id, "failed", reason="bad")
    code, out, err = run_cli(capsys, "queue", "retry", e.id)
    assert code == 2 and "rejected again" in err
    assert Q.find(cfg, e.id).state == "failed"
