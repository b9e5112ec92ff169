"""Tests for model.chat.tokenize_example labels, model.packing (BFD, pack, collate) and, above all, that packing
is loss-neutral: per-example losses on packed rows equal per-example losses of separate forwards."""

import random

import pytest
import torch
import torch.nn.functional as F

from dojo.config import TINY_MODEL_DIR
from model.chat import (IGNORE, IM_END, TokenizedExample, system_prompt_text, tokenize_example,
                        with_system_prompt)
from model.packing import collate, fill_ratio, pack, pack_bfd
from model.train import loss_sum
from skills import bin as B
from validation.errors import DataError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SYSTEM = "You are a careful assistant. Answer in exactly the format asked for."


def trained_spans(ex, tokenizer) -> list[str]:
    """Decoded text of each maximal run of trained labels, in order."""
    spans, cur = [], []
    for tok, lab in zip(ex.input_ids, ex.labels):
        if lab != IGNORE:
            assert lab == tok, "a trained label must be the token itself"
            cur.append(tok)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    return [tokenizer.decode(s, skip_special_tokens=False) for s in spans]


def masked_text(ex, tokenizer) -> str:
    return tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE],
                            skip_special_tokens=False)


MULTI = [
    {"role": "system", "content": "You are terse and exact."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And the capital of Italy?"},
    {"role": "assistant", "content": "Rome, since 1871."},
]


# ------------------------------------------------------------------ tokenize_example labels


def test_multi_turn_trains_exactly_the_assistant_contents(tokenizer):
    ex = tokenize_example(MULTI, tokenizer, "f.jsonl:3")
    assert trained_spans(ex, tokenizer) == ["Paris is the capital of France." + IM_END,
                                            "Rome, since 1871." + IM_END]
    assert ex.assistant_turns == 2 and ex.source == "f.jsonl:3"
    assert len(ex.input_ids) == len(ex.labels) == len(ex)
    # the ids are the full render, nothing lost or added
    full = tokenizer.apply_chat_template(MULTI, tokenize=False, add_generation_prompt=False)
    assert tokenizer.decode(list(ex.input_ids), skip_special_tokens=False) == full
    # everything else (system, users, headers, the empty think block of the last turn) is masked
    masked = masked_text(ex, tokenizer)
    for text in ("You are terse and exact.", "What is the capital of France?", "And the capital of Italy?",
                 "<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n", "<think>", "</think>"):
        assert text in masked
    trained = "".join(trained_spans(ex, tokenizer))
    for text in ("<|im_start|>", "system", "user", "France?", "Italy", "think>"):
        assert text not in trained


def test_system_prompt_hook_is_masked_and_labels_unchanged(tokenizer):
    messages = [m for m in MULTI if m["role"] != "system"]
    prompt = system_prompt_text("Today is {date}. Be exact.")
    assert "{date}" not in prompt
    hooked = with_system_prompt(messages, prompt)
    assert hooked[0] == {"role": "system", "content": prompt} and hooked[1:] == messages
    ex = tokenize_example(hooked, tokenizer)
    assert trained_spans(ex, tokenizer) == ["Paris is the capital of France." + IM_END,
                                            "Rome, since 1871." + IM_END]
    assert prompt in masked_text(ex, tokenizer)
    bare = tokenize_example(messages, tokenizer)
    assert len(ex) > len(bare)
    # an example with its own system message keeps it; the hook adds nothing
    assert with_system_prompt(MULTI, prompt) == MULTI
    assert with_system_prompt(messages, "") == messages


def test_bin_example_trains_only_the_completion(tokenizer):
    problem = B.generate(4, 1, 7)[0]
    ex = tokenize_example(with_system_prompt(B.to_chat(problem)["messages"], SYSTEM), tokenizer)
    assert trained_spans(ex, tokenizer) == [problem.completion + IM_END]
    assert problem.prompt in masked_text(ex, tokenizer)


def test_tokenizing_ignores_padding_left_on_the_tokenizer_by_a_batch_call():
    """model/evaluate.py pads prompt batches on the left; the fast tokenizer keeps that padding set on its backend,
    and a training example tokenized afterwards with the same tokenizer must not start with pad tokens."""
    from model.loading import load_tokenizer

    tok = load_tokenizer(TINY_MODEL_DIR)         # its own: the session tokenizer must keep its state
    messages = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
    before = tokenize_example(messages, tok)
    tok.padding_side = "left"
    tok(["a", "a much longer prompt than the first"], padding=True, add_special_tokens=False)
    after = tokenize_example(messages, tok)
    assert after == before and tok.pad_token_id not in after.input_ids


@pytest.mark.parametrize("answer", ["in", "k", "n", "think", "</think>?", "Yes"])
def test_short_answer_that_occurs_in_the_header_or_think_scaffold(tokenizer, answer):
    """An answer that also occurs in '<think>\n\n</think>' must still be found where it really stands (before
    its <|im_end|>), in the last turn (think block) and in an earlier turn (no think block)."""
    if "</think>" in answer:   # the template reads such content as (empty) reasoning + answer: trained as rendered
        ex = tokenize_example([{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}], tokenizer)
        assert trained_spans(ex, tokenizer) == ["?" + IM_END] and ex.rewritten == 1
        return
    ex = tokenize_example([{"role": "user", "content": "Is the cat in or out?"},
                           {"role": "assistant", "content": answer}], tokenizer)
    assert trained_spans(ex, tokenizer) == [answer + IM_END]
    ex = tokenize_example([{"role": "user", "content": "One?"}, {"role": "assistant", "content": answer},
                           {"role": "user", "content": "Two?"}, {"role": "assistant", "content": answer}], tokenizer)
    assert trained_spans(ex, tokenizer) == [answer + IM_END] * 2


# ------------------------------------------------------------------ pack_bfd


def reference_bfd(lengths, cap):
    """Textbook best-fit decreasing: stable longest-first; the open bin with least room that fits; ties: lowest."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins, room = [], []
    for i in order:
        fits = [b for b in range(len(bins)) if room[b] >= lengths[i]]
        if fits:
            b = min(fits, key=lambda b: (room[b], b))
            bins[b].append(i)
            room[b] -= lengths[i]
        else:
            bins.append([i])
            room.append(cap - lengths[i])
    return bins


def first_fit_decreasing(lengths, cap):
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins, room = [], []
    for i in order:
        for b in range(len(bins)):
            if room[b] >= lengths[i]:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(cap - lengths[i])
    return bins


def test_bfd_known_optimal_arrangement():
    # 6+4 and 5+3+2: two full rows, the optimum for 20 tokens in rows of 10
    assert pack_bfd([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]


def test_bfd_is_best_fit_not_first_fit():
    # longest first: 7 -> row0 (3 left), 5 -> row1 (5 left), 4 -> row1 (1 left); the 1 goes to the row with
    # the least room that fits (row1, exact fit), where first-fit would put it in row0.
    lengths = [7, 4, 5, 1]
    assert pack_bfd(lengths, 10) == [[0], [2, 1, 3]]
    assert first_fit_decreasing(lengths, 10) == [[0, 3], [2, 1]]


def test_bfd_ties_are_stable():
    assert pack_bfd([3, 3, 3], 6) == [[0, 1], [2]]
    assert pack_bfd([2, 2, 2, 2], 4) == [[0, 1], [2, 3]]


def test_bfd_properties_and_reference_on_random_inputs():
    rng = random.Random(1234)
    for _ in range(300):
        cap = rng.randint(1, 40)
        lengths = [rng.randint(1, cap) for _ in range(rng.randint(1, 25))]
        bins = pack_bfd(lengths, cap)
        placed = sorted(i for b in bins for i in b)
        assert placed == list(range(len(lengths))), "every example exactly once"
        assert all(sum(lengths[i] for i in b) <= cap for b in bins), "no row over max_length"
        assert all(b for b in bins), "no empty row"
        assert bins == pack_bfd(list(lengths), cap), "deterministic"
        assert bins == reference_bfd(lengths, cap)
        # sanity: never fewer rows than the token count allows
        assert len(bins) >= -(-sum(lengths) // cap)


def test_pack_refuses_overlong_example_naming_file_and_line():
    ok = TokenizedExample(tuple(range(5)), (IGNORE,) * 5, "f.jsonl:1", 1)
    long_ = TokenizedExample(tuple(range(20)), (IGNORE,) * 20, "f.jsonl:7", 1)
    with pytest.raises(DataError) as err:
        pack([ok, long_], 16)
    assert err.value.rules == ["too_long"]
    issue = err.value.issues[0]
    assert (issue.file, issue.line, issue.value) == ("f.jsonl", 7, "20")
    assert "f.jsonl:7" in str(err.value) and "max_length=16" in str(err.value)
    # exactly max_length is fine
    assert len(pack([long_], 20)) == 1


# ------------------------------------------------------------------ pack + collate


def _ex(n, start, source):
    ids = tuple(range(start, start + n))
    labels = tuple(IGNORE if k < n // 2 else t for k, t in enumerate(ids))
    return TokenizedExample(ids, labels, source, 1)


def test_pack_concatenates_examples_with_own_positions():
    exs = [_ex(6, 100, "a:1"), _ex(5, 200, "a:2"), _ex(4, 300, "a:3"), _ex(3, 400, "a:4"), _ex(2, 500, "a:5")]
    rows = pack(exs, 10)
    assert [r.examples for r in rows] == [(0, 2), (1, 3, 4)]
    assert [r.lengths for r in rows] == [(6, 4), (5, 3, 2)]
    r = rows[1]
    assert r.input_ids == exs[1].input_ids + exs[3].input_ids + exs[4].input_ids
    assert r.labels == exs[1].labels + exs[3].labels + exs[4].labels
    assert r.position_ids == (0, 1, 2, 3, 4, 0, 1, 2, 0, 1)
    assert fill_ratio(rows, 10) == 1.0
    assert fill_ratio(pack(exs[:1], 10), 10) == 0.6


def test_collate_shapes_padding_and_position_resets():
    rows = pack([_ex(6, 100, "a:1"), _ex(3, 200, "a:2"), _ex(5, 300, "a:3")], 9)
    # rows: [6, 3] (9 tokens) and [5] (5 tokens) -> padded to 9
    assert [r.lengths for r in rows] == [(6, 3), (5,)]
    batch = collate(rows, pad_id=7)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    for v in batch.values():
        assert v.shape == (2, 9) and v.dtype == torch.long
    assert batch["input_ids"][1, 5:].tolist() == [7] * 4
    assert batch["labels"][1, 5:].tolist() == [IGNORE] * 4
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2], [0, 1, 2, 3, 4, 0, 1, 2, 3]]
    assert batch["input_ids"][0].tolist() == list(rows[0].input_ids)
    assert batch["labels"][1, :5].tolist() == list(rows[1].labels)


def test_collate_real_rows_restart_positions_at_every_example(tokenizer):
    exs = real_examples(tokenizer)
    rows = pack(exs, 256)
    batch = collate(rows, tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (len(rows), max(len(r) for r in rows))
    for b, row in enumerate(rows):
        pos = batch["position_ids"][b].tolist()
        offset = 0
        for i, n in zip(row.examples, row.lengths):
            assert n == len(exs[i])
            assert pos[offset:offset + n] == list(range(n))
            assert batch["input_ids"][b, offset:offset + n].tolist() == list(exs[i].input_ids)
            offset += n
        pad = batch["input_ids"].shape[1] - offset
        assert pos[offset:] == list(range(pad))
        assert batch["labels"][b, offset:].tolist() == [IGNORE] * pad


# ------------------------------------------------------------------ packed loss == unpacked loss


def real_examples(tokenizer) -> list[TokenizedExample]:
    """Eight varied conversations: BIN problems of several levels, English, multi-turn, with/without system."""
    convs = [B.to_chat(p)["messages"] for p in B.generate(1, 1, 11) + B.generate(3, 1, 12)
             + B.generate(5, 1, 13) + B.generate(7, 1, 14)]
    convs += [
        MULTI,
        [{"role": "user", "content": "Write one sentence about the sea."},
         {"role": "assistant", "content": "The sea is wide, cold and full of a quiet, restless noise."}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help you today?"}],
        [{"role": "user", "content": "Compute: add(①, ①)"}, {"role": "assistant", "content": "add(①, ①) = ①⓪"},
         {"role": "user", "content": "And add(①⓪, ①)?"}, {"role": "assistant", "content": "add(①⓪, ①) = ①①"}],
    ]
    return [tokenize_example(with_system_prompt(c, SYSTEM if k % 2 else ""), tokenizer, f"mix.jsonl:{k + 1}")
            for k, c in enumerate(convs)]


def load_tiny(attn="sdpa"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(TINY_MODEL_DIR), dtype=torch.float32,
                                                 attn_implementation=attn)
    return model.to("cpu")


@pytest.fixture(scope="module")
def packed(tokenizer):
    exs = real_examples(tokenizer)
    rows = pack(exs, 256)
    # the test is only meaningful if rows really hold several examples (and one row is padded)
    assert len(rows) < len(exs) and max(len(r.examples) for r in rows) >= 3
    batch = collate(rows, tokenizer.pad_token_id)
    assert len({len(r) for r in rows}) > 1
    return exs, rows, batch


def example_loss(logits, labels, offset, n):
    """Summed CE over one example's trained tokens: logits[t] predicts labels[t+1], t and t+1 inside it."""
    targets = labels[offset + 1:offset + n]
    assert (targets != IGNORE).any()
    return F.cross_entropy(logits[offset:offset + n - 1].float(), targets, ignore_index=IGNORE, reduction="sum")


def packed_losses(model, rows, batch, position_ids=None):
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"] if position_ids is None
                else position_ids, attention_mask=None, use_cache=False)
    losses = {}
    for b, row in enumerate(rows):
        offset = 0
        for i, n in zip(row.examples, row.lengths):
            losses[i] = example_loss(out.logits[b], batch["labels"][b], offset, n)
            offset += n
    return losses


