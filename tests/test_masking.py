"""Tests for validation.masking: each structural validator fails on a batch built to violate it (naming the
row and showing the offending text), good batches of real packed examples pass them all — plain, multi-turn,
expanded reasoning conversations — the masked ratio only ever warns, and the trainer refuses to train (and
writes nothing) when a structural check fails."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from dojo.config import from_dict
from model.chat import IGNORE, system_prompt_text, tokenize_conversation, tokenize_example, with_system_prompt
from model.packing import PackedRow, pack
from skills import bin as B
from tests.helpers import chat, write_jsonl
from validation.masking import CHECKS, MaskingError, Thresholds, require_ok, validate_rows


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SYSTEM = system_prompt_text(from_dict({}).data.system_prompt)

MULTI = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome is the capital of Italy."},
]
LONG_ANSWER = ("The quick brown fox jumps over the lazy dog while the sun sets slowly behind the distant hills, "
               "and the river keeps running past the old mill as it has done for two hundred years or more. ") * 2
LONG_ANSWER = LONG_ANSWER[:300]


@dataclass
class Row:
    """Any object with input_ids/labels/position_ids/lengths is a row for the validators."""
    input_ids: list
    labels: list
    position_ids: list
    lengths: tuple = ()
    trained_tokens: tuple = ()
    trained_turns: tuple = ()


def check(report, name):
    [result] = [c for c in report.checks if c.name == name]
    return result


def failed(report) -> set[str]:
    """The hard checks that failed (the masked-ratio band only warns)."""
    return {c.name for c in report.checks if not c.passed and not c.warning_only}


def failures(report, name) -> str:
    return "\n".join(check(report, name).failures)


def tok(messages, tokenizer, system=SYSTEM):
    return tokenize_example(with_system_prompt(messages, system), tokenizer, "t.jsonl:1")


def bin_rows(tokenizer, max_length=512):
    exs = [tok(B.to_chat(p)["messages"], tokenizer) for level in range(1, 8) for p in B.generate(level, 5, level)]
    rows = pack(exs, max_length)
    assert max(len(r.examples) for r in rows) > 1, "rows must really be packed"
    return rows


def with_labels(row, labels) -> Row:
    """The same row (and the same rendering's per-example counts) with other labels: a broken collator."""
    assert len(labels) == len(row.input_ids)
    return Row(list(row.input_ids), list(labels), list(row.position_ids), row.lengths, row.trained_tokens,
               row.trained_turns)


def trained_runs(labels) -> list[tuple[int, int]]:
    """[start, stop) of every maximal run of trained labels."""
    runs, start = [], None
    for k, lab in enumerate(list(labels) + [IGNORE]):
        if lab != IGNORE and start is None:
            start = k
        elif lab == IGNORE and start is not None:
            runs.append((start, k))
            start = None
    return runs


# ------------------------------------------------------------------ the good batch


def test_real_bin_rows_pass_every_check(tokenizer):
    rows = bin_rows(tokenizer)
    report = require_ok(validate_rows(rows, tokenizer))
    assert [c.name for c in report.checks] == ["masked_ratio", *CHECKS]
    assert report.ok and not failed(report) and not report.warnings
    assert report.rows == len(rows) and report.tokens == sum(len(r) for r in rows)
    assert check(report, "span_coverage").detail.startswith(f"{sum(len(r.examples) for r in rows)} trained")
    assert "masking:" in report.format() and "FAIL" not in report.format()


def test_multi_turn_english_rows_pass_every_check(tokenizer):
    convs = [MULTI, chat(("user", "Name a colour."), ("assistant", "Blue."))["messages"],
             chat(("user", "Say hi."), ("assistant", "Hi!"), ("user", "Again."), ("assistant", "Hi again!"),
                  system="Be brief.")["messages"]]
    rows = pack([tok(c, tokenizer) for c in convs * 3], 256)
    report = validate_rows(rows, tokenizer)
    assert report.ok, report.format()


REASONING = [{"role": "user", "content": "Is 7 prime?"},
             {"role": "assistant", "content": "<think>\n7 has no divisor but 1 and 7.\n</think>\n\nYes."},
             {"role": "user", "content": "And 9?"},
             {"role": "assistant", "content": "<think>\n9 = 3 * 3.\n</think>\n\nNo."}]


def test_expanded_reasoning_rows_pass_with_history_turns_as_context(qwen3_tokenizer):
    """data.multi_turn expand: the first turn is context (untrained) in the second example; that is allowed, and
    every example's final turn is trained whole."""
    exs = tokenize_conversation(REASONING, qwen3_tokenizer, "r.jsonl:1", "expand")
    assert [e.trained_turns for e in exs] == [1, 1] and [e.assistant_turns for e in exs] == [1, 2]
    report = validate_rows(pack(exs * 3, 512), qwen3_tokenizer)
    assert report.ok, report.format()
    assert "3 history turn(s) as context" in check(report, "span_coverage").detail


def test_final_turn_left_untrained_is_caught(qwen3_tokenizer):
    """An expanded example that trains its history turn instead of its final turn is refused."""
    [_, second] = tokenize_conversation(REASONING, qwen3_tokenizer, "r.jsonl:1", "expand")
    rendered = tokenize_example(REASONING, qwen3_tokenizer)     # the same text, both turns trained
    assert rendered.input_ids == second.input_ids
    row = pack([second], 512)[0]
    (history, final) = trained_runs(rendered.labels)
    labels = [IGNORE] * len(row)
    labels[history[0]:history[1]] = row.input_ids[history[0]:history[1]]
    report = validate_rows([with_labels(row, labels)], qwen3_tokenizer)
    assert "span_coverage" in failed(report), report.format()
    assert "the final assistant turn of example 0 is not trained" in failures(report, "span_coverage")


# ------------------------------------------------------------------ the old system's bug


def first_instruction_only(row: PackedRow, tokenizer) -> Row:
    """The old collator: mask up to the end of the row's FIRST user turn, train everything after it."""
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = list(row.input_ids)
    user = next(k for k in range(len(ids) - 1) if ids[k] == im_start and tokenizer.decode([ids[k + 1]]) == "user")
    end = ids.index(im_end, user) + 1
    return with_labels(row, [IGNORE] * end + ids[end:])


def test_old_first_instruction_bug_is_caught(tokenizer):
    convs = [MULTI, chat(("user", "Who wrote Hamlet?"), ("assistant", "Shakespeare wrote it."))["messages"],
             chat(("user", "Pick a number."), ("assistant", "Seven."))["messages"]]
    rows = pack([tok(c, tokenizer) for c in convs * 2], 200)
    assert len(rows) >= 2 and all(len(r.examples) >= 2 for r in rows)
    assert validate_rows(rows, tokenizer).ok   # correctly masked, the same rows pass
    bad = [first_instruction_only(r, tokenizer) for r in rows]
    report = validate_rows(bad, tokenizer)
    assert {"trained_content", "template_count"} <= failed(report)
    with pytest.raises(MaskingError, match="trained_content"):
        require_ok(report)
    text = failures(report, "trained_content")
    # the wrongly trained prompt text is shown, naming each row
    assert "row 0" in text and "row 1" in text
    assert "a turn marker is trained: '<|im_start|>assistant" in text
    assert "of a system turn are trained: '<|im_start|>system\\nYou are a careful assistant." in text
    assert "of a user turn are trained: '<|im_start|>user\\n" in text
    assert any(q in text for q in ("And of Italy?", "Who wrote Hamlet?", "Pick a number."))
    assert "row 0: " in failures(report, "template_count")
    assert "masked→trained transition(s)" in failures(report, "template_count")


# ------------------------------------------------------------------ one validator at a time


def test_template_count_second_assistant_turn_masked(tokenizer):
    good = pack([tok(MULTI, tokenizer)], 512)[0]
    runs = trained_runs(good.labels)
    assert len(runs) == 2
    labels = list(good.labels)
    labels[runs[1][0]:runs[1][1]] = [IGNORE] * (runs[1][1] - runs[1][0])
    rows = [good, with_labels(good, labels)]
    report = validate_rows(rows, tokenizer)
    assert failed(report) == {"template_count", "trained_count", "span_coverage"}, report.format()
    assert failures(report, "template_count") == ("row 1: the rendering trained 2 assistant turn(s) but the labels "
                                                  "hold 1 masked→trained transition(s)")
    kept, total = runs[0][1] - runs[0][0], sum(b - a for a, b in runs)
    assert failures(report, "trained_count") == (f"row 1: {kept} trained tokens, but its examples' assistant turns "
                                                 f"hold {total} ([{total}])")


def test_span_coverage_tail_of_answer_masked(tokenizer):
    good = pack([tok([{"role": "user", "content": "Describe the evening."},
                      {"role": "assistant", "content": LONG_ANSWER}], tokenizer)], 512)[0]
    [(start, stop)] = trained_runs(good.labels)
    cut = stop - (stop - start) * 4 // 10        # mask the last ~40% (including <|im_end|>)
    labels = list(good.labels[:cut]) + [IGNORE] * (len(good) - cut)
    rows = [good, with_labels(good, labels)]
    report = validate_rows(rows, tokenizer)
    assert failed(report) == {"span_coverage", "trained_count"}, report.format()
    text = failures(report, "span_coverage")
    assert text.startswith(f"row 1 tokens {start}-{stop - 1}: only {cut - start}/{stop - start} tokens")
    left_out = tokenizer.decode(list(good.input_ids[cut:stop]))
    assert left_out.endswith("<|im_end|>")
    assert f"left out: {left_out[:80]!r}"[:-1] in text
    assert failures(report, "trained_count") == (f"row 1: {cut - start} trained tokens, but its examples' assistant "
                                                 f"turns hold {stop - start} ([{stop - start}])")


def test_span_coverage_untrained_im_end(tokenizer):
    """A model that never learns <|im_end|> never stops: an untrained closing im_end is a partly trained turn."""
    rows = bin_rows(tokenizer)[:2]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    labels = list(rows[1].labels)
    last = max(k for k, (t, lab) in enumerate(zip(rows[1].input_ids, labels)) if t == im_end and lab != IGNORE)
    labels[last] = IGNORE
    report = validate_rows([rows[0], with_labels(rows[1], labels)], tokenizer)
    assert failed(report) == {"span_coverage", "trained_count"}, report.format()
    assert "'<|im_end|>'" in failures(report, "span_coverage")


def test_trained_assistant_header_is_caught(tokenizer):
    """Training 'assistant\\n<think>\\n\\n</think>\\n\\n' (everything after <|im_start|>) is prompt text trained."""
    row = bin_rows(tokenizer)[0]
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    labels = list(row.labels)
    for k, (t, lab) in enumerate(zip(row.input_ids, labels)):
        if lab != IGNORE and k > 0 and labels[k - 1] == IGNORE:   # start of each trained span
            j = k - 1
            while row.input_ids[j] != im_start:
                labels[j] = row.input_ids[j]
                j -= 1
    report = validate_rows([with_labels(row, labels)], tokenizer)
    assert {"trained_content", "trained_count"} <= failed(report), report.format()
    assert "the assistant header is trained: 'assistant\\n<think>" in failures(report, "trained_content")


def test_position_ids_that_do_not_restart_are_caught(tokenizer):
    """Positions running on across examples would let a packed example attend to the one before it."""
    row = bin_rows(tokenizer)[0]
    assert len(row.examples) > 1
    bad = Row(list(row.input_ids), list(row.labels), list(range(len(row))), row.lengths, row.trained_tokens,
              row.trained_turns)
    report = validate_rows([row, bad], tokenizer)
    assert failed(report) == {"position_ids"}, report.format()
    assert failures(report, "position_ids").startswith(f"row 1 tokens {row.lengths[0]}-")


def test_row_balance_all_masked_row(tokenizer):
    rows = bin_rows(tokenizer)[:2]
    rows[1] = with_labels(rows[1], [IGNORE] * len(rows[1]))
    report = validate_rows(rows, tokenizer)
    assert not check(report, "row_balance").passed
    assert failures(report, "row_balance") == (f"row 1: every one of its {len(rows[1].input_ids)} tokens is "
                                               f"masked (nothing trained)")


def test_all_trained_row_is_caught_as_trained_prompt_text(tokenizer):
    rows = bin_rows(tokenizer)[:2]
    rows[1] = with_labels(rows[1], list(rows[1].input_ids))
    report = validate_rows(rows, tokenizer)
    assert "trained_content" in failed(report)
    text = failures(report, "trained_content")
    assert "of a system turn are trained: '<|im_start|>system\\nYou are a careful" in text
    assert "row 0" not in text


def test_masked_ratio_answers_dwarf_prompts_only_warns(tokenizer):
    convs = [chat(("user", "hi"), ("assistant", LONG_ANSWER))["messages"]] * 4
    rows = pack([tok(c, tokenizer, system="") for c in convs], 512)
    report = validate_rows(rows, tokenizer, Thresholds(min_masked_ratio=0.30))
    assert report.masked_ratio < 0.30
    assert report.ok and not failed(report), report.format()       # the data is genuine: never refused
    assert report.warnings == [f"masked ratio {report.masked_ratio:.3f} is outside the typical band [0.3, 0.98]: "
                               f"check the data if that is unexpected"]
    assert "[WARN] masked_ratio" in report.format()
    assert not validate_rows(rows, tokenizer, Thresholds(min_masked_ratio=0.0)).warnings


def test_classification_shaped_rows_pass_with_a_warning(qwen3_tokenizer):
    """A long prompt and a one-word answer (~97% masked) is real SFT data: it passes every hard check."""
    prompt = "Classify the sentiment of this review as positive or negative.\n\n" + "The plot was slow. " * 60
    convs = [chat(("user", prompt + str(i)), ("assistant", "negative"))["messages"] for i in range(4)]
    rows = pack([tokenize_example(c, qwen3_tokenizer) for c in convs], 2048)
    report = validate_rows(rows, qwen3_tokenizer)
    assert report.masked_ratio > 0.95
    assert report.ok, report.format()
    assert len(report.warnings) == 1 and "outside the typical band" in report.warnings[0]


def test_limit_checks_only_the_first_rows(tokenizer):
    rows = bin_rows(tokenizer)[:3]
    rows[2] = with_labels(rows[2], [IGNORE] * len(rows[2]))
    assert not validate_rows(rows, tokenizer).ok
    report = validate_rows(rows, tokenizer, limit=2)
    assert report.rows == 2 and report.ok


def test_require_ok_raises_naming_the_failed_check(tokenizer):
    rows = bin_rows(tokenizer)[:2]
    rows[0] = with_labels(rows[0], [IGNORE] * len(rows[0]))
    report = validate_rows(rows, tokenizer)
    with pytest.raises(MaskingError) as err:
        require_ok(report)
    assert err.value.report is report
    message = str(err.value)
    assert message.startswith("masking validation failed (")
    assert "row_balance" in message.split(")")[0] and "masked_ratio" not in message.split(")")[0]
    assert "[FAIL] row_balance" in message and "row 0: every one of its" in message
    good = validate_rows(bin_rows(tokenizer), tokenizer)
    assert require_ok(good) is good


# ------------------------------------------------------------------ the trainer refuses


def test_prepare_reports_the_band_as_a_warning_and_trains(tokenizer, tmp_path):
    from model.data import prepare

    data = write_jsonl(tmp_path / "chatty.jsonl", [chat(("user", "hi"), ("assistant", LONG_ANSWER + str(k)))
                                                   for k in range(6)])
    strict = from_dict({"masking": {"min_masked_ratio": 0.5}})
    prepared = prepare(strict, data, tokenizer)
    assert prepared.masking.ok and prepared.masking.warnings
    lax = from_dict({"masking": {"min_masked_ratio": 0.0}})
    assert not prepare(lax, data, tokenizer).masking.warnings


def test_train_chunk_refuses_bad_masking_and_writes_nothing(tmp_path, monkeypatch):
    """A broken labelling (here: every piece trained, prompts included) is refused before any step."""
    from model import chat as chat_module
    from model import checkpoint as ckpt
    from model.train import train_chunk

    real = chat_module.tokenize_pieces
    monkeypatch.setattr(chat_module, "tokenize_pieces", lambda pieces, tok: real([(p, True) for p, _ in pieces], tok))
    cfg = from_dict({})
    data = write_jsonl(tmp_path / "data" / "bin.jsonl", [B.to_chat(p) for p in B.generate(1, 12, 3)])
    before = data.read_bytes()
    with pytest.raises(MaskingError, match=r"masking validation failed \(.*trained_content") as err:
        train_chunk(cfg, data, steps=1)
    assert "of a system turn are trained" in str(err.value)
    assert data.read_bytes() == before
    folder = cfg.root / "checkpoints"
    assert not folder.exists() or list(folder.iterdir()) == []   # no checkpoint-*, no half-written .tmp-*
    assert ckpt.list_checkpoints(cfg.root) == []


def test_train_chunk_writes_a_checkpoint_when_masking_passes(tmp_path):
    """Positive control for the test above: the same call on good data does write checkpoints/checkpoint-*."""
    from model import checkpoint as ckpt
    from model.train import train_chunk

    cfg = from_dict({"train": {"micro_batch_size": 1, "save_optimizer": False}})
    data = write_jsonl(tmp_path / "data" / "bin.jsonl", [B.to_chat(p) for p in B.generate(2, 8, 3)])
    result = train_chunk(cfg, data, steps=1)
    [written] = list((cfg.root / "checkpoints").glob("checkpoint-*"))
    assert Path(result.checkpoint) == written and ckpt.list_checkpoints(cfg.root) == [written]
