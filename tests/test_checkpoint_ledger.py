"""A saved checkpoint carries what made it, is written atomically under its canonical name, holds only
safetensors weights, and is recognised as a model by its real structure (full models and LoRA adapters)."""
import json
import re

import pytest

from dojo import config
from dojo.cli import generate_file
from dojo.storage import tree_size
from model import checkpoint as ckpt
from model.train import train_chunk
from validation.model_dir import check_model_dir

LEDGER_FIELDS = {
    "name", "step", "time", "parent", "base_model", "train_loss", "val_loss", "learning_rate", "eval",
    "data_files", "lineage_files", "skill", "level", "examples_trained", "total_examples_trained",
    "tokens_trained", "size_bytes", "has_optimizer_state", "config", "system_prompt", "code_version",
    "runtime", "masking", "base_model_identity",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    data = generate_file("bin", 1, 40, 5, tmp_path_factory.mktemp("data") / "bin_l1.jsonl")
    cfg = config.from_dict({"storage": {"root": str(home)}, "data": {"max_length": 128},
                            "train": {"micro_batch_size": 2}}, env={})
    return cfg, data, train_chunk(cfg, data, steps=2)


def test_ledger_has_every_field(trained):
    cfg, data, result = trained
    ledger = ckpt.read_ledger(result.checkpoint)
    assert LEDGER_FIELDS <= ledger.keys(), LEDGER_FIELDS - ledger.keys()
    assert ledger["name"] == result.checkpoint.name and ledger["step"] == 2
    assert ledger["has_optimizer_state"] is True
    assert ledger["train_loss"] > 0
    assert ledger["val_loss"] is None   # 40 examples * val_fraction 0.02 < 1: nothing held out
    assert ledger["learning_rate"] > 0
    (record,) = ledger["data_files"]
    assert record["sha256"] == ckpt.sha256_file(data)
    assert record["path"] == str(data.resolve())
    assert record["generator"] == "bin@1.1.0" and record["spec"] == "chat_sft_v1"
    assert (ledger["skill"], ledger["level"]) == ("bin", 1)
    assert ledger["lineage_files"] == [record["sha256"]]
    assert ledger["examples_trained"] > 0 and ledger["total_examples_trained"] == ledger["examples_trained"]
    assert ledger["config"] == cfg.to_dict()
    assert ledger["system_prompt"] == cfg.data.system_prompt   # no {date} in the default
    assert ledger["code_version"]["package"] == "0.1.0"
    assert ledger["runtime"] == {"device": "cpu", "dtype": "float32", "attn_implementation": "sdpa", "liger": False,
                                 "gradient_checkpointing": False, "optimizer": "adamw", "lora": False,
                                 "gradient_checkpointing_reason": "auto: off on CPU (memory is not the limit; "
                                                                  "recomputing costs ~1/3 more compute)",
                                 "compile": False}
    assert ledger["optimizer_split"]["optimizer"] == "adamw" and ledger["optimizer_split"]["trainable_params"] > 0
    assert all(ledger["masking"]["checks"].values())
    ledger_bytes = (result.checkpoint / ckpt.LEDGER).stat().st_size
    assert ledger["size_bytes"] == tree_size(result.checkpoint) - ledger_bytes


def test_canonical_name_atomic_write_and_safetensors_only(trained):
    cfg, _, result = trained
    assert re.fullmatch(r"checkpoint-2-\d{8}-\d{4}", result.checkpoint.name)
    leftovers = [p.name for p in (cfg.root / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []
    files = {p.name for p in result.checkpoint.rglob("*") if p.is_file()}
    assert "model.safetensors" in files and "optimizer.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert ckpt.latest_checkpoint(cfg.root) == result.checkpoint


def test_refuses_to_overwrite(trained, tiny_model_dir):
    cfg, _, result = trained
    from model.loading import load_model, load_tokenizer, pick_runtime

    model, tok = load_model(result.checkpoint, pick_runtime()), load_tokenizer(result.checkpoint)
    when = ckpt.read_ledger(result.checkpoint)["time"]
    import datetime as dt

    with pytest.raises(FileExistsError):
        ckpt.save_checkpoint(cfg.root, 2, model, tok, {}, None, now=dt.datetime.fromisoformat(when))


def test_unfinished_checkpoint_is_ignored(trained):
    cfg, _, result = trained
    (cfg.root / "checkpoints" / ".tmp-checkpoint-99-20260101-0000-1").mkdir()
    half = cfg.root / "checkpoints" / "checkpoint-98-20260101-0000"
    half.mkdir()
    (half / "config.json").write_text("{}")
    assert ckpt.latest_checkpoint(cfg.root) == result.checkpoint


def test_model_dir_check_full_model(tiny_model_dir, trained, tmp_path):
    assert check_model_dir(tiny_model_dir).kind == "full"
    assert check_model_dir(trained[2].checkpoint).kind == "full"
    # a lone config.json is not a model, nor are pickle weights, nor a missing shard
    (tmp_path / "only_config").mkdir()
    (tmp_path / "only_config" / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    check = check_model_dir(tmp_path / "only_config")
    assert not check.ok and any("no safetensors" in p for p in check.problems)
    pickle = tmp_path / "pickle"
    pickle.mkdir()
    (pickle / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (pickle / "pytorch_model.bin").write_bytes(b"x")
    (pickle / "tokenizer.json").write_text("{}")
    assert any("pickle" in p for p in check_model_dir(pickle).problems)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (sharded / "tokenizer.json").write_text("{}")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    assert any("missing weight shards" in p for p in check_model_dir(sharded).problems)


def test_model_dir_check_lora_adapter(tiny_model_dir, tmp_path):
    """A real peft LoRA adapter of the tiny model is accepted as 'lora'; a config without weights is not."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    assert check_model_dir(tmp_path / "adapter").kind == "lora"
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    check = check_model_dir(tmp_path / "adapter")
    assert not check.ok and any("adapter weights" in p for p in check.problems)
