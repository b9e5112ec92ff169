"""The data gate: validate a JSONL file against its spec at a depth, and decide whether it may be trained.

    dojo validate FILE [--depth quick|standard|deep] [--spec NAME]     exit 0 when accepted

QUICK checks the spec (``validation/specs.py``, pandera), STANDARD adds tokenised lengths against
``data.max_length`` with the configured tokenizer, DEEP adds the content checks (``validation/content.py``).
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

from dojo.lineage import read_sidecar
from validation import content, specs
from validation.errors import Issue, show_value

VALIDATOR_NAME = "dojo.validate"
VALIDATOR_VERSION = "1.0.0"
VALIDATOR = f"{VALIDATOR_NAME}@{VALIDATOR_VERSION}"
MAX_LINE_BYTES = 1 << 20      # a single example larger than 1 MiB is not chat data
DEPTHS = ("quick", "standard", "deep")


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
    messages: dict[int, list[dict]] = field(default_factory=dict, repr=False)   # line -> chat messages

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
            "rejected_by_rule": self.rejected_by_rule(), "warnings_by_rule": self.warnings_by_rule(),
            "file_issues": [str(i) for i in self.file_issues],
        }

    def format(self, limit: int = 20) -> str:
        verdict = "ACCEPTED" if self.accepted else "REJECTED"
        lines = [f"{self.file}: {verdict} — spec {self.spec or '?'}, depth {self.depth}, {VALIDATOR}",
                 f"  {len(self.accepted_lines)}/{self.total} lines valid ({self.valid_ratio:.1%}; "
                 f"the bar is {self.accept_ratio:.0%})"]
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


def validate_file(path: str | Path, cfg, depth: str | None = None, spec: str | None = None,
                  tokenizer=None) -> FileReport:
    """Validate ``path`` at ``depth`` (default ``cfg.validation.depth``). Never modifies the file."""
    path = Path(path)
    depth = depth or cfg.validation.depth
    if depth not in DEPTHS:
        raise ValueError(f"--depth {depth!r}: use one of {', '.join(DEPTHS)}")
    v = cfg.validation
    name = str(path)
    try:
        spec_name, meta = resolve_spec(path, spec)
    except ValueError as exc:
        spec_name, meta = None, None
        report = FileReport(name, None, depth, accept_ratio=v.accept_ratio)
        report.file_issues.append(Issue(name, 0, "unreadable@1", str(exc)))
        return report
    report = FileReport(name, spec_name, depth, accept_ratio=v.accept_ratio)
    if spec_name not in specs.SPECS:
        why = "no spec: the file has no sidecar naming one and --spec was not given" if not spec_name else \
            f"unknown spec; known: {', '.join(specs.SPECS)}"
        report.file_issues.append(Issue(name, 0, "unknown_spec@1", why, show_value(spec_name) if spec_name else ""))
        return report
    try:
        raw = path.read_bytes()
    except OSError as exc:
        report.file_issues.append(Issue(name, 0, "unreadable@1", str(exc)))
        return report

    def warn(line, rule, message, value=""):
        if rule not in v.disabled:
            report.warnings.append(Issue(name, line, f"{rule}@1", message, value))

    def reject(line, rule, message, value="", version="1"):
        report.rejected.setdefault(line, []).append(Issue(name, line, f"{rule}@{version}", message, value))

    if raw.startswith(b"\xef\xbb\xbf"):
        warn(1, "bom", "the file starts with a UTF-8 byte-order mark (ignored)")
        raw = raw[3:]
    records: dict[int, object] = {}
    parts = raw.split(b"\n")
    for number, line in enumerate(parts, start=1):
        if number == len(parts) and not line:
            break                                       # the file's final newline, not a blank line
        if line.endswith(b"\r"):
            line = line[:-1]
            if not any(w.rule.startswith("line_endings") for w in report.warnings):
                warn(number, "line_endings", "CRLF line endings (accepted)")
        if not line.strip():
            warn(number, "blank_line", "blank line skipped (no example)")
            continue
        report.total += 1
        if len(line) > MAX_LINE_BYTES:
            reject(number, "line_too_large", f"the line is {len(line)} bytes (limit {MAX_LINE_BYTES}); not parsed",
                   str(len(line)))
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            reject(number, "encoding", "not valid UTF-8", show_value(line[max(0, exc.start - 8):exc.start + 8]))
            continue
        try:
            records[number] = json.loads(text)
        except json.JSONDecodeError as exc:
            reject(number, "json_syntax", f"not valid JSON ({exc.msg} at column {exc.colno})", show_value(text))
    if report.total == 0:
        report.file_issues.append(Issue(name, 0, "empty_file@1", "the file holds no examples"))
        return report

    for number, (rule, message) in specs.check_records(spec_name, records).items():
        reject(number, rule, message, show_value(records[number]), specs.SPEC_VERSION)
    valid = {n: specs.to_messages(spec_name, r) for n, r in records.items() if n not in report.rejected}

    if depth in ("standard", "deep") and "too_long" not in v.disabled:
        from model.chat import RenderError, tokenize_example, with_system_prompt
        from model.loading import load_tokenizer
        from model.profiles import resolve

        tokenizer = tokenizer or load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
        profile, system_prompt = resolve(cfg.data.profile, cfg.data.system_prompt)   # exactly what training renders
        for number, messages in valid.items():
            try:
                n = len(tokenize_example(with_system_prompt(profile.transform(messages), system_prompt), tokenizer))
            except RenderError as exc:
                reject(number, "render", str(exc))
                continue
            if n > cfg.data.max_length:
                reject(number, "too_long", f"{n} tokens after rendering, longer than data.max_length="
                                           f"{cfg.data.max_length} (never truncated)", str(n), content.RULE_VERSION)
    if depth == "deep":
        checker = content.DeepChecker(v, (meta or {}).get("skill") or ("syllo" if spec_name == "syllo_v1" else None))
        for number, messages in valid.items():
            if number in report.rejected:
                continue
            for f in checker.at(number).check(messages):
                if f.rule in v.disabled:
                    continue
                if f.rule in v.warnings:
                    report.warnings.append(Issue(name, number, content.versioned(f.rule), f.message, f.value))
                else:
                    reject(number, f.rule, f.message, f.value, content.RULE_VERSION)
    report.accepted_lines = sorted(n for n in valid if n not in report.rejected)
    report.messages = {n: valid[n] for n in report.accepted_lines}
    return report


def write_split(report: FileReport, source: str | Path, accepted_path: Path | None, rejected_path: Path) -> None:
    """Keep everything: the accepted lines verbatim in ``accepted_path`` (if given), and every rejected line
    with its reasons in ``rejected_path`` (JSONL: line, rules, messages, the raw text)."""
    raw = Path(source).read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = raw.split(b"\n")
    keep = set(report.accepted_lines)
    if accepted_path is not None:
        with open(accepted_path, "wb") as f:
            for n in report.accepted_lines:
                f.write(lines[n - 1].rstrip(b"\r") + b"\n")
    with open(rejected_path, "w", encoding="utf-8") as f:
        for n in sorted(report.rejected):
            assert n not in keep
            issues = report.rejected[n]
            f.write(json.dumps({"line": n, "rules": [i.rule for i in issues], "messages": [i.message for i in issues],
                                "raw": lines[n - 1].decode("utf-8", errors="backslashreplace")},
                               ensure_ascii=False) + "\n")


def read_examples(path: str | Path, spec: str | None = None):
    """The examples of a file for training, strictly: any bad line refuses the whole file (DataError listing
    every one). chat_sft_v1 files are read by ``validation.chat``; other specs (from ``spec`` or the sidecar)
    are checked by their pandera schema and converted to chat messages. A file with no sidecar and no
    ``spec`` is read as chat_sft_v1 (``dojo train`` on a plain chat file); the queue's gate, in front of
    unattended training, is deny-by-default instead.
    """
    from validation.chat import ChatExample, read_chat_file
    from validation.errors import DataError

    path = Path(path)
    spec_name, _ = resolve_spec(path, spec)
    spec_name = spec_name or "chat_sft_v1"
    if spec_name == "chat_sft_v1":
        return read_chat_file(path)
    if spec_name not in specs.SPECS:
        raise DataError([Issue(str(path), 0, "unknown_spec", f"unknown spec; known: {', '.join(specs.SPECS)}",
                               show_value(spec_name))])
    issues, records = [], {}
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records[number] = json.loads(line)
        except json.JSONDecodeError as exc:
            issues.append(Issue(str(path), number, "json_syntax", f"not valid JSON ({exc.msg})", show_value(line)))
    for number, (rule, message) in sorted(specs.check_records(spec_name, records).items()):
        issues.append(Issue(str(path), number, rule, message, show_value(records[number])))
    if issues:
        raise DataError(sorted(issues, key=lambda i: i.line))
    if not records:
        raise DataError([Issue(str(path), 0, "empty_file", "the file holds no examples")])
    return [ChatExample(tuple(specs.to_messages(spec_name, r)), str(path), n) for n, r in records.items()]
