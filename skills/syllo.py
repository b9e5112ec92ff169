"""SYLLO skill: syllable-tile word puzzles (not syllogisms).

Each puzzle hides a few words.  Every word has a numbered slot line with one
blank per syllable and a clue; the syllable tiles of all words, shuffled
together with a few red-herring tiles, form the bank.  A prompt looks like

    SYLLO: spell each clue's hidden word with tiles from the syllable bank, ...

    1. ___ ___ — in addition
    2. ___ ___ ___ — a social unit living together
    ...

    Syllable bank: ly | al | fam | so | i | ...

and the expected completion is one line of compact JSON, solutions in clue
order, leftover tiles sorted:

    {"solutions":[{"ans_num":1,"syllables":["al","so"],"answer":"ALSO"},
     {"ans_num":2,"syllables":["fam","i","ly"],"answer":"FAMILY"},...],"unused_tiles":[]}

(one line in reality).  Levels:

    level  words  red herrings  clue types
    1      4      0             definition
    2      5      0             definition
    3      6      1             definition, synonym
    4      7      2             definition, synonym, category
    5      8      3             definition, synonym, category

Words come from the project's own lexicon, `syllo_lexicon.tsv` beside this
module (see `load_lexicon`).  Words in a puzzle are distinct; red herrings
are distinct syllables of other lexicon words that are not among the
puzzle's own tiles.  A clue that contains its own answer is never used.

Scoring rules (see `score`):

* Think blocks (`<think>...</think>`, an unclosed `<think>` up to the end,
  and everything up to a stray `</think>`) and pictographic emoji are
  removed first, as in BIN.
* Empty / whitespace-only output -> reason "empty".  No `{` at all ->
  "no_json".  The answer is the first JSON object (scanning each `{` from
  the left) that decodes and has a "solutions" key; if there is none, or its
  "solutions" is not a list -> "bad_json" (truncated JSON lands here).
* Answers are the "answer" strings of the solution entries, stripped and
  uppercased.  Correct iff their multiset equals the puzzle's words.
  Partial credit = size of the multiset intersection / max(expected count,
  answers given), so listing extra guesses never earns full credit.
  Otherwise reason "wrong_answers".
* strict=True additionally requires, in this order: every entry's
  `syllables` is a list of bank tiles joining to its answer
  ("strict_syllables"); the tiles used plus `unused_tiles` equal the bank as
  multisets ("strict_inventory"; a missing `unused_tiles` counts as []);
  every `ans_num` is an int naming the clue of its own answer, each clue
  once ("strict_numbering").  Tiles compare case-insensitively.  A strict
  failure keeps the answers' partial credit.

Eval sets are fixed per level (seeded by EVAL_SEED and the level only) and
hold EVAL_SIZE distinct puzzles; a problem's key is its sorted word set, and
`generate` never emits a puzzle whose key is in the eval set.  The space is
far too large to enumerate.  Eval sets (and all generated puzzles) depend on
the lexicon's content: bump GENERATOR_VERSION when the lexicon changes.

The old system's `syllo_v1` records are read by `skills/syllo_v1.py` (the
compatibility reader, kept apart from the skill).

Pure standard library: no torch, no prefect, no numpy.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from skills.bin import strip_reasoning

GENERATOR_ID = "syllo"
GENERATOR_VERSION = "1.0.0"
SKILL = "syllo"
LEVELS = (1, 2, 3, 4, 5)
EVAL_SIZE = 100  # eval puzzles per level
EVAL_SEED = 20261123  # fixed; eval sets never depend on the caller's seed

WORDS_PER_LEVEL = {1: 4, 2: 5, 3: 6, 4: 7, 5: 8}
RED_HERRINGS = {1: 0, 2: 0, 3: 1, 4: 2, 5: 3}
CLUE_TYPES = ("definition", "synonym", "category")
LEVEL_CLUE_TYPES = {
    1: ("definition",),
    2: ("definition",),
    3: ("definition", "synonym"),
    4: CLUE_TYPES,
    5: CLUE_TYPES,
}

# How a lexicon field becomes clue text, per clue type.
CLUE_FORMATS = {"definition": "{}", "synonym": "Synonym: {}", "category": "Category: {}"}

LEXICON_PATH = Path(__file__).with_name("syllo_lexicon.tsv")
LEXICON_HEADER = ("word", "syllables", "definition", "synonym", "category")

SLOT = "___"
DASH = "\u2014"  # — between a slot line's blanks and its clue

_WORD_RE = re.compile(r"[^\W\d_]+")  # letters only (any script)
_TILE_BAD_RE = re.compile(r"[\s|]")  # a tile may not hold whitespace or the bank separator


# ------------------------------------------------------------------- lexicon


@dataclass(frozen=True)
class LexiconEntry:
    """One lexicon row.  synonym / category may be "" (that clue type is then unavailable)."""

    word: str
    syllables: tuple[str, ...]
    definition: str
    synonym: str
    category: str

    def clue_text(self, clue_type: str) -> str | None:
        """The clue for `clue_type`, or None when the field is empty or contains the word itself."""
        field = {"definition": self.definition, "synonym": self.synonym, "category": self.category}[clue_type]
        if not field or self.word.lower() in field.lower():
            return None
        return CLUE_FORMATS[clue_type].format(field)


def load_lexicon(path: str | Path | None = None) -> tuple[LexiconEntry, ...]:
    """The lexicon's entries in file order (cached per path).

    `path` defaults to LEXICON_PATH (read at call time, so tests may point it
    elsewhere).  The file is UTF-8 TSV with the header
    `word  syllables  definition  synonym  category`; syllables are
    hyphen-separated (`fam-i-ly`).  Blank lines are skipped and fields are
    stripped.  Raises ValueError naming the line and the problem for a bad
    header, a wrong number of columns, a word that is not lowercase letters,
    syllables that are empty or do not join to the word, an empty
    definition, or a duplicate word; and for a file with no entries.
    """
    return _load_lexicon(str(Path(path) if path is not None else LEXICON_PATH))


@functools.lru_cache(maxsize=None)
def _load_lexicon(path: str) -> tuple[LexiconEntry, ...]:
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    if not lines or tuple(f.strip() for f in lines[0].split("\t")) != LEXICON_HEADER:
        got = lines[0] if lines else ""
        raise ValueError(f"{path}:1: header must be {chr(9).join(LEXICON_HEADER)!r}, got {got!r}")
    entries: list[LexiconEntry] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        where = f"{path}:{lineno}"
        if len(fields) != len(LEXICON_HEADER):
            raise ValueError(f"{where}: expected {len(LEXICON_HEADER)} tab-separated columns, got {len(fields)}: {line!r}")
        word, syl_field, definition, synonym, category = fields
        if not _WORD_RE.fullmatch(word) or word != word.lower():
            raise ValueError(f"{where}: word must be lowercase letters only, got {word!r}")
        syllables = tuple(s.strip() for s in syl_field.split("-"))
        if any(not s for s in syllables):
            raise ValueError(f"{where}: empty syllable in {syl_field!r} for {word!r}")
        if "".join(syllables) != word:
            raise ValueError(f"{where}: syllables {syl_field!r} join to {''.join(syllables)!r}, not {word!r}")
        if not definition:
            raise ValueError(f"{where}: empty definition for {word!r}")
        if word in first_line:
            raise ValueError(f"{where}: duplicate word {word!r} (first on line {first_line[word]})")
        first_line[word] = lineno
        entries.append(LexiconEntry(word, syllables, definition, synonym, category))
    if not entries:
        raise ValueError(f"{path}: the lexicon has no entries")
    return tuple(entries)


# ------------------------------------------------------------------- problem


def _norm_tile(tile: str) -> str:
    return tile.strip().casefold()


@dataclass(frozen=True)
class Word:
    """One hidden word: its syllable tiles in order, its clue text and the clue's type.

    clue_type is "definition", "synonym" or "category" for generated puzzles;
    puzzles read from old records keep the record's hint_type as given.
    Construction checks that the syllables join to the word (ignoring case),
    that tiles hold no whitespace or "|", and that the clue is one line.
    """

    word: str
    syllables: tuple[str, ...]
    clue: str
    clue_type: str

    def __post_init__(self) -> None:
        if not isinstance(self.word, str) or not self.word:
            raise ValueError(f"word must be a non-empty string, got {self.word!r}")
        if not isinstance(self.syllables, tuple) or not self.syllables:
            raise ValueError(f"{self.word!r}: syllables must be a non-empty tuple, got {self.syllables!r}")
        for s in self.syllables:
            if not isinstance(s, str) or not s or _TILE_BAD_RE.search(s):
                raise ValueError(f"{self.word!r}: bad syllable tile {s!r}")
        if "".join(self.syllables).lower() != self.word.lower():
            raise ValueError(f"{self.word!r}: syllables {list(self.syllables)} do not join to the word")
        if not isinstance(self.clue, str) or not self.clue.strip() or "\n" in self.clue or "\r" in self.clue:
            raise ValueError(f"{self.word!r}: clue must be a non-empty single line, got {self.clue!r}")
        if not isinstance(self.clue_type, str) or not self.clue_type:
            raise ValueError(f"{self.word!r}: clue_type must be a non-empty string, got {self.clue_type!r}")

    @property
    def answer(self) -> str:
        return self.word.upper()


@dataclass(frozen=True)
class Problem:
    """One SYLLO puzzle.

    words:        the hidden words in clue order (clue i is words[i-1]).
    bank:         the shuffled tiles: every word's syllables plus the red herrings.
    red_herrings: the tiles no word uses (also in the bank).
    level:        dojo level 1-5.
    puzzle_id:    a label; not part of the key.

    Construction checks the bank balances (bank == all syllables + red
    herrings, as multisets) and the level; it does not check the level's
    word / red-herring counts (old records differ).
    """

    words: tuple[Word, ...]
    bank: tuple[str, ...]
    red_herrings: tuple[str, ...]
    level: int
    puzzle_id: str

    def __post_init__(self) -> None:
        if not isinstance(self.words, tuple) or not self.words or not all(isinstance(w, Word) for w in self.words):
            raise ValueError(f"words must be a non-empty tuple of Word, got {self.words!r}")
        for name in ("bank", "red_herrings"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(t, str) and t for t in value):
                raise ValueError(f"{name} must be a tuple of non-empty strings, got {value!r}")
        for t in self.red_herrings:
            if _TILE_BAD_RE.search(t):
                raise ValueError(f"bad red-herring tile {t!r}")
        needed = Counter(s for w in self.words for s in w.syllables) + Counter(self.red_herrings)
        if Counter(self.bank) != needed:
            missing = sorted((needed - Counter(self.bank)).elements())
            extra = sorted((Counter(self.bank) - needed).elements())
            raise ValueError(f"bank does not balance: missing {missing}, unaccounted {extra}")
        if isinstance(self.level, bool) or self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        if not isinstance(self.puzzle_id, str):
            raise ValueError(f"puzzle_id must be a string, got {self.puzzle_id!r}")

    @property
    def prompt(self) -> str:
        """Instructions, the numbered slot lines, the bank and the output contract."""
        lines = ["SYLLO: spell each clue's hidden word with tiles from the syllable bank, one tile per blank.", ""]
        for i, w in enumerate(self.words, start=1):
            lines.append(f"{i}. {' '.join([SLOT] * len(w.syllables))} {DASH} {w.clue}")
        lines += ["", "Syllable bank: " + " | ".join(self.bank), ""]
        k = len(self.red_herrings)
        if k == 0:
            lines.append("Use every tile exactly once.")
        elif k == 1:
            lines.append("Use each tile at most once; 1 tile is a red herring that fits no word.")
        else:
            lines.append(f"Use each tile at most once; {k} tiles are red herrings that fit no word.")
        lines += [
            'Reply with one line of JSON: {"solutions":[{"ans_num":1,"syllables":["..."],"answer":"WORD"},...],'
            '"unused_tiles":[...]}',
            "One entry per clue in clue order, answers in UPPERCASE, unused tiles sorted ([] if none).",
        ]
        return "\n".join(lines)

    @property
    def answer(self) -> str:
        """The one-line JSON answer (compact separators, clue order, unused_tiles sorted)."""
        return _answer_json(
            [(i, list(w.syllables), w.answer) for i, w in enumerate(self.words, start=1)],
            sorted(self.red_herrings),
        )

    @property
    def completion(self) -> str:
        """Same as `answer`: the assistant's whole reply."""
        return self.answer

    @property
    def key(self) -> str:
        """Stable identity: "syllo:" + the sorted words, e.g. "syllo:also,family,..." (eval hold-out)."""
        return "syllo:" + ",".join(sorted(w.word.lower() for w in self.words))


