"""The one error type for bad input: every problem names the file, the line, the rule and the value."""
from __future__ import annotations

from dataclasses import dataclass

MAX_VALUE_CHARS = 120


def show_value(value) -> str:
    """A short, single-line repr of an offending value (long values are elided in the middle)."""
    text = repr(value)
    if len(text) > MAX_VALUE_CHARS:
        half = MAX_VALUE_CHARS // 2
        text = f"{text[:half]}…({len(text) - MAX_VALUE_CHARS} chars)…{text[-half:]}"
    return text


@dataclass(frozen=True)
class Issue:
    """One rule broken at one place. ``line`` is 1-based; 0 means the file as a whole."""
    file: str
    line: int
    rule: str
    message: str
    value: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        tail = f" (value: {self.value})" if self.value else ""
        return f"{where}: rule {self.rule}: {self.message}{tail}"


class DataError(ValueError):
    """Input that dojo refuses to train on. Carries every issue found, not only the first."""

    def __init__(self, issues: list[Issue], limit: int = 20):
        assert issues, "DataError needs at least one issue"
        self.issues = list(issues)
        shown = "\n  ".join(str(i) for i in self.issues[:limit])
        more = f"\n  … and {len(self.issues) - limit} more" if len(self.issues) > limit else ""
        super().__init__(f"{len(self.issues)} problem(s) in the input; nothing was trained:\n  {shown}{more}")

    @property
    def rules(self) -> list[str]:
        return [i.rule for i in self.issues]
