"""model.init: a directory holding only a config.json and a tokenizer trains from seeded random weights; the
choice is in the ledger; ``pretrained`` on such a directory, or an unknown init value, is refused clearly.
Uses the real Qwen3 tokenizer and template on a tiny Qwen3 (``qwen3_small_dir``; skipped without it)."""
import pytest
import torch
from safetensors.torch import load_file

from dojo import cli, config
from dojo.cli import generate_file
from model import checkpoint as ckpt
from model.loading import has_weights, load_model, pick_runtime, random_model
from model.train import train_chunk


def small_config(home, model_dir, **model):
    return config.from_dict({
        "storage": {"root": str(home)},
        "model": {"name_or_path": str(model_dir), **model},
        "data": {"max_length": 128, "val_fraction": 0.0},
        "train": {"micro_batch_size": 2, "warmup_steps": 0, "learning_rate": 0.003, "log_every": 1, "seed": 7},
    }, env={})


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return generate_file("bin", 1, 12, 3, tmp_path_factory.mktemp("data") / "bin1.jsonl")


def test_small_dir_has_no_weights(qwen3_small_dir):
    assert not has_weights(qwen3_small_dir)
    assert (qwen3_small_dir / "tokenizer.json").is_file() and (qwen3_small_dir / "config.json").is_file()


def test_random_init_trains_a_weightless_dir(tmp_path, qwen3_small_dir, data_file):
    cfg = small_config(tmp_path / "home", qwen3_small_dir, init="random")
    first = train_chunk(cfg, data_file, steps=3)
    assert (first.checkpoint / "model.safetensors").is_file()
    assert ckpt.read_ledger(first.checkpoint)["init"] == "random"

    start = random_model(qwen3_small_dir, pick_runtime(), seed=cfg.train.seed).state_dict()
    trained = load_file(str(first.checkpoint / "model.safetensors"))
    moved = [k for k in trained if k in start and not torch.equal(trained[k], start[k])]
    assert moved, "three optimizer steps changed no weight"

    # a resumed chunk loads the checkpoint's weights (not a new random init) and keeps the lineage's init
    second = train_chunk(cfg, data_file, steps=1)
    assert ckpt.read_ledger(second.checkpoint)["init"] == "random"
    assert second.train_loss < first.train_loss


def test_seeded_random_init_is_reproducible(qwen3_small_dir):
    rt = pick_runtime()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = random_model(qwen3_small_dir, rt, seed=11).state_dict()
    assert torch.equal(torch.get_rng_state(), before), "random init must leave the caller's RNG alone"
    b = random_model(qwen3_small_dir, rt, seed=11).state_dict()
    c = random_model(qwen3_small_dir, rt, seed=12).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_pretrained_on_a_weightless_dir_says_set_init_random(qwen3_small_dir):
    with pytest.raises(ValueError) as exc:
        load_model(qwen3_small_dir, pick_runtime())
    assert str(qwen3_small_dir) in str(exc.value) and "model.init: random" in str(exc.value)


def test_pretrained_chunk_on_a_weightless_dir_writes_nothing(tmp_path, qwen3_small_dir, data_file):
    cfg = small_config(tmp_path / "home", qwen3_small_dir)
    with pytest.raises(ValueError, match="set model.init: random"):
        train_chunk(cfg, data_file, steps=1)
    assert ckpt.latest_checkpoint(cfg.root) is None


def test_unknown_init_value_names_the_key(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"config model.init: 'zeros' is not allowed; use one of pretrained, random"):
        config.from_dict({"model": {"init": "zeros"}}, env={})
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  init: zeros\n", encoding="utf-8")
    assert cli.main(["config", "show", "--config", str(path)]) == 2
    assert "model.init" in capsys.readouterr().err
    assert config.from_dict({"model": {"init": "random"}}, env={}).model.init == "random"
