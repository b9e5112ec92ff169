"""Bad input is refused loudly and whole: every problem names the file, the line and the rule; nothing is dropped,
truncated or modified; no checkpoint is written. Checked at three levels: the one reader (``validation.validate.read_examples``),
``model.train.train_chunk`` and the ``dojo`` CLI (in-process, plus one real subprocess)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dojo import cli
from dojo import config as C
from model.chat import system_prompt_text, tokenize_example, with_system_prompt
from model.train import train_chunk
from tests.helpers import chat, write_jsonl
from validation.errors import DataError
from validation.validate import read_examples


def read_chat_file(path):
    """The one reader, strict, on a file without a sidecar read as chat_sft_v1: [(line, messages)]."""
    return read_examples(path, C.load(), "chat_sft_v1")


def v1(rule: str) -> str:
    return f"{rule}@1"

LONG_ANSWER = " ".join(["word"] * 100)     # ~140 tokens with the default system prompt


def good(i: int) -> dict:
    return chat(("user", f"What is {i} + {i}?"), ("assistant", str(2 * i)))


def write_lines(path: Path, lines) -> Path:
    """Lines are dicts (JSON-encoded), str (written as-is) or bytes (written raw); one per line."""
    with open(path, "wb") as f:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line, ensure_ascii=False)
            f.write((line.encode("utf-8") if isinstance(line, str) else line) + b"\n")
    return path


def five(bad, at: int = 3) -> list:
    """Five examples with ``bad`` at 1-based line ``at``."""
    lines = [good(i) for i in range(1, 6)]
    lines[at - 1] = bad
    return lines


# name -> (lines, rule, line)
CASES = {
    "json_syntax": (five('{"messages": [{"role": "user", "content": "hi"}'), "json_syntax", 3),
    "json_trailing_garbage": (five(json.dumps(good(9)) + " extra"), "json_syntax", 3),
    "no_assistant": (five(chat(("user", "hello?"))), "no_assistant", 3),
    "system_only": (five(chat(system="be nice")), "no_assistant", 3),
    "unknown_role": (five(chat(("user", "hi"), ("bot", "yo"))), "unknown_role", 3),
    "empty_assistant": (five(chat(("user", "hi"), ("assistant", ""))), "empty_assistant", 3),
    "blank_assistant": (five(chat(("user", "hi"), ("assistant", "  \n\t"))), "empty_assistant", 3),
    "system_not_first": (five(chat(("user", "hi"), ("system", "sys"), ("assistant", "yo"))), "system_position", 3),
    "role_order": (five(chat(("user", "a"), ("user", "b"), ("assistant", "c"))), "role_order", 3),
    "starts_with_assistant": (five(chat(("assistant", "yo"), ("user", "hi"), ("assistant", "yo"))),
                              "role_order", 3),
    "ends_with_user": (five(chat(("user", "a"), ("assistant", "b"), ("user", "c"))), "ends_with_user", 3),
    "content_not_string": (five({"messages": [{"role": "user", "content": None},
                                              {"role": "assistant", "content": "x"}]}), "content_type", 3),
    "missing_messages": (five({"conversation": [{"role": "user", "content": "hi"}]}), "missing_messages", 3),
    "messages_empty": (five({"messages": []}), "messages_type", 3),
    "messages_not_list": (five({"messages": "user: hi"}), "messages_type", 3),
    "message_not_object": (five({"messages": ["hi", {"role": "assistant", "content": "yo"}]}), "message_type", 3),
    "record_not_object": (five('[{"role": "user", "content": "hi"}]'), "record_type", 3),
    "non_utf8": (five(b'{"messages": [{"role": "user", "content": "caf\xe9"}, '
                      b'{"role": "assistant", "content": "ok"}]}', at=4), "encoding", 4),
    "empty_file": ([], "empty_file", 0),
    "only_blank_lines": (["", "   ", "\t"], "empty_file", 0),
}


def make(tmp_path: Path, name: str) -> tuple[Path, str, int]:
    lines, rule, line = CASES[name]
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return write_lines(data / f"{name}.jsonl", lines), rule, line


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` and its hash: nothing may be added, removed or changed."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def no_checkpoints(home: Path) -> bool:
    folder = home / "checkpoints"
    return not folder.exists() or not any(folder.iterdir())


def where(file: Path, line: int, rule: str) -> str:
    """How an issue is printed: 'FILE:LINE: rule NAME' (a file-wide issue has no line)."""
    return f"{file}:{line}: rule {rule}" if line else f"{file}: rule {rule}"


@pytest.fixture
def short_rows(tmp_path):
    """A ./dojo.yaml (picked up from the cwd) with rows of 64 tokens, so LONG_ANSWER is too long."""
    (tmp_path / "dojo.yaml").write_text("data:\n  max_length: 64\n", encoding="utf-8")
    return C.load()


# ---------------------------------------------------------------- level 1: read_chat_file
@pytest.mark.parametrize("name", sorted(CASES))
def test_read_chat_file_names_file_line_rule(tmp_path, name):
    path, rule, line = make(tmp_path, name)
    before = sha256(path)
    with pytest.raises(DataError) as info:
        read_chat_file(path)
    issues = info.value.issues
    assert [(i.file, i.line, i.rule) for i in issues] == [(str(path), line, v1(rule))]
    assert issues[0].message
    assert where(path, line, rule) in str(info.value)
    assert sha256(path) == before


def test_issue_value_shows_the_offending_text(tmp_path):
    path, _, _ = make(tmp_path, "unknown_role")
    with pytest.raises(DataError) as info:
        read_chat_file(path)
    assert info.value.issues[0].value == "'bot'"
    assert "(value: 'bot')" in str(info.value)


def test_long_bad_value_is_shortened_not_dropped(tmp_path):
    path = write_lines(tmp_path / "f.jsonl", [good(1), "{" + "x" * 5000])
    with pytest.raises(DataError) as info:
        read_chat_file(path)
    assert len(info.value.issues[0].value) < 200 and "chars)" in info.value.issues[0].value


def test_all_bad_lines_are_reported_not_only_the_first(tmp_path):
    path = write_lines(tmp_path / "f.jsonl", [good(1), "{not json", good(3), chat(("user", "hi"), ("bot", "yo")),
                                              good(5)])
    with pytest.raises(DataError) as info:
        read_chat_file(path)
    assert [(i.line, i.rule) for i in info.value.issues] == [(2, "json_syntax@1"), (4, "unknown_role@1")]
    assert info.value.rules == ["json_syntax@1", "unknown_role@1"]


def test_a_line_is_reported_under_its_first_rule(tmp_path):
    """One root cause per line: the first rule it breaks, in the spec's declared order."""
    bad = {"messages": [{"role": "bot", "content": "a"}, {"role": "assistant", "content": ""}]}
    path = write_lines(tmp_path / "f.jsonl", [good(1), bad])
    with pytest.raises(DataError) as info:
        read_chat_file(path)
    assert [(i.line, i.rule) for i in info.value.issues] == [(2, "unknown_role@1")]


