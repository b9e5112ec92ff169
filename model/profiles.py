"""Training profiles: what a model is taught to look like, in one place.

A profile supplies three things that must agree with each other:

* a **system prompt template** (``{date}`` becomes today's ISO date; the resolved prompt is what training logs
  and records in the checkpoint, and what evaluation reads back from it);
* an **example transform** (messages -> new messages, pure and idempotent) applied before rendering, so the
  trained assistant text has the profile's shape;
* **generation-time logit processors** (``transformers.LogitsProcessor`` instances) that hold generation to
  that same shape;

plus ``answer_text``, which takes a generated output back to what a skill's scorer should see.

    from model.profiles import resolve
    profile, prompt = resolve(cfg.data.profile, cfg.data.system_prompt)                   # log it, record it
    messages = with_system_prompt(profile.transform(messages), prompt)                     # training
    model.generate(..., logits_processor=LogitsProcessorList(profile.logit_processors(tokenizer)))
    skill.score(profile.answer_text(output), problem)                                      # evaluation

Tests: ``.venv/bin/python -m pytest -q tests/test_profiles.py`` (CPU, the tiny model; no downloads).

The profiles (``PROFILES``):

``none``
    dojo's plain default system prompt (``DataConfig.system_prompt``), identity transform, no processors.

``emoji_think``
    The old system's emoji contract, made deterministic. Every assistant turn becomes
    ``"🤔\\n" + answer + "\\n🛑"``: a thinking marker on its own line, the answer, a stop marker on its own
    line. At generation the first tokens are forced to be ``"🤔\\n"``, ``<think>``/``</think>`` can never be
    generated, and once the text ends with ``🛑`` the only allowed token is ``<|im_end|>``. The BIN scorer
    strips emoji, so ``"🤔\\nadd(①, ①) = ①⓪\\n🛑"`` scores as it is.

``regime3``
    "Symbolic reasoning mode": every assistant turn becomes ``"<<ANS_START>>\\n" + answer + "\\n<<ANS_END>>"``,
    the answer written in the task's own canonical symbolic form (BIN's ``add(①⓪①, ①①) = ①⓪⓪⓪`` already is
    one, so the transform only adds the markers). At generation the first tokens are forced to be
    ``"<<ANS_START>>\\n"``, think tags and emoji are suppressed, and ``<|im_end|>`` is forced after
    ``<<ANS_END>>``. ``answer_text`` removes the markers before scoring (the BIN scorer does not know them).

Where these come from, and what is dojo's own choice: the surviving design notes say only that
``emoji_think`` and ``regime3`` existed, that the profile owned the old ``enforce_thinking_requirement()`` /
``enforce_stop_requirement()`` transforms and built the logit processors, that ``regime3`` was a "symbolic
reasoning mode", and that ``emoji_think``'s system prompt was ``"Current date: {date}. Respond naturally and
concisely."``. A public repository with the same file names (``trainer/profiles/emoji_think.py``,
``regime3.py``) suggests more: ``emoji_think`` prefixed a *random* thinking emoji repeated 2-8 times and
suffixed a random stop emoji repeated 2-4 times, with matching instructions appended to each user turn, and
penalised ``<think>`` and tokens after the stop run; ``regime3`` wrapped answers in ``<<ANS_START>> …
<<ANS_END>>`` and asked for an ``(op arg1 arg2)`` form. The old system's exact regime3 (and emoji_think) is
not recoverable from the notes and is not reproduced: what follows is dojo's definition, chosen so that:

* transforms are pure and idempotent (fixed markers, no randomness), so the same file always trains the same
  tokens and re-transforming already-shaped data changes nothing;
* the contract lives in the system prompt, not in user turns: evaluation prompts are the skill's bare user
  prompt plus the recorded system prompt, so training and evaluation see the same prompt side;
* markers sit on their own lines, so with Qwen's pre-tokenizer (and the tiny tokenizer's copy of it) the
  forced prefix tokenizes the same at generation time as inside the trained text (a test checks this);
* no transform output contains ``<think>``: Qwen3-style templates move or strip think blocks, which would break
  "the assistant content appears verbatim before ``<|im_end|>``" (``model/chat.py``). Think tags in assistant
  turns are dropped; the reasoning text between them is kept as ordinary lines inside the markers;
* regime3 keeps each skill's own symbolic form instead of rewriting to S-expressions, because skill scorers
  compare the echoed expression exactly.

No prefect here; torch and transformers only for the processors.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import LogitsProcessor

from dojo.config import DataConfig
from model.chat import IM_END, system_prompt_text

THINK_MARKER = "🤔"          # starts every emoji_think answer, on its own line
STOP_MARKER = "🛑"           # ends every emoji_think answer, on its own line
ANSWER_START = "<<ANS_START>>"  # regime3: opens the answer, on its own line
ANSWER_END = "<<ANS_END>>"      # regime3: closes the answer, on its own line
THINK_TAGS = ("<think>", "</think>")

_THINK_TAG_RE = re.compile(r"\s*</?think>\s*")
# Pictographic emoji that a whole token can hold. Byte-level pieces of U+1F000.. are caught by their leading
# bytes instead (emoji_token_ids); BMP symbols (U+2600-U+27BF) only when one token holds the whole character,
# because their leading byte 0xE2 is shared with ⓪ and ①.
_EMOJI_RE = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF]")


@dataclass(frozen=True)
class Profile:
    name: str
    system_prompt_template: str                           # may contain {date}
    transform: Callable[[list[dict]], list[dict]]          # messages -> new messages; pure and idempotent
    logit_processors: Callable[[object], list]             # tokenizer -> fresh list of LogitsProcessor
    description: str
    answer_text: Callable[[str], str]                      # generated output -> what a skill scorer should see


# ---------------------------------------------------------------- logit processors
class SuppressTokens(LogitsProcessor):
    """These ids are never generated: their logits are -inf at every step."""

    def __init__(self, token_ids):
        self.token_ids = sorted(set(token_ids))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ids = [i for i in self.token_ids if i < scores.shape[-1]]
        if not ids:
            return scores
        scores = scores.clone()                                     # (B, V)
        scores[:, ids] = float("-inf")
        return scores


class ForcePrefix(LogitsProcessor):
    """The first ``len(token_ids)`` generated tokens are exactly ``token_ids`` (every other logit is -inf).

    A processor only sees the sequence so far, so it remembers the ids a generation started from: a call whose
    ids do not extend them starts a new generation. One instance can therefore serve many ``generate`` calls
    (greedy_generate's batches); a call that continues a previous output past the prefix is not forced again.
    """

    def __init__(self, token_ids):
        self.token_ids = list(token_ids)
        self._start: torch.Tensor | None = None                    # (B, T0) ids of the current generation's prompt

    def _is_new_generation(self, input_ids: torch.Tensor) -> bool:
        start = self._start
        return (start is None or input_ids.shape[0] != start.shape[0] or input_ids.shape[1] <= start.shape[1]
                or not torch.equal(input_ids[:, :start.shape[1]], start.to(input_ids.device)))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._is_new_generation(input_ids):
            self._start = input_ids.detach().clone()
        step = input_ids.shape[1] - self._start.shape[1]
        if step >= len(self.token_ids):
            return scores
        forced = torch.full_like(scores, float("-inf"))             # (B, V)
        forced[:, self.token_ids[step]] = 0.0
        return forced


class EndAfterText(LogitsProcessor):
    """Once a row's text ends with ``marker`` (trailing whitespace aside), its only allowed token is ``eos_id``.

    It looks at decoded text, not ids, so the marker counts however the model spelled it in tokens (e.g. ``>>``
    followed by a merged ``>\\n`` token).
    """

    def __init__(self, tokenizer, marker: str, eos_id: int):
        self.tokenizer, self.marker, self.eos_id = tokenizer, marker, eos_id
        # every token is at least one byte; +2 tokens for trailing whitespace
        self.window = len(marker.encode("utf-8")) + 2

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tails = self.tokenizer.batch_decode(input_ids[:, -self.window:], skip_special_tokens=False)
        done = [row for row, text in enumerate(tails) if text.rstrip().endswith(self.marker)]
        if not done:
            return scores
        scores = scores.clone()                                     # (B, V)
        scores[done] = float("-inf")
        scores[done, self.eos_id] = 0.0
        return scores


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character -> the byte it stands for (GPT-2's bytes_to_unicode)."""
    stand_ins = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    byte_values, extra = list(stand_ins), 0
    chars = list(stand_ins)
    for b in range(256):
        if b not in stand_ins:
            byte_values.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(byte_values, chars)}


