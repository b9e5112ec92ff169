"""The data gate: validate a JSONL file against its spec at a depth, and decide whether it may be trained.

    dojo validate FILE [--depth quick|standard|deep] [--spec NAME]     exit 0 when accepted

QUICK checks the spec (``validation/specs.py``, pandera), DEEP adds the content checks (``validation/content.py``),
STANDARD renders and tokenizes every line exactly as training will (``render``, ``too_long`` against
``data.max_length``). Tokenizing is the model layer's job, so STANDARD takes a ``tokenize`` callable from it
(``model/data.py`` builds it from the config and feeds the tokenized cache from the same pass).

This one streaming reader and this one rule set serve the gate, ``dojo validate``, ``dojo pack-check`` and
training: training is the same check at STANDARD depth, strict (any rejected line refuses the file), so every
line the gate accepts, training accepts.
Every finding names the file, the line, the rule (``name@version``) and the value. A line with an error is
rejected; warnings are reported. The file is accepted when its valid share reaches ``validation.accept_ratio``
(default 95%): then its valid lines may be trained and its rejected lines are kept, with their reasons, by
``write_split`` — nothing is dropped silently. The input file is never modified.

File-level rules: ``unknown_spec`` (no spec in the sidecar and none given, or a name dojo does not know),
``empty_file``, ``unreadable``. Line-level rules before the spec: ``encoding`` (not UTF-8), ``line_too_large``,
``json_syntax``; warnings: ``bom`` (a UTF-8 BOM at the start, ignored), ``line_endings`` (CRLF, accepted),
``blank_line`` (skipped, not an example).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from typing import Callable, Iterator

from dojo.sidecar import read_sidecar
from dojo.storage import open_regular
from validation import content
from validation.errors import Issue, show_value

VALIDATOR_NAME = "dojo.validate"
VALIDATOR_VERSION = "2.0.0"    # 2: one reader and rule set for gate and training, multi-turn rendering
VALIDATOR = f"{VALIDATOR_NAME}@{VALIDATOR_VERSION}"
MAX_LINE_BYTES = 1 << 20      # a single example larger than 1 MiB is not chat data
DEPTHS = ("quick", "standard", "deep")
BATCH = 4096                  # records per pandera batch: memory stays flat on files of millions of lines


@dataclass
class FileReport:
    file: str
    spec: str | None
    depth: str
    total: int = 0                                   # examples (non-blank lines)
    accepted_lines: list[int] = field(default_factory=list)
    rejected: dict[int, list[Issue]] = field(default_factory=dict)
    warnings: list[Issue] = field(default_factory=list)
    file_issues: list[Issue] = field(default_factory=list)
    accept_ratio: float = 0.95
    examples: int = 0                                # training examples the accepted lines make (STANDARD)
    rewritten_turns: int = 0                         # assistant turns the chat template rendered differently

    @property
    def valid_ratio(self) -> float:
        return len(self.accepted_lines) / self.total if self.total else 0.0

    @property
    def accepted(self) -> bool:
        return not self.file_issues and self.total > 0 and self.valid_ratio >= self.accept_ratio

    def rejected_by_rule(self) -> dict[str, int]:
        return dict(Counter(issues[0].rule for issues in self.rejected.values()))

    def warnings_by_rule(self) -> dict[str, int]:
        return dict(Counter(i.rule for i in self.warnings))

    def first_rule(self) -> str | None:
        """The rule that decided: a file-level rule, else the rule of the first rejected line."""
        if self.file_issues:
            return self.file_issues[0].rule
        return self.rejected[min(self.rejected)][0].rule if self.rejected else None

    def to_dict(self) -> dict:
        return {
            "validator": VALIDATOR, "file": self.file, "spec": self.spec, "depth": self.depth,
            "total": self.total, "accepted": len(self.accepted_lines), "rejected": len(self.rejected),
            "valid_ratio": round(self.valid_ratio, 6), "accept_ratio": self.accept_ratio,
            "outcome": "accepted" if self.accepted else "rejected",
            "examples": self.examples, "rewritten_turns": self.rewritten_turns,
            "rejected_by_rule": self.rejected_by_rule(), "warnings_by_rule": self.warnings_by_rule(),
            "file_issues": [str(i) for i in self.file_issues],
        }

    def format(self, limit: int = 20) -> str:
        verdict = "ACCEPTED" if self.accepted else "REJECTED"
        lines = [f"{self.file}: {verdict} — spec {self.spec or '?'}, depth {self.depth}, {VALIDATOR}",
                 f"  {len(self.accepted_lines)}/{self.total} lines valid ({self.valid_ratio:.1%}; "
                 f"the bar is {self.accept_ratio:.0%})"]
        if self.examples:
            lines.append(f"  {self.examples} training examples; the chat template rewrote {self.rewritten_turns} "
                         f"assistant turn(s) (trained as rendered, never refused)")
        lines += [f"  file: {i}" for i in self.file_issues]
        if self.rejected:
            lines.append("  rejected lines by rule: " + ", ".join(f"{r} {n}" for r, n in
                                                               sorted(self.rejected_by_rule().items())))
            for line in sorted(self.rejected)[:limit]:
                lines.append(f"    {self.rejected[line][0]}")
            if len(self.rejected) > limit:
                lines.append(f"    … and {len(self.rejected) - limit} more")
        if self.warnings:
            lines.append("  warnings by rule: " + ", ".join(f"{r} {n}" for r, n in sorted(self.warnings_by_rule().items())))
            lines += [f"    {w}" for w in self.warnings[:limit]]
        return "\n".join(lines)


def resolve_spec(path: Path, explicit: str | None) -> tuple[str | None, dict | None]:
    meta = read_sidecar(path)
    return explicit or (meta or {}).get("spec"), meta


def iter_records(path: Path, report: FileReport, warn, reject) -> Iterator[tuple[int, object]]:
    """The one JSONL reader: (line number, parsed record) for every line that parses, streaming.

    Counts examples into ``report.total``; a line that cannot be read (too large, not UTF-8, not JSON) goes
    to ``reject``; a BOM, CRLF endings and blank lines go to ``warn``. Raises OSError when unreadable."""
    with open_regular(path) as f:           # a FIFO, device or directory is refused, never read (no hang)
        for number, line in enumerate(f, start=1):
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                warn(1, "bom", "the file starts with a UTF-8 byte-order mark (ignored)")
                line = line[3:]
            line = line[:-1] if line.endswith(b"\n") else line
            if line.endswith(b"\r"):
                line = line[:-1]
                if not any(w.rule.startswith("line_endings") for w in report.warnings):
                    warn(number, "line_endings", "CRLF line endings (accepted)")
            if not line.strip():
                warn(number, "blank_line", "blank line skipped (no example)")
                continue
            report.total += 1
            if len(line) > MAX_LINE_BYTES:
                reject(number, "line_too_large", f"the line is {len(line)} bytes (limit {MAX_LINE_BYTES}); "
                                                 f"not parsed", str(len(line)))
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                reject(number, "encoding", "not valid UTF-8", show_value(line[max(0, exc.start - 8):exc.start + 8]))
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as exc:
                reject(number, "json_syntax", f"not valid JSON ({exc.msg} at column {exc.colno})", show_value(text))


def _batches(items: Iterator, size: int) -> Iterator[dict]:
    batch = {}
    for number, record in items:
        batch[number] = record
        if len(batch) >= size:
            yield batch
            batch = {}
    if batch:
        yield batch


# tokenize([(messages, source), ...]) -> one result per line, in order: (examples (each with len()), turns the
# template rewrote), or the ValueError (model.chat.RenderError) raised when the template cannot render the line.
# A batch at a time, so the model layer may spread a large file over several processes (data.num_proc).
Tokenize = Callable[[list], list]


def check_file(path: str | Path, cfg, depth: str | None = None, spec: str | None = None,
               tokenize: Tokenize | None = None,
               on_accept: Callable[[int, list, list], None] | None = None, label: str | None = None) -> FileReport:
    """Validate ``path`` at ``depth`` (default ``cfg.validation.depth``), streaming. Never modifies the file.

    STANDARD and DEEP need ``tokenize`` (from the model layer). ``on_accept(line, examples, messages)`` receives
    every accepted line, in file order: its tokenized examples (none at QUICK) and its chat messages. ``label``
    is the name reports use for the file (the user's file when ``path`` is the gate's private copy of it)."""
    path = Path(path)
    depth = depth or cfg.validation.depth
    if depth not in DEPTHS:
        raise ValueError(f"--depth {depth!r}: use one of {', '.join(DEPTHS)}")
    if depth != "quick" and tokenize is None:
        raise ValueError(f"depth {depth} renders and tokenizes every line: pass tokenize (model.data.check_file)")
    from validation import specs      # pandas + pandera: imported when a file is checked, not by every chunk

    v = cfg.validation
    name = label or str(path)
    try:
        spec_name, meta = resolve_spec(path, spec)
    except ValueError as exc:
        report = FileReport(name, None, depth, accept_ratio=v.accept_ratio)
        report.file_issues.append(Issue(name, 0, "unreadable@1", str(exc)))
        return report
    report = FileReport(name, spec_name, depth, accept_ratio=v.accept_ratio)
    if spec_name not in specs.SPECS:
        why = "no spec: the file has no sidecar naming one and --spec was not given" if not spec_name else \
            f"unknown spec; known: {', '.join(specs.SPECS)}"
        report.file_issues.append(Issue(name, 0, "unknown_spec@1", why, show_value(spec_name) if spec_name else ""))
        return report

    def warn(line, rule, message, value=""):
        if rule not in v.disabled:
            report.warnings.append(Issue(name, line, f"{rule}@1", message, value))

    def reject(line, rule, message, value="", version="1"):
        report.rejected.setdefault(line, []).append(Issue(name, line, f"{rule}@{version}", message, value))

    checker = None
    if depth == "deep":
        checker = content.DeepChecker(v, (meta or {}).get("skill") or ("syllo" if spec_name == "syllo_v1" else None))
    try:
        for batch in _batches(iter_records(path, report, warn, reject), BATCH):
            for number, (rule, message, value) in specs.check_records(spec_name, batch).items():
                reject(number, rule, message, show_value(value), specs.SPEC_VERSION)
            pending = []
            for number, record in batch.items():
                if number not in report.rejected:
                    messages = specs.to_messages(spec_name, record)
                    if _deep_ok(report, cfg, number, messages, checker, reject):
                        pending.append((number, messages))
            results = tokenize([(m, f"{name}:{n}") for n, m in pending]) if tokenize and pending else \
                [([], 0)] * len(pending)
            for (number, messages), result in zip(pending, results):
                _accept_line(report, cfg, number, messages, result, tokenize is not None, on_accept, reject)
    except (OSError, ValueError) as exc:      # ValueError: open_regular refused a FIFO, device or directory
        report.file_issues.append(Issue(name, 0, "unreadable@1", str(exc)))
        return report
    if report.total == 0:
        report.file_issues.append(Issue(name, 0, "empty_file@1", "the file holds no examples"))
    return report


def _deep_ok(report: FileReport, cfg, number: int, messages: list, checker, reject) -> bool:
    """The DEEP content rules of one line (when checked at DEEP); False when the line is rejected."""
    v = cfg.validation
    if checker is not None:
        for f in checker.at(number).check(messages):
            if f.rule in v.disabled:
                continue
            if f.rule in v.warnings:
                report.warnings.append(Issue(report.file, number, content.versioned(f.rule), f.message, f.value))
            else:
                reject(number, f.rule, f.message, f.value, content.RULE_VERSION)
    return number not in report.rejected


def _accept_line(report: FileReport, cfg, number: int, messages: list, result, tokenized: bool, on_accept,
                 reject) -> None:
    """STANDARD (the render and the length of every example it made); an accepted line is recorded."""
    v = cfg.validation
    if isinstance(result, Exception):         # model.chat.RenderError
        reject(number, "render", str(result), "", content.RULE_VERSION)
        return
    examples, rewritten = result
    if tokenized:
        longest = max(len(e) for e in examples)
        if longest > cfg.data.max_length and "too_long" not in v.disabled:
            reject(number, "too_long", f"{longest} tokens after rendering, longer than data.max_length="
                                       f"{cfg.data.max_length} (never truncated)", str(longest), content.RULE_VERSION)
            return
    report.accepted_lines.append(number)
    report.examples += len(examples)
    report.rewritten_turns += rewritten
    if on_accept is not None:
        on_accept(number, examples, messages)


def write_split(report: FileReport, source: str | Path, accepted_path: Path | None, rejected_path: Path) -> None:
    """Keep everything: the accepted lines verbatim in ``accepted_path`` (if given), and every rejected line
    with its reasons in ``rejected_path`` (JSONL: line, rules, messages, the raw text). Streams the source."""
    keep = set(report.accepted_lines)
    out = open(accepted_path, "wb") if accepted_path is not None else None
    try:
        with open(source, "rb") as src, open(rejected_path, "w", encoding="utf-8") as rej:
            for number, line in enumerate(src, start=1):
                if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
                line = line.rstrip(b"\n").rstrip(b"\r")
                if number in keep and out is not None:
                    out.write(line + b"\n")
                elif number in report.rejected:
                    issues = report.rejected[number]
                    rej.write(json.dumps({"line": number, "rules": [i.rule for i in issues],
                                          "messages": [i.message for i in issues],
                                          "raw": line.decode("utf-8", errors="backslashreplace")},
                                         ensure_ascii=False) + "\n")
    finally:
        if out is not None:
            out.close()


def read_examples(path: str | Path, cfg, spec: str | None = None) -> list[tuple[int, list[dict]]]:
    """(line, chat messages) of every line, strictly at QUICK depth: any rejected line raises DataError listing
    every one (file, line, rule@version, value)."""
    from validation.errors import DataError

    out: list[tuple[int, list[dict]]] = []
    report = check_file(path, cfg, "quick", spec, on_accept=lambda line, _, messages: out.append((line, messages)))
    issues = report.file_issues + [i for n in sorted(report.rejected) for i in report.rejected[n]]
    if issues:
        raise DataError(issues)
    return out
