"""Chat generation for the Oracle (``dojo serve``): one conversation at a time, token by token, so it can stream.

    prompt = chat_prompt(tokenizer, messages, system_prompt, {"enable_thinking": False})
    for piece in generate_text(model, tokenizer, prompt, Sampling(temperature=0.7, top_p=0.9, seed=1,
                                                                   max_tokens=64, stop=("\\n\\n",))):
        print(piece.text, end="")            # the last piece carries finish_reason and the token counts

Greedy when ``temperature`` is 0, otherwise temperature + nucleus (``top_p``) sampling from a private
``torch.Generator`` seeded by ``seed`` (the same seed gives the same text, whatever else runs in the process).
The profile's logit processors (``model/profiles.py``) run before sampling, exactly as in evaluation.
Generation ends at ``<|im_end|>`` (or the tokenizer's eos), at a stop string — which is cut off, as the OpenAI API
does, and held back while streaming until it can no longer start one — at ``max_tokens``, or when ``cancelled()``
says the client went away.

This is a plain KV-cache loop rather than ``model.generate`` because streaming, stop strings, a per-request
generator and cancellation all need the step in our hands; ``tests/test_serve.py`` checks that greedy output
equals ``model.evaluate.greedy_generate``'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

# apply_chat_template's own arguments: chat_template_kwargs may only add template variables
RESERVED_TEMPLATE_KWARGS = frozenset({
    "conversation", "tools", "documents", "chat_template", "add_generation_prompt", "continue_final_message",
    "tokenize", "padding", "truncation", "max_length", "return_tensors", "return_dict", "return_assistant_tokens_mask",
    "tokenizer_kwargs"})


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0          # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Piece:
    text: str                         # new text since the previous piece (may be empty on the last one)
    finish_reason: str | None = None  # "stop" or "length" on the last piece, else None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def chat_prompt(tokenizer, messages: list[dict], system_prompt: str | None, template_kwargs: dict | None) -> str:
    """The generation prompt for ``messages``: ``system_prompt`` first when they bring no system message, the
    model's chat template, dojo's no-thinking default unless ``template_kwargs`` says otherwise (``enable_thinking``
    and any other template variable, as vLLM's ``chat_template_kwargs``)."""
    from model.chat import with_system_prompt

    kwargs = {"enable_thinking": False, **(template_kwargs or {})}
    reserved = sorted(set(kwargs) & RESERVED_TEMPLATE_KWARGS)
    if reserved:
        raise ValueError(f"chat_template_kwargs: {', '.join(reserved)} cannot be set (they are arguments of the "
                         f"template call, not template variables)")
    if system_prompt:
        messages = with_system_prompt(messages, system_prompt)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


def stop_ids(tokenizer) -> set[int]:
    """Token ids that end an assistant turn: ``<|im_end|>`` where the vocabulary has it, the eos, and the pad
    token (evaluation's ``greedy_generate`` stops at it too, so the Oracle answers as evaluation scored)."""
    ids = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return ids


def pick_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """The next token from ``logits`` (V,): argmax at temperature 0, else a sample from the tempered distribution
    cut to the smallest set of tokens whose probability reaches ``top_p``."""
    if temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)          # (V,)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs        # mass of the tokens ranked above each
        sorted_probs[before >= top_p] = 0.0                               # the top token always stays
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` could still be the start of a stop string (not sent yet)."""
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                keep = max(keep, n)
                break
    return keep


def cache_argument(model) -> str:
    """The name of the KV-cache argument (and output field) of ``model``'s forward: ``cache`` from transformers
    5.x (where ``past_key_values`` is deprecated), ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def generate_text(model, tokenizer, prompt: str, sampling: Sampling, processors=(),
                  cancelled: Callable[[], bool] = lambda: False) -> Iterator[Piece]:
    """Pieces of the completion of ``prompt`` (see the module docstring). The last piece has a finish_reason."""
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)   # (1, T)
    prompt_tokens = ids.shape[1]
    generator = None
    if sampling.temperature > 0.0:
        generator = torch.Generator(device=device)
        if sampling.seed is not None:
            generator.manual_seed(sampling.seed)
        else:
            generator.seed()           # a fresh seed for this generator only: torch's global RNG is left alone
    ends = stop_ids(tokenizer)
    cache_arg = cache_argument(model)
    model.eval()
    new: list[int] = []
    sent = 0                                   # characters of the decoded completion already sent
    text, reason, past, step_input = "", "length", None, ids
    while len(new) < sampling.max_tokens and not cancelled():
        out = model(input_ids=step_input, use_cache=True, **{cache_arg: past})
        past = getattr(out, cache_arg)
        logits = out.logits[:, -1, :]                                      # (1, V)
        for processor in processors:
            logits = processor(ids, logits)
        token = pick_token(logits[0], sampling.temperature, sampling.top_p, generator)
        if token in ends:
            reason = "stop"
            break
        new.append(token)
        step_input = torch.tensor([[token]], device=device)
        ids = torch.cat([ids, step_input], dim=1)
        text = tokenizer.decode(new, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in sampling.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
            break
        if text.endswith("\ufffd"):            # a character split across tokens: wait for the rest of it
            continue
        ready = len(text) - held_back(text, sampling.stop)
        if ready > sent:
            yield Piece(text[sent:ready], None, prompt_tokens, len(new))
            sent = ready
    yield Piece(text[sent:], reason, prompt_tokens, len(new))