def alone_loss(model, ex):
    ids = torch.tensor([ex.input_ids])
    out = model(input_ids=ids, position_ids=torch.arange(len(ex))[None], attention_mask=None, use_cache=False)
    return example_loss(out.logits[0], torch.tensor(ex.labels), 0, len(ex))


# Tolerance: each per-example loss is an fp32 sum of ~30-90 token CEs (values ~5, sums ~100-300); packed and
# alone forwards differ only in matmul/attention shapes (reduction order), which moves fp32 results by ~1e-7
# relative (observed max |diff| ~2e-5 on sums ~200). rtol=1e-5 (~2e-3 absolute here) leaves ~100x headroom
# yet is ~1000x below the negative control's leak (~0.3-2.4), so a real leak cannot hide inside it.
RTOL, ATOL = 1e-5, 1e-4


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_losses_equal_separate_losses(packed, attn):
    exs, rows, batch = packed
    model = load_tiny(attn).eval()
    with torch.no_grad():
        got = packed_losses(model, rows, batch)
        want = {i: alone_loss(model, exs[i]) for i in range(len(exs))}
    assert sorted(got) == list(range(len(exs)))
    got_t = torch.stack([got[i] for i in range(len(exs))])
    want_t = torch.stack([want[i] for i in range(len(exs))])
    assert torch.allclose(got_t, want_t, rtol=RTOL, atol=ATOL), (got_t - want_t).abs().max()


