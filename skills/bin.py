"""BIN skill: binary arithmetic written with circled digits.

Numbers are written in binary using ⓪ (U+24EA) and ① (U+2460), with no
leading zeros; zero is "⓪".  A prompt looks like

    Compute: add(①⓪①, ①①)

and the expected completion is the expression echoed back plus the result:

    add(①⓪①, ①①) = ①⓪⓪⓪

Levels (operand ranges inclusive):

    1: 0-10          add, subtract
    2: 0-20          add, subtract, multiply
    3: 10-100        add, subtract, multiply
    4: 10-100        + leftshift, rightshift   (k in 1..3, written in decimal)
    5: 100-1000      + tobinary (decimal in), todecimal (decimal out)
    6: 1000-10000    all ops
    7: 10000-100000  all ops

subtract always has a >= b.  rightshift is floor division by 2**k.
tobinary/todecimal take one operand from the range.

Scoring rules (see `score`):

* Think blocks (`<think>...</think>`, an unclosed `<think>` up to the end,
  and everything up to a stray `</think>` whose opener was in the prompt)
  and pictographic emoji are removed first.  The circled digits live in
  U+2460-U+24FF and are never stripped.
* Only the first non-empty line counts; later lines are ignored.
* Empty / whitespace-only output -> incorrect, reason "empty".
* No `=` on that line -> incorrect, partial 0.0, reason "no_equals".
* The result is what follows the LAST `=`, with all whitespace dropped.  It
  must equal the expected result exactly: leading zeros, extra text after the
  result, or a longer string containing the answer are all wrong.
* If the text before the last `=` is non-empty and (whitespace dropped)
  differs from the problem's expression, the model echoed the wrong
  problem/op -> incorrect, reason "wrong_echo"; partial is still computed
  on the result.  An empty left side is fine.
* Partial credit = position-wise equal characters / max(len(got),
  len(expected)); 0.0 when both are empty.

Eval sets are fixed per level (seeded by EVAL_SEED and the level only).  Where
a level's whole space fits in 2 * EVAL_SIZE (level 1) the eval set is the
whole space and necessarily overlaps training.  Elsewhere the eval set is
held out: it is drawn from outside the spaces of such covered levels (level
1's problems are trained at level 1, so they cannot be held out at level 2),
and `generate` never emits a held-out problem of ANY level (`held_out_keys`):
the levels' spaces overlap (level 2's 0-20 holds level 1's 0-10, level 3's
10-100 holds some of level 2's, level 4 holds all of level 3's), so a held-out
set guarded only against its own level's generator would be trained on by its
neighbours.  Until 1.1.0, 19 of level 2's 100 eval problems were level-1
problems, trained on at level 1 and replayed at level 2.

Pure standard library: no torch, no prefect, no numpy.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

GENERATOR_ID = "bin"
GENERATOR_VERSION = "1.1.0"  # 1.1.0: no level generates another level's held-out eval problems
SKILL = "bin"
LEVELS = (1, 2, 3, 4, 5, 6, 7)
EVAL_SIZE = 100  # eval problems per level where the space is large
EVAL_SEED = 20261122  # fixed; eval sets never depend on the caller's seed

ZERO = "\u24ea"  # ⓪
ONE = "\u2460"  # ①

BINARY_OPS = ("add", "subtract", "multiply")
SHIFT_OPS = ("leftshift", "rightshift")
CONVERT_OPS = ("tobinary", "todecimal")
ALL_OPS = BINARY_OPS + SHIFT_OPS + CONVERT_OPS
SHIFT_RANGE = (1, 3)  # inclusive range of k for leftshift/rightshift

# Inclusive decimal operand range per level.
OPERAND_RANGE = {
    1: (0, 10),
    2: (0, 20),
    3: (10, 100),
    4: (10, 100),
    5: (100, 1000),
    6: (1000, 10000),
    7: (10000, 100000),
}

# Ops available per level, in a fixed order (enumeration and eval spreading
# rely on this order being stable).
LEVEL_OPS = {
    1: ("add", "subtract"),
    2: BINARY_OPS,
    3: BINARY_OPS,
    4: BINARY_OPS + SHIFT_OPS,
    5: ALL_OPS,
    6: ALL_OPS,
    7: ALL_OPS,
}

# Spaces larger than this are reported as None and refuse enumeration:
# levels 1-4 (at most ~21k problems) enumerate, levels 5-7 (millions+) don't.
MAX_ENUMERABLE = 50_000

_DECIMAL_RE = re.compile(r"0|[1-9][0-9]*")  # ASCII only, no leading zeros, no sign


# ---------------------------------------------------------------- conversion


def to_circled(n: int) -> str:
    """Return `n` in circled binary: 5 -> "①⓪①", 0 -> "⓪".

    Raises ValueError for negative numbers or non-integers.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"to_circled needs an int, got {n!r}")
    if n < 0:
        raise ValueError(f"to_circled needs a non-negative int, got {n}")
    return format(n, "b").replace("0", ZERO).replace("1", ONE)