def token_ids(tokenizer, text: str) -> list[int]:
    """``text``'s ids as the tokenizer writes them (no special tokens added)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def think_token_ids(tokenizer) -> list[int]:
    """Ids of ``<think>`` and ``</think>`` where the vocabulary holds them as single tokens (Qwen3 does)."""
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in THINK_TAGS if t in vocab]


def emoji_token_ids(tokenizer) -> list[int]:
    """Ids of tokens that hold a pictographic emoji, or that can start one (bytes F0 9F, or a trailing F0).

    Blocking a trailing lone F0 byte also blocks every other character above U+FFFF (rare CJK, math letters);
    regime3's symbolic answers do not need them. For byte-level BPE tokenizers (Qwen, the tiny one) this finds
    every route to an emoji in U+1F000..; for others only tokens that decode to a whole emoji.
    """
    byte_of = _byte_decoder()
    found = []
    for token, i in tokenizer.get_vocab().items():
        if all(c in byte_of for c in token):
            raw = bytes(byte_of[c] for c in token)
        else:
            raw = tokenizer.convert_tokens_to_string([token]).encode("utf-8")
        if _EMOJI_RE.search(raw.decode("utf-8", "ignore")) or b"\xf0\x9f" in raw or raw.endswith(b"\xf0"):
            found.append(i)
    return sorted(found)


def eos_token_id(tokenizer) -> int:
    """The id that ends an assistant turn: ``<|im_end|>`` for Qwen-style templates, else the tokenizer's eos."""
    vocab = tokenizer.get_vocab()
    return vocab[IM_END] if IM_END in vocab else tokenizer.eos_token_id


