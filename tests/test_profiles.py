"""Training profiles (model/profiles.py): system prompts with today's date, pure idempotent transforms whose
output survives the chat template and the BIN scorer, and logit processors checked on real logits and in real
generation with the tiny model."""
import copy
import dataclasses
import datetime as dt

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from dojo.config import TINY_MODEL_DIR, from_dict
from model.chat import IGNORE, IM_END, generation_prompt, tokenize_example, with_system_prompt
from model.loading import load_model, pick_runtime
from model.profiles import (ANSWER_END, ANSWER_START, PROFILES, STOP_MARKER, THINK_MARKER, EndAfterText,
                            ForcePrefix, SuppressTokens, emoji_token_ids, eos_token_id, get_profile, resolve,
                            system_prompt, think_token_ids, token_ids)
from skills import bin as bin_skill

TODAY = dt.date(2031, 2, 3)
WRAPPING = ("emoji_think", "regime3")
MARKERS = {"emoji_think": (THINK_MARKER, STOP_MARKER), "regime3": (ANSWER_START, ANSWER_END)}
PROBLEM = bin_skill.Problem("add", (5, 3), 1)            # add(①⓪①, ①①) = ①⓪⓪⓪

CONVERSATIONS = [
    bin_skill.to_chat(PROBLEM)["messages"],
    [{"role": "system", "content": "Be exact."},
     {"role": "user", "content": "Compute: add(①, ①)"}, {"role": "assistant", "content": "add(①, ①) = ①⓪"},
     {"role": "user", "content": "And again?"}, {"role": "assistant", "content": "  add(①, ①) = ①⓪\n"}],
    [{"role": "user", "content": "Why?"},
     {"role": "assistant", "content": "<think>\nfirst this\n</think>\n\nBecause."}],
    # already shaped, the old system's repeated markers, and an empty answer
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "🤔\nhello\n🛑"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "🤔🤔🤔\nhello\n🛑🛑"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<<ANS_START>> hello <<ANS_END>>"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
]


@pytest.fixture(scope="module")
def tiny_model():
    return load_model(TINY_MODEL_DIR, pick_runtime())


def bin_messages(problem):
    return bin_skill.to_chat(problem)["messages"]