def from_circled(s: str) -> int:
    """Inverse of `to_circled`.

    Accepts only canonical strings: non-empty, made of ⓪/① only, no leading
    zero (except "⓪" itself).  Raises ValueError naming the offending char.
    """
    if not isinstance(s, str) or not s:
        raise ValueError(f"from_circled needs a non-empty string, got {s!r}")
    for i, ch in enumerate(s):
        if ch not in (ZERO, ONE):
            raise ValueError(
                f"from_circled: bad char {ch!r} (U+{ord(ch):04X}) at position {i} in {s!r}"
            )
    if len(s) > 1 and s[0] == ZERO:
        raise ValueError(f"from_circled: leading zero {ZERO!r} in {s!r}")
    return int(s.replace(ZERO, "0").replace(ONE, "1"), 2)


def _parse_decimal(s: str) -> int:
    """Parse a canonical ASCII decimal; int() alone would accept "+5", "1_0", "٣"."""
    if not _DECIMAL_RE.fullmatch(s):
        raise ValueError(f"not a canonical decimal number: {s!r}")
    return int(s)


# ------------------------------------------------------------------- problem


def _arity(op: str) -> int:
    return 1 if op in CONVERT_OPS else 2


@dataclass(frozen=True)
class Problem:
    """One BIN problem.

    op:    one of ALL_OPS.
    args:  decimal operands; (a, b) for add/subtract/multiply, (a, k) for
           shifts, (a,) for tobinary/todecimal.
    level: the level it was generated for; 0 when unknown (parse_prompt).

    Construction validates op, arity, non-negative int args, subtract a >= b
    and shift k in 1..3; it does not check the level's operand range.
    """

    op: str
    args: tuple[int, ...]
    level: int

    def __post_init__(self) -> None:
        if self.op not in ALL_OPS:
            raise ValueError(f"unknown BIN op {self.op!r}; expected one of {ALL_OPS}")
        if not isinstance(self.args, tuple) or len(self.args) != _arity(self.op):
            raise ValueError(
                f"{self.op} takes {_arity(self.op)} args as a tuple, got {self.args!r}"
            )
        for a in self.args:
            if isinstance(a, bool) or not isinstance(a, int) or a < 0:
                raise ValueError(f"BIN args must be non-negative ints, got {self.args!r}")
        if self.op == "subtract" and self.args[0] < self.args[1]:
            raise ValueError(f"subtract needs a >= b, got {self.args!r}")
        if self.op in SHIFT_OPS and not SHIFT_RANGE[0] <= self.args[1] <= SHIFT_RANGE[1]:
            raise ValueError(f"{self.op} needs k in 1..3, got {self.args[1]}")
        if self.level != 0 and self.level not in LEVELS:
            raise ValueError(f"level must be 0 (unknown) or one of {LEVELS}, got {self.level!r}")

    @property
    def expression(self) -> str:
        """E.g. "add(①⓪①, ①①)", "leftshift(①⓪①, 2)", "tobinary(37)", "todecimal(①⓪⓪①⓪①)"."""
        if self.op in BINARY_OPS:
            a, b = self.args
            return f"{self.op}({to_circled(a)}, {to_circled(b)})"
        if self.op in SHIFT_OPS:
            a, k = self.args
            return f"{self.op}({to_circled(a)}, {k})"
        if self.op == "tobinary":
            return f"tobinary({self.args[0]})"
        return f"todecimal({to_circled(self.args[0])})"

    @property
    def prompt(self) -> str:
        """"Compute: " + expression."""
        return f"Compute: {self.expression}"

    @property
    def answer(self) -> str:
        """The result string alone: circled binary, or decimal digits for todecimal."""
        op, args = self.op, self.args
        if op == "add":
            return to_circled(args[0] + args[1])
        if op == "subtract":
            return to_circled(args[0] - args[1])
        if op == "multiply":
            return to_circled(args[0] * args[1])
        if op == "leftshift":
            return to_circled(args[0] << args[1])
        if op == "rightshift":
            return to_circled(args[0] >> args[1])  # floor division by 2**k
        if op == "tobinary":
            return to_circled(args[0])
        return str(args[0])  # todecimal

    @property
    def completion(self) -> str:
        """expression + " = " + answer."""
        return f"{self.expression} = {self.answer}"

    @property
    def key(self) -> str:
        """Stable identity, level-independent, e.g. "add:5,3" (used for eval hold-out)."""
        return f"{self.op}:{','.join(str(a) for a in self.args)}"