# ---------------------------------------------------------------- transforms
def _wrap_assistant_turns(messages, start: str, end: str) -> list[dict]:
    """New messages whose assistant contents are ``start + "\\n" + body + "\\n" + end``.

    The body is the old content without think tags (their text kept) and without leading runs of ``start`` or
    trailing runs of ``end``, so already-wrapped content (also the old system's repeated markers) is not wrapped
    twice. Other turns are copied unchanged.
    """
    leading = re.compile(rf"\A(?:{re.escape(start)}\s*)+")
    trailing = re.compile(rf"(?:\s*{re.escape(end)})+\Z")
    out = []
    for message in messages:
        message = dict(message)
        if message["role"] == "assistant":
            body = _THINK_TAG_RE.sub("\n", message["content"]).strip()
            body = trailing.sub("", leading.sub("", body)).strip()
            message["content"] = f"{start}\n{body}\n{end}"
        out.append(message)
    return out


def _unwrap(output: str, start: str, end: str) -> str:
    """The text between a leading ``start`` marker run and the first ``end`` marker (both optional), stripped.

    Only a *leading* start marker is removed: text before it stays, so the scorer still sees it and fails it.
    """
    text = re.sub(rf"\A\s*(?:{re.escape(start)}\s*)+", "", output)
    cut = text.find(end)
    return (text if cut < 0 else text[:cut]).strip()


def keep_messages(messages) -> list[dict]:
    """The identity transform (as a new list of new dicts)."""
    return [dict(m) for m in messages]


def keep_output(output: str) -> str:
    return output


def emoji_think_transform(messages) -> list[dict]:
    """Thinking requirement + stop requirement: every assistant turn is ``"🤔\\n" + answer + "\\n🛑"``."""
    return _wrap_assistant_turns(messages, THINK_MARKER, STOP_MARKER)


def regime3_transform(messages) -> list[dict]:
    """Every assistant turn is ``"<<ANS_START>>\\n" + answer + "\\n<<ANS_END>>"``; the answer is not rewritten."""
    return _wrap_assistant_turns(messages, ANSWER_START, ANSWER_END)


