"""Lineage statistics in state/lineage.json: aggregation per generator and validator, idempotency per file,
the answers (worst generator, most aggressive validator, did a version bump hurt), the table, `dojo lineage`,
and concurrent recorders losing no update."""
from __future__ import annotations

import hashlib
import json
import multiprocessing

import pytest

from dojo import cli
from dojo import config as C
from dojo import lineage_stats as L


@pytest.fixture
def cfg():
    return C.load()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sidecar(generator: str | None, generated_at: str = "2025-01-01T00:00:00+00:00") -> dict:
    return {"generator": generator, "generated_at": generated_at}


def validation(file: str, total: int, rejected: int, rules: dict | None = None,
               validator: str = "dojo.validate@2.0.0", depth: str = "deep") -> dict:
    return {"sha256": sha(file), "file": f"{file}.jsonl", "validator": validator, "depth": depth, "total": total,
            "accepted": total - rejected, "rejected": rejected, "rejected_by_rule": rules or {},
            "warnings_by_rule": {"near_duplicate@1": 1}, "outcome": "rejected" if rejected > total // 20
            else "accepted"}


def test_record_aggregates_per_generator_and_validator(cfg):
    L.record(cfg, sidecar("bin@1.0.0", "2025-01-02T00:00:00+00:00"),
             validation("a", 100, 3, {"duplicate@1": 2, "answer_in_prompt@1": 1}))
    L.record(cfg, sidecar("bin@1.0.0", "2025-01-01T00:00:00+00:00"), validation("b", 50, 1, {"duplicate@1": 1}))
    L.record(cfg, sidecar("syllo@2.0.0"), validation("c", 10, 5, {"broken_json@1": 5}, validator="strict@0.1"))

    stats = json.loads((cfg.root / "state" / "lineage.json").read_text())   # what is on disk
    assert stats == L.load(cfg)
    g = stats["generators"]["bin@1.0.0"]
    assert (g["files"], g["examples"], g["accepted"], g["rejected"]) == (2, 150, 146, 4)
    assert g["rejection_rate"] == pytest.approx(4 / 150, abs=1e-6)
    assert g["rejections_by_rule"] == {"duplicate@1": 3, "answer_in_prompt@1": 1}
    assert g["warnings_by_rule"] == {"near_duplicate@1": 2}
    assert (g["first_seen"], g["last_seen"]) == ("2025-01-01T00:00:00+00:00", "2025-01-02T00:00:00+00:00")
    assert (g["files_accepted"], g["files_rejected"]) == (2, 0)
    s = stats["generators"]["syllo@2.0.0"]
    assert (s["files"], s["rejected"], s["rejection_rate"], s["files_rejected"]) == (1, 5, 0.5, 1)

    v = stats["validators"]["dojo.validate@2.0.0"]
    assert (v["files"], v["examples"], v["rejected"]) == (2, 150, 4)
    assert v["rejections_by_rule"] == {"duplicate@1": 3, "answer_in_prompt@1": 1}
    assert stats["validators"]["strict@0.1"]["rejection_rate"] == 0.5
    assert stats["files"][sha("a")]["name"] == "a.jsonl"


def test_recording_the_same_file_twice_does_not_double_count(cfg):
    L.record(cfg, sidecar("bin@1.0.0"), validation("a", 100, 3, {"duplicate@1": 3}))
    once = L.load(cfg)
    L.record(cfg, sidecar("bin@1.0.0"), validation("a", 100, 3, {"duplicate@1": 3}))
    twice = L.load(cfg)
    assert twice["generators"] == once["generators"] and twice["validators"] == once["validators"]
    assert len(twice["files"]) == 1 and twice["generators"]["bin@1.0.0"]["files"] == 1

    # a re-validation of the same file by the same validator replaces the verdict
    L.record(cfg, sidecar("bin@1.0.0"), validation("a", 100, 10, {"duplicate@1": 10}))
    g = L.load(cfg)["generators"]["bin@1.0.0"]
    assert (g["files"], g["examples"], g["rejected"]) == (1, 100, 10)


def test_a_split_copy_counts_as_its_original_file(cfg):
    """The gate records a partly rejected file when admitting it (validation sha256 = the user's file), and the
    claim-time re-check records the split copy (its own sha256; the sidecar carries original_sha256)."""
    original = validation("user", 100, 10, {"duplicate@1": 10})
    L.record(cfg, {**sidecar("bin@1.0.0"), "original_sha256": original["sha256"]}, original)
    once = L.load(cfg)["generators"]["bin@1.0.0"]
    split = validation("user-split", 100, 10, {"duplicate@1": 10})               # same verdict, other sha256
    L.record(cfg, {**sidecar("bin@1.0.0"), "original_sha256": original["sha256"]}, split)
    stats = L.load(cfg)
    g = stats["generators"]["bin@1.0.0"]
    assert (g["files"], g["examples"], g["rejected"]) == (once["files"], once["examples"], once["rejected"])
    assert (g["files"], g["examples"], g["rejected"]) == (1, 100, 10)
    assert g["rejections_by_rule"] == {"duplicate@1": 10}
    assert list(stats["files"]) == [original["sha256"]]
    assert stats["validators"]["dojo.validate@2.0.0"]["files"] == 1


