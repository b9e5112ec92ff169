"""Content checks beyond the schema, at the STANDARD and DEEP depths.

Each rule has a name and a version (reported as ``name@version``), a default severity (``error`` rejects the
line, ``warning`` is reported only; ``validation.warnings`` in config downgrades rules, ``validation.disabled``
turns them off) and its thresholds in the ``validation`` config section.

STANDARD  too_long            the rendered example is longer than ``data.max_length`` tokens (never truncated)
DEEP      duplicate           the same example appeared on an earlier line (the first copy is kept)
          near_duplicate      the same after lower-casing and dropping punctuation/whitespace (warning)
          answer_in_prompt    the final answer appears verbatim inside the prompt (leak)
          degenerate_answer   an answer too short, one character dominating it, or the same few words repeated
          broken_json         an answer that should be JSON (SYLLO, or one that starts with { or [) does not parse
          encoding            U+FFFD, control characters, a BOM inside text, or mojibake (Ã©, â€™)
          length_ratio        answer/prompt character ratio outside [min, max] (warning)
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

RULE_VERSION = "1"
# A new rule needs its name in dojo/config.py too (STANDARD_RULES / DEEP_RULES): config, which sits below
# validation, checks validation.warnings and validation.disabled against those names when it is loaded.
MOJIBAKE = re.compile(r"Ã[\u0080-\u00bf]|â€[\u0080-\u00ff\u2018-\u201e\u2122]|Â[\u00a0-\u00bf]")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Finding:
    rule: str
    message: str
    value: str = ""


def versioned(rule: str) -> str:
    return f"{rule}@{RULE_VERSION}"


def _prompt_and_answer(messages: list[dict]) -> tuple[str, str]:
    prompt = "\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    return prompt, answers[-1] if answers else ""


def encoding_problem(text: str) -> str | None:
    if "\ufffd" in text:
        return "a U+FFFD replacement character (text was decoded with errors somewhere upstream)"
    if "\ufeff" in text:
        return "a byte-order mark inside the text"
    if CONTROL.search(text):
        return f"a control character {CONTROL.search(text).group()!r}"
    m = MOJIBAKE.search(text)
    if m:
        return f"mojibake {m.group()!r} (UTF-8 decoded as Latin-1/cp1252)"
    return None


def degenerate(answer: str, v) -> str | None:
    stripped = answer.strip()
    if len(stripped) < v.min_answer_chars:
        return f"the answer is {len(stripped)} characters (minimum {v.min_answer_chars})"
    if len(stripped) >= v.min_share_chars:
        char, count = Counter(stripped.replace(" ", "")).most_common(1)[0]
        share = count / max(1, len(stripped.replace(" ", "")))
        if share > v.max_char_share:
            return f"{char!r} makes up {share:.0%} of the answer (maximum {v.max_char_share:.0%})"
    words = stripped.lower().split()
    if len(words) >= 8 and len(set(words)) / len(words) < 0.2:
        return f"{len(words)} words but only {len(set(words))} distinct: the answer repeats itself"
    return None


def expects_json(answer: str, skill: str | None) -> bool:
    return skill == "syllo" or answer.lstrip().startswith(("{", "["))


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class DeepChecker:
    """Stateful across a file (duplicates are found against earlier lines)."""

    def __init__(self, validation_cfg, skill: str | None = None):
        self.v = validation_cfg
        self.skill = skill
        self.seen: dict[bytes, int] = {}         # 16-byte digests, not the texts: memory stays small on big files
        self.seen_norm: dict[bytes, int] = {}

    def check(self, messages: list[dict]) -> list[Finding]:
        v, found = self.v, []
        text = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        key = _digest(text)
        norm = _digest(NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip())
        if key in self.seen:
            found.append(Finding("duplicate", f"the same example as line {self.seen[key]}"))
        elif norm in self.seen_norm:
            found.append(Finding("near_duplicate", f"nearly the same example as line {self.seen_norm[norm]}"))
        self.seen.setdefault(key, self._line)
        self.seen_norm.setdefault(norm, self._line)
        prompt, answer = _prompt_and_answer(messages)
        stripped = answer.strip()
        if len(stripped) >= v.min_leak_chars and stripped in prompt:
            found.append(Finding("answer_in_prompt", "the final answer appears verbatim in the prompt", stripped[:80]))
        problem = degenerate(answer, v)
        if problem:
            found.append(Finding("degenerate_answer", problem, stripped[:80]))
        if expects_json(answer, self.skill):
            try:
                json.loads(stripped)
            except json.JSONDecodeError as exc:
                found.append(Finding("broken_json", f"the answer should be JSON but does not parse ({exc.msg})",
                                     stripped[:80]))
        for m in messages:
            problem = encoding_problem(m["content"])
            if problem:
                found.append(Finding("encoding", f"{m['role']} content has {problem}"))
                break
        if prompt:
            ratio = len(stripped) / len(prompt)
            if not v.min_length_ratio <= ratio <= v.max_length_ratio:
                found.append(Finding("length_ratio", f"answer/prompt length ratio {ratio:.3f} is outside "
                                                     f"[{v.min_length_ratio}, {v.max_length_ratio}]"))
        return found

    def at(self, line: int) -> "DeepChecker":
        self._line = line
        return self