# --------------------------------------------------------------- level space


def _check_level(level: int) -> None:
    if isinstance(level, bool) or level not in LEVELS:
        raise ValueError(f"unknown BIN level {level!r}; expected one of {LEVELS}")


def _op_space_size(op: str, lo: int, hi: int) -> int:
    n = hi - lo + 1
    if op in ("add", "multiply"):
        return n * n
    if op == "subtract":
        return n * (n + 1) // 2  # ordered pairs with a >= b
    if op in SHIFT_OPS:
        return n * (SHIFT_RANGE[1] - SHIFT_RANGE[0] + 1)
    return n  # tobinary / todecimal


def _full_space_size(level: int) -> int:
    lo, hi = OPERAND_RANGE[level]
    return sum(_op_space_size(op, lo, hi) for op in LEVEL_OPS[level])


def problem_space_size(level: int) -> int | None:
    """Exact number of distinct problems at `level`, or None if above MAX_ENUMERABLE.

    Level 1: 187, level 2: 1113, level 3: 20748, level 4: 21294; 5-7: None.
    Raises ValueError for an unknown level.
    """
    _check_level(level)
    size = _full_space_size(level)
    return size if size <= MAX_ENUMERABLE else None


def enumerate_problems(level: int) -> list[Problem]:
    """All distinct problems at `level`, in a deterministic order (ops in
    LEVEL_OPS order, operands ascending).

    Raises ValueError for an unknown level or one whose space is too large.
    """
    if problem_space_size(level) is None:
        raise ValueError(
            f"BIN level {level} has {_full_space_size(level)} problems, more than "
            f"MAX_ENUMERABLE={MAX_ENUMERABLE}; it cannot be enumerated"
        )
    lo, hi = OPERAND_RANGE[level]
    operands = range(lo, hi + 1)
    ks = range(SHIFT_RANGE[0], SHIFT_RANGE[1] + 1)
    out: list[Problem] = []
    for op in LEVEL_OPS[level]:
        if op in ("add", "multiply"):
            out.extend(Problem(op, (a, b), level) for a in operands for b in operands)
        elif op == "subtract":
            out.extend(Problem(op, (a, b), level) for a in operands for b in operands if a >= b)
        elif op in SHIFT_OPS:
            out.extend(Problem(op, (a, k), level) for a in operands for k in ks)
        else:
            out.extend(Problem(op, (a,), level) for a in operands)
    return out


def covers_space(level: int) -> bool:
    """True where the whole space is at most 2 * EVAL_SIZE (only level 1).

    Such a level's eval set is its entire space, so it overlaps training.
    """
    size = problem_space_size(level)
    return size is not None and size <= 2 * EVAL_SIZE