def test_a_second_validator_counts_for_itself_but_the_generator_counts_the_file_once(cfg):
    L.record(cfg, sidecar("bin@1.0.0"), validation("a", 100, 2, validator="dojo.validate@2.0.0"))
    L.record(cfg, sidecar("bin@1.0.0"), validation("a", 100, 8, validator="dojo.validate@1.1.0"))
    stats = L.load(cfg)
    assert stats["validators"]["dojo.validate@2.0.0"]["rejected"] == 2
    assert stats["validators"]["dojo.validate@1.1.0"]["rejected"] == 8
    g = stats["generators"]["bin@1.0.0"]
    assert (g["files"], g["examples"], g["rejected"]) == (1, 100, 8)     # the latest verdict


def test_generator_is_unknown_without_a_sidecar_and_read_from_id_and_version(cfg):
    L.record(cfg, None, validation("a", 10, 0))
    L.record(cfg, {"generator": None}, validation("b", 10, 0))
    L.record(cfg, {"generator_id": "bin", "generator_version": "1.2.0"}, validation("c", 10, 0))
    gens = L.load(cfg)["generators"]
    assert gens["unknown"]["files"] == 2 and gens["bin@1.2.0"]["files"] == 1


@pytest.mark.parametrize("bad, match", [
    ({"sha256": "abc"}, "sha256"),
    ({"validator": ""}, "validator"),
    ({"total": -1}, "total"),
    ({"rejected": "3"}, "rejected"),
    ({"rejected_by_rule": {"dup": "2"}}, "rejected_by_rule"),
])
def test_record_rejects_malformed_validation(cfg, bad, match):
    with pytest.raises(ValueError, match=match):
        L.record(cfg, sidecar("bin@1.0.0"), {**validation("a", 10, 1), **bad})
    assert not (cfg.root / "state" / "lineage.json").exists()


def test_answers_name_the_worst_generator_strictest_validator_and_version_changes(cfg):
    assert L.answers(cfg) == {"worst_generator": None, "most_aggressive_validator": None, "generators": {}}
    L.record(cfg, sidecar("bin@1.9.0"), validation("a", 100, 1))
    L.record(cfg, sidecar("bin@1.10.0"), validation("b", 100, 20, {"answer_in_prompt@1": 20}))
    L.record(cfg, sidecar("bin@1.2.0"), validation("c", 100, 5))
    L.record(cfg, sidecar("syllo@1.0.0"), validation("d", 100, 10))
    L.record(cfg, sidecar("syllo@1.1.0"), validation("e", 100, 2))
    L.record(cfg, sidecar("other@1.0.0"), validation("f", 10, 1, validator="paranoid@0.1"))

    a = L.answers(cfg)
    assert a["worst_generator"]["name"] == "bin@1.10.0"
    assert a["worst_generator"]["rejection_rate"] == 0.2
    assert a["most_aggressive_validator"]["name"] == "paranoid@0.1"

    b = a["generators"]["bin"]
    assert [v["version"] for v in b["versions"]] == ["1.2.0", "1.9.0", "1.10.0"]   # numeric, not text order
    assert [v["rejection_rate"] for v in b["versions"]] == [0.05, 0.01, 0.2]
    assert (b["previous"], b["latest"], b["quality_dropped"]) == ("1.9.0", "1.10.0", True)
    assert b["change"] == pytest.approx(0.19)
    s = a["generators"]["syllo"]                                         # 10% -> 2%: better, not worse
    assert (s["previous"], s["latest"], s["quality_dropped"]) == ("1.0.0", "1.1.0", False)
    assert s["change"] == pytest.approx(-0.08)


def test_single_version_has_no_verdict(cfg):
    L.record(cfg, sidecar("bin@1.0.0"), validation("a", 10, 1))
    b = L.answers(cfg)["generators"]["bin"]
    assert b["quality_dropped"] is None and b["previous"] is None and b["latest"] == "1.0.0"


def test_format_table_and_the_cli(cfg, capsys):
    assert "no lineage recorded yet" in L.format_table(L.load(cfg))
    L.record(cfg, sidecar("bin@1.0.0"), validation("a", 200, 4, {"duplicate@1": 3, "answer_in_prompt@1": 1}))
    L.record(cfg, sidecar("bin@1.1.0"), validation("b", 100, 9, {"duplicate@1": 9}))
    text = L.format_table(L.load(cfg))
    row = next(line for line in text.splitlines() if line.startswith("bin@1.0.0"))
    assert row.split()[1:5] == ["1", "200", "4", "2.0%"] and "duplicate@1×3" in row
    assert "dojo.validate@2.0.0" in text
    assert "worst generator: bin@1.1.0 (9.0% of 100 examples rejected)" in text
    assert "bin: 1.0.0 2.0% → 1.1.0 9.0% (quality dropped after the bump to 1.1.0)" in text

    code = cli.main(["lineage"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip() == text.strip()


def _record_worker(root: str, start: int, barrier) -> None:
    cfg = C.from_dict({"storage": {"root": root}}, env={})
    barrier.wait()
    for i in range(start, start + 15):
        L.record(cfg, sidecar("bin@1.0.0"), validation(f"file{i}", 10, 1))


def test_concurrent_recorders_lose_no_update(cfg):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_record_worker, args=(str(cfg.root), s, barrier)) for s in (0, 100)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    stats = L.load(cfg)
    assert len(stats["files"]) == 30 and stats["generators"]["bin@1.0.0"]["files"] == 30
