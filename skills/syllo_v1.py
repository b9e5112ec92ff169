"""The old system's ``syllo_v1`` records: the compatibility reader, kept apart from the SYLLO skill.

``check_record`` finds what is wrong with a record (rule, message) in root-cause order; ``from_record`` turns a
valid record into a dojo ``skills.syllo.Problem``; ``record_to_chat`` renders it in dojo's SYLLO prompt/answer
format; ``record_solution_text`` reads the old solution layouts (its 1-10 levels map to dojo's 1-5 by word
count). ``validation/specs.py`` builds the ``syllo_v1`` spec from these; ``../shared/compat/syllo_v1/`` holds
200 real exported records that must all pass (tests/test_syllo_skill.py).
"""
from __future__ import annotations

import json
import re
from collections import Counter

from skills.syllo import (Problem, Word, _TILE_BAD_RE, _answer_json, to_chat)

# -------------------------------------------------------------- old records

# The old system's `syllo_v1` record: rule name -> message, in root-cause
# order (validation reports a record under the first rule it breaks).  A
# record that is not an object is reported as "record_type" (the spec-level
# rule validation applies before these).
RECORD_RULES = (
    ("missing_key", "required keys: puzzle_id, rules, words, syllable_bank, red_herrings, level, solution"),
    ("bad_type", "puzzle_id/solution strings, rules an object with an int word_count, words objects with string "
                 "label/definition/hint_type and a list of non-empty string syllables, syllable_bank and "
                 "red_herrings lists of non-empty strings"),
    ("level", "level must be an int from 1 to 10 (the old scale)"),
    ("word_count", "rules.word_count must equal the number of words, and a puzzle needs at least 4 words"),
    ("slot_count", "a word's slots and syllable_count must match its syllables"),
    ("syllables_join", "each word's syllables must join to its label"),
    ("syllables_in_bank", "the words' syllables must come from syllable_bank (as a multiset)"),
    ("bank_balance", "every bank tile must be used by a word or listed in red_herrings (as a multiset)"),
)
RECORD_REQUIRED = ("puzzle_id", "rules", "words", "syllable_bank", "red_herrings", "level", "solution")
OLD_LEVELS = range(1, 11)
MIN_RECORD_WORDS = 4


def _str_list(value, allow_empty_list: bool = True) -> bool:
    return (
        isinstance(value, list)
        and (allow_empty_list or bool(value))
        and all(isinstance(s, str) and s.strip() and not _TILE_BAD_RE.search(s) for s in value)
    )


