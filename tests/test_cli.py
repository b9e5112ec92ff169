"""The ``dojo`` command: generate, pack-check and config show, run in-process through ``dojo.cli.main`` (fast),
plus real subprocesses of the installed ``dojo`` console script to prove the entry point works."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dojo import cli
from dojo import config as C
from skills import bin as B
from tests.helpers import chat, write_jsonl
from validation.validate import read_examples


def read_chat_file(path):
    return read_examples(path, C.load())
from validation.masking import CHECKS

IGNORE = -100


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def generate(capsys, out: Path, level=1, count=50, seed=3, *extra) -> tuple[int, str, str]:
    return run_cli(capsys, "generate", "--skill", "bin", "--level", level, "--count", count, "--seed", seed,
                   "--out", out, *extra)


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.stem + ".meta.json")


def console_script() -> Path:
    """The installed `dojo` entry point of this interpreter's environment."""
    beside = Path(sys.executable).parent / "dojo"
    found = beside if beside.exists() else shutil.which("dojo")
    assert found, "the `dojo` console script is not installed (pip install -e .)"
    return Path(found)


# ---------------------------------------------------------------- generate
def test_generate_writes_valid_chat_and_sidecar(tmp_path, capsys):
    out = tmp_path / "data" / "bin_l1.jsonl"               # the folder does not exist yet
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    code, stdout, err = generate(capsys, out)
    assert code == 0, err
    assert "wrote 50 bin level-1 examples" in stdout and "bin_l1.meta.json" in stdout

    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 50 and all(lines)
    examples = read_chat_file(out)                         # the chat_sft_v1 structural check
    assert len(examples) == 50
    for _, messages in examples:
        assert [m["role"] for m in messages] == ["user", "assistant"]
        problem = B.parse_prompt(messages[0]["content"])
        assert problem is not None and problem.op in ("add", "subtract")
        assert all(0 <= a <= 10 for a in problem.args)
        assert B.score(messages[1]["content"], problem).correct   # the answers are right
    assert [json.loads(line) for line in lines] == [B.to_chat(p) for p in B.generate(1, 50, 3)]

    meta = json.loads(sidecar_of(out).read_text(encoding="utf-8"))
    assert meta["generator"] == "bin@1.1.0"
    assert meta["params"] == {"skill": "bin", "level": 1, "count": 50, "seed": 3}
    assert meta["example_count"] == 50
    assert meta["spec"] == "chat_sft_v1" and meta["skill"] == "bin" and meta["level"] == 1
    when = dt.datetime.fromisoformat(meta["generated_at"])
    assert when.tzinfo is not None
    assert before - dt.timedelta(seconds=1) <= when <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
    assert sorted(p.name for p in out.parent.iterdir()) == ["bin_l1.jsonl", "bin_l1.meta.json"]  # no temp files


def test_generate_is_deterministic_in_seed(tmp_path, capsys):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    assert generate(capsys, a, 2, 40, 7)[0] == 0
    assert generate(capsys, b, 2, 40, 7)[0] == 0
    assert generate(capsys, c, 2, 40, 8)[0] == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert len(c.read_text(encoding="utf-8").splitlines()) == 40