# ---------------------------------------------------------------- registry and system prompts
def test_profiles_are_the_three_named_ones_and_unknown_names_are_refused():
    assert set(PROFILES) == {"none", "emoji_think", "regime3"}
    for name, profile in PROFILES.items():
        assert get_profile(name) is profile and profile.name == name and profile.description
    with pytest.raises(ValueError, match="unknown profile 'regime4'") as err:
        get_profile("regime4")
    for name in PROFILES:
        assert name in str(err.value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["none"].name = "other"


@pytest.mark.parametrize("name", list(PROFILES))
def test_system_prompt_fills_in_the_date(name):
    profile = get_profile(name)
    prompt = system_prompt(profile, TODAY)
    assert prompt == profile.system_prompt_template.replace("{date}", "2031-02-03")
    assert "{date}" not in prompt
    if "{date}" in profile.system_prompt_template:
        assert "2031-02-03" in prompt
        assert dt.date.today().isoformat() in system_prompt(profile)


def test_profile_prompts_carry_the_date_and_none_is_dojos_default():
    assert system_prompt(get_profile("none")) == from_dict({}).data.system_prompt
    for name in WRAPPING:
        assert "{date}" in get_profile(name).system_prompt_template
    # the old emoji_think template survives verbatim as the prompt's first sentence
    assert system_prompt(get_profile("emoji_think"), TODAY).startswith(
        "Current date: 2031-02-03. Respond naturally and concisely.")
    for name, (start, end) in MARKERS.items():
        assert start in get_profile(name).system_prompt_template and end in get_profile(name).system_prompt_template


def test_resolve_decides_the_training_prompt_in_one_place():
    assert resolve("none", "Mine, {date}.", TODAY) == (get_profile("none"), "Mine, 2031-02-03.")
    profile, prompt = resolve("emoji_think", "Mine, {date}.", TODAY)
    assert profile is get_profile("emoji_think") and prompt == system_prompt(profile, TODAY)
    with pytest.raises(ValueError, match="known profiles"):
        resolve("emoji", "Mine.")


# ---------------------------------------------------------------- transforms
@pytest.mark.parametrize("name", list(PROFILES))
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_transforms_are_pure_and_idempotent(name, messages):
    transform = get_profile(name).transform
    before = copy.deepcopy(messages)
    once = transform(messages)
    assert messages == before                                # the input is untouched
    assert once is not messages and all(a is not b for a, b in zip(once, messages))
    once[0]["content"] += "!"                                # the output shares no dict with the input
    assert messages == before
    once = transform(messages)
    assert transform(once) == once                           # twice = once
    assert [m["role"] for m in once] == [m["role"] for m in messages]
    for new, old in zip(once, messages):
        if new["role"] != "assistant" or name == "none":
            assert new == old


@pytest.mark.parametrize("name", WRAPPING)
def test_wrapping_transforms_frame_every_assistant_turn(name):
    start, end = MARKERS[name]
    out = get_profile(name).transform(CONVERSATIONS[1])
    assert [m["content"] for m in out if m["role"] == "assistant"] == [
        f"{start}\nadd(①, ①) = ①⓪\n{end}", f"{start}\nadd(①, ①) = ①⓪\n{end}"]
    assert get_profile(name).transform(CONVERSATIONS[2])[1]["content"] == f"{start}\nfirst this\nBecause.\n{end}"
    # the old system's runs of markers collapse to one
    assert get_profile("emoji_think").transform(CONVERSATIONS[4])[1]["content"] == "🤔\nhello\n🛑"


@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_prompt_and_transformed_answer_reach_the_rendered_training_text(name, tokenizer):
    profile = get_profile(name)
    messages = profile.transform(bin_messages(PROBLEM))
    prompt = system_prompt(profile, TODAY)
    ex = tokenize_example(with_system_prompt(messages, prompt), tokenizer)
    masked = tokenizer.decode([i for i, label in zip(ex.input_ids, ex.labels) if label == IGNORE])
    trained = tokenizer.decode([label for label in ex.labels if label != IGNORE])
    assert f"<|im_start|>system\n{prompt}<|im_end|>" in masked
    assert trained == messages[-1]["content"] + IM_END
    assert messages[-1]["content"] not in masked
    if name != "none":
        assert trained.startswith(MARKERS[name][0] + "\n") and PROBLEM.completion in trained


@pytest.mark.parametrize("name", WRAPPING)
def test_transforms_keep_think_content_renderable(name, tokenizer):
    """Qwen3-style templates rewrite <think> content (the final turn's moves into its own block, earlier turns
    lose it), so such content cannot be trained verbatim as it is; the wrapping transforms make it renderable."""
    think = [{"role": "user", "content": "Why?"},
             {"role": "assistant", "content": "<think>a</think>\n\nBecause."},
             {"role": "user", "content": "Sure?"},
             {"role": "assistant", "content": "<think>b</think>Yes."}]
    plain = tokenize_example(get_profile("none").transform(think), tokenizer)     # trained as rendered: the
    assert plain.rewritten == 2                                                     # template rewrote both turns
    ex = tokenize_example(get_profile(name).transform(think), tokenizer)
    trained = tokenizer.decode([label for label in ex.labels if label != IGNORE])
    start, end = MARKERS[name]
    assert trained == f"{start}\na\nBecause.\n{end}{IM_END}{start}\nb\nYes.\n{end}{IM_END}"


@pytest.mark.parametrize("name", list(PROFILES))
def test_transformed_bin_answers_still_score_correct(name):
    profile = get_profile(name)
    for level in bin_skill.LEVELS:
        for problem in bin_skill.generate(level, 15, seed=7):
            content = profile.transform(bin_messages(problem))[-1]["content"]
            assert profile.answer_text(content) == problem.completion
            assert bin_skill.score(profile.answer_text(content), problem).correct
            if name == "emoji_think":                        # the scorer strips emoji on its own
                assert bin_skill.score(content, problem).correct


@pytest.mark.parametrize("name", WRAPPING)
def test_answer_text_only_removes_a_leading_marker(name):
    start, end = MARKERS[name]
    profile = get_profile(name)
    assert profile.answer_text(f"{start}\n{PROBLEM.completion}\n{end}\ntrailing junk") == PROBLEM.completion
    assert profile.answer_text(f"{start}\n{PROBLEM.completion}") == PROBLEM.completion      # cut off early
    late = profile.answer_text(f"junk {start}\n{PROBLEM.completion}\n{end}")
    assert late.startswith("junk") and not bin_skill.score(late, PROBLEM).correct
    assert get_profile("none").answer_text(" as is \n") == " as is \n"


# ---------------------------------------------------------------- processors on real logits
def test_none_has_no_processors(tokenizer):
    assert get_profile("none").logit_processors(tokenizer) == []


def test_token_sets_on_the_tiny_vocabulary(tokenizer):
    vocab = tokenizer.get_vocab()
    assert think_token_ids(tokenizer) == [vocab["<think>"], vocab["</think>"]]
    assert eos_token_id(tokenizer) == vocab[IM_END]
    emoji = set(emoji_token_ids(tokenizer))
    assert token_ids(tokenizer, "🤔")[0] in emoji and token_ids(tokenizer, "🛑")[0] in emoji
    digits = token_ids(tokenizer, bin_skill.ZERO + bin_skill.ONE)
    assert not emoji & set(digits + token_ids(tokenizer, PROBLEM.completion + " Is this answer correct?"))


@pytest.mark.parametrize("name", WRAPPING)
def test_suppression_sets_exactly_the_banned_ids_to_minus_inf(name, tokenizer):
    suppress = get_profile(name).logit_processors(tokenizer)[0]
    assert isinstance(suppress, SuppressTokens)
    banned = set(think_token_ids(tokenizer)) | (set(emoji_token_ids(tokenizer)) if name == "regime3" else set())
    assert set(suppress.token_ids) == banned
    torch.manual_seed(0)
    scores = torch.randn(3, len(tokenizer))
    out = suppress(torch.zeros(3, 4, dtype=torch.long), scores)
    keep = [i for i in range(len(tokenizer)) if i not in banned]
    assert torch.isneginf(out[:, sorted(banned)]).all()
    assert torch.equal(out[:, keep], scores[:, keep])


@pytest.mark.parametrize("name", WRAPPING)
def test_forced_prefix_is_argmax_for_exactly_its_length_then_restarts(name, tokenizer):
    force = get_profile(name).logit_processors(tokenizer)[1]
    assert isinstance(force, ForcePrefix)
    prefix = token_ids(tokenizer, MARKERS[name][0] + "\n")
    assert force.token_ids == prefix
    torch.manual_seed(0)
    for prompt_len in (7, 3):                                # a second generation (shorter prompt) restarts
        ids = torch.randint(0, 600, (2, prompt_len))
        for step, want in enumerate(prefix):
            scores = torch.randn(2, len(tokenizer))
            out = force(ids, scores)
            assert out.argmax(-1).tolist() == [want, want], step
            assert torch.isneginf(out).sum().item() == 2 * (len(tokenizer) - 1)
            ids = torch.cat([ids, torch.tensor([[want], [want]])], dim=1)
        scores = torch.randn(2, len(tokenizer))
        assert torch.equal(force(ids, scores), scores)       # after the prefix: untouched


@pytest.mark.parametrize("name", WRAPPING)
def test_forced_prefix_and_end_marker_match_the_trained_tokens(name, tokenizer):
    """What generation forces is what training taught, token for token."""
    processors = get_profile(name).logit_processors(tokenizer)
    ex = tokenize_example(get_profile(name).transform(bin_messages(PROBLEM)), tokenizer)
    trained = [label for label in ex.labels if label != IGNORE]
    assert trained[:len(processors[1].token_ids)] == processors[1].token_ids
    end = token_ids(tokenizer, MARKERS[name][1]) + [processors[2].eos_id]
    assert trained[-len(end):] == end


@pytest.mark.parametrize("name", WRAPPING)
def test_end_marker_forces_eos_however_it_was_spelled(name, tokenizer):
    end = get_profile(name).logit_processors(tokenizer)[2]
    assert isinstance(end, EndAfterText)
    eos = eos_token_id(tokenizer)
    marker = MARKERS[name][1]
    torch.manual_seed(0)
    finished = [f"add(①, ①) = ①⓪\n{marker}", f"x\n{marker}\n", f"x {marker}  "]
    unfinished = [f"x\n{marker[:-1]}", f"x\n{marker} and more", "x"]
    for text, done in [(t, True) for t in finished] + [(t, False) for t in unfinished]:
        ids = torch.tensor([token_ids(tokenizer, "<|im_start|>assistant\n" + text)])
        scores = torch.randn(1, len(tokenizer))
        out = end(ids, scores)
        if done:
            assert out.argmax(-1).item() == eos and torch.isneginf(out).sum().item() == len(tokenizer) - 1, text
        else:
            assert torch.equal(out, scores), text
    # ">>\n" is one merged token in the tiny vocabulary: the marker still counts
    if name == "regime3":
        assert token_ids(tokenizer, f"{marker}\n")[-1] not in token_ids(tokenizer, marker)


# ---------------------------------------------------------------- processors in real generation
class Boost(LogitsProcessor):
    """Test helper: make ``ids`` the most likely tokens, so a suppression has something to suppress."""

    def __init__(self, ids):
        self.ids = list(ids)

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.ids] += 1e4
        return scores