def emoji_think_answer(output: str) -> str:
    return _unwrap(output, THINK_MARKER, STOP_MARKER)


def regime3_answer(output: str) -> str:
    return _unwrap(output, ANSWER_START, ANSWER_END)


# ---------------------------------------------------------------- processor builders
def no_processors(tokenizer) -> list:
    return []


def emoji_think_processors(tokenizer) -> list:
    """No think tags; the answer starts with ``🤔\\n``; ``<|im_end|>`` right after ``🛑``. Fresh instances."""
    return [SuppressTokens(think_token_ids(tokenizer)),
            ForcePrefix(token_ids(tokenizer, THINK_MARKER + "\n")),
            EndAfterText(tokenizer, STOP_MARKER, eos_token_id(tokenizer))]


def regime3_processors(tokenizer) -> list:
    """No think tags, no emoji; the answer starts with ``<<ANS_START>>\\n``; ``<|im_end|>`` after ``<<ANS_END>>``."""
    return [SuppressTokens(think_token_ids(tokenizer) + emoji_token_ids(tokenizer)),
            ForcePrefix(token_ids(tokenizer, ANSWER_START + "\n")),
            EndAfterText(tokenizer, ANSWER_END, eos_token_id(tokenizer))]


# ---------------------------------------------------------------- the profiles
PROFILES: dict[str, Profile] = {
    "none": Profile(
        name="none",
        system_prompt_template=DataConfig().system_prompt,
        transform=keep_messages,
        logit_processors=no_processors,
        description="dojo's plain default: the default system prompt, examples as they are, free generation",
        answer_text=keep_output,
    ),
    "emoji_think": Profile(
        name="emoji_think",
        # the first sentence is the old profile's template, verbatim; the second states the contract that the
        # old system appended to every user turn
        system_prompt_template=("Current date: {date}. Respond naturally and concisely. "
                                f"Begin every answer with {THINK_MARKER} on its own line and end it with "
                                f"{STOP_MARKER} on its own line."),
        transform=emoji_think_transform,
        logit_processors=emoji_think_processors,
        description=f"answers framed by a {THINK_MARKER} line and a {STOP_MARKER} line; no <think> blocks",
        answer_text=emoji_think_answer,
    ),
    "regime3": Profile(
        name="regime3",
        system_prompt_template=("Current date: {date}. You are a symbolic reasoning assistant. Write the answer "
                                f"in the task's canonical symbolic form between {ANSWER_START} and {ANSWER_END}, "
                                "each marker on its own line. Be precise and concise."),
        transform=regime3_transform,
        logit_processors=regime3_processors,
        description=f"symbolic answers between {ANSWER_START} and {ANSWER_END} lines; no emoji, no <think> blocks",
        answer_text=regime3_answer,
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known profiles: {', '.join(PROFILES)}")
    return PROFILES[name]


def system_prompt(profile: Profile, today: dt.date | None = None) -> str:
    """The profile's system prompt with ``{date}`` filled in (today unless ``today`` is given)."""
    return system_prompt_text(profile.system_prompt_template, today)


def resolve(name: str, configured_template: str, today: dt.date | None = None) -> tuple[Profile, str]:
    """The profile called ``name`` and the system prompt training uses with it, decided in one place.

    ``none`` keeps the configured template (config ``data.system_prompt``), so existing configs train as before;
    any other profile brings its own template and the configured one is not used.
    """
    profile = get_profile(name)
    template = configured_template if profile.name == "none" else profile.system_prompt_template
    return profile, system_prompt_text(template, today)


def trained_with(ledger: dict, profile_name: str, configured_template: str) -> tuple[Profile, str]:
    """The profile and system prompt a checkpoint was trained with, read from its ledger; where the ledger does
    not say (no ledger, an older one), ``profile_name`` and the configured template. An empty prompt ("": no
    system turn) is a choice the ledger records, not a missing value."""
    profile = get_profile(ledger.get("profile", profile_name))
    prompt = ledger.get("system_prompt")
    return profile, prompt if isinstance(prompt, str) else resolve(profile.name, configured_template)[1]