def check_record(record: dict) -> list[tuple[str, str]]:
    """Findings [(rule, message)] for an old-system `syllo_v1` record; [] when valid.

    Rules are those of RECORD_RULES.  Type problems stop the check there
    (later rules need the types); otherwise every finding is listed.
    """
    if not isinstance(record, dict):
        return [("record_type", f"expected a JSON object, got {type(record).__name__}")]
    missing = [k for k in RECORD_REQUIRED if k not in record]
    if missing:
        return [("missing_key", f"missing {', '.join(missing)}")]

    bad: list[str] = []
    for key in ("puzzle_id", "solution"):
        if not isinstance(record[key], str):
            bad.append(f"{key} must be a string, got {type(record[key]).__name__}")
    rules = record["rules"]
    if not isinstance(rules, dict) or isinstance(rules.get("word_count"), bool) or not isinstance(
        rules.get("word_count"), int
    ):
        bad.append(f"rules must be an object with an int word_count, got {rules!r}")
    words = record["words"]
    if not isinstance(words, list) or not words:
        bad.append("words must be a non-empty list")
        words = []
    for i, w in enumerate(words, start=1):
        if not isinstance(w, dict):
            bad.append(f"word {i} must be an object")
            continue
        for key in ("label", "definition", "hint_type"):
            if not isinstance(w.get(key), str) or not w.get(key).strip():
                bad.append(f"word {i}: {key} must be a non-empty string, got {w.get(key)!r}")
        if not _str_list(w.get("syllables"), allow_empty_list=False):
            bad.append(f"word {i}: syllables must be a non-empty list of tiles, got {w.get('syllables')!r}")
        elif "\n" in w.get("definition", "") or "\r" in w.get("definition", ""):
            bad.append(f"word {i}: definition must be one line")
    for key in ("syllable_bank", "red_herrings"):
        if not _str_list(record[key]):
            bad.append(f"{key} must be a list of tiles (no spaces or '|'), got {record[key]!r}")
    if bad:
        return [("bad_type", "; ".join(bad))]

    findings: list[tuple[str, str]] = []
    level = record["level"]
    if isinstance(level, bool) or not isinstance(level, int) or level not in OLD_LEVELS:
        findings.append(("level", f"level must be an int from 1 to 10, got {level!r}"))
    if rules["word_count"] != len(words):
        findings.append(("word_count", f"rules.word_count is {rules['word_count']} but there are {len(words)} words"))
    elif len(words) < MIN_RECORD_WORDS:
        findings.append(("word_count", f"{len(words)} words; a puzzle needs at least {MIN_RECORD_WORDS}"))
    for i, w in enumerate(words, start=1):
        n = len(w["syllables"])
        if "slots" in w and (not isinstance(w["slots"], list) or len(w["slots"]) != n):
            findings.append(("slot_count", f"word {i} {w['label']!r}: slots {w['slots']!r} for {n} syllables"))
        elif "syllable_count" in w and w["syllable_count"] != n:
            findings.append(("slot_count", f"word {i} {w['label']!r}: syllable_count {w['syllable_count']!r} "
                                           f"for {n} syllables"))
    for i, w in enumerate(words, start=1):
        joined = "".join(w["syllables"])
        if joined.lower() != w["label"].strip().lower():
            findings.append(("syllables_join", f"word {i}: syllables {w['syllables']} join to {joined!r}, "
                                               f"not {w['label']!r}"))
    bank = Counter(record["syllable_bank"])
    used = Counter(s for w in words for s in w["syllables"])
    if used - bank:
        findings.append(("syllables_in_bank", f"tiles used by words but missing from the bank: "
                                              f"{sorted((used - bank).elements())}"))
    leftover = bank - used
    herrings = Counter(record["red_herrings"])
    if leftover != herrings and not (used - bank):
        parts = []
        if leftover - herrings:
            parts.append(f"bank tiles neither used nor red herrings: {sorted((leftover - herrings).elements())}")
        if herrings - leftover:
            parts.append(f"red herrings not left over in the bank: {sorted((herrings - leftover).elements())}")
        findings.append(("bank_balance", "; ".join(parts)))
    return findings


def _record_level(n_words: int) -> int:
    """Old word count -> dojo level: 4->1, 5->2, 6->3, 7->4, 8 and more->5."""
    return min(max(n_words - 3, 1), 5)


def from_record(record: dict) -> Problem:
    """An old `syllo_v1` record as a dojo Problem.

    label -> word, definition -> clue, hint_type -> clue_type (as given),
    bank in the record's order, red herrings and puzzle_id kept, level from
    the word count (4->1, 5->2, 6->3, 7->4, 8+->5).  Raises ValueError
    listing check_record's findings for an invalid record.
    """
    findings = check_record(record)
    if findings:
        pid = record.get("puzzle_id") if isinstance(record, dict) else None
        raise ValueError(f"invalid syllo_v1 record {pid!r}: " + "; ".join(f"{r}: {m}" for r, m in findings))
    words = tuple(
        Word(w["label"].strip(), tuple(w["syllables"]), w["definition"].strip(), w["hint_type"])
        for w in record["words"]
    )
    return Problem(
        words=words,
        bank=tuple(record["syllable_bank"]),
        red_herrings=tuple(record["red_herrings"]),
        level=_record_level(len(words)),
        puzzle_id=record["puzzle_id"],
    )


def record_to_chat(record: dict) -> dict:
    """An old record rendered in dojo's SYLLO prompt/answer format."""
    return to_chat(from_record(record))


# One solution per line/item: "1. a + b → WORD", "1) a + b -> WORD", "1. a + b = WORD".
_OLD_ITEM_RE = re.compile(r"\s*(\d+)\s*[.)]\s*(.*?)\s*(?:\u2192|->|=)\s*([^\s]+)\s*")


def _split_tiles(cell: str, sep: str) -> list[str]:
    return [t.strip() for t in cell.split(sep) if t.strip()]