def generate(model, tokenizer, prompts, processors, max_new_tokens):
    """Greedy new ids per prompt, batched with left padding, as model/evaluate.py generates."""
    tokenizer.padding_side = "left"
    stop = [eos_token_id(tokenizer), tokenizer.pad_token_id]
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                             pad_token_id=tokenizer.pad_token_id, logits_processor=LogitsProcessorList(processors))
    return out[:, enc["input_ids"].shape[1]:].tolist()       # (B, new tokens)


def bin_prompts(profile, tokenizer, problems):
    return [generation_prompt(with_system_prompt(bin_messages(p)[:1], system_prompt(profile, TODAY)), tokenizer)
            for p in problems]


@pytest.mark.parametrize("name", WRAPPING)
def test_generation_starts_with_the_forced_prefix_in_every_batch(name, tokenizer, tiny_model):
    profile = get_profile(name)
    prefix = token_ids(tokenizer, MARKERS[name][0] + "\n")
    problems = bin_skill.generate(3, 3, seed=1)
    batches = [bin_prompts(profile, tokenizer, problems[:2]), bin_prompts(profile, tokenizer, problems[2:])]
    free = generate(tiny_model, tokenizer, batches[0], [], len(prefix) + 4)
    assert all(row[:len(prefix)] != prefix for row in free)  # the random model would not write it itself
    processors = profile.logit_processors(tokenizer)         # one list reused for both batches
    for prompts in batches:
        for row in generate(tiny_model, tokenizer, prompts, processors, len(prefix) + 4):
            assert row[:len(prefix)] == prefix