def test_many_issues_are_all_kept_even_when_the_message_is_capped(tmp_path):
    path = write_lines(tmp_path / "f.jsonl", ["{bad"] * 30)
    with pytest.raises(DataError) as info:
        read_chat_file(path)
    assert [i.line for i in info.value.issues] == list(range(1, 31))
    assert "… and 10 more" in str(info.value)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as info:
        read_chat_file(tmp_path / "nope.jsonl")
    assert info.value.rules == ["unreadable@1"]


def test_blank_lines_are_tolerated_and_line_numbers_kept(tmp_path):
    path = write_lines(tmp_path / "f.jsonl", ["", good(1), "   ", "", good(2), "\t", good(3)])
    examples = read_chat_file(path)
    assert [line for line, _ in examples] == [2, 5, 7]
    assert [m for _, m in examples] == [good(i)["messages"] for i in (1, 2, 3)]


def test_crlf_and_missing_final_newline_are_fine(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes((json.dumps(good(1)) + "\r\n" + json.dumps(good(2))).encode())
    assert [line for line, _ in read_chat_file(path)] == [1, 2]


def test_valid_file_is_read_whole_and_untouched(tmp_path):
    records = [good(i) for i in range(20)]
    records[4] = chat(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), system="s")
    records[5] = {"messages": good(5)["messages"], "metadata": {"id": 5}}
    path = write_jsonl(tmp_path / "f.jsonl", records)
    before = sha256(path)
    examples = read_chat_file(path)
    assert len(examples) == 20 and [line for line, _ in examples] == list(range(1, 21))
    assert examples[4][1] == records[4]["messages"]
    assert sha256(path) == before


