"""Chat-template rendering and label assignment: one conversation in, the training examples it makes out.

A conversation is rendered with the tokenizer's own chat template (so a real Qwen3 renders exactly as at
inference). Each assistant turn is found in the rendered text by its header (``<|im_start|>assistant``) and its
closing ``<|im_end|>``; what the template put between them is the turn **as rendered**, and that (plus the
``<|im_end|>``) is trained. Everything else — system, user, role headers, the empty think block
``<think>\\n\\n</think>\\n\\n`` that a non-reasoning final turn carries, the newline after ``<|im_end|>`` — gets
label -100. Each piece is tokenized on its own and the ids are concatenated, so a trained span never starts or
ends inside a token, and the prompt side is tokenized exactly as the generation prompt is at inference.

Real templates rewrite history: Qwen3 drops the ``<think>…</think>`` reasoning of every assistant turn before
the last user message. dojo never refuses such data; the multi-turn policy (``data.multi_turn``) decides:

``rendered``  one example per conversation; every assistant turn is trained as the template renders it in the
              full conversation (history turns without their reasoning, the final turn with it).
``expand``    one example per assistant turn: turn k is trained as the final turn of ``messages[:k+1]``, so
              the template keeps its reasoning; the earlier turns are context (masked). N turns cost about N/2
              times the tokens, the usual practice for multi-turn reasoning data.
``auto``      (default) ``rendered`` unless the template dropped the reasoning of some turn, then ``expand``:
              plain multi-turn data stays one example, reasoning traces lose nothing.

Either way every assistant turn's answer is trained exactly once, nothing of a user or system message is
trained, and the last turn's reasoning is trained. The template may reformat a turn (move reasoning into its
own block, drop it from history, adjust whitespace), but the *answer* — the content after any ``</think>`` —
must survive verbatim; a template that changes the answer itself raises ``RenderError``.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

IGNORE = -100
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ASSISTANT_HEADER = IM_START + "assistant"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EMPTY_THINK = "<think>\n\n</think>\n\n"
MULTI_TURN = ("auto", "rendered", "expand")


class RenderError(ValueError):
    """The chat template did not render an assistant turn where dojo can find and train it."""


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    source: str               # "file:line", for error messages
    assistant_turns: int      # assistant turns in the example (trained or context)
    trained_turns: int = 1    # assistant turns whose tokens are trained (= masked→trained transitions)
    rewritten: int = 0        # of the turns this example trains, how many the template rendered differently from
                              # their content in the full conversation (summed over a conversation's examples:
                              # the turns it rewrote)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass(frozen=True)
class Turn:
    """One assistant turn in a rendered text: ``[start, end)`` is what is trained (content + ``<|im_end|>``)."""
    start: int
    end: int
    body: str                 # what the template rendered between the header line and <|im_end|>
    rewritten: bool           # body differs from the message's content
    lost_reasoning: bool      # the message had reasoning the rendering dropped


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


def split_reasoning(content: str) -> tuple[str, str]:
    """(reasoning, answer) of an assistant content, the way Qwen3's template splits it at the last </think>."""
    if THINK_CLOSE not in content:
        return "", content
    head, _, answer = content.rpartition(THINK_CLOSE)
    return head.split(THINK_OPEN)[-1].strip("\n"), answer.lstrip("\n")


def find_turns(text: str, messages) -> list[Turn]:
    """Locate every assistant turn of ``messages`` in the rendered ``text``, in order."""
    turns, cursor = [], 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        header = text.find(ASSISTANT_HEADER, cursor)
        if header < 0:
            raise RenderError(f"assistant turn {index}: the chat template rendered no '{ASSISTANT_HEADER}' header")
        newline = text.find("\n", header)
        close = text.find(IM_END, header)
        if newline < 0 or close < 0 or newline > close:
            raise RenderError(f"assistant turn {index}: no '{IM_END}' closes the turn the template rendered")
        body_start = newline + 1
        if text.startswith(EMPTY_THINK, body_start):
            body_start += len(EMPTY_THINK)      # scaffolding: the generation prompt ends with it, so it is prompt
        body, content = text[body_start:close], message["content"]
        reasoning, answer = split_reasoning(content)
        _, rendered_answer = split_reasoning(body)
        if rendered_answer.strip() != answer.strip():
            raise RenderError(f"assistant turn {index}: the chat template changed the answer "
                              f"(rendered {body[-80:]!r}, content {content[-80:]!r})")
        turns.append(Turn(body_start, close + len(IM_END), body, body != content,
                          bool(reasoning) and THINK_CLOSE not in body))
        cursor = close + len(IM_END)
    return turns