def test_negative_control_without_position_resets_examples_leak(packed):
    """Same rows, positions 0..T-1 over the whole row: later examples attend to earlier ones and their losses
    change. (RoPE is relative, so the shifted absolute positions alone would not change an isolated example's
    loss beyond fp noise; the difference is the cross-example attention.) Proves the test above can fail."""
    exs, rows, batch = packed
    model = load_tiny().eval()
    flat = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
    with torch.no_grad():
        leaky = packed_losses(model, rows, batch, position_ids=flat)
        want = {i: alone_loss(model, exs[i]) for i in range(len(exs))}
    later = [i for row in rows for i in row.examples[1:]]
    firsts = [row.examples[0] for row in rows]
    assert len(later) >= 3
    diffs = {i: float((leaky[i] - want[i]).abs()) for i in later}
    assert max(diffs.values()) > 1e-3, diffs
    assert all(d > 1e-3 for d in diffs.values()), diffs
    # the first example of a row sees nothing before it: unchanged
    for i in firsts:
        assert torch.allclose(leaky[i], want[i], rtol=RTOL, atol=ATOL)


def test_loss_sum_of_packed_batch_equals_sum_over_examples(packed):
    """model.train.loss_sum (the trainer's loss) on the packed, padded batch = sum of separate loss_sums."""
    exs, rows, batch = packed
    model = load_tiny().eval()
    with torch.no_grad():
        total, count = loss_sum(model, batch)
        parts = [loss_sum(model, collate(pack([e], 256), 0)) for e in exs]
    assert count == sum(n for _, n in parts) == sum(
        sum(1 for lab in e.labels[1:] if lab != IGNORE) for e in exs)
    want = torch.stack([s for s, _ in parts]).sum()
    assert torch.allclose(total, want, rtol=RTOL, atol=ATOL), (total, want)


