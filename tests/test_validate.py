"""The data gate (``validation.validate``): reports, the acceptance bar, rule severities from config, --spec, and
``write_split`` keeping every line (accepted verbatim, rejected with reasons)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from dojo import cli
from dojo import config as C
from dojo.sidecar import write_sidecar
from tests.helpers import chat
from model.data import validate_file
from validation.validate import DEPTHS, VALIDATOR, read_examples, write_split


def pairs(n: int) -> list[dict]:
    """``n`` distinct clean chat examples (no duplicates, no leaks, sane length ratios)."""
    return [chat(("user", f"What is {i} plus {i + 3}? Reply with the number only."), ("assistant", str(2 * i + 3)))
            for i in range(n)]


def write_raw(path: Path, lines, spec: str | None = "chat_sft_v1", eol: bytes = b"\n", bom: bool = False) -> Path:
    """Lines are dicts (JSON), str or bytes (raw); a sidecar naming ``spec`` unless spec is None."""
    data = b"\xef\xbb\xbf" if bom else b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line, ensure_ascii=False)
        data += (line.encode("utf-8") if isinstance(line, str) else line) + eol
    path.write_bytes(data)
    if spec:
        path.with_name(path.stem + ".meta.json").write_text(json.dumps({"spec": spec}), encoding="utf-8")
    return path


def cfg_with(tmp_path: Path, overrides: dict | None = None) -> tuple[C.Config, list[str]]:
    """The config and the ``--config`` arguments for the CLI (none for the defaults)."""
    if not overrides:
        return C.load(), []
    path = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(overrides), encoding="utf-8")
    return C.load(str(path)), ["--config", str(path)]


def run_cli(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr().out


LEAK = chat(("user", "Repeat after me exactly: the quick brown fox jumps"), ("assistant", "the quick brown fox jumps"))


# ---------------------------------------------------------------- write_split
def test_write_split_keeps_everything(tmp_path):
    good = pairs(12)
    lines: list = [json.dumps(r, ensure_ascii=False) for r in good]
    lines[2] = '{"messages": [{"role": "user"'                                        # json_syntax
    lines[5] = json.dumps(chat(("user", "hi"), ("bot", "yo")))                         # unknown_role
    lines[8] = b'{"messages": [{"role": "user", "content": "caf\xe9"}]}'               # encoding (Latin-1)
    lines.insert(10, "")                                                               # a blank line (line 11)
    lines[0] = "  " + lines[0] + " \t"                   # valid JSON with surrounding blanks: kept byte for byte
    src = write_raw(tmp_path / "mixed.jsonl", lines)
    original = src.read_bytes()
    report = validate_file(src, C.load(), depth="quick")
    assert report.total == 12 and len(report.accepted_lines) == 9
    assert {n: [i.rule for i in issues] for n, issues in report.rejected.items()} == {
        3: ["json_syntax@1"], 6: ["unknown_role@1"], 9: ["encoding@1"]}
    assert [(w.line, w.rule) for w in report.warnings] == [(11, "blank_line@1")]

    accepted, rejected = tmp_path / "accepted.jsonl", tmp_path / "rejected.jsonl"
    write_split(report, src, accepted, rejected)
    raw_lines = original.split(b"\n")
    kept = accepted.read_bytes().split(b"\n")
    assert kept[-1] == b"" and kept[:-1] == [raw_lines[n - 1] for n in report.accepted_lines]   # verbatim
    out = [json.loads(x) for x in rejected.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in out] == [3, 6, 9]
    assert [r["rules"] for r in out] == [["json_syntax@1"], ["unknown_role@1"], ["encoding@1"]]
    assert all(r["messages"] and all(isinstance(m, str) and m for m in r["messages"]) for r in out)
    assert out[0]["raw"] == lines[2] and out[1]["raw"] == lines[5]
    assert out[2]["raw"] == '{"messages": [{"role": "user", "content": "caf\\xe9"}]}'     # bytes kept, escaped
    # the counts add up: every example line is in exactly one of the two files, none twice, none lost
    assert len(kept) - 1 + len(out) == report.total
    assert sorted(report.accepted_lines + [r["line"] for r in out]) == [n for n in range(1, 14) if n != 11]
    assert src.read_bytes() == original

    # without an accepted path only the rejected file is written
    other = tmp_path / "rejected2.jsonl"
    write_split(report, src, None, other)
    assert other.read_bytes() == rejected.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accepted.jsonl", "mixed.jsonl", "mixed.meta.json",
                                                          "rejected.jsonl", "rejected2.jsonl"]


def test_write_split_bom_and_crlf(tmp_path):
    """A BOM is dropped and CRLF becomes LF in the accepted file; the line content is otherwise verbatim."""
    lines = [json.dumps(r, ensure_ascii=False) for r in pairs(5)]
    lines[4] = json.dumps(chat(("user", "hi")))
    src = write_raw(tmp_path / "win.jsonl", lines, eol=b"\r\n", bom=True)
    report = validate_file(src, C.load(), depth="quick")
    assert sorted(w.rule for w in report.warnings) == ["bom@1", "line_endings@1"]
    write_split(report, src, tmp_path / "a.jsonl", tmp_path / "r.jsonl")
    assert (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines() == lines[:4]
    assert b"\r" not in (tmp_path / "a.jsonl").read_bytes() and not (tmp_path / "a.jsonl").read_bytes().startswith(b"\xef")
    (rej,) = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rej["line"] == 5 and rej["rules"] == ["no_assistant@1"] and rej["raw"].rstrip("\r") == lines[4]


# ---------------------------------------------------------------- the report
def test_to_dict_fields(tmp_path):
    lines = [json.dumps(r) for r in pairs(20)]
    lines[3] = "not json"
    lines[7] = json.dumps(chat(("user", "hi")))
    lines[11] = lines[10]                                                                # duplicate (warning)
    src = write_raw(tmp_path / "d.jsonl", lines)
    report = validate_file(src, C.load(), depth="deep")
    d = report.to_dict()
    assert set(d) == {"validator", "file", "spec", "depth", "total", "accepted", "rejected", "valid_ratio",
                      "accept_ratio", "outcome", "rejected_by_rule", "warnings_by_rule", "file_issues", "examples",
                      "rewritten_turns"}
    assert d["validator"] == VALIDATOR == "dojo.validate@2.0.0"
    assert (d["file"], d["spec"], d["depth"]) == (str(src), "chat_sft_v1", "deep")
    assert (d["total"], d["accepted"], d["rejected"]) == (20, 18, 2)
    assert d["valid_ratio"] == 0.9 and d["accept_ratio"] == 0.95 and d["outcome"] == "rejected"
    assert d["rejected_by_rule"] == {"json_syntax@1": 1, "no_assistant@1": 1}
    assert d["warnings_by_rule"] == {"duplicate@1": 1}
    assert d["file_issues"] == []
    assert json.loads(json.dumps(d)) == d                                              # plain JSON

    empty = write_raw(tmp_path / "e.jsonl", [])
    d = validate_file(empty, C.load(), depth="quick").to_dict()
    assert d["outcome"] == "rejected" and d["total"] == 0 and d["valid_ratio"] == 0.0
    assert len(d["file_issues"]) == 1 and "empty_file" in d["file_issues"][0] and str(empty) in d["file_issues"][0]


def test_unknown_depth_is_refused(tmp_path):
    src = write_raw(tmp_path / "ok.jsonl", pairs(3))
    with pytest.raises(ValueError, match="depth"):
        validate_file(src, C.load(), depth="thorough")


# ---------------------------------------------------------------- clean files pass at every depth
@pytest.fixture(scope="module")
def bin_file(tmp_path_factory) -> Path:
    return cli.generate_file("bin", 2, 200, 1, tmp_path_factory.mktemp("bin") / "bin_l2.jsonl")


@pytest.mark.parametrize("depth", DEPTHS)
def test_clean_bin_file_accepted_at_every_depth(bin_file, depth, tokenizer, capsys):
    report = validate_file(bin_file, C.load(), depth=depth, tokenizer=tokenizer)
    assert report.spec == "chat_sft_v1" and report.total == 200
    assert report.accepted and not report.rejected and not report.file_issues, report.format()
    assert report.accepted_lines == list(range(1, 201))
    # the only thing deep may say about generated BIN data is that its small level space repeats (warnings)
    assert {w.rule for w in report.warnings} <= {"duplicate@1", "near_duplicate@1"}
    code, out = run_cli(["validate", str(bin_file), "--depth", depth], capsys)
    assert code == 0 and "ACCEPTED" in out and "200/200 lines valid" in out


@pytest.mark.parametrize("depth", DEPTHS)
def test_clean_completion_file_accepted(tmp_path, depth, tokenizer):
    records = [{"prompt": f"Q: What is {i} times 3?\nA:", "completion": f" {3 * i}", "id": f"m{i}"} for i in range(30)]
    src = write_raw(tmp_path / "comp.jsonl", records, spec="completion_v1")
    report = validate_file(src, C.load(), depth=depth, tokenizer=tokenizer)
    assert report.spec == "completion_v1"
    assert report.accepted and report.total == 30 and not report.rejected and not report.warnings, report.format()
    assert read_examples(src, C.load())[0] == (1, [{"role": "user", "content": "Q: What is 0 times 3?\nA:"},
                                                   {"role": "assistant", "content": " 0"}])


# ---------------------------------------------------------------- the acceptance bar
def test_accept_ratio_is_configurable(tmp_path, capsys):
    lines = pairs(20)
    lines[4] = chat(("user", "no answer here"))
    lines[15] = chat(("user", "a"), ("bot", "b"))                   # 2 of 20 bad: 90% valid
    src = write_raw(tmp_path / "ten_percent.jsonl", lines)
    for ratio, accepted in ((0.9, True), (0.95, False), (0.91, False), (0.0, True)):
        cfg, args = cfg_with(tmp_path, {"validation": {"accept_ratio": ratio}})
        report = validate_file(src, cfg, depth="quick")
        assert report.valid_ratio == pytest.approx(0.9)
        assert report.accept_ratio == ratio and report.accepted is accepted, ratio
        code, out = run_cli(["validate", str(src), "--depth", "quick", *args], capsys)
        assert code == (0 if accepted else 1), out
        assert ("ACCEPTED" if accepted else "REJECTED") in out
    # the default is 95%
    assert not validate_file(src, C.load(), depth="quick").accepted


def test_accept_ratio_never_accepts_file_level_problems(tmp_path):
    cfg, _ = cfg_with(tmp_path, {"validation": {"accept_ratio": 0.0}})
    assert not validate_file(write_raw(tmp_path / "e.jsonl", []), cfg, depth="quick").accepted
    assert not validate_file(write_raw(tmp_path / "n.jsonl", pairs(3), spec=None), cfg, depth="quick").accepted


# ---------------------------------------------------------------- severities from config
def test_warnings_downgrade_and_disabled_silence(tmp_path, tokenizer):
    lines = pairs(20)
    lines[6] = LEAK
    src = write_raw(tmp_path / "leak.jsonl", lines)

    default = validate_file(src, C.load(), depth="deep", tokenizer=tokenizer)
    assert [i.rule for i in default.rejected[7]] == ["answer_in_prompt@1"] and 7 not in default.accepted_lines

    warned_cfg, _ = cfg_with(tmp_path, {"validation": {"warnings": ["duplicate", "near_duplicate", "length_ratio",
                                                                    "answer_in_prompt"]}})
    warned = validate_file(src, warned_cfg, depth="deep", tokenizer=tokenizer)
    assert not warned.rejected and 7 in warned.accepted_lines and warned.accepted_lines == list(range(1, 21))
    assert [(w.line, w.rule) for w in warned.warnings] == [(7, "answer_in_prompt@1")]

    off_cfg, _ = cfg_with(tmp_path, {"validation": {"disabled": ["answer_in_prompt"]}})
    off = validate_file(src, off_cfg, depth="deep", tokenizer=tokenizer)
    assert not off.rejected and not off.warnings and off.accepted_lines == list(range(1, 21))


def test_duplicate_is_a_warning_by_default_and_an_error_when_removed(tmp_path, tokenizer):
    lines = pairs(10)
    lines[7] = lines[2]
    src = write_raw(tmp_path / "dup.jsonl", lines)
    report = validate_file(src, C.load(), depth="deep", tokenizer=tokenizer)
    assert [(w.line, w.rule) for w in report.warnings] == [(8, "duplicate@1")] and 8 in report.accepted_lines
    strict, _ = cfg_with(tmp_path, {"validation": {"warnings": ["near_duplicate", "length_ratio"]}})
    report = validate_file(src, strict, depth="deep", tokenizer=tokenizer)
    assert [i.rule for i in report.rejected[8]] == ["duplicate@1"] and 3 in report.accepted_lines


def test_disabled_file_level_warning_and_too_long(tmp_path, tokenizer):
    long = chat(("user", "Describe a river."), ("assistant", " ".join(f"word{i}" for i in range(400))))
    src = write_raw(tmp_path / "win.jsonl", pairs(3) + [long], eol=b"\r\n", bom=True)
    report = validate_file(src, C.load(), depth="standard", tokenizer=tokenizer)
    assert {w.rule for w in report.warnings} == {"bom@1", "line_endings@1"}
    assert [i.rule for i in report.rejected[4]] == ["too_long@1"]
    cfg, _ = cfg_with(tmp_path, {"validation": {"disabled": ["bom", "line_endings", "too_long"]}})
    report = validate_file(src, cfg, depth="standard", tokenizer=tokenizer)
    assert not report.warnings and not report.rejected and report.accepted


# ---------------------------------------------------------------- --spec
def test_spec_option_overrides_the_sidecar(tmp_path, capsys):
    records = [{"prompt": f"Q: Name the number after {i}.\nA:", "completion": f" {i + 1}"} for i in range(10)]
    src = write_raw(tmp_path / "comp.jsonl", records, spec="chat_sft_v1")       # the sidecar is wrong
    sidecar = src.with_name("comp.meta.json").read_bytes()

    as_chat = validate_file(src, C.load(), depth="quick")
    assert as_chat.spec == "chat_sft_v1" and not as_chat.accepted
    assert as_chat.rejected_by_rule() == {"missing_messages@1": 10}
    as_completion = validate_file(src, C.load(), depth="quick", spec="completion_v1")
    assert as_completion.spec == "completion_v1" and as_completion.accepted and not as_completion.rejected

    code, out = run_cli(["validate", str(src), "--depth", "quick"], capsys)
    assert code == 1 and "spec chat_sft_v1" in out and f"{src}:1: rule missing_messages@1" in out
    code, out = run_cli(["validate", str(src), "--depth", "quick", "--spec", "completion_v1"], capsys)
    assert code == 0 and "spec completion_v1" in out and "10/10 lines valid" in out
    assert src.with_name("comp.meta.json").read_bytes() == sidecar                  # --spec never rewrites it

    # --spec also stands in for a missing sidecar, and an unknown --spec is refused
    bare = write_raw(tmp_path / "bare.jsonl", records, spec=None)
    assert validate_file(bare, C.load(), depth="quick", spec="completion_v1").accepted
    report = validate_file(bare, C.load(), depth="quick", spec="completion_v2")
    assert not report.accepted and report.first_rule().startswith("unknown_spec")
    assert "completion_v2" in report.file_issues[0].value


def test_validate_never_modifies_input(tmp_path, capsys, tokenizer):
    lines = pairs(20)
    lines[3] = LEAK
    src = write_raw(tmp_path / "x.jsonl", lines)
    write_sidecar(src, "test", "0", {}, 20)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    for depth in DEPTHS:
        validate_file(src, C.load(), depth=depth, tokenizer=tokenizer)
        run_cli(["validate", str(src), "--depth", depth], capsys)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()} == before