@pytest.mark.parametrize("name", WRAPPING)
def test_generation_never_produces_suppressed_tokens(name, tokenizer, tiny_model):
    profile = get_profile(name)
    banned = think_token_ids(tokenizer) + (emoji_token_ids(tokenizer) if name == "regime3" else [])
    lure = [Boost(banned)]
    prompts = bin_prompts(profile, tokenizer, bin_skill.generate(1, 2, seed=3))
    tempted = generate(tiny_model, tokenizer, prompts, lure, 20)
    assert all(set(row) & set(banned) for row in tempted)     # the lure works without the profile
    for row in generate(tiny_model, tokenizer, prompts, lure + profile.logit_processors(tokenizer), 20):
        assert not set(row) & set(banned)


@pytest.mark.parametrize("name", WRAPPING)
def test_generation_ends_right_after_the_stop_marker(name, tokenizer, tiny_model):
    profile = get_profile(name)
    eos = eos_token_id(tokenizer)
    answer = profile.transform(bin_messages(PROBLEM))[-1]["content"]     # ends with the stop marker
    prompts = [p + answer for p in bin_prompts(profile, tokenizer, [PROBLEM])]
    assert generate(tiny_model, tokenizer, prompts, [], 3)[0][0] != eos
    assert generate(tiny_model, tokenizer, prompts, profile.logit_processors(tokenizer), 3)[0][0] == eos