# ---------------------------------------------------------------- level 2: train_chunk
@pytest.mark.parametrize("name", ["json_syntax", "no_assistant", "unknown_role", "empty_assistant",
                                  "system_not_first", "role_order", "non_utf8", "empty_file", "missing_messages"])
def test_train_chunk_refuses_and_writes_nothing(tmp_path, dojo_home, name):
    path, rule, line = make(tmp_path, name)
    before = snapshot(path.parent)
    with pytest.raises(DataError) as info:
        train_chunk(C.load(), path, steps=1)
    assert [(i.file, i.line, i.rule) for i in info.value.issues] == [(str(path), line, v1(rule))]
    assert snapshot(path.parent) == before
    assert no_checkpoints(dojo_home)


def test_train_chunk_too_long_names_line_and_token_count(tmp_path, dojo_home, short_rows, tokenizer):
    lines = five(chat(("user", "Tell me a story"), ("assistant", LONG_ANSWER)))
    path = write_jsonl(tmp_path / "data" / "long.jsonl", lines)
    before = snapshot(path.parent)
    n = len(tokenize_example(with_system_prompt(lines[2]["messages"],
                                                system_prompt_text(short_rows.data.system_prompt)), tokenizer))
    assert n > 64
    with pytest.raises(DataError) as info:
        train_chunk(short_rows, path, steps=1)
    (issue,) = info.value.issues
    assert (issue.file, issue.line, issue.rule, issue.value) == (str(path), 3, "too_long@1", str(n))
    assert f"{n} tokens" in issue.message and "max_length=64" in issue.message
    assert snapshot(path.parent) == before          # not truncated in place, no sidecar, no temp file
    assert no_checkpoints(dojo_home)


def test_train_chunk_reports_every_too_long_line(tmp_path, dojo_home, short_rows):
    long = chat(("user", "Tell me a story"), ("assistant", LONG_ANSWER))
    path = write_jsonl(tmp_path / "long.jsonl", [good(1), long, good(3), long, good(5)])
    with pytest.raises(DataError) as info:
        train_chunk(short_rows, path, steps=1)
    assert [(i.line, i.rule) for i in info.value.issues] == [(2, "too_long@1"), (4, "too_long@1")]
    assert no_checkpoints(dojo_home)


def test_train_chunk_reports_too_long_held_out_examples_too(tmp_path, short_rows):
    lines = [chat(("user", f"story {i}"), ("assistant", LONG_ANSWER)) for i in range(60)]  # 1 held out (2%)
    path = write_jsonl(tmp_path / "long.jsonl", lines)
    with pytest.raises(DataError) as info:
        train_chunk(short_rows, path, steps=1)
    assert sorted(i.line for i in info.value.issues) == list(range(1, 61))


def test_train_chunk_reports_all_bad_lines(tmp_path, dojo_home):
    path = write_lines(tmp_path / "f.jsonl", [good(1), "{not json", good(3), chat(("user", "hi")), good(5)])
    with pytest.raises(DataError) as info:
        train_chunk(C.load(), path, steps=1)
    assert [(i.line, i.rule) for i in info.value.issues] == [(2, "json_syntax@1"), (4, "no_assistant@1")]
    assert no_checkpoints(dojo_home)