def _sample_args(rng: random.Random, op: str, level: int) -> tuple[int, ...]:
    lo, hi = OPERAND_RANGE[level]
    if op == "subtract":
        # Sorting two draws keeps a >= b without a rejection loop.
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        return (max(a, b), min(a, b))
    if op in ("add", "multiply"):
        return (rng.randint(lo, hi), rng.randint(lo, hi))
    if op in SHIFT_OPS:
        return (rng.randint(lo, hi), rng.randint(*SHIFT_RANGE))
    return (rng.randint(lo, hi),)


# ------------------------------------------------------------------ eval set


@functools.lru_cache(maxsize=None)
def _covered_keys() -> frozenset[str]:
    """Keys of every problem of the levels whose eval set is their whole space (trained on by design)."""
    return frozenset(p.key for lv in LEVELS if covers_space(lv) for p in enumerate_problems(lv))


@functools.lru_cache(maxsize=None)
def _eval_tuple(level: int) -> tuple[Problem, ...]:
    _check_level(level)
    if covers_space(level):
        return tuple(enumerate_problems(level))
    # Seeded by EVAL_SEED and level only, so the eval set never moves with the
    # caller's seed (or the generator version).
    rng = random.Random(f"{GENERATOR_ID}:eval:{EVAL_SEED}:{level}")
    ops = LEVEL_OPS[level]
    seen: set[str] = set(_covered_keys())   # a covered level trains on these: they cannot be held out
    out: list[Problem] = []
    while len(out) < EVAL_SIZE:
        op = ops[len(out) % len(ops)]  # round-robin spreads ops evenly
        problem = Problem(op, _sample_args(rng, op, level), level)
        if problem.key not in seen:
            seen.add(problem.key)
            out.append(problem)
    return tuple(out)


def eval_problems(level: int) -> list[Problem]:
    """The fixed eval set for `level` (a fresh list each call).

    covers_space(level) -> the whole enumerated space; otherwise EVAL_SIZE
    distinct problems with ops assigned round-robin over the level's ops.
    Deterministic: depends only on EVAL_SEED and level.
    """
    return list(_eval_tuple(level))


@functools.lru_cache(maxsize=None)
def eval_keys(level: int) -> frozenset[str]:
    """Keys of eval_problems(level); cached."""
    return frozenset(p.key for p in _eval_tuple(level))


@functools.lru_cache(maxsize=None)
def _all_held_out() -> frozenset[str]:
    return frozenset().union(*(eval_keys(lv) for lv in LEVELS if not covers_space(lv)))


def held_out_keys(level: int) -> frozenset[str]:
    """Keys no problem generated at ``level`` may have: the held-out eval problems of every level (a key is
    level-independent and the levels' spaces overlap), never a covered level's (``_eval_tuple`` keeps the two
    apart). ``level`` is checked; the answer is the same for every level."""
    _check_level(level)
    return _all_held_out()


# ---------------------------------------------------------------- generation


def generate(level: int, count: int, seed: int) -> list[Problem]:
    """`count` problems at `level`, deterministic in (level, seed).

    Uses a private random.Random seeded from generator id/version, level and
    seed (never the global RNG).  Each op is drawn uniformly from the level's
    ops.  Problems whose key is held out at any level (`held_out_keys`) are
    re-drawn (same op), so training never sees a held-out eval problem.
    Duplicates are allowed.  Raises ValueError for an unknown level or a
    negative / non-int count.
    """
    _check_level(level)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    rng = random.Random(f"{GENERATOR_ID}:{GENERATOR_VERSION}:{level}:{seed}")
    held_out = held_out_keys(level)
    ops = LEVEL_OPS[level]
    out: list[Problem] = []
    for _ in range(count):
        op = rng.choice(ops)
        # Re-draw only the operands so the op mix stays uniform.  Terminates:
        # every op's space far exceeds the held-out problems inside it (level
        # 1: none; level 2: 33-34 per op of >= 231).
        problem = Problem(op, _sample_args(rng, op, level), level)
        while problem.key in held_out:
            problem = Problem(op, _sample_args(rng, op, level), level)
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


