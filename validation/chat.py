"""Reading ``chat_sft_v1`` JSONL with a QUICK structural check of every line.

``chat_sft_v1``: one JSON object per line with ``messages``: an optional system message first, then
alternating user/assistant turns, ending with an assistant turn; every content a string, assistant content
non-empty. Any other keys (e.g. ``metadata``) are carried along untouched.

``read_chat_file`` reads the whole file and raises one ``DataError`` listing every bad line (file, line,
rule, value). Nothing is dropped silently: a file with a bad line is refused whole, and the file itself is
never modified. (The full deny-by-default spec layer with pandera and the 95% acceptance bar is the data
issue's; this is the check the core stack needs to refuse garbage.)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from validation.errors import DataError, Issue, show_value

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatExample:
    """One valid line: its messages and where it came from (``file``, 1-based ``line``)."""
    messages: tuple[dict, ...]
    file: str
    line: int

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"


def check_messages(record, file: str, line: int) -> list[Issue]:
    """Every structural problem of one parsed JSONL record (empty list when it is valid)."""
    def issue(rule, message, value=""):
        return Issue(file, line, rule, message, show_value(value) if value != "" else "")

    if not isinstance(record, dict):
        return [issue("record_type", "each line must be a JSON object", record)]
    if "messages" not in record:
        return [issue("missing_messages", "the object has no 'messages' key", sorted(record))]
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        return [issue("messages_type", "'messages' must be a non-empty list", messages)]
    problems = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            problems.append(issue("message_type", f"messages[{i}] must be an object", msg))
            continue
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            problems.append(issue("unknown_role", f"messages[{i}].role must be one of {', '.join(ROLES)}", role))
        if not isinstance(content, str):
            problems.append(issue("content_type", f"messages[{i}].content must be a string", content))
        elif role == "assistant" and not content.strip():
            problems.append(issue("empty_assistant", f"messages[{i}] is an assistant turn with no content", content))
    if problems:
        return problems
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        return [issue("system_position", "a system message may only come first", roles)]
    turns = roles[1:] if roles[0] == "system" else roles
    if "assistant" not in turns:
        return [issue("no_assistant", "the example has no assistant turn, so nothing would be trained", roles)]
    expected = ["user", "assistant"] * len(turns)
    if turns != expected[: len(turns)]:
        return [issue("role_order", "turns must alternate user, assistant, … starting with user", roles)]
    if turns[-1] != "assistant":
        return [issue("ends_with_user", "the last turn must be the assistant's", roles)]
    return []


def read_chat_file(path: str | Path) -> list[ChatExample]:
    """Parse and check every line of a chat_sft_v1 JSONL file; raise DataError listing all bad lines."""
    path = Path(path)
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError([Issue(name, 0, "unreadable", str(exc))]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError([Issue(name, line, "encoding", "not valid UTF-8", show_value(raw[exc.start:exc.start + 8]))]) from None
    examples, issues = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank lines carry no example; they are not data loss
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            issues.append(Issue(name, number, "json_syntax", f"not valid JSON ({exc.msg} at column {exc.colno})",
                                show_value(line)))
            continue
        found = check_messages(record, name, number)
        if found:
            issues.extend(found)
        else:
            examples.append(ChatExample(tuple(record["messages"]), name, number))
    if issues:
        raise DataError(issues)
    if not examples:
        raise DataError([Issue(name, 0, "empty_file", "the file holds no examples")])
    return examples