def _answer_json(solutions: list[tuple[int, list[str], str]], unused: list[str]) -> str:
    payload = {
        "solutions": [{"ans_num": n, "syllables": syl, "answer": ans} for n, syl, ans in solutions],
        "unused_tiles": unused,
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


# ------------------------------------------------------------------ level api


def _check_level(level: int) -> None:
    if isinstance(level, bool) or level not in LEVELS:
        raise ValueError(f"unknown SYLLO level {level!r}; expected one of {LEVELS}")


def problem_space_size(level: int) -> int | None:
    """Always None: the space (word sets x clues x banks) is far too large to count usefully."""
    _check_level(level)
    return None


def covers_space(level: int) -> bool:
    """Always False: eval sets never cover the space, so they never overlap training."""
    _check_level(level)
    return False


# ---------------------------------------------------------------- generation


@functools.lru_cache(maxsize=None)
def _pools(path: str) -> tuple[tuple[LexiconEntry, ...], tuple[str, ...]]:
    """(entries usable at every level, sorted by word; all distinct tiles, sorted).

    An entry is usable when its definition is a valid clue (non-empty, does
    not contain the word).  Sorting keeps puzzles stable if rows are reordered.
    """
    lexicon = _load_lexicon(path)
    usable = tuple(sorted((e for e in lexicon if e.clue_text("definition")), key=lambda e: e.word))
    tiles = tuple(sorted({s for e in lexicon for s in e.syllables}))
    return usable, tiles


def _build(rng: random.Random, level: int, path: str, puzzle_id: str) -> Problem:
    usable, all_tiles = _pools(path)
    n, k = WORDS_PER_LEVEL[level], RED_HERRINGS[level]
    if len(usable) < n:
        raise ValueError(f"lexicon {path} has {len(usable)} usable words; level {level} needs {n}")
    words = []
    for entry in rng.sample(usable, n):
        types = [t for t in LEVEL_CLUE_TYPES[level] if entry.clue_text(t)]
        clue_type = rng.choice(types)
        words.append(Word(entry.word, entry.syllables, entry.clue_text(clue_type), clue_type))
    own = {s for w in words for s in w.syllables}
    candidates = [t for t in all_tiles if t not in own]
    if len(candidates) < k:
        raise ValueError(f"lexicon {path} has too few other tiles for {k} red herrings")
    herrings = rng.sample(candidates, k)
    bank = [s for w in words for s in w.syllables] + herrings
    rng.shuffle(bank)
    return Problem(tuple(words), tuple(bank), tuple(herrings), level, puzzle_id)


@functools.lru_cache(maxsize=None)
def _eval_tuple(level: int, path: str) -> tuple[Problem, ...]:
    # Seeded by EVAL_SEED and level only, so the eval set never moves with the
    # caller's seed (or the generator version).
    rng = random.Random(f"{GENERATOR_ID}:eval:{EVAL_SEED}:{level}")
    seen: set[str] = set()
    out: list[Problem] = []
    while len(out) < EVAL_SIZE:
        problem = _build(rng, level, path, f"syllo-eval-L{level}-{len(out):03d}")
        if problem.key not in seen:
            seen.add(problem.key)
            out.append(problem)
    return tuple(out)


def eval_problems(level: int) -> list[Problem]:
    """The fixed eval set for `level`: EVAL_SIZE puzzles with distinct keys (a fresh list each call).

    Deterministic: depends only on EVAL_SEED, the level and the lexicon.
    """
    _check_level(level)
    return list(_eval_tuple(level, str(LEXICON_PATH)))


def eval_keys(level: int) -> frozenset[str]:
    """Keys of eval_problems(level); cached."""
    _check_level(level)
    return _eval_keys(level, str(LEXICON_PATH))


@functools.lru_cache(maxsize=None)
def _eval_keys(level: int, path: str) -> frozenset[str]:
    return frozenset(p.key for p in _eval_tuple(level, path))


def held_out_keys(level: int) -> frozenset[str]:
    """Keys no puzzle generated at ``level`` may have: the level's eval set (a puzzle's key includes its words
    and level size, so levels do not share puzzles as BIN's overlapping operand ranges do); none where the eval
    set covers the level's space."""
    return frozenset() if covers_space(level) else eval_keys(level)


def generate(level: int, count: int, seed: int) -> list[Problem]:
    """`count` puzzles at `level`, deterministic in (level, seed).

    Uses a private random.Random seeded from generator id/version, level and
    seed (never the global RNG).  Words are drawn without replacement, clue
    types uniformly from the level's types the word has, red herrings from
    the other words' tiles; the bank is shuffled.  A puzzle whose key is in
    eval_keys(level) is re-drawn.  Duplicates across a batch are allowed.
    puzzle_id is "syllo-L{level}-s{seed}-{index:05d}".  Raises ValueError for
    an unknown level or a negative / non-int count.
    """
    _check_level(level)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    path = str(LEXICON_PATH)
    rng = random.Random(f"{GENERATOR_ID}:{GENERATOR_VERSION}:{level}:{seed}")
    held_out = _eval_keys(level, path)
    out: list[Problem] = []
    for i in range(count):
        puzzle_id = f"syllo-L{level}-s{seed}-{i:05d}"
        problem = _build(rng, level, path, puzzle_id)
        while problem.key in held_out:
            problem = _build(rng, level, path, puzzle_id)
        out.append(problem)
    return out


def to_chat(problem: Problem) -> dict:
    """Chat-format training example: user prompt, assistant completion."""
    return {
        "messages": [
            {"role": "user", "content": problem.prompt},
            {"role": "assistant", "content": problem.completion},
        ]
    }


# ------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Score:
    """correct: answers match (and, when strict, the strict checks pass).
    partial: in [0, 1].  got: the answers found, uppercased, comma-joined
    ("" if none).  reason: one of "correct", "wrong_answers", "no_json",
    "bad_json", "empty", "strict_syllables", "strict_inventory",
    "strict_numbering"."""

    correct: bool
    partial: float
    got: str
    reason: str


_DECODER = json.JSONDecoder()


def _clean(output: str) -> str:
    return strip_reasoning(output)   # the same think/emoji stripping as BIN


def _first_answer_object(text: str) -> dict | None:
    """The first JSON object, scanning each "{" from the left, that has a "solutions" key."""
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = _DECODER.raw_decode(text, start)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "solutions" in obj:
            return obj
        start = text.find("{", start + 1)
    return None


def _strict_failure(obj: dict, entries: list, problem: Problem) -> str | None:
    bank = Counter(_norm_tile(t) for t in problem.bank)
    used: Counter = Counter()
    for e in entries:
        syl = e.get("syllables") if isinstance(e, dict) else None
        ans = e.get("answer") if isinstance(e, dict) else None
        if not isinstance(ans, str) or not isinstance(syl, list) or not syl:
            return "strict_syllables"
        if not all(isinstance(s, str) and _norm_tile(s) in bank for s in syl):
            return "strict_syllables"
        if "".join(s.strip() for s in syl).upper() != ans.strip().upper():
            return "strict_syllables"
        used.update(_norm_tile(s) for s in syl)

    unused = obj.get("unused_tiles", [])
    if not isinstance(unused, list) or not all(isinstance(t, str) for t in unused):
        return "strict_inventory"
    if used + Counter(_norm_tile(t) for t in unused) != bank:
        return "strict_inventory"

    seen: set[int] = set()
    for e in entries:
        num = e.get("ans_num")
        if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= len(problem.words):
            return "strict_numbering"
        if num in seen or problem.words[num - 1].answer != e["answer"].strip().upper():
            return "strict_numbering"
        seen.add(num)
    return None


def score(output: str, problem: Problem, strict: bool = False) -> Score:
    """Score a model output against `problem` (rules in the module docstring)."""
    text = _clean(output)
    if not text.strip():
        return Score(False, 0.0, "", "empty")
    if "{" not in text:
        return Score(False, 0.0, "", "no_json")
    obj = _first_answer_object(text)
    if obj is None or not isinstance(obj["solutions"], list):
        return Score(False, 0.0, "", "bad_json")
    entries = obj["solutions"]
    answers = [
        e["answer"].strip().upper() for e in entries if isinstance(e, dict) and isinstance(e.get("answer"), str)
    ]
    got = ",".join(answers)
    expected = Counter(w.answer for w in problem.words)
    given = Counter(answers)
    matched = sum((expected & given).values())
    partial = matched / max(sum(expected.values()), len(answers))
    if given != expected:
        return Score(False, partial, got, "wrong_answers")
    if strict:
        failure = _strict_failure(obj, entries, problem)
        if failure is not None:
            return Score(False, partial, got, failure)
    return Score(True, 1.0, got, "correct")