def test_train_chunk_accepts_blank_lines(tmp_path, dojo_home):
    # The positive control: the same pipeline does write a checkpoint when the file is fine.
    def ok(i):   # answers long enough for the masked-ratio window
        return chat(("user", f"What is {i} + {i}?"),
                    ("assistant", f"{i} plus {i} is {2 * i}: adding {i} to itself gives {2 * i}, twice {i}."))

    path = write_lines(tmp_path / "f.jsonl", [ok(1), "", ok(2), "  ", ok(3), ok(4), ""])
    before = sha256(path)
    result = train_chunk(C.load(), path, steps=1)
    assert result.steps == 1 and result.examples_trained >= 1
    assert Path(result.checkpoint).parent == dojo_home / "checkpoints"
    assert not no_checkpoints(dojo_home)
    assert sha256(path) == before


# ---------------------------------------------------------------- level 3: the CLI
def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_train_exits_2_naming_file_line_rule(tmp_path, dojo_home, capsys, name):
    path, rule, line = make(tmp_path, name)
    before = snapshot(path.parent)
    code, out, err = run_cli(capsys, "train", path, "--steps", "1")
    assert code == 2
    assert err.startswith("dojo: error: ")
    assert where(path, line, rule) in err
    assert "Traceback" not in err and out == ""
    assert snapshot(path.parent) == before
    assert no_checkpoints(dojo_home)


@pytest.mark.parametrize("name", ["json_syntax", "unknown_role", "non_utf8", "empty_file"])
def test_cli_pack_check_exits_2_naming_file_line_rule(tmp_path, capsys, name):
    path, rule, line = make(tmp_path, name)
    before = sha256(path)
    code, _, err = run_cli(capsys, "pack-check", path)
    assert code == 2 and where(path, line, rule) in err
    assert sha256(path) == before


def test_cli_too_long_names_token_count(tmp_path, dojo_home, short_rows, capsys):
    path = write_jsonl(tmp_path / "long.jsonl", five(chat(("user", "Tell me"), ("assistant", LONG_ANSWER))))
    before = sha256(path)
    code, _, err = run_cli(capsys, "train", path, "--steps", "1")
    assert code == 2
    assert where(path, 3, "too_long") in err
    assert "tokens after rendering, longer than data.max_length=64" in err
    assert sha256(path) == before and no_checkpoints(dojo_home)
    # pack-check refuses it the same way, and --max-length overrides the config
    assert run_cli(capsys, "pack-check", path)[0] == 2
    code, _, err = run_cli(capsys, "pack-check", path, "--max-length", "512", "--config", tmp_path / "none.yaml")
    assert code == 2 and "none.yaml does not exist" in err


def test_cli_reports_every_bad_line(tmp_path, dojo_home, capsys):
    path = write_lines(tmp_path / "f.jsonl", [good(1), "{not json", good(3), chat(("user", "hi"), ("bot", "x")),
                                              good(5)])
    code, _, err = run_cli(capsys, "train", path, "--steps", "1")
    assert code == 2
    assert "2 problem(s)" in err
    assert where(path, 2, "json_syntax") in err and where(path, 4, "unknown_role") in err
    assert no_checkpoints(dojo_home)


def test_cli_missing_data_file(tmp_path, dojo_home, capsys):
    code, _, err = run_cli(capsys, "train", tmp_path / "nope.jsonl", "--steps", "1")
    assert code == 2 and "rule unreadable" in err and "nope.jsonl" in err
    assert no_checkpoints(dojo_home)


def test_cli_subprocess_exits_2_on_bad_line(tmp_path, dojo_home):
    path, rule, line = make(tmp_path, "json_syntax")
    before = sha256(path)
    proc = subprocess.run([sys.executable, "-m", "dojo.cli", "train", str(path), "--steps", "1"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "dojo: error: 1 problem(s)" in proc.stderr
    assert where(path, line, rule) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sha256(path) == before and no_checkpoints(dojo_home)
