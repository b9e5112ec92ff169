"""Text that is safe to print: names and fields that came from files (data file names, sidecar fields, lineage
records) are shown with their control characters escaped, so a name cannot move the cursor, recolour the
terminal, clear the screen or start a new table row.

``printable`` is applied per cell by the text formatters (``dojo queue list``, ``dojo lineage``). The config and
sidecar readers sit below this module in the layers and cut values with their own ``repr``-based helper.
"""
from __future__ import annotations

import unicodedata

# Bidirectional overrides and isolates reorder what follows them on screen ("Trojan Source"); they are format
# characters (Cf) like the harmless zero-width joiner of emoji sequences, so they are listed rather than the
# whole category.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def human_size(n: float) -> str:
    """A byte count for people: ``512 B``, ``10.5 MiB`` (powers of 1024, up to TiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def printable(value, limit: int | None = None) -> str:
    """``str(value)`` with C0 and C1 control characters (newline, carriage return, tab and ESC included), DEL,
    line/paragraph separators and bidi controls written as ``\\xNN`` / ``\\uNNNN``; cut to ``limit`` characters
    (with ``…``) when given. A backslash already in the text is left as it is."""
    text = str(value)
    out = "".join(_escape(ch) if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch
                  for ch in text)
    if limit is not None and len(out) > limit:
        out = out[: max(0, limit - 1)] + "…"
    return out
