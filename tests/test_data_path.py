"""The data path, once and right, with the real Qwen3 tokenizer and chat template (``../shared/qwen3-tokenizer``
on a tiny random Qwen3, ``model.init: random``):

* gate and training agree: every line the gate accepts, training accepts — over the bad-input corpus, generated
  BIN and SYLLO curricula, the old system's syllo_v1 records and real-shaped chat files;
* real-shaped data trains: classification-shaped (97% prompt), multi-turn with reasoning in history turns,
  plain multi-turn, own system prompts, a profile — every assistant turn's answer trained exactly once, nothing
  of a user or system message trained, the last turn's reasoning trained;
* each file is tokenized once: the gate writes the tokenized cache, the claim reuses the admission verdict,
  and neither the first nor a later chunk tokenizes again.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dojo import config as C
from dojo.generate import generate_file
from model import chat as chat_module
from model import data
from model.chat import IGNORE
from tests.helpers import chat, write_jsonl
from validation.validate import write_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BAD = Path(__file__).resolve().parent / "data" / "bad"
COMPAT = Path(__file__).resolve().parents[1].parent / "shared" / "compat" / "syllo_v1"

REVIEW = ("The hotel room was small but clean, the staff friendly, breakfast average and the street noisy at "
          "night. ") * 8
CLASSIFY = [chat(("user", f"Review #{i}: {REVIEW}\nIs this review positive, negative or mixed?"),
                 ("assistant", "mixed")) for i in range(12)]
REASONING = [chat(("user", f"Is {n} prime?"),
                  ("assistant", f"<think>\nCheck divisors of {n} up to its square root.\n</think>\n\n"
                                f"{'Yes' if n in (7, 11, 13) else 'No'}."),
                  ("user", f"And {n + 2}?"),
                  ("assistant", f"<think>\nNow {n + 2}: try 2, 3 and 5.\n</think>\n\n"
                                f"{'Yes' if n + 2 in (7, 11, 13) else 'No'}."), system="Think, then answer.")
             for n in range(5, 17)]
PLAIN_MULTI = [chat(("user", f"Name a colour number {i}."), ("assistant", f"Colour {i}: blue."),
                    ("user", "Another?"), ("assistant", f"Colour {i + 1}: red.")) for i in range(12)]


def qwen3_cfg(model_dir: Path, **sections) -> C.Config:
    base = {"model": {"name_or_path": str(model_dir), "init": "random"}, "data": {"max_length": 1024},
            "train": {"micro_batch_size": 2, "log_every": 1}}
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return C.from_dict(base)


def with_spec(path: Path, spec: str = "chat_sft_v1", **extra) -> Path:
    path.with_name(path.stem + ".meta.json").write_text(json.dumps({"spec": spec, **extra}), encoding="utf-8")
    return path


def trained_text(example, tokenizer) -> list[str]:
    """The text of each trained run of an example."""
    runs, current = [], []
    for tok, lab in zip(example.input_ids, example.labels):
        if lab != IGNORE:
            current.append(tok)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


# ---------------------------------------------------------------- gate and training agree
def corpus_files(tmp_path: Path) -> list[Path]:
    files = sorted(BAD.glob("*.jsonl"))
    files.append(generate_file("bin", 1, 60, 5, tmp_path / "bin1.jsonl"))
    files.append(generate_file("bin", 4, 40, 6, tmp_path / "bin4.jsonl"))
    files.append(generate_file("syllo", 1, 20, 7, tmp_path / "syllo1.jsonl"))
    for name, records in (("classify", CLASSIFY), ("reasoning", REASONING), ("plain_multi", PLAIN_MULTI)):
        files.append(with_spec(write_jsonl(tmp_path / f"{name}.jsonl", records)))
    if COMPAT.is_dir():
        for level in sorted(COMPAT.glob("level_*.jsonl"))[:3]:
            copy = tmp_path / f"compat_{level.name}"
            copy.write_bytes(level.read_bytes())
            files.append(with_spec(copy, "syllo_v1"))
    return files


def test_every_line_the_gate_accepts_training_accepts(tmp_path, qwen3_small_dir, qwen3_tokenizer):
    """The gate (DEEP, the strictest depth) and training read with the same reader and rules: the accepted lines
    of every file — the bad corpus, BIN/SYLLO curricula, syllo_v1 records, real-shaped chat — train as they are,
    making exactly the examples the gate counted."""
    cfg = qwen3_cfg(qwen3_small_dir)
    checked = accepted_lines = 0
    for path in corpus_files(tmp_path):
        if path.stat().st_size > 5 << 20:
            continue
        report, _ = data.check_file(path, cfg, "deep", tokenizer=qwen3_tokenizer)
        if not report.accepted_lines or report.file_issues:
            continue
        split = tmp_path / "split" / path.name
        split.parent.mkdir(exist_ok=True)
        write_split(report, path, split, tmp_path / "split" / f"{path.stem}.rejected.jsonl")
        meta = path.with_name(path.stem + ".meta.json")
        if meta.exists():
            split.with_name(split.stem + ".meta.json").write_bytes(meta.read_bytes())
        elif report.spec:
            with_spec(split, report.spec)
        tokenized = data.load_tokenized(cfg, split, qwen3_tokenizer)        # raises DataError on any refusal
        assert len(tokenized) == report.examples, path.name
        checked += 1
        accepted_lines += len(report.accepted_lines)
    assert checked >= 40 and accepted_lines > 1000


def test_training_refuses_what_the_gate_rejects_with_the_same_rule(tmp_path, qwen3_small_dir, qwen3_tokenizer):
    cfg = qwen3_cfg(qwen3_small_dir)
    path = with_spec(write_jsonl(tmp_path / "f.jsonl", [CLASSIFY[0], chat(("user", "hi")),
                                                        {"messages": CLASSIFY[1]["messages"], "extra": 1}]))
    report, _ = data.check_file(path, cfg, "standard", tokenizer=qwen3_tokenizer)
    gate_rules = [(n, issues[0].rule) for n, issues in sorted(report.rejected.items())]
    assert gate_rules == [(2, "no_assistant@1"), (3, "unknown_key@1")]
    with pytest.raises(data.DataError) as info:
        data.load_tokenized(cfg, path, qwen3_tokenizer)
    assert [(i.line, i.rule) for i in info.value.issues] == gate_rules


# ---------------------------------------------------------------- real-shaped data, real template
def test_classification_shaped_file_is_accepted_and_trains(tmp_path, qwen3_small_dir, qwen3_tokenizer):
    from model.checkpoint import read_ledger
    from model.train import train_chunk

    cfg = qwen3_cfg(qwen3_small_dir)
    path = with_spec(write_jsonl(tmp_path / "classify.jsonl", CLASSIFY))
    report, _ = data.check_file(path, cfg, "deep", tokenizer=qwen3_tokenizer)
    assert report.accepted and not report.rejected, report.format()
    prepared = data.prepare(cfg, path, qwen3_tokenizer)
    assert prepared.masking.ok and prepared.masking.masked_ratio > 0.95
    assert prepared.masking.warnings and "typical band" in prepared.masking.warnings[0]
    result = train_chunk(cfg, path, steps=2)
    ledger = read_ledger(result.checkpoint)
    assert ledger["masking"]["masked_ratio"] > 0.95 and ledger["masking"]["warnings"]
    assert ledger["init"] == "random" and result.tokens_trained > 0


@pytest.mark.parametrize("policy", ["auto", "expand"])
def test_multi_turn_reasoning_trains_every_answer_once_and_the_last_reasoning(qwen3_tokenizer, policy):
    """Qwen3 drops history turns' reasoning: dojo expands the conversation (one example per assistant turn), so
    each turn is trained once, as the final turn, with its reasoning; system and user text is never trained."""
    messages = REASONING[0]["messages"]
    examples = chat_module.tokenize_conversation(messages, qwen3_tokenizer, "r.jsonl:1", policy)
    assert len(examples) == 2
    runs = [trained_text(e, qwen3_tokenizer) for e in examples]
    assert runs == [[messages[2]["content"] + "<|im_end|>"], [messages[4]["content"] + "<|im_end|>"]]
    assert sum(e.rewritten for e in examples) == 1                     # the history turn lost its reasoning
    for e in examples:
        masked = qwen3_tokenizer.decode([t for t, lab in zip(e.input_ids, e.labels) if lab == IGNORE])
        assert "Think, then answer." in masked and "Is 5 prime?" in masked
    # the second example shows the first turn as the template renders history: answer only, masked
    assert "<|im_start|>assistant\nNo.<|im_end|>" in qwen3_tokenizer.decode(examples[1].input_ids)


def test_rendered_policy_trains_history_turns_as_rendered(qwen3_tokenizer):
    messages = REASONING[0]["messages"]
    [example] = chat_module.tokenize_conversation(messages, qwen3_tokenizer, "r.jsonl:1", "rendered")
    assert trained_text(example, qwen3_tokenizer) == ["No.<|im_end|>", messages[4]["content"] + "<|im_end|>"]
    assert example.trained_turns == 2 and example.rewritten == 1


def test_plain_multi_turn_stays_one_example_with_every_turn_trained(qwen3_tokenizer):
    messages = PLAIN_MULTI[0]["messages"]
    [example] = chat_module.tokenize_conversation(messages, qwen3_tokenizer, "p.jsonl:1", "auto")
    assert trained_text(example, qwen3_tokenizer) == ["Colour 0: blue.<|im_end|>", "Colour 1: red.<|im_end|>"]
    assert example.rewritten == 0
    # the final turn's empty think block is prompt (the generation prompt ends with it), never trained
    assert "<think>\n\n</think>\n\n" in qwen3_tokenizer.decode(example.input_ids)


def test_own_system_prompt_is_kept_and_the_configured_one_added_otherwise(tmp_path, qwen3_small_dir,
                                                                          qwen3_tokenizer):
    cfg = qwen3_cfg(qwen3_small_dir, data={"system_prompt": "Today is {date}. Be exact."})
    tokenize = data.Rendering.of(cfg).tokenizer_for(qwen3_tokenizer)
    (own,), _ = tokenize.single(REASONING[0]["messages"][:3], "s:1")
    text = qwen3_tokenizer.decode(own.input_ids)
    assert text.startswith("<|im_start|>system\nThink, then answer.<|im_end|>") and "Be exact." not in text
    (added,), _ = tokenize.single(CLASSIFY[0]["messages"], "s:2")
    assert qwen3_tokenizer.decode(added.input_ids).startswith("<|im_start|>system\nToday is ")
    assert all("Be exact" not in t for t in trained_text(added, qwen3_tokenizer))


def test_profile_reaches_the_real_template(qwen3_small_dir, qwen3_tokenizer):
    cfg = qwen3_cfg(qwen3_small_dir, data={"profile": "emoji_think"})
    tokenize = data.Rendering.of(cfg).tokenizer_for(qwen3_tokenizer)
    (example,), _ = tokenize.single(chat(("user", "Compute: add(①, ①)"), ("assistant", "add(①, ①) = ①⓪"))["messages"], "p:1")
    [trained] = trained_text(example, qwen3_tokenizer)
    assert trained.startswith("🤔") and "add(①, ①) = ①⓪" in trained and trained.endswith("<|im_end|>")


def test_standard_depth_lengths_use_the_real_tokenizer(tmp_path, qwen3_small_dir, qwen3_tokenizer):
    cfg = qwen3_cfg(qwen3_small_dir, data={"max_length": 64})
    path = with_spec(write_jsonl(tmp_path / "c.jsonl", CLASSIFY[:2] + [chat(("user", "Hi"), ("assistant", "Hello."))]))
    report, _ = data.check_file(path, cfg, "standard", tokenizer=qwen3_tokenizer)
    assert sorted(report.rejected) == [1, 2] and report.accepted_lines == [3]
    issue = report.rejected[1][0]
    assert issue.rule == "too_long@1" and int(issue.value) > 200 and "max_length=64" in issue.message


# ---------------------------------------------------------------- tokenized once
def test_gate_writes_the_cache_and_claim_and_chunks_never_tokenize_again(tmp_path, qwen3_small_dir,
                                                                        qwen3_tokenizer, monkeypatch):
    from dojo import gate, steps
    from model.train import train_chunk

    cfg = qwen3_cfg(qwen3_small_dir)
    path = with_spec(write_jsonl(tmp_path / "reasoning.jsonl", REASONING))
    admission = gate.admit(cfg, path, tokenizer=qwen3_tokenizer)
    assert admission.accepted
    entries = list((cfg.root / "cache" / "tokenized").iterdir())
    assert len(entries) == 1 and (entries[0] / "meta.json").exists()
    assert list(entries[0].glob("prepared-*.npz")) and list(entries[0].glob("prepared-*.json"))   # plan + verdict
    assert json.loads((entries[0] / "meta.json").read_text())["examples"] == 24      # 12 lines, expanded

    calls = []
    real = chat_module.tokenize_conversation

    def counting(*args, **kwargs):
        calls.append(args[2] if len(args) > 2 else kwargs.get("source"))
        return real(*args, **kwargs)
    monkeypatch.setattr(chat_module, "tokenize_conversation", counting)
    monkeypatch.setattr(data, "tokenize_conversation", counting)

    claimed = steps.claim(cfg)
    outcome = steps.check_claimed(cfg, claimed, tokenizer=qwen3_tokenizer)
    assert outcome.accepted and "admission verdict reused" in outcome.report
    assert outcome.train_sha256 == claimed.sha256
    first = train_chunk(cfg, outcome.train_file, steps=1, sha256=outcome.train_sha256)
    second = train_chunk(cfg, outcome.train_file, steps=1)
    assert calls == []                                  # neither the claim nor either chunk tokenized a line
    assert second.step == first.step + 1

    # a changed config (another max_length) changes the verdict key and the cache key: checked again, once
    cfg2 = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_length=2048))
    assert data.verdict_key(cfg2) != data.verdict_key(cfg)
    data.load_tokenized(cfg2, outcome.train_file, qwen3_tokenizer)
    assert len(calls) == 12


def test_a_hand_dropped_file_is_checked_at_claim_and_its_cache_built(tmp_path, qwen3_small_dir, qwen3_tokenizer):
    from dojo import steps

    cfg = qwen3_cfg(qwen3_small_dir)
    folder = cfg.root / "queue" / "normal"
    folder.mkdir(parents=True)
    with_spec(write_jsonl(folder / "dropped.jsonl", PLAIN_MULTI))
    claimed = steps.claim(cfg)
    outcome = steps.check_claimed(cfg, claimed, tokenizer=qwen3_tokenizer)
    assert outcome.accepted and "reused" not in outcome.report
    key = data.cache_key(cfg, qwen3_tokenizer, claimed.sha256)
    assert (cfg.root / "cache" / "tokenized" / key / "meta.json").exists()


def test_batched_piece_encoding_equals_one_call_per_piece(qwen3_tokenizer, tokenizer):
    for tok in (qwen3_tokenizer, tokenizer):
        for record in CLASSIFY[:2] + REASONING[:2] + PLAIN_MULTI[:2]:
            for pieces, *_ in chat_module.render_plan(record["messages"], tok, "auto"):
                ids, _ = chat_module.tokenize_pieces(pieces, tok)
                one_by_one = [i for p, _ in pieces for i in tok(p, add_special_tokens=False)["input_ids"]]
                assert ids == one_by_one


@pytest.mark.parametrize("skill_name", ["bin", "syllo"])
def test_eval_prompt_is_exactly_the_masked_prefix_training_saw(qwen3_tokenizer, skill_name):
    """With the real template, what evaluation prompts the model with (model/evaluate.py: the generation prompt,
    thinking off) is token for token the masked prefix that training put before the trained answer."""
    from model.chat import generation_prompt, with_system_prompt
    from skills import get

    skill = get(skill_name)
    for problem in skill.generate(1, 3, 11):
        messages = with_system_prompt(skill.to_chat(problem)["messages"], "Be exact.")
        example = chat_module.tokenize_example(messages, qwen3_tokenizer)
        first_trained = next(k for k, lab in enumerate(example.labels) if lab != IGNORE)
        prompt = generation_prompt(messages[:-1], qwen3_tokenizer)
        assert list(example.input_ids[:first_trained]) == qwen3_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_tokenizing_in_worker_processes_gives_the_same_examples(tmp_path, qwen3_small_dir, qwen3_tokenizer,
                                                                 monkeypatch):
    """data.num_proc > 1 spreads large batches over spawned processes; the result is identical, in order."""
    monkeypatch.setattr(data, "POOL_AFTER_LINES", 0)
    path = with_spec(write_jsonl(tmp_path / "many.jsonl", (REASONING + PLAIN_MULTI + CLASSIFY) * 20))  # 720 lines
    one = data.tokenize_file(qwen3_cfg(qwen3_small_dir, data={"num_proc": 1}), path, qwen3_tokenizer)[1]
    two = data.tokenize_file(qwen3_cfg(qwen3_small_dir, data={"num_proc": 2}), path, qwen3_tokenizer)[1]
    assert len(one) == 960 and one == two
