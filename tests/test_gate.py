"""The gate in front of training keeps every line: good files are queued, partly bad files are queued without
their bad lines (which are kept in failed/ with reasons), bad files go to failed/ whole; the sidecar and the
lineage statistics record the outcome; the user's file is never touched."""
import hashlib
import json

from dojo import config, lineage_stats, queue
from dojo.cli import generate_file, main
from dojo.gate import admit
from dojo.sidecar import read_sidecar
from tests.helpers import write_jsonl


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bad_line():
    return {"messages": [{"role": "user", "content": "hello there"}]}    # no assistant turn


def test_good_file_is_queued_and_recorded(tmp_path):
    cfg = config.load()
    src = generate_file("bin", 1, 40, 2, tmp_path / "good.jsonl")
    before = sha(src)
    a = admit(cfg, src, "high")
    assert a.accepted and a.entry.state == "queued" and a.entry.priority == "high" and a.rejected_path is None
    assert sha(src) == before and sha(a.entry.path) == before
    meta = read_sidecar(a.entry.path)
    assert meta["validation"]["outcome"] == "accepted" and meta["validation"]["validator"] == "dojo.validate@2.0.0"
    assert meta["generator"] == "bin@1.1.0"
    stats = lineage_stats.load(cfg)
    assert "bin@1.1.0" in json.dumps(stats)


def test_partly_bad_file_queues_valid_lines_and_keeps_rejected_ones(tmp_path):
    cfg = config.load()
    src = generate_file("bin", 1, 40, 3, tmp_path / "mixed.jsonl")
    lines = src.read_text(encoding="utf-8").splitlines()
    lines[4] = json.dumps(bad_line())                    # 39/40 valid = 97.5% >= 95%
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = sha(src)
    a = admit(cfg, src)
    assert a.accepted and a.rejected_lines == 1
    queued = a.entry.path.read_text(encoding="utf-8").splitlines()
    assert len(queued) == 39 and json.dumps(bad_line()) not in queued
    kept = [json.loads(x) for x in a.rejected_path.read_text(encoding="utf-8").splitlines()]
    assert kept == [{"line": 5, "rules": ["no_assistant@1"], "messages": ["the example has no assistant turn"],
                     "raw": json.dumps(bad_line())}]
    assert sha(src) == before
    assert read_sidecar(a.entry.path)["original_sha256"] == before


def test_bad_file_goes_to_failed_whole_with_reasons(tmp_path, capsys):
    cfg = config.load()
    src = write_jsonl(tmp_path / "bad.jsonl", [bad_line()] * 3)
    (tmp_path / "bad.meta.json").write_text(json.dumps({"spec": "chat_sft_v1"}))
    before = sha(src)
    assert main(["queue", "add", str(src)]) == 1
    out = capsys.readouterr().out
    assert "REJECTED" in out and "rule no_assistant@1" in out
    (entry,) = [e for e in queue.list_entries(cfg) if e.state == "failed"]
    assert sha(entry.path) == before
    reason = entry.path.with_name(entry.path.stem + ".reason.txt").read_text(encoding="utf-8")
    assert "bad.jsonl:1: rule no_assistant@1" in reason
    assert queue.depth(cfg) == {"high": 0, "normal": 0, "low": 0}
    stats = lineage_stats.load(cfg)
    assert "no_assistant@1" in json.dumps(stats)


def test_file_without_a_spec_is_turned_away(tmp_path):
    cfg = config.load()
    src = write_jsonl(tmp_path / "nospec.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                               {"role": "assistant", "content": "a"}]}])
    a = admit(cfg, src)
    assert not a.accepted and a.entry.state == "failed" and "unknown_spec" in a.report