def _layout_entries(obj) -> tuple[list[tuple[int | None, list[str] | None, str]], list[str] | None] | None:
    """(entries, explicit unused tiles or None) from an old solution layout, or None if unrecognised.

    Entries are (clue number or None for positional layouts, syllables or
    None when the layout has none, answer).  Detection is by structure, not
    by output_variant name.
    """
    if isinstance(obj, list):  # array_bundle: [{section, data}, ...]
        for part in obj:
            if isinstance(part, dict) and part.get("section") == "solutions":
                return _layout_entries({"solutions": part.get("data")})
        return None
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("report"), dict):  # report_wrapper
        return _layout_entries(obj["report"])
    unused = obj.get("unused_tiles")
    if unused is None and isinstance(obj.get("inventory_check"), dict):
        unused = obj["inventory_check"].get("unused_tiles")
    unused = list(unused) if isinstance(unused, list) else None
    entries: list[tuple[int | None, list[str] | None, str]] = []
    if isinstance(obj.get("solutions"), list):  # solutions_only, analysis_enriched
        for e in obj["solutions"]:
            entries.append((e.get("ans_num"), e.get("syllables"), e.get("answer")))
    elif isinstance(obj.get("solutions_map"), dict):
        for num, e in obj["solutions_map"].items():
            entries.append((int(num), e.get("syllables"), e.get("word") or e.get("answer")))
    elif isinstance(obj.get("sequence"), list):  # solutions_sequence
        for e in obj["sequence"]:
            entries.append((e.get("index"), e.get("syllables"), e.get("word")))
    elif isinstance(obj.get("answers"), dict):  # inventory_vector: answers only
        for num, word in obj["answers"].items():
            entries.append((int(num), None, word))
    elif isinstance(obj.get("solutions_table"), dict):
        table = obj["solutions_table"]
        headers = [str(h).lower() for h in table.get("headers", [])]
        si = headers.index("syllables") if "syllables" in headers else 0
        wi = headers.index("word") if "word" in headers else 1
        for row in table.get("rows", []):
            entries.append((None, _split_tiles(row[si], "|"), row[wi]))
    elif isinstance(obj.get("solutions_markdown"), str):
        rows = [ln.strip() for ln in obj["solutions_markdown"].splitlines() if ln.strip().startswith("|")]
        for row in rows[1:]:  # rows[0] is the header
            cells = [c.strip() for c in row.strip("|").split("|")]
            if all(set(c) <= set("-: ") for c in cells):
                continue  # the separator row
            entries.append((None, _split_tiles(cells[0], "+"), cells[1]))
    elif isinstance(obj.get("letters"), list):  # solutions_by_letter
        for e in obj["letters"]:
            entries.append((None, e.get("syllables"), e.get("word")))
    elif isinstance(obj.get("solutions_list"), list) or isinstance(obj.get("solutions_text"), str):
        items = obj.get("solutions_list")
        if items is None:
            items = obj["solutions_text"].split(";")
        for item in items:
            m = _OLD_ITEM_RE.fullmatch(item)
            if m is None:
                return None
            entries.append((int(m.group(1)), _split_tiles(m.group(2), "+"), m.group(3)))
    else:
        return None
    if not entries or not all(isinstance(a, str) for _, _, a in entries):
        return None
    return entries, unused


def record_solution_text(record: dict) -> str:
    """The old record's own solution, converted to dojo's one-line JSON answer.

    record["solution"] is parsed whatever its layout (detected by structure);
    a positional layout numbers its rows 1..n; a layout without syllables
    (inventory_vector) takes them from the record's word for that clue.
    unused_tiles is the layout's own list where it has one (so a stale list
    stays stale), otherwise the bank minus the tiles the solution uses.  When
    the solution is not JSON or its layout is unknown, the answer is derived
    from the record's words and red herrings.
    """
    words = record["words"]
    try:
        parsed = _layout_entries(json.loads(record["solution"]))
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):
        parsed = None
    if parsed is None:
        solutions = [(i, list(w["syllables"]), w["label"].upper()) for i, w in enumerate(words, start=1)]
        return _answer_json(solutions, sorted(record["red_herrings"]))
    entries, unused = parsed
    solutions = []
    for pos, (num, syl, answer) in enumerate(entries, start=1):
        num = pos if num is None else num
        answer = answer.strip().upper()
        if syl is None:
            match = [w for w in words if w["label"].upper() == answer]
            if isinstance(num, int) and 1 <= num <= len(words) and words[num - 1]["label"].upper() == answer:
                match = [words[num - 1]]
            syl = list(match[0]["syllables"]) if match else []
        solutions.append((num, list(syl), answer))
    solutions.sort(key=lambda s: (0, s[0]) if isinstance(s[0], int) else (1, 0))  # clue order; odd numbers last
    if unused is None:
        leftover = Counter(record["syllable_bank"]) - Counter(t for _, syl, _ in solutions for t in syl)
        unused = list(leftover.elements())
    return _answer_json(solutions, sorted(unused))
