"""GPU-only checks (skipped without CUDA). Hardware: any CUDA GPU with bf16 (reference: RTX 4090, H100).
Run: `.venv/bin/python -m pytest -q -m gpu tests/test_gpu.py` on a machine with torch's CUDA build,
bitsandbytes and liger-kernel installed (`pip install -e '.[gpu]'`)."""
import pytest
import torch
from safetensors.torch import load_file

from dojo import config
from dojo.cli import generate_file
from model.train import train_chunk

pytestmark = pytest.mark.gpu


def cfg_for(home, **sections):
    data = {"data": {"max_length": 256, "val_fraction": 0.0},
            "train": {"micro_batch_size": 2, "grad_accum": 2, "warmup_steps": 3}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    data["storage"] = {"root": str(home)}
    return config.from_dict(data, env={})


@pytest.mark.parametrize("sections", [
    {"train": {"optimizer": "paged_adamw_8bit"}, "model": {"liger": "on"}},
    {"train": {"optimizer": "adamw"}, "model": {"liger": "on"}},
])
def test_resume_equivalence_on_gpu(tmp_path, sections):
    """Two chunks of 3 steps equal one of 6 with paged 8-bit AdamW / Liger on CUDA (bf16: tolerance 1e-2)."""
    data = generate_file("bin", 1, 60, 3, tmp_path / "d.jsonl")
    split = cfg_for(tmp_path / "a", **sections)
    train_chunk(split, data, steps=3)
    two = train_chunk(split, data, steps=3)
    one = train_chunk(cfg_for(tmp_path / "b", **sections), data, steps=6)
    a, b = load_file(str(two.checkpoint / "model.safetensors")), load_file(str(one.checkpoint / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=0, atol=1e-2, msg=k)


def test_packed_rows_isolated_with_flash_attention(tmp_path):
    """Packed per-example losses equal separate forwards on the FlashAttention varlen path (if installed)."""
    pytest.importorskip("flash_attn")
    from model.chat import tokenize_example
    from model.loading import load_model, load_tokenizer, pick_runtime
    from model.packing import collate, pack
    from model.train import loss_sum
    from skills import bin as b

    rt = pick_runtime("bfloat16", "flash_attention_2")
    tok = load_tokenizer(config.TINY_MODEL_DIR)
    model = load_model(config.TINY_MODEL_DIR, rt).eval()
    exs = [tokenize_example(b.to_chat(p)["messages"], tok) for p in b.generate(3, 6, 1)]
    rows = pack(exs, 512)
    with torch.no_grad():
        packed = sum(float(loss_sum(model, {k: v.cuda() for k, v in collate([r], tok.pad_token_id).items()})[0])
                     for r in rows)
        alone = sum(float(loss_sum(model, {k: v.cuda() for k, v in collate(pack([e], 512), tok.pad_token_id).items()})[0])
                    for e in exs)
    assert packed == pytest.approx(alone, rel=2e-2)


@pytest.mark.parametrize("attn", ["sdpa", "flex_attention"])
def test_packed_logits_equal_alone_on_cuda(attn):
    """The CUDA packed-attention paths without flash-attn (model.loading.CUDA_PACKED_ATTENTION's candidates),
    compiled as training runs them: an example's logits packed with others equal its logits alone (fp32)."""
    from model.chat import tokenize_example
    from model.loading import load_model, load_tokenizer, pick_runtime
    from model.packing import collate, pack
    from skills import bin as b

    rt = pick_runtime("float32", attn)
    tok = load_tokenizer(config.TINY_MODEL_DIR)
    model = load_model(config.TINY_MODEL_DIR, rt).eval()
    exs = [tokenize_example(b.to_chat(p)["messages"], tok) for p in b.generate(2, 7, 3)]
    rows = pack(exs, 256)
    with torch.no_grad():
        for row in rows:
            batch = {k: v.cuda() for k, v in collate([row], tok.pad_token_id, 256).items()}
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
            offset = 0
            for i, n in zip(row.examples, row.lengths):
                ids = torch.tensor([exs[i].input_ids], device="cuda")
                positions = torch.arange(n, device="cuda")[None]
                alone = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
                torch.testing.assert_close(logits[offset:offset + n], alone, rtol=1e-4, atol=1e-4)
                offset += n


def test_fsdp2_chunk_saves_a_plain_checkpoint_and_resumes(tmp_path):
    """FSDP2 (train.distributed: fsdp2) on one GPU: `model.launch.run_chunk` launches `accelerate launch --use_fsdp
    --fsdp_version 2 --num_processes 1 -m dojo.cli train`; the checkpoint is a plain HF safetensors model (the tiny
    Qwen3's tied embeddings stored once) whose weights load with transformers and match a plain one-process chunk
    (fp32; 1e-2 absorbs an Adam first-step sign flip on a near-zero gradient, ~2 x lr), and a second chunk resumes
    the sharded AdamW state and continues the lineage. Hardware: one CUDA GPU; 2 x 24 GB for Qwen3-4B."""
    from transformers import AutoModelForCausalLM

    from model import checkpoint as ckpt
    from model.launch import run_chunk

    data = generate_file("bin", 1, 60, 3, tmp_path / "d.jsonl")
    sections = {"model": {"dtype": "float32", "attn_implementation": "sdpa", "liger": "off"},
                "train": {"optimizer": "adamw", "log_every": 1}}
    sharded = cfg_for(tmp_path / "fsdp2", model=sections["model"], train=sections["train"] | {"distributed": "fsdp2"})
    plain = cfg_for(tmp_path / "plain", **sections)
    seen = []
    first = run_chunk(sharded, data, steps=3, on_progress=seen.append)
    reference = train_chunk(plain, data, steps=3)
    assert [p["chunk_step"] for p in seen] == [1, 2, 3]
    assert ckpt.verify_checkpoint(first.checkpoint) == []
    ledger = ckpt.read_ledger(first.checkpoint)
    assert ledger["distributed"] == {"processes": 1, "mode": "fsdp2"} and ledger["has_optimizer_state"]
    saved = load_file(str(first.checkpoint / "model.safetensors"))
    assert "lm_head.weight" not in saved, "tied embeddings are stored once, as transformers writes them"
    loaded = AutoModelForCausalLM.from_pretrained(first.checkpoint, dtype=torch.float32)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    for name, tensor in loaded.state_dict().items():
        key = "model.embed_tokens.weight" if name == "lm_head.weight" else name
        torch.testing.assert_close(tensor, saved[key].float(), rtol=0, atol=0, msg=name)
    ref = load_file(str(reference.checkpoint / "model.safetensors"))
    assert saved.keys() == ref.keys()
    for k in saved:
        torch.testing.assert_close(saved[k], ref[k], rtol=0, atol=1e-2, msg=k)
    assert first.train_loss == pytest.approx(reference.train_loss, rel=1e-3)

    second = run_chunk(sharded, data, steps=3)
    reference2 = train_chunk(plain, data, steps=3)
    assert second.step == 6 and ckpt.read_ledger(second.checkpoint)["parent"] == first.checkpoint.name
    assert second.train_loss == pytest.approx(reference2.train_loss, rel=1e-2)
    a, b = load_file(str(second.checkpoint / "model.safetensors")), load_file(str(reference2.checkpoint / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=2e-2, msg=k)
