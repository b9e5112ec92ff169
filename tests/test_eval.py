"""dojo eval: batched greedy generation on the fixed eval sets, scored by the skill's scorer, reported per
level (saying where the eval set overlaps training) and recorded in the checkpoint's ledger."""
import json

import pytest

from dojo import config
from dojo.cli import generate_file, main
from model import checkpoint as ckpt
from model.evaluate import evaluate, greedy_generate
from model.train import train_chunk
from skills import bin as bin_skill


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    data = generate_file("bin", 2, 40, 5, tmp_path_factory.mktemp("data") / "bin_l2.jsonl")
    cfg = config.from_dict({"storage": {"root": str(home)}, "data": {"max_length": 128},
                            "eval": {"batch_size": 16, "max_new_tokens": 24}}, env={})
    return cfg, train_chunk(cfg, data, steps=1).checkpoint


def test_eval_report_and_ledger(checkpoint):
    cfg, path = checkpoint
    report = evaluate(cfg, path, "bin", [1, 2])
    levels = report["skills"]["bin"]["levels"]
    assert set(levels) == {"1", "2"}
    assert levels["1"]["n"] == 187 and levels["1"]["overlaps_training"] is True
    assert "overlaps training" in levels["1"]["eval_set"]
    assert levels["2"]["n"] == bin_skill.EVAL_SIZE and levels["2"]["overlaps_training"] is False
    for r in levels.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["correct"] == round(r["accuracy"] * r["n"])
        assert len(r["failures"]) <= cfg.eval.show_failures
    saved = json.loads((cfg.root / "eval" / f"{path.name}.json").read_text())
    assert saved["skills"]["bin"]["levels"]["2"]["n"] == bin_skill.EVAL_SIZE
    assert ckpt.read_ledger(path)["eval"]["bin"] == {"1": levels["1"]["accuracy"], "2": levels["2"]["accuracy"]}


def test_eval_default_levels_follow_the_trained_level(checkpoint):
    cfg, path = checkpoint
    report = evaluate(cfg, path, "bin")   # trained on level 2 -> levels 1 and 2
    assert set(report["skills"]["bin"]["levels"]) == {"1", "2"}


def test_batched_generation_matches_single(checkpoint, tokenizer):
    """Batched greedy generation (left padding) gives the same text as one prompt at a time."""
    cfg, path = checkpoint
    from model.chat import generation_prompt
    from model.loading import load_model, pick_runtime

    model = load_model(path, pick_runtime())
    prompts = [generation_prompt([{"role": "user", "content": p.prompt}], tokenizer)
               for p in bin_skill.eval_problems(1)[:6]]
    batched = greedy_generate(model, tokenizer, prompts, batch_size=6, max_new_tokens=12)
    single = [greedy_generate(model, tokenizer, [p], batch_size=1, max_new_tokens=12)[0] for p in prompts]
    assert batched == single   # left padding must not change greedy outputs


def test_eval_cli(checkpoint, capsys):
    cfg, path = checkpoint
    code = main(["eval", str(path), "--skill", "bin", "--levels", "1", "--config", str(write_cfg(cfg))])
    out = capsys.readouterr().out
    assert code == 0 and "bin level 1: accuracy" in out and "overlaps training" in out


def test_eval_unknown_level(checkpoint, capsys):
    cfg, path = checkpoint
    assert main(["eval", str(path), "--levels", "9", "--config", str(write_cfg(cfg))]) == 2
    assert "not in bin's levels" in capsys.readouterr().err


def write_cfg(cfg):
    import yaml
    from pathlib import Path

    path = Path(cfg.root).parent / "eval_cfg.yaml"
    path.write_text(yaml.safe_dump({"storage": {"root": cfg.storage.root},
                                    "eval": {"batch_size": 64, "max_new_tokens": 24}}))
    return path


def test_a_checkpoint_trained_without_a_system_turn_is_asked_without_one(tmp_path):
    """data.system_prompt "" is a choice the ledger records; eval must not fill in the config's default prompt
    (the model would be asked in a format it never saw)."""
    from model.chat import generation_prompt, with_system_prompt
    from model.evaluate import Generator

    data = generate_file("bin", 1, 20, 3, tmp_path / "bin_l1.jsonl")
    trained = config.from_dict({"storage": {"root": str(tmp_path / "home")}, "data": {"max_length": 128,
                                                                                      "system_prompt": ""}}, env={})
    path = train_chunk(trained, data, steps=1).checkpoint
    ledger = ckpt.read_ledger(path)
    assert ledger["system_prompt"] == ""
    default = config.from_dict({"storage": {"root": str(tmp_path / "home")}}, env={})   # default system prompt
    assert default.data.system_prompt
    gen = Generator.load(default, path, ledger)
    assert gen.system_prompt == ""
    asked = generation_prompt(with_system_prompt([{"role": "user", "content": "1+1"}], gen.system_prompt),
                              gen.tokenizer)
    assert default.data.system_prompt not in asked and "system" not in asked
    with_default = generation_prompt(with_system_prompt([{"role": "user", "content": "1+1"}],
                                                        default.data.system_prompt), gen.tokenizer)
    assert "system" in with_default              # the check above could fail: the template does render one
