"""Hostile and broken state: a sidecar field of the wrong type is refused at the door (naming the sidecar, the
field and the value) so it never poisons shared state; a bad record already in lineage.json is skipped and
reported, not a crash of every later `dojo lineage` and `queue add`; every state file (sidecar, lineage.json,
promoted.json, curriculum.json) that is nested too deep, not a regular file, not JSON or of the wrong shape is
one line naming the file; names and fields from files are printed with their control characters escaped."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dojo import cli
from dojo import config as C
from dojo import lineage_stats as L
from dojo import promotion
from dojo import queue as Q
from dojo.generate import generate_file
from dojo.sidecar import read_sidecar, sidecar_path, write_sidecar
from dojo.text import printable
from skills import curriculum
from tests.helpers import chat, write_jsonl


@pytest.fixture
def cfg():
    return C.load()


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *names) -> bool:
    return (err.startswith("dojo: error: ") and err.count("\n") == 1 and "Traceback" not in err
            and "internal error" not in err and all(str(n) in err for n in names))


def data_file(folder: Path, name: str = "data.jsonl", tag: str = "", **meta) -> Path:
    """A small chat_sft_v1 file with a generator sidecar, its fields overridden by ``meta``."""
    path = write_jsonl(folder / name, [chat(("user", f"q{i}{tag}"), ("assistant", f"a{i}{tag}")) for i in range(3)])
    write_sidecar(path, "bin", "1.0.0", {"seed": 1}, 3, skill="bin", level=1)
    if meta:
        side = json.loads(sidecar_path(path).read_text())
        sidecar_path(path).write_text(json.dumps({**side, **meta}))
    return path


def validation(name: str, total: int = 10, rejected: int = 1) -> dict:
    import hashlib

    return {"sha256": hashlib.sha256(name.encode()).hexdigest(), "file": f"{name}.jsonl",
            "validator": "dojo.validate@2.0.0", "depth": "standard", "total": total, "accepted": total - rejected,
            "rejected": rejected, "rejected_by_rule": {"duplicate@1": rejected}, "warnings_by_rule": {},
            "outcome": "accepted"}


# ---------------------------------------------------------------- sidecar fields, checked at the door
def test_generated_at_as_a_number_is_refused_at_queue_add_naming_the_field(tmp_path, capsys, cfg):
    src = data_file(tmp_path, generated_at=12345)
    code, _, err = run_cli(capsys, "queue", "add", src)
    assert code == 2 and one_line_error(err, sidecar_path(src), "generated_at", "12345"), err
    assert Q.list_entries(cfg) == [] and not (cfg.root / "state" / "lineage.json").exists()   # nothing poisoned


@pytest.mark.parametrize("field, value, what", [
    ("generator", 5, "a string or null"),
    ("generator_id", ["bin"], "a string or null"),
    ("generator_version", 1.0, "a string or null"),
    ("spec", {"name": "chat_sft_v1"}, "a string or null"),
    ("skill", True, "a string or null"),
    ("level", "3", "an integer or null"),
    ("level", True, "an integer or null"),
    ("generated_at", "yesterday", "an ISO-8601 time"),
    ("generated_at", 12345, "an ISO-8601 time"),
    ("example_count", -1, "an integer >= 0"),
    ("example_count", 2.5, "an integer >= 0"),
    ("params", [1, 2], "a JSON object"),
    ("queue", "queued", "a JSON object"),
    ("validation", [], "a JSON object"),
    ("original_sha256", 7, "a string or null"),
])
def test_a_known_field_of_the_wrong_type_is_a_value_error_naming_file_field_value(tmp_path, field, value, what):
    src = data_file(tmp_path, **{field: value})
    with pytest.raises(ValueError) as info:
        read_sidecar(src)
    msg = str(info.value)
    assert msg.startswith(str(sidecar_path(src))) and f"field {field} must be {what}" in msg and repr(value) in msg


def test_a_wrong_queue_block_field_is_named(tmp_path):
    src = data_file(tmp_path, queue={"history": "added"})
    with pytest.raises(ValueError, match=r"field queue\.history must be a list"):
        read_sidecar(src)


def test_a_huge_bad_value_is_cut_in_the_message(tmp_path):
    src = data_file(tmp_path, generator=["x" * 100_000])
    with pytest.raises(ValueError) as info:
        read_sidecar(src)
    assert "field generator" in str(info.value) and len(str(info.value)) < 1000


def test_nulls_and_unknown_fields_are_kept(tmp_path, cfg):
    src = data_file(tmp_path, level=None, generated_at=None, my_team={"owner": "ana", "tags": ["x"]})
    entry = Q.add(cfg, src)
    meta = read_sidecar(entry.path)
    assert meta["my_team"] == {"owner": "ana", "tags": ["x"]} and meta["level"] is None
    assert meta["queue"]["id"] == entry.id                    # dojo's own block is still written and read back


def test_a_deeply_nested_sidecar_is_one_line(tmp_path, capsys):
    src = data_file(tmp_path)
    sidecar_path(src).write_text('{"params": ' + "[" * 100 + "]" * 100 + "}")
    code, _, err = run_cli(capsys, "queue", "add", src)
    assert code == 2 and one_line_error(err, sidecar_path(src), "nested more than"), err


def test_a_sidecar_that_is_a_directory_is_one_line(tmp_path, capsys, cfg):
    src = data_file(tmp_path)
    sidecar_path(src).unlink()
    sidecar_path(src).mkdir()
    code, _, err = run_cli(capsys, "queue", "add", src)
    assert code == 2 and one_line_error(err, sidecar_path(src), "not a regular file"), err
    # the same, dropped into the queue by hand: `queue list` still lists it
    hand = data_file(cfg.root / "queue" / "normal", "hand.jsonl", tag="hand")
    sidecar_path(hand).unlink()
    sidecar_path(hand).mkdir()
    code, out, err = run_cli(capsys, "queue", "list")
    assert code == 0 and "hand.jsonl" in out, err


def test_a_sidecar_that_is_too_big_is_refused(tmp_path):
    src = data_file(tmp_path, params={"blob": "x" * (1 << 20)})
    with pytest.raises(ValueError, match="more than the 1048576 allowed"):
        read_sidecar(src)


# ---------------------------------------------------------------- lineage.json
def poison(cfg, identity: str = "f" * 64) -> Path:
    """Add a record like the one the unchecked sidecar used to leave: seen_at 12345."""
    path = cfg.root / "state" / "lineage.json"
    data = json.loads(path.read_text())
    data["files"][identity] = {"name": "bad.jsonl", "generator": "bin@1.0.0", "seen_at": 12345,
                               "validations": {"dojo.validate@2.0.0": {**validation("bad"), "recorded_at": "x"}}}
    path.write_text(json.dumps(data))
    return path


def test_lineage_survives_a_bad_record_and_reports_it(cfg, capsys):
    L.record(cfg, {"generator": "bin@1.0.0", "generated_at": "2025-01-01T00:00:00+00:00"}, validation("a"))
    path = poison(cfg)

    code, out, err = run_cli(capsys, "lineage")
    assert code == 0, err
    assert f"skipped 1 bad record(s) in {path}: ffffffffffff seen_at must be a string, not 12345" in out
    assert next(line for line in out.splitlines() if line.startswith("bin@1.0.0")).split()[1] == "1"

    stats = L.record(cfg, {"generator": "bin@1.0.0"}, validation("b"))     # a later file of that generator
    assert stats["generators"]["bin@1.0.0"]["files"] == 2 and list(stats["skipped"]["records"]) == ["f" * 64]
    assert json.loads(path.read_text())["files"]["f" * 64]["seen_at"] == 12345    # kept for the user to fix


def test_queue_add_from_that_generator_still_works_with_a_bad_record(tmp_path, cfg, capsys):
    from skills import bin as bin_skill

    generator = f"bin@{bin_skill.GENERATOR_VERSION}"          # what generate_file writes
    L.record(cfg, {"generator": generator}, validation("a"))
    poison(cfg)
    src = generate_file("bin", 1, 20, 5, tmp_path / "more.jsonl")
    code, out, err = run_cli(capsys, "queue", "add", src)
    assert code == 0, err
    stats = L.load(cfg)
    assert stats["generators"][generator]["files"] == 2 and "skipped" in stats


def test_a_bad_record_recorded_again_is_replaced(cfg):
    L.record(cfg, {"generator": "bin@1.0.0"}, validation("a"))
    poison(cfg, identity=validation("a")["sha256"])
    assert "skipped" in L.load(cfg)
    stats = L.record(cfg, {"generator": "bin@1.0.0"}, validation("a"))
    assert "skipped" not in stats and stats["generators"]["bin@1.0.0"]["files"] == 1


@pytest.mark.parametrize("text, why", [
    ('{"files": {}\n', "not valid JSON (Expecting ',' delimiter at line 2 column 1)"),
    ("[]", "must be a JSON object, not list"),
    ('{"files": []}', "no 'files' mapping"),
    ('{"files": ' + "[" * 100 + "]" * 100 + "}", "nested more than"),
])
def test_a_broken_lineage_file_is_one_line_naming_it(cfg, capsys, text, why):
    path = cfg.root / "state" / "lineage.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    code, _, err = run_cli(capsys, "lineage")
    assert code == 2 and one_line_error(err, path, why), err


# ---------------------------------------------------------------- promoted.json and curriculum.json
@pytest.mark.parametrize("text, why", [
    ("[]", "must be a JSON object, not list"),
    ("", "not valid JSON"),
    ('{"eval": {}}', "no checkpoint name"),
    ('{"checkpoint": "ck-1", "eval": {"bin": [0.9]}}', "eval must map skill -> level -> accuracy"),
    ('{"checkpoint": "ck-1", "eval": {"bin": {"1": "high"}}}', "eval must map skill -> level -> accuracy"),
    ('{"checkpoint": "ck-1", "eval": {"bin": {"1": NaN}}}', "eval must map skill -> level -> accuracy"),
])
def test_a_broken_promotion_pointer_names_the_file(tmp_path, text, why):
    path = promotion.promoted_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        promotion.current(tmp_path)
    assert str(info.value).startswith(str(path)) and why in str(info.value) and "move it away" in str(info.value)


def test_a_promotion_pointer_that_is_a_list_through_dojo_status(tmp_path, cfg, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text("pipeline:\n  port: 1\n")         # no server there: status reports it and goes on
    path = promotion.promoted_path(cfg.root)
    path.parent.mkdir(parents=True)
    path.write_text("[]")
    code, _, err = run_cli(capsys, "--config", config, "status")
    assert code == 2 and one_line_error(err, path, "must be a JSON object, not list"), err


def test_a_promotion_round_trip_still_works(tmp_path):
    d = promotion.decide("ck-1", {"1": 0.5}, None, "bin", 1, [])
    promotion.apply(tmp_path, d, "/x/ck-1", {"bin": {"1": 0.5}})
    assert promotion.current(tmp_path)["checkpoint"] == "ck-1"
    assert not [p for p in (tmp_path / "state").iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("text, why", [
    ("[]", "must be a JSON object, not list"),
    ("{", "not valid JSON"),
    ('{"skills": []}', "no 'skills' mapping"),
    ('{"skills": {"bin": {"level": "1", "history": [], "advanced_at": []}}}', "'level' must be an integer"),
    ('{"skills": {"bin": {"level": 1, "history": [{"level": 1}], "advanced_at": []}}}', "'history' must be"),
    ('{"skills": {"bin": {"level": 0, "history": [{"level": 1, "accuracy": NaN}], "advanced_at": []}}}',
     "'history' must be"),
    ('{"skills": {"nope": {"level": 0, "history": [], "advanced_at": []}}}', "unknown skill 'nope'"),
    ('{"skills": {}, "turn": -1}', "'turn'"),
    ('{"skills": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
])
def test_a_broken_curriculum_state_names_the_file(tmp_path, text, why):
    path = curriculum.state_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        curriculum.load(tmp_path, ["bin"])
    msg = str(info.value)
    assert msg.startswith(str(path)) and why in msg and "move it away" in msg and len(msg) < 1000


def test_a_curriculum_state_that_is_a_directory_names_the_file(tmp_path):
    curriculum.state_path(tmp_path).mkdir(parents=True)
    with pytest.raises(ValueError, match="curriculum.json: the curriculum state is not a regular file"):
        curriculum.load(tmp_path, ["bin"])


# ---------------------------------------------------------------- printing names and fields
def test_printable_escapes_control_characters_only():
    assert printable("a\x1b[2J\nb\rc\td\x7f\x85\x9b\u202e\u2028") == \
        "a\\x1b[2J\\x0ab\\x0dc\\x09d\\x7f\\x85\\x9b\\u202e\\u2028"
    assert printable("bin@1.0.0 é 😀 日本") == "bin@1.0.0 é 😀 日本"
    assert printable("x" * 50, limit=10) == "x" * 9 + "…"


def test_queue_list_escapes_a_control_character_file_name(cfg, capsys):
    evil = "evil\x1b[2J\x1b[31m\nb0gus  99  1 B  0s  done.jsonl"
    data_file(cfg.root / "queue" / "normal", evil, tag="evil")           # dropped in by hand, name kept
    code, out, err = run_cli(capsys, "queue", "list")
    assert code == 0, err
    assert "\x1b" not in out and "evil\\x1b[2J\\x1b[31m\\x0ab0gus" in out
    assert out.count("\n") == Q.format_list(Q.list_entries(cfg)).count("\n") + 1
    assert not any(line.lstrip().startswith("b0gus") for line in out.splitlines())      # no forged row


def test_lineage_escapes_generator_and_rule_names(cfg, capsys):
    v = {**validation("a"), "rejected_by_rule": {"dup\x1b[0m": 1}}
    L.record(cfg, {"generator": "evil\x1b[31m\nFAKE ROW@1.0"}, v)
    code, out, err = run_cli(capsys, "lineage")
    assert code == 0, err
    assert "\x1b" not in out and "evil\\x1b[31m\\x0aFAKE ROW@1.0" in out and "dup\\x1b[0m×1" in out
    assert not any(line.startswith("FAKE") for line in out.splitlines())
    assert L.generator_rows(L.load(cfg))[0]["generator"] == "evil\\x1b[31m\\x0aFAKE ROW@1.0"   # table artifacts too
