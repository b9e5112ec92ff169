"""Integrity checks for skills/syllo_lexicon.tsv, the word list behind the SYLLO syllable-tile skill.

Each row is: word, its syllable split (hyphen-joined), and three clues (definition, synonym,
category). The puzzle generator relies on these invariants, so every one is checked here.
"""

import csv
import re
from collections import Counter
from pathlib import Path

import pytest

LEXICON = Path(__file__).resolve().parent.parent / "skills" / "syllo_lexicon.tsv"
HEADER = ["word", "syllables", "definition", "synonym", "category"]
CLUES = ("definition", "synonym", "category")
WORD_RE = re.compile(r"[a-z]+")


def _read(path=LEXICON):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def raw():
    return _read()


@pytest.fixture(scope="module")
def rows(raw):
    return [dict(zip(HEADER, r)) for r in raw[1:]]


def _leak_key(word):
    return word if len(word) <= 5 else word[:5]


def test_header_exact(raw):
    assert raw[0] == HEADER


def test_every_row_has_five_fields(raw):
    bad = [(i, r) for i, r in enumerate(raw[1:], start=2) if len(r) != len(HEADER)]
    assert not bad, f"rows with wrong field count (tab inside a field?): {bad[:5]}"


def test_enough_rows(rows):
    assert len(rows) >= 300


def test_no_empty_fields(rows):
    bad = [(r.get("word"), k) for r in rows for k in HEADER if not (r.get(k) or "").strip()]
    assert not bad, bad[:10]


def test_fields_have_no_stray_whitespace(rows):
    bad = [(r["word"], k) for r in rows for k in HEADER if r[k] != r[k].strip() or "\n" in r[k]]
    assert not bad, bad[:10]


def test_words_lowercase_ascii_letters(rows):
    bad = [r["word"] for r in rows if not WORD_RE.fullmatch(r["word"])]
    assert not bad, bad[:10]


def test_words_unique(rows):
    dups = [w for w, n in Counter(r["word"] for r in rows).items() if n > 1]
    assert not dups, dups


def test_syllables_join_to_word(rows):
    bad = [(r["word"], r["syllables"]) for r in rows if r["syllables"].replace("-", "") != r["word"]]
    assert not bad, bad[:10]


def test_each_syllable_nonempty_lowercase_letters(rows):
    bad = [
        (r["word"], r["syllables"])
        for r in rows
        if not all(WORD_RE.fullmatch(s) for s in r["syllables"].split("-"))
    ]
    assert not bad, bad[:10]


def test_syllable_counts_between_2_and_5(rows):
    bad = [(r["word"], r["syllables"]) for r in rows if not 2 <= len(r["syllables"].split("-")) <= 5]
    assert not bad, bad[:10]


def test_every_syllable_count_is_represented(rows):
    counts = Counter(len(r["syllables"].split("-")) for r in rows)
    for n in (2, 3, 4, 5):
        assert counts[n] >= 0.05 * len(rows), f"too few {n}-syllable words: {counts}"


def test_definitions_unique(rows):
    dups = [d for d, n in Counter(r["definition"].lower() for r in rows).items() if n > 1]
    assert not dups, dups


def test_synonyms_unique_case_insensitive(rows):
    dups = [s for s, n in Counter(r["synonym"].lower() for r in rows).items() if n > 1]
    assert not dups, dups


def test_clues_do_not_contain_the_word(rows):
    bad = [
        (r["word"], k, r[k])
        for r in rows
        for k in CLUES
        if _leak_key(r["word"]) in r[k].lower()
    ]
    assert not bad, bad[:10]


def test_at_least_30_distinct_categories(rows):
    cats = {r["category"].lower() for r in rows}
    assert len(cats) >= 30, len(cats)


def test_rows_sorted_by_word(rows):
    words = [r["word"] for r in rows]
    assert words == sorted(words)


# ------------------------------------------------ the checks themselves can fail


def _write(tmp_path, lines):
    p = tmp_path / "lex.tsv"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_checks_catch_broken_rows(tmp_path):
    """Feed deliberately broken data through the same predicates used above."""
    p = _write(
        tmp_path,
        [
            "\t".join(HEADER),
            "zebra\tze-bra\ta striped horse\tzebra crossing\tanimal",  # word leaks into synonym
            "apple\tap-pl\tfruit of a tree\tpome\tfruit",  # split does not join to word
            "Cat\tcat\tsmall pet\tkitty\tanimal",  # uppercase, one syllable
        ],
    )
    raw = _read(p)
    rs = [dict(zip(HEADER, r)) for r in raw[1:]]
    assert any(_leak_key(r["word"]) in r["synonym"].lower() for r in rs)
    assert any(r["syllables"].replace("-", "") != r["word"] for r in rs)
    assert any(not WORD_RE.fullmatch(r["word"]) for r in rs)
    assert any(len(r["syllables"].split("-")) < 2 for r in rs)
    assert [r["word"] for r in rs] != sorted(r["word"] for r in rs)
