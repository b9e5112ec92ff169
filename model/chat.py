"""Chat-template rendering and label assignment for one example.

An example is rendered with the tokenizer's own chat template (so a real Qwen3 renders exactly as it would at
inference). The rendered text is cut into pieces at every assistant turn: the content of **every** assistant
turn plus its closing ``<|im_end|>`` is trained; everything else (system, user, role headers, the empty think
block, the newline after ``<|im_end|>``) gets label -100. Each piece is tokenized on its own and the ids are
concatenated, so a trained span never starts or ends inside a token, and the prompt side is tokenized exactly
as at generation time (the model is prompted up to the header and generates the content).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

IGNORE = -100
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ASSISTANT_HEADER = IM_START + "assistant"


class RenderError(ValueError):
    """The chat template did not render an assistant turn where dojo can find and train it."""


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    source: str          # "file:line", for error messages
    assistant_turns: int

    def __len__(self) -> int:
        return len(self.input_ids)


def system_prompt_text(template: str, today: dt.date | None = None) -> str:
    """The system prompt actually used: the configured template with ``{date}`` filled in."""
    today = today or dt.date.today()
    return template.replace("{date}", today.isoformat())


def with_system_prompt(messages, system_prompt: str) -> list[dict]:
    """The profile hook: add ``system_prompt`` when the example brings no system message of its own."""
    messages = [dict(m) for m in messages]
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def render_pieces(messages, tokenizer) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trained) pieces, in order. Joined they equal the full render."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    pieces, cursor = [], 0
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        header = text.find(ASSISTANT_HEADER, cursor)
        if header < 0:
            raise RenderError(f"assistant turn {turn}: the chat template rendered no '{ASSISTANT_HEADER}' header")
        content = message["content"]
        # The turn ends at its first <|im_end|>; the content must be exactly what stands before it (searching
        # for the content itself could match inside the header or the think block, e.g. an answer "in").
        close = text.find(IM_END, header + len(ASSISTANT_HEADER))
        start = close - len(content)
        if close < 0 or start < header + len(ASSISTANT_HEADER) or text[start:close] != content:
            raise RenderError(f"assistant turn {turn}: the chat template changed the content "
                              f"(it must appear verbatim right before {IM_END}); content={content[:80]!r}")
        end = close + len(IM_END)
        pieces.append((text[cursor:start], False))
        pieces.append((text[start:end], True))
        cursor = end
    pieces.append((text[cursor:], False))
    return [(piece, trained) for piece, trained in pieces if piece]


def tokenize_example(messages, tokenizer, source: str = "") -> TokenizedExample:
    """Token ids and labels (-100 outside assistant content + closing im_end) for one conversation."""
    input_ids: list[int] = []
    labels: list[int] = []
    for piece, trained in render_pieces(messages, tokenizer):
        ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE] * len(ids))
    turns = sum(1 for m in messages if m["role"] == "assistant")
    return TokenizedExample(tuple(input_ids), tuple(labels), source, turns)


def generation_prompt(messages, tokenizer) -> str:
    """The text a model is prompted with to produce the next assistant turn (no thinking)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False)