def test_generate_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "keep.jsonl"
    out.write_text("original\n", encoding="utf-8")
    code, stdout, err = generate(capsys, out)
    assert code == 2
    assert err.startswith("dojo: error: ") and "already exists" in err and "--force" in err
    assert out.read_text(encoding="utf-8") == "original\n"
    assert not sidecar_of(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["keep.jsonl"]


def test_generate_force_replaces(tmp_path, capsys):
    out = tmp_path / "keep.jsonl"
    out.write_text("original\n", encoding="utf-8")
    sidecar_of(out).write_text('{"generator": "old@0"}\n', encoding="utf-8")
    code, _, err = generate(capsys, out, 1, 50, 3, "--force")
    assert code == 0, err
    assert len(read_chat_file(out)) == 50
    assert json.loads(sidecar_of(out).read_text(encoding="utf-8"))["generator"] == "bin@1.1.0"


@pytest.mark.parametrize("level", [0, 8, -1])
def test_generate_bad_level(tmp_path, capsys, level):
    out = tmp_path / "x.jsonl"
    code, _, err = generate(capsys, out, level)
    assert code == 2
    assert err.startswith("dojo: error: ") and f"--level {level}" in err and "[1, 2, 3, 4, 5, 6, 7]" in err
    assert not out.exists() and not sidecar_of(out).exists()


def test_generate_bad_count(tmp_path, capsys):
    code, _, err = generate(capsys, tmp_path / "x.jsonl", 1, 0)
    assert code == 2 and "--count must be >= 1" in err
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("argv", [
    ["generate", "--skill", "bin", "--level", "one", "--count", "5", "--seed", "1", "--out", "x.jsonl"],
    ["generate", "--skill", "nope", "--level", "1", "--count", "5", "--seed", "1", "--out", "x.jsonl"],
    ["generate", "--skill", "bin", "--level", "1", "--count", "5", "--out", "x.jsonl"],
    ["frobnicate"],
])
def test_usage_errors_exit_2(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "dojo" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


# ---------------------------------------------------------------- pack-check
@pytest.fixture
def bin_file(tmp_path, capsys) -> Path:
    out = tmp_path / "bin.jsonl"
    assert generate(capsys, out)[0] == 0
    capsys.readouterr()
    return out


def test_pack_check_passes_on_generated_data(bin_file, capsys):
    code, out, err = run_cli(capsys, "pack-check", bin_file)
    assert code == 0, out + err
    m = re.search(r"fill ratio ([0-9.]+), masked ratio ([0-9.]+)", out)
    assert m, out
    fill, masked = float(m.group(1)), float(m.group(2))
    assert 0.5 < fill <= 1.0 and 0.30 <= masked <= 0.85
    assert re.search(r"50 lines → 50 examples \(data.multi_turn auto\) → \d+ rows of ≤ 512 tokens", out)
    assert "the chat template rewrote 0 assistant turn(s)" in out
    for name in ("masked_ratio", *CHECKS):
        assert re.search(rf"\[PASS\] {name}:", out), f"{name} not PASS:\n{out}"
    assert len(CHECKS) == 6 and "FAIL" not in out and "WARN" not in out
    assert "verdict: OK" in out


def test_pack_check_dump(bin_file, tmp_path, capsys):
    dump = tmp_path / "rows.jsonl"
    code, out, _ = run_cli(capsys, "pack-check", bin_file, "--max-length", "256", "--dump", dump)
    assert code == 0
    n_rows = int(re.search(r"→ (\d+) rows of ≤ 256 tokens", out).group(1))
    rows = [json.loads(line) for line in dump.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == n_rows > 1 and f"dumped {n_rows} rows" in out
    sources = []
    for i, row in enumerate(rows):
        ids, labels, pos = row["input_ids"], row["labels"], row["position_ids"]
        assert row["row"] == i
        assert len(ids) == len(labels) == len(pos) and 0 < len(ids) <= 256
        assert all(lab in (IGNORE, tok) for tok, lab in zip(ids, labels))      # labels are ids or masked
        assert any(lab == IGNORE for lab in labels) and any(lab != IGNORE for lab in labels)
        starts = [k for k, p in enumerate(pos) if p == 0]
        assert starts[0] == 0 and len(starts) == len(row["examples"])           # one position run per example
        for a, b in zip(starts, starts[1:] + [len(pos)]):
            assert pos[a:b] == list(range(b - a))
        sources += row["examples"]
    # every example packed exactly once: nothing dropped, nothing duplicated
    assert sorted(sources, key=lambda s: int(s.rpartition(":")[2])) == [f"{bin_file}:{k}" for k in range(1, 51)]


def test_pack_check_only_warns_when_answers_dwarf_prompts(tmp_path, capsys):
    answer = " ".join(["word"] * 200)
    path = write_jsonl(tmp_path / "long.jsonl", [chat(("user", f"q{i}"), ("assistant", answer)) for i in range(6)])
    cfg = tmp_path / "band.yaml"
    cfg.write_text("masking:\n  min_masked_ratio: 0.30\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "pack-check", path, "--config", cfg)
    assert code == 0
    masked = float(re.search(r"masked ratio ([0-9.]+)", out).group(1))
    assert masked < 0.30
    assert "[WARN] masked_ratio" in out and "verdict: OK" in out


def test_pack_check_classification_shaped_file_passes(tmp_path, capsys):
    """97% prompt (long text, one-word label) is real SFT data: warned about, never refused."""
    text = "The service was slow and the food arrived cold. " * 12
    path = write_jsonl(tmp_path / "cls.jsonl", [chat(("user", f"Review {i}: {text}\nPositive or negative?"),
                                                     ("assistant", "negative")) for i in range(6)])
    code, out, _ = run_cli(capsys, "pack-check", path)
    assert code == 0, out
    assert float(re.search(r"masked ratio ([0-9.]+)", out).group(1)) > 0.95
    assert "[WARN] masked_ratio" in out and "verdict: OK" in out


def test_pack_check_says_how_many_turns_the_real_template_rewrote(tmp_path, capsys, qwen3_small_dir):
    think = chat(("user", "Is 7 prime?"), ("assistant", "<think>\nOnly 1 and 7 divide it.\n</think>\n\nYes."),
                 ("user", "And 9?"), ("assistant", "<think>\n3 divides it.\n</think>\n\nNo."))
    path = write_jsonl(tmp_path / "think.jsonl", [think] * 3)
    cfg = tmp_path / "qwen3.yaml"
    cfg.write_text(f"model:\n  name_or_path: {qwen3_small_dir}\n  init: random\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "pack-check", path, "--config", cfg)
    assert code == 0, out
    assert "3 lines → 6 examples (data.multi_turn auto)" in out
    assert "the chat template rewrote 3 assistant turn(s)" in out     # turn 1's reasoning dropped in history


def test_pack_check_thresholds_come_from_config(tmp_path, capsys):
    answer = " ".join(["word"] * 200)
    path = write_jsonl(tmp_path / "long.jsonl", [chat(("user", f"q{i}"), ("assistant", answer)) for i in range(6)])
    cfg = tmp_path / "loose.yaml"
    cfg.write_text("masking:\n  min_masked_ratio: 0.01\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "pack-check", path, "--config", cfg)
    assert code == 0 and "[PASS] masked_ratio" in out and "verdict: OK" in out


# ---------------------------------------------------------------- config show
def test_config_show_round_trips_and_reflects_dojo_home(dojo_home, capsys):
    code, out, _ = run_cli(capsys, "config", "show")
    assert code == 0
    data = yaml.safe_load(out)
    assert list(data) == [f.name for f in dataclasses.fields(C.Config)]
    assert data["storage"]["root"] == str(dojo_home.resolve())
    assert data == C.load().to_dict()
    assert C.from_dict(data, env={}) == C.load()        # what it prints loads back to the same config


def test_config_show_follows_a_changed_dojo_home(tmp_path, monkeypatch, capsys):
    other = tmp_path / "elsewhere"
    monkeypatch.setenv("DOJO_HOME", str(other))
    assert yaml.safe_load(run_cli(capsys, "config", "show")[1])["storage"]["root"] == str(other.resolve())


def test_config_show_output_is_a_loadable_config_file(tmp_path, capsys):
    (tmp_path / "in.yaml").write_text("train:\n  schedule: cosine\n  micro_batch_size: 3\n", encoding="utf-8")
    out = run_cli(capsys, "config", "show", "--config", tmp_path / "in.yaml")[1]
    shown = tmp_path / "shown.yaml"
    shown.write_text(out, encoding="utf-8")
    assert C.load(str(shown)) == C.load(str(tmp_path / "in.yaml"))


@pytest.mark.parametrize("where", [
    "after",
    "before",
    "middle",
])
def test_config_flag_is_honoured(tmp_path, capsys, where):
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  micro_batch_size: 7\n", encoding="utf-8")
    argv = {"after": ["config", "show", "--config", path], "before": ["--config", path, "config", "show"],
            "middle": ["config", "--config", path, "show"]}[where]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and yaml.safe_load(out)["train"]["micro_batch_size"] == 7


def test_config_show_uses_dojo_config_and_cwd_dojo_yaml(tmp_path, monkeypatch, capsys):
    (tmp_path / "dojo.yaml").write_text("train:\n  micro_batch_size: 5\n", encoding="utf-8")
    assert yaml.safe_load(run_cli(capsys, "config", "show")[1])["train"]["micro_batch_size"] == 5
    env_file = tmp_path / "env.yaml"
    env_file.write_text("train:\n  micro_batch_size: 6\n", encoding="utf-8")
    monkeypatch.setenv("DOJO_CONFIG", str(env_file))
    assert yaml.safe_load(run_cli(capsys, "config", "show")[1])["train"]["micro_batch_size"] == 6


def test_config_show_docs_lists_every_key(capsys):
    code, out, _ = run_cli(capsys, "config", "show", "--docs")
    assert code == 0
    for key, text in C.docs().items():
        assert re.search(rf"^{re.escape(key)} = ", out, re.M), key
        assert f"    # {text}" in out


def test_bad_config_exits_2_naming_file_and_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  learning_rat: 0.1\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "config", "show", "--config", path)
    assert code == 2 and out == ""
    assert err.startswith(f"dojo: error: {path}: config train.learning_rat: unknown key")
    code, _, err = run_cli(capsys, "config", "show", "--config", tmp_path / "missing.yaml")
    assert code == 2 and "missing.yaml does not exist" in err


# ---------------------------------------------------------------- the installed console script
def test_console_script_entry_point(tmp_path, dojo_home):
    exe = console_script()
    out = tmp_path / "cli.jsonl"
    proc = subprocess.run([str(exe), "generate", "--skill", "bin", "--level", "1", "--count", "50", "--seed", "3",
                           "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(read_chat_file(out)) == 50 and sidecar_of(out).exists()
    assert [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()] == \
        [B.to_chat(p) for p in B.generate(1, 50, 3)]

    again = subprocess.run([str(exe), "generate", "--skill", "bin", "--level", "1", "--count", "50", "--seed",
                            "3", "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 2 and "dojo: error:" in again.stderr and "already exists" in again.stderr

    show = subprocess.run([str(exe), "config", "show"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    assert yaml.safe_load(show.stdout)["storage"]["root"] == str(dojo_home.resolve())
