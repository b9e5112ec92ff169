"""Data specs, deny by default: ``chat_sft_v1``, ``completion_v1``, ``syllo_v1`` as pandera schemas.

A file's spec comes from its sidecar's ``spec`` (or an explicit ``--spec``); none or an unknown name rejects the
file. Each parsed line becomes one DataFrame row (indexed by its 1-based line number) and the spec's schema is
validated lazily, so every broken row is found in one pass. Each check is a named rule; a row is reported
under the **first** rule it breaks, in the order declared here (one root cause, one rule), with its line number
and the offending value.

Rules (all version 1):
  chat_sft_v1    missing_messages, unknown_key, messages_type, message_type, unknown_role, content_type, system_position,
                 no_assistant, role_order, ends_with_user, empty_assistant, smuggled_marker
  completion_v1  unknown_key, prompt_type, completion_type, empty_completion, smuggled_marker
  syllo_v1       unknown_key, plus the record checks of ``skills.syllo_v1.check_record`` (syllables joining to
                 words, tiles from the bank, the bank balancing, counts)

This is the one rule list: the gate, ``dojo validate``, ``dojo pack-check`` and training all check lines with it
(through ``validation.validate.check_file``), and every finding is reported as ``name@version``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
import pandera.pandas as pa

SPEC_VERSION = "1"
ROLES = ("system", "user", "assistant")
MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class Rule:
    name: str
    message: str
    ok: Callable[[dict], bool]     # record -> passes? (only called once earlier rules passed)
    culprit: Callable[[dict], object] | None = None   # record -> the offending value (default: the record)

    @property
    def versioned(self) -> str:
        return f"{self.name}@{SPEC_VERSION}"


def _messages(r):
    return r.get("messages")


def _msgs_ok(r) -> bool:
    m = _messages(r)
    return isinstance(m, list) and m and all(isinstance(x, dict) for x in m)


def _roles(r):
    return [m.get("role") for m in _messages(r)]


def _turns(r):
    roles = _roles(r)
    return roles[1:] if roles and roles[0] == "system" else roles


def _no_markers(*texts) -> bool:
    return not any(marker in t for t in texts if isinstance(t, str) for marker in MARKERS)


def _first(values, bad):
    return next((v for v in values if bad(v)), None)


CHAT_KEYS = {"messages", "metadata", "id"}
CHAT_RULES = [
    Rule("missing_messages", "the object has no 'messages' key", lambda r: "messages" in r),
    Rule("unknown_key", f"only {sorted(CHAT_KEYS)} are allowed", lambda r: set(r) <= CHAT_KEYS,
         lambda r: sorted(set(r) - CHAT_KEYS)),
    Rule("messages_type", "'messages' must be a non-empty list",
         lambda r: isinstance(_messages(r), list) and bool(_messages(r)), _messages),
    Rule("message_type", "every message must be an object", _msgs_ok,
         lambda r: _first(_messages(r), lambda m: not isinstance(m, dict))),
    Rule("unknown_role", f"roles must be one of {', '.join(ROLES)}", lambda r: all(x in ROLES for x in _roles(r)),
         lambda r: _first(_roles(r), lambda x: x not in ROLES)),
    Rule("content_type", "every content must be a string",
         lambda r: all(isinstance(m.get("content"), str) for m in _messages(r)),
         lambda r: _first([m.get("content") for m in _messages(r)], lambda c: not isinstance(c, str))),
    Rule("system_position", "a system message may only come first", lambda r: "system" not in _roles(r)[1:], _roles),
    Rule("no_assistant", "the example has no assistant turn", lambda r: "assistant" in _roles(r), _roles),
    Rule("role_order", "turns must alternate user, assistant, … starting with user",
         lambda r: _turns(r) == ["user", "assistant"] * (len(_turns(r)) // 2) + ["user"] * (len(_turns(r)) % 2),
         _roles),
    Rule("ends_with_user", "the last turn must be the assistant's", lambda r: _turns(r)[-1] == "assistant", _roles),
    Rule("empty_assistant", "an assistant turn has no content",
         lambda r: all(m["content"].strip() for m in _messages(r) if m["role"] == "assistant"),
         lambda r: _first([m["content"] for m in _messages(r) if m["role"] == "assistant"], lambda c: not c.strip())),
    Rule("smuggled_marker", f"content holds a chat-template marker ({', '.join(MARKERS)})",
         lambda r: _no_markers(*(m["content"] for m in _messages(r)))),
]

COMPLETION_KEYS = {"prompt", "completion", "metadata", "id"}
COMPLETION_RULES = [
    Rule("unknown_key", f"only {sorted(COMPLETION_KEYS)} are allowed", lambda r: set(r) <= COMPLETION_KEYS),
    Rule("prompt_type", "'prompt' must be a non-empty string", lambda r: isinstance(r.get("prompt"), str) and bool(r["prompt"].strip())),
    Rule("completion_type", "'completion' must be a string", lambda r: isinstance(r.get("completion"), str)),
    Rule("empty_completion", "'completion' is empty", lambda r: bool(r["completion"].strip())),
    Rule("smuggled_marker", f"text holds a chat-template marker ({', '.join(MARKERS)})",
         lambda r: _no_markers(r["prompt"], r["completion"])),
]

SYLLO_KEYS = {"puzzle_id", "difficulty", "rules", "words", "syllable_bank", "red_herrings", "metadata", "level",
              "prompt", "solution", "output_variant", "solution_text", "solution_format", "format_instruction"}


def _syllo_rules() -> list[Rule]:
    from skills import syllo_v1 as syllo

    def record_rule(rule_name):
        return lambda r: rule_name not in {name for name, _ in syllo.check_record(r)}

    rules = [Rule("unknown_key", f"only {sorted(SYLLO_KEYS)} are allowed", lambda r: set(r) <= SYLLO_KEYS)]
    rules += [Rule(name, message, record_rule(name)) for name, message in syllo.RECORD_RULES]
    return rules


def rules_for(spec: str) -> list[Rule]:
    if spec == "chat_sft_v1":
        return CHAT_RULES
    if spec == "completion_v1":
        return COMPLETION_RULES
    if spec == "syllo_v1":
        return _syllo_rules()
    raise ValueError(f"unknown spec {spec!r}; known: {', '.join(SPECS)}")


SPECS = ("chat_sft_v1", "completion_v1", "syllo_v1")


def _first_failure(rules: list[Rule]) -> Callable[[dict], str | None]:
    """record -> the first rule it breaks (None when valid), computed once per record: every pandera check
    asks, and re-running all rules per check made QUICK validation 12x slower."""
    memo: dict[int, tuple[object, str | None]] = {}

    def compute(record) -> str | None:
        if not isinstance(record, dict):
            return "record_type"
        for rule in rules:
            try:
                if not rule.ok(record):
                    return rule.name
            except (KeyError, TypeError, AttributeError, IndexError):
                return rule.name
        return None

    def first(record) -> str | None:
        hit = memo.get(id(record))
        if hit is None or hit[0] is not record:      # keep the record alive so its id is not reused
            hit = memo[id(record)] = (record, compute(record))
        return hit[1]
    return first


def schema(spec: str) -> pa.DataFrameSchema:
    """The pandera schema of ``spec`` over a one-column frame of parsed records (index = line number).

    One element-wise check per rule; a record fails only the first rule it breaks (checks after the first
    failure pass), so the failure cases name exactly one rule per row.
    """
    rules = rules_for(spec)
    first = _first_failure(rules)
    checks = [pa.Check(lambda rec, name="record_type": first(rec) != name, element_wise=True, ignore_na=False,
                       name="record_type", error="each line must be a JSON object")]
    for rule in rules:
        checks.append(pa.Check(lambda rec, name=rule.name: first(rec) != name, element_wise=True, ignore_na=False,
                               name=rule.name, error=rule.message))
    return pa.DataFrameSchema({"record": pa.Column(object, checks=checks, nullable=True)}, name=spec)


def check_records(spec: str, records: dict[int, object]) -> dict[int, tuple[str, str, object]]:
    """Validate parsed records (line number -> record) against ``spec``.

    Returns line number -> (rule, message, offending value) for every row that breaks a rule.
    """
    if not records:
        return {}
    frame = pd.DataFrame({"record": pd.Series(list(records.values()), index=list(records.keys()), dtype=object)})
    sch = schema(spec)
    messages = {c.name: c.error for c in sch.columns["record"].checks}
    try:
        sch.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        out = {}
        for _, case in cases.iterrows():
            rule = sch.columns["record"].checks[int(case["check_number"])].name
            line = int(case["index"])
            message = messages[rule]
            if spec == "syllo_v1":   # the record check knows the specifics (which word, which tile)
                from skills import syllo_v1 as syllo

                message = dict(syllo.check_record(records[line])).get(rule, message)
            out[line] = (rule, message, _culprit(spec, rule, records[line]))
        return out
    return {}


def _culprit(spec: str, rule: str, record) -> object:
    found = next((r for r in rules_for(spec) if r.name == rule and r.culprit is not None), None)
    if found is None:
        return record
    try:
        return found.culprit(record)
    except (KeyError, TypeError, AttributeError, IndexError):
        return record


def to_messages(spec: str, record: dict) -> list[dict]:
    """A valid record of ``spec`` as chat messages (what training renders)."""
    if spec == "chat_sft_v1":
        return list(record["messages"])
    if spec == "completion_v1":
        return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]
    if spec == "syllo_v1":
        from skills import syllo_v1 as syllo

        return syllo.record_to_chat(record)["messages"]
    raise ValueError(f"unknown spec {spec!r}")