@pytest.mark.filterwarnings("ignore:.*checkpointing.*:FutureWarning")  # the trainer's call, renamed in v6
def test_packed_equals_separate_in_train_mode_with_gradient_checkpointing(packed):
    """The trainer's actual setting: train mode (Qwen3 dropout is 0, so deterministic) + non-reentrant gradient
    checkpointing. Losses and the gradients of the summed loss must match separate forwards."""
    exs, rows, batch = packed
    model = load_tiny()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    assert model.is_gradient_checkpointing

    model.zero_grad()
    got = packed_losses(model, rows, batch)
    torch.stack(list(got.values())).sum().backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    want = {}
    for i, ex in enumerate(exs):
        want[i] = alone_loss(model, ex)
        want[i].backward()   # gradients accumulate over examples
    alone_grads = [p.grad for p in model.parameters()]

    got_t = torch.stack([got[i].detach() for i in range(len(exs))])
    want_t = torch.stack([want[i].detach() for i in range(len(exs))])
    assert torch.allclose(got_t, want_t, rtol=RTOL, atol=ATOL), (got_t - want_t).abs().max()
    # gradient entries are sums of the same terms in a different order; scale the tolerance by each tensor
    for g, w in zip(packed_grads, alone_grads):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-5 * float(w.abs().max())), float((g - w).abs().max())
