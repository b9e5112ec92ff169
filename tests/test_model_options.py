"""Every model-side option goes through the one training loop: Muon (+ AdamW) with exact resume and its
parameter split, LoRA adapters (train, resume, evaluate, merge), and a clear start-up error for each
combination that cannot run here."""
import pytest
import torch
from safetensors.torch import load_file

from dojo import config
from dojo.cli import generate_file, main
from model import checkpoint as ckpt
from model.loading import load_model, pick_runtime
from model.train import train_chunk
from validation.model_dir import check_model_dir

BASE = {"data": {"max_length": 128, "val_fraction": 0.0},
        "train": {"micro_batch_size": 2, "grad_accum": 2, "warmup_steps": 3, "log_every": 1}}


def cfg_for(home, **sections):
    data = {k: dict(v) for k, v in BASE.items()}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    data["storage"] = {"root": str(home)}
    return config.from_dict(data, env={})


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return generate_file("bin", 1, 40, 11, tmp_path_factory.mktemp("d") / "bin1.jsonl")


def assert_same_tensors(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def test_muon_resume_equivalence_and_split(tmp_path, data_file):
    muon = {"optimizer": "muon", "muon_lr": 0.02}
    split = cfg_for(tmp_path / "split", train=muon)
    train_chunk(split, data_file, steps=3)
    two = train_chunk(split, data_file, steps=3)
    one = train_chunk(cfg_for(tmp_path / "one", train=muon), data_file, steps=6)
    assert_same_tensors(load_file(str(two.checkpoint / "model.safetensors")),
                        load_file(str(one.checkpoint / "model.safetensors")))
    state = ckpt.read_ledger(two.checkpoint)
    assert state["runtime"]["optimizer"] == "muon"
    s = state["optimizer_split"]
    assert 0.5 < s["muon_share"] < 1.0 and s["muon_share"] + s["adamw_share"] == pytest.approx(1.0)
    assert s["muon_tensors"] == 4 * 7      # 4 layers x (q, k, v, o, gate, up, down)


def test_muon_differs_from_adamw(tmp_path, data_file):
    a = train_chunk(cfg_for(tmp_path / "a"), data_file, steps=3)
    m = train_chunk(cfg_for(tmp_path / "m", train={"optimizer": "muon"}), data_file, steps=3)
    wa, wm = load_file(str(a.checkpoint / "model.safetensors")), load_file(str(m.checkpoint / "model.safetensors"))
    assert max((wa[k] - wm[k]).abs().max().item() for k in wa) > 1e-4


def test_switching_optimizer_mid_lineage_is_refused(tmp_path, data_file):
    train_chunk(cfg_for(tmp_path / "h"), data_file, steps=1)
    with pytest.raises(ValueError, match="trained with adamw"):
        train_chunk(cfg_for(tmp_path / "h", train={"optimizer": "muon"}), data_file, steps=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusals")
@pytest.mark.parametrize("sections, message", [
    ({"train": {"optimizer": "paged_adamw_8bit"}}, "paged_adamw_8bit needs a CUDA GPU"),
    ({"model": {"liger": "on"}}, "model.liger: on, but there is no CUDA device"),
    ({"model": {"attn_implementation": "flash_attention_2"}}, "flash_attention_2 requested but no CUDA device"),
    ({"model": {"lora": True, "lora_target_modules": ["q_proj", "c_attn"]}}, r"\['c_attn'\] do not exist"),
])
def test_impossible_combinations_fail_at_start_up(tmp_path, data_file, sections, message):
    cfg = cfg_for(tmp_path / "h", **sections)
    with pytest.raises(ValueError, match=message):
        train_chunk(cfg, data_file, steps=1)
    assert ckpt.list_checkpoints(cfg.root) == []


def test_lora_trains_resumes_evaluates_and_merges(tmp_path, data_file, tiny_model_dir, capsys):
    lora = {"lora": True, "lora_rank": 4, "lora_alpha": 8}
    split = cfg_for(tmp_path / "split", model=lora)
    first = train_chunk(split, data_file, steps=3)
    assert check_model_dir(first.checkpoint).kind == "lora"
    assert not (first.checkpoint / "model.safetensors").exists()
    two = train_chunk(split, data_file, steps=3)
    one = train_chunk(cfg_for(tmp_path / "one", model=lora), data_file, steps=6)
    assert_same_tensors(load_file(str(two.checkpoint / "adapter_model.safetensors")),
                        load_file(str(one.checkpoint / "adapter_model.safetensors")))
    assert ckpt.read_ledger(two.checkpoint)["runtime"]["lora"] is True
    # the base weights never moved; the adapter did
    from model.evaluate import evaluate

    report = evaluate(split, two.checkpoint, "bin", [1])
    assert report["skills"]["bin"]["levels"]["1"]["n"] == 187
    # merge: a full model whose logits equal base + adapter
    out = tmp_path / "merged"
    assert main(["merge", str(two.checkpoint), "--out", str(out)]) == 0
    assert check_model_dir(out).kind == "full"
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    rt = pick_runtime()
    with torch.no_grad():
        merged = load_model(out, rt)(ids).logits
        adapter = load_model(two.checkpoint, rt, trainable=False)(ids).logits
        base = load_model(tiny_model_dir, rt)(ids).logits
    torch.testing.assert_close(merged, adapter, rtol=1e-4, atol=1e-5)
    assert (adapter - base).abs().max() > 1e-4
    # a LoRA lineage refuses to continue as a full fine-tune
    with pytest.raises(ValueError, match="is a LoRA adapter but config model.lora is false"):
        train_chunk(cfg_for(tmp_path / "split"), data_file, steps=1)


def test_profile_reaches_training_and_ledger(tmp_path, data_file, tokenizer):
    """The profile's dated system prompt and answer transform are what training renders, and the ledger says so."""
    import datetime as dt

    from model.data import prepare
    from model.profiles import resolve

    cfg = cfg_for(tmp_path / "h", data={"profile": "emoji_think", "max_length": 192})
    profile, prompt = resolve("emoji_think", cfg.data.system_prompt)
    assert dt.date.today().isoformat() in prompt
    rows = prepare(cfg, data_file, tokenizer).rows([0])
    text = tokenizer.decode(list(rows[0].input_ids))
    trained = tokenizer.decode([t for t, lab in zip(rows[0].input_ids, rows[0].labels) if lab != -100])
    assert prompt in text and "🤔\n" in trained and "🛑" in trained
    result = train_chunk(cfg, data_file, steps=1)
    ledger = ckpt.read_ledger(result.checkpoint)
    assert ledger["profile"] == "emoji_think" and ledger["system_prompt"] == prompt
