"""Packed rows stay isolated on every attention path dojo can choose (model/loading.py: pick_runtime): an
example's logits are the same whether it is packed with others or run alone.

CPU runs sdpa, eager and flex_attention. flex_attention has no backward pass on CPU and transformers compiles it
(minutes on a 2-core box), so here it runs forward-only and uncompiled: the document mask it builds from the
position ids is the same either way. The CUDA paths (flex compiled, flash_attention_2) are in tests/test_gpu.py.
"""
import pytest
import torch

from dojo.config import TINY_MODEL_DIR
from model.packing import collate, pack


@pytest.fixture(scope="module")
def examples():
    from model.chat import tokenize_example
    from model.loading import load_tokenizer
    from skills import bin as B

    tok = load_tokenizer(TINY_MODEL_DIR)
    exs = [tokenize_example(B.to_chat(p)["messages"], tok) for p in B.generate(2, 7, 3)]
    rows = pack(exs, 200)
    assert max(len(r.examples) for r in rows) >= 3 and len(rows) >= 2   # really packed, and one row padded
    return exs, rows, tok.pad_token_id


@pytest.fixture
def uncompiled_flex(monkeypatch):
    import transformers.integrations.flex_attention as tfa
    import transformers.masking_utils as mu
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(tfa.WrappedFlexAttention, "__call__", lambda self: flex_attention)
    make = mu.create_block_mask
    monkeypatch.setattr(mu, "create_block_mask", lambda *a, **k: make(*a, **{**k, "_compile": False}))


def logits_per_example(model, rows, pad_id):
    batch = collate(rows, pad_id)
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    got = {}
    for b, row in enumerate(rows):
        offset = 0
        for i, n in zip(row.examples, row.lengths):
            got[i] = out[b, offset:offset + n]
            offset += n
    return got


@pytest.mark.filterwarnings("ignore::UserWarning")   # flex_attention warns when it runs uncompiled
@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_logits_identical_packed_or_alone(examples, attn, request):
    from transformers import AutoModelForCausalLM

    if attn == "flex_attention":
        request.getfixturevalue("uncompiled_flex")
    exs, rows, pad = examples
    model = AutoModelForCausalLM.from_pretrained(str(TINY_MODEL_DIR), attn_implementation=attn).eval()
    with torch.no_grad():
        packed = logits_per_example(model, rows, pad)
        for i, ex in enumerate(exs):
            alone = model(input_ids=torch.tensor([ex.input_ids]), position_ids=torch.arange(len(ex))[None],
                          use_cache=False).logits[0]
            # fp32: only the reduction order differs between the two shapes
            torch.testing.assert_close(packed[i], alone, rtol=1e-5, atol=1e-5, msg=f"{attn}: example {i}")


def test_flex_attention_needs_cuda_for_training():
    from model.loading import pick_runtime

    if torch.cuda.is_available():
        assert pick_runtime(attn="flex_attention").attn_implementation == "flex_attention"
    else:
        with pytest.raises(ValueError, match="flex_attention requested but no CUDA device"):
            pick_runtime(attn="flex_attention")