_PROMPT_RE = re.compile(r"Compute:\s*([a-z]+)\((.*)\)", re.DOTALL)


def parse_prompt(prompt: str) -> Problem | None:
    """Recover a Problem (level=0) from e.g. "Compute: add(①⓪①, ①①)".

    Tolerates surrounding whitespace and spacing around commas; operands must
    be canonical (no leading zeros).  Returns None for anything that is not a
    valid BIN prompt.
    """
    if not isinstance(prompt, str):
        return None
    match = _PROMPT_RE.fullmatch(prompt.strip())
    if match is None:
        return None
    op, inner = match.group(1), match.group(2)
    if op not in ALL_OPS:
        return None
    parts = [p.strip() for p in inner.split(",")]
    if len(parts) != _arity(op):
        return None
    try:
        if op in BINARY_OPS:
            args = (from_circled(parts[0]), from_circled(parts[1]))
        elif op in SHIFT_OPS:
            args = (from_circled(parts[0]), _parse_decimal(parts[1]))
        elif op == "tobinary":
            args = (_parse_decimal(parts[0]),)
        else:
            args = (from_circled(parts[0]),)
        return Problem(op, args, 0)
    except ValueError:
        return None


# ------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Score:
    """correct: exact match and no wrong echo.  partial: in [0, 1].
    got: extracted result ("" if none).  reason: one of "correct",
    "wrong_result", "no_equals", "wrong_echo", "empty"."""

    correct: bool
    partial: float
    got: str
    reason: str


_THINK_CLOSED_RE = re.compile(r"<think>.*?</think>", re.DOTALL)
_THINK_OPEN_RE = re.compile(r"<think>.*\Z", re.DOTALL)
# A lone "</think>" means the opener was part of the chat template's prompt:
# everything before it is reasoning.
_THINK_ORPHAN_CLOSE_RE = re.compile(r"\A.*</think>", re.DOTALL)

# Pictographic emoji and their glue.  Deliberately excludes U+2460-U+24FF
# (enclosed alphanumerics), where ① and ⓪ live.
_EMOJI_RE = re.compile(
    "["
    "\U0001F000-\U0001FAFF"  # mahjong .. symbols & pictographs ext-A (incl. flags)
    "\u2300-\u23FF"  # misc technical: ⌚ ⏰ ⏳ ...
    "\u2600-\u27BF"  # misc symbols, dingbats
    "\u2B00-\u2BFF"  # arrows/stars: ⭐ ⬛ ...
    "\uFE00-\uFE0F"  # variation selectors
    "\u200D"  # zero-width joiner
    "\u20E3"  # combining keycap
    "\U000E0020-\U000E007F"  # tag characters (subdivision flags)
    "]+"
)


def _drop_whitespace(s: str) -> str:
    return "".join(s.split())


def _partial(got: str, expected: str) -> float:
    longest = max(len(got), len(expected))
    if longest == 0:
        return 0.0
    return sum(a == b for a, b in zip(got, expected)) / longest


def strip_reasoning(output: str) -> str:
    """A model output without think blocks and emoji runs (shared by every skill's scorer)."""
    text = _THINK_CLOSED_RE.sub("", output)
    text = _THINK_OPEN_RE.sub("", text)
    text = _THINK_ORPHAN_CLOSE_RE.sub("", text)
    return _EMOJI_RE.sub("", text)


def score(output: str, problem: Problem) -> Score:
    """Score a model output against `problem` (rules in the module docstring)."""
    text = strip_reasoning(output)

    line = next((ln for ln in text.splitlines() if ln.strip()), None)
    if line is None:
        return Score(False, 0.0, "", "empty")
    if "=" not in line:
        return Score(False, 0.0, "", "no_equals")

    left, _, right = line.rpartition("=")
    got = _drop_whitespace(right)
    expected = problem.answer
    partial = _partial(got, expected)

    echoed = _drop_whitespace(left)
    if echoed and echoed != _drop_whitespace(problem.expression):
        return Score(False, partial, got, "wrong_echo")
    if got == expected:
        return Score(True, 1.0, got, "correct")
    return Score(False, partial, got, "wrong_result")