def _render(messages, tokenizer) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=False)


def _pieces(text: str, trained: list[Turn]) -> list[tuple[str, bool]]:
    pieces, cursor = [], 0
    for t in trained:
        pieces += [(text[cursor:t.start], False), (text[t.start:t.end], True)]
        cursor = t.end
    pieces.append((text[cursor:], False))
    return [(p, is_trained) for p, is_trained in pieces if p]


def render_plan(messages, tokenizer, multi_turn: str = "auto") -> list[tuple[list[tuple[str, bool]], int, int, int]]:
    """The examples one conversation makes: [(pieces, assistant_turns, trained_turns, rewritten)], where pieces
    are (text, trained) in order and joined equal the example's full rendering, and ``rewritten`` counts the
    trained turns that the full conversation's rendering changed."""
    if multi_turn not in MULTI_TURN:
        raise ValueError(f"data.multi_turn {multi_turn!r}: use one of {', '.join(MULTI_TURN)}")
    text = _render(messages, tokenizer)
    turns = find_turns(text, messages)
    rewritten = sum(t.rewritten for t in turns)
    expand = multi_turn == "expand" or (multi_turn == "auto" and any(t.lost_reasoning for t in turns))
    if not expand or len(turns) == 1:
        return [(_pieces(text, turns), len(turns), len(turns), rewritten)]
    plan = []
    ends = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for k, end in enumerate(ends):
        prefix = list(messages[:end + 1])
        sub_text = _render(prefix, tokenizer)
        sub_turns = find_turns(sub_text, prefix)
        plan.append((_pieces(sub_text, sub_turns[-1:]), k + 1, 1, int(turns[k].rewritten)))
    return plan


def tokenize_pieces(pieces, tokenizer) -> tuple[list[int], list[int]]:
    """Each piece tokenized on its own (no special tokens added), concatenated; labels -100 on untrained pieces.
    A fast tokenizer encodes all pieces in one batch call (the same ids as one call per piece)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        if backend.padding is not None or backend.truncation is not None:
            # a padded batch call (model/evaluate.py) leaves padding set on the shared backend; the wrapper
            # sets both again on every call of its own, so clearing them here changes nothing for it
            backend.no_padding()
            backend.no_truncation()
        encoded = [e.ids for e in backend.encode_batch([p for p, _ in pieces], add_special_tokens=False)]
    else:
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p, _ in pieces]
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, (_, trained) in zip(encoded, pieces):
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE] * len(ids))
    return input_ids, labels


def tokenize_conversation(messages, tokenizer, source: str = "", multi_turn: str = "auto") -> list[TokenizedExample]:
    """Every training example of one conversation (one, or one per assistant turn; see the module docstring)."""
    out = []
    for pieces, turns, trained, rewritten in render_plan(messages, tokenizer, multi_turn):
        ids, labels = tokenize_pieces(pieces, tokenizer)
        out.append(TokenizedExample(tuple(ids), tuple(labels), source, turns, trained, rewritten))
    return out


def tokenize_example(messages, tokenizer, source: str = "") -> TokenizedExample:
    """One conversation as one example, every assistant turn trained as rendered (``multi_turn: rendered``)."""
    return tokenize_conversation(messages, tokenizer, source, "rendered")[0]


def generation_prompt(messages, tokenizer) -> str:
    """The text a model is prompted with to produce the next assistant turn (no thinking)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False)
