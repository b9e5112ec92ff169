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
