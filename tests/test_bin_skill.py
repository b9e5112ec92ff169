"""Tests for skills.bin: conversion, level spaces, eval hold-out, generation, scoring."""

import pytest

from skills import bin as B
from skills.bin import Problem, from_circled, score, to_circled

Z, O = "\u24ea", "\u2460"  # ⓪ ①


# ------------------------------------------------------------------ circled


def test_circled_known_values():
    assert to_circled(0) == "⓪"
    assert to_circled(1) == "①"
    assert to_circled(5) == "①⓪①"
    assert to_circled(37) == "①⓪⓪①⓪①"
    assert from_circled("①⓪⓪⓪") == 8


def test_circled_round_trip():
    for n in list(range(0, 300)) + [1023, 1024, 99999, 100000, 10**10]:
        assert from_circled(to_circled(n)) == n


def test_to_circled_rejects_negative():
    with pytest.raises(ValueError):
        to_circled(-1)


@pytest.mark.parametrize("bad", ["⓪①", "⓪⓪", "①2①", "101", "①⓪ ①", "", "③"])
def test_from_circled_rejects(bad):
    with pytest.raises(ValueError):
        from_circled(bad)


def test_from_circled_error_names_bad_char():
    with pytest.raises(ValueError, match="'2'"):
        from_circled("①2①")
    with pytest.raises(ValueError, match="leading zero"):
        from_circled("⓪①")


# ------------------------------------------------------------------- spaces


def test_level1_space():
    problems = B.enumerate_problems(1)
    assert len(problems) == 187
    assert len({p.key for p in problems}) == 187
    assert B.problem_space_size(1) == 187
    assert B.covers_space(1) is True
    assert {p.op for p in problems} == {"add", "subtract"}


def test_space_sizes():
    assert B.problem_space_size(2) == 441 + 231 + 441
    for level in (2, 3, 4):
        assert B.problem_space_size(level) == len({p.key for p in B.enumerate_problems(level)})
        assert B.covers_space(level) is False
    for level in (5, 6, 7):
        assert B.problem_space_size(level) is None
        assert B.covers_space(level) is False
        with pytest.raises(ValueError, match="cannot be enumerated"):
            B.enumerate_problems(level)


@pytest.mark.parametrize("bad", [0, 8, -1, "1", True])
def test_bad_level(bad):
    with pytest.raises(ValueError):
        B.generate(bad, 1, 0)
    with pytest.raises(ValueError):
        B.eval_problems(bad)
    with pytest.raises(ValueError):
        B.problem_space_size(bad)


def test_bad_count():
    with pytest.raises(ValueError):
        B.generate(1, -1, 0)
    assert B.generate(1, 0, 0) == []


# --------------------------------------------------------------------- eval


def test_eval_level1_is_whole_space():
    assert B.eval_problems(1) == B.enumerate_problems(1)


@pytest.mark.parametrize("level", [2, 3, 4, 5, 6, 7])
def test_eval_sets_fixed_distinct_spread(level):
    first = B.eval_problems(level)
    assert first == B.eval_problems(level)
    assert len(first) == B.EVAL_SIZE
    assert len({p.key for p in first}) == B.EVAL_SIZE
    assert B.eval_keys(level) == frozenset(p.key for p in first)
    counts = {op: sum(p.op == op for p in first) for op in B.LEVEL_OPS[level]}
    assert min(counts.values()) >= B.EVAL_SIZE // len(counts)


@pytest.mark.parametrize("level", [2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_generate_disjoint_from_eval(level, seed):
    keys = B.eval_keys(level)
    assert not any(p.key in keys for p in B.generate(level, 2000, seed))


@pytest.mark.parametrize("level", B.LEVELS)
def test_no_level_generates_any_level_s_held_out_problem(level):
    """The levels' spaces overlap (level 2's 0-20 holds level 1's 0-10; level 4 holds all of level 3), so each
    generator must avoid every level's held-out eval set, not only its own: level-3 files never hold a level-2
    eval problem, and replaying level 2 inside them (generate(2)) never does either."""
    held = B.held_out_keys(level)
    assert held == frozenset().union(*(B.eval_keys(lv) for lv in B.LEVELS if not B.covers_space(lv)))
    assert not any(p.key in held for p in B.generate(level, 3000, 11))


def test_held_out_sets_never_take_a_problem_a_covered_level_trains_on():
    """Level 1's eval set is its whole space and it trains on all of it, so a level-1 problem cannot be held out
    at level 2 (until 1.1.0, 19 of level 2's 100 eval problems were level-1 problems)."""
    level_one = {p.key for p in B.enumerate_problems(1)}
    for level in B.LEVELS[1:]:
        assert len(B.eval_keys(level)) == B.EVAL_SIZE and not B.eval_keys(level) & level_one
    assert not B.held_out_keys(1) & level_one          # level 1 generates its whole space, as before
    # and the cross-level guard is needed: level 3's space (10-100) holds some of level 2's eval problems
    crossing = B.eval_keys(2) & {p.key for p in B.enumerate_problems(3)}
    assert crossing and crossing <= B.held_out_keys(3)


def test_level2_generation_actually_needs_holdout():
    # Level 2 is small (1113); 2000 draws would hit the 100 eval problems
    # ~170 times without the hold-out, so the disjointness test is meaningful.
    drawn = {p.key for p in B.generate(2, 2000, 0)}
    assert len(drawn) > 700


# --------------------------------------------------------------- generation


def test_generate_deterministic_and_seed_dependent():
    for level in B.LEVELS:
        a = B.generate(level, 50, 7)
        assert a == B.generate(level, 50, 7)
        assert a != B.generate(level, 50, 8)


def test_generate_does_not_touch_global_rng():
    import random

    random.seed(1)
    expected = random.random()
    random.seed(1)
    B.generate(3, 100, 0)
    assert random.random() == expected


@pytest.mark.parametrize("level", B.LEVELS)
def test_generated_problems_respect_level(level):
    lo, hi = B.OPERAND_RANGE[level]
    problems = B.generate(level, 1500, 3)
    assert {p.op for p in problems} == set(B.LEVEL_OPS[level])
    for p in problems:
        assert p.level == level
        a = p.args[0]
        assert lo <= a <= hi
        if p.op in ("add", "subtract", "multiply"):
            assert lo <= p.args[1] <= hi
        if p.op == "subtract":
            assert p.args[0] >= p.args[1]
        if p.op in ("leftshift", "rightshift"):
            assert 1 <= p.args[1] <= 3
        if p.op in ("tobinary", "todecimal"):
            assert len(p.args) == 1


def test_level_op_sets():
    assert B.LEVEL_OPS[1] == ("add", "subtract")
    assert set(B.LEVEL_OPS[4]) == {"add", "subtract", "multiply", "leftshift", "rightshift"}
    assert set(B.LEVEL_OPS[5]) == set(B.LEVEL_OPS[7]) == set(B.ALL_OPS)


def _value(p: Problem) -> int:
    a = p.args[0]
    return {
        "add": lambda: a + p.args[1],
        "subtract": lambda: a - p.args[1],
        "multiply": lambda: a * p.args[1],
        "leftshift": lambda: a * 2 ** p.args[1],
        "rightshift": lambda: a // 2 ** p.args[1],
        "tobinary": lambda: a,
        "todecimal": lambda: a,
    }[p.op]()


@pytest.mark.parametrize("level", B.LEVELS)
def test_answers_are_right(level):
    for p in B.generate(level, 500, 11) + B.eval_problems(level):
        got = int(p.answer) if p.op == "todecimal" else from_circled(p.answer)
        assert got == _value(p)
        assert p.completion == f"{p.expression} = {p.answer}"
        assert p.prompt == f"Compute: {p.expression}"


def test_formats():
    assert Problem("add", (5, 3), 1).prompt == "Compute: add(①⓪①, ①①)"
    assert Problem("add", (5, 3), 1).completion == "add(①⓪①, ①①) = ①⓪⓪⓪"
    assert Problem("add", (5, 3), 1).key == "add:5,3"
    assert Problem("leftshift", (5, 2), 4).expression == "leftshift(①⓪①, 2)"
    assert Problem("rightshift", (5, 2), 4).answer == "①"
    assert Problem("tobinary", (37,), 5).completion == "tobinary(37) = ①⓪⓪①⓪①"
    assert Problem("todecimal", (37,), 5).completion == "todecimal(①⓪⓪①⓪①) = 37"
    assert Problem("subtract", (3, 3), 1).answer == "⓪"


def test_problem_validation():
    with pytest.raises(ValueError):
        Problem("subtract", (2, 3), 1)
    with pytest.raises(ValueError):
        Problem("divide", (2, 3), 1)
    with pytest.raises(ValueError):
        Problem("add", (2,), 1)
    with pytest.raises(ValueError):
        Problem("leftshift", (2, 4), 4)


def test_to_chat():
    p = Problem("add", (5, 3), 1)
    assert B.to_chat(p) == {
        "messages": [
            {"role": "user", "content": "Compute: add(①⓪①, ①①)"},
            {"role": "assistant", "content": "add(①⓪①, ①①) = ①⓪⓪⓪"},
        ]
    }


# ------------------------------------------------------------- parse_prompt


@pytest.mark.parametrize(
    "problem",
    [
        Problem("add", (5, 3), 0),
        Problem("subtract", (9, 0), 0),
        Problem("multiply", (0, 20), 0),
        Problem("leftshift", (77, 3), 0),
        Problem("rightshift", (10, 1), 0),
        Problem("tobinary", (37,), 0),
        Problem("todecimal", (37,), 0),
    ],
)
def test_parse_prompt_round_trip(problem):
    assert B.parse_prompt(problem.prompt) == problem


def test_parse_prompt_round_trip_generated():
    for level in B.LEVELS:
        for p in B.generate(level, 50, 2):
            parsed = B.parse_prompt(p.prompt)
            assert parsed is not None and parsed.level == 0
            assert (parsed.op, parsed.args) == (p.op, p.args)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "hello",
        "Compute: divide(①, ①)",
        "Compute: add(①⓪①)",
        "Compute: add(⓪①, ①)",
        "Compute: subtract(①, ①⓪)",
        "Compute: tobinary(①⓪)",
        "Compute: tobinary(037)",
        "Compute: leftshift(①, 9)",
        "What is 2+2?",
    ],
)
def test_parse_prompt_rejects(bad):
    assert B.parse_prompt(bad) is None


# ------------------------------------------------------------------ scoring

ADD = Problem("add", (5, 3), 1)  # add(①⓪①, ①①) = ①⓪⓪⓪


def test_score_exact():
    s = score("add(①⓪①, ①①) = ①⓪⓪⓪", ADD)
    assert s == B.Score(True, 1.0, "①⓪⓪⓪", "correct")


def test_score_surrounding_whitespace_and_empty_left():
    assert score("\n\n   add(①⓪①, ①①)   =   ①⓪⓪⓪  \n", ADD).correct
    assert score("add(①⓪①,①①)=①⓪⓪⓪", ADD).correct
    assert score("= ①⓪⓪⓪", ADD).correct


def test_score_leading_zeros_wrong():
    s = score("add(①⓪①, ①①) = ⓪①⓪⓪⓪", ADD)
    assert not s.correct and s.reason == "wrong_result"
    assert s.got == "⓪①⓪⓪⓪"


def test_score_extra_text_after_result_wrong():
    s = score("add(①⓪①, ①①) = ①⓪⓪⓪ which is 8", ADD)
    assert not s.correct and s.reason == "wrong_result"


def test_score_extra_lines_ignored():
    s = score("add(①⓪①, ①①) = ①⓪⓪⓪\nBecause 5 + 3 = 8.\nadd = ⓪", ADD)
    assert s.correct and s.reason == "correct"


def test_score_no_equals():
    s = score("①⓪⓪⓪\nadd(①⓪①, ①①) = ①⓪⓪⓪", ADD)
    assert s == B.Score(False, 0.0, "", "no_equals")


def test_score_wrong_echo():
    s = score("subtract(①⓪①, ①①) = ①⓪⓪⓪", ADD)
    assert not s.correct and s.reason == "wrong_echo"
    assert s.partial == 1.0 and s.got == "①⓪⓪⓪"
    assert score("add(①⓪①, ①⓪) = ①⓪⓪⓪", ADD).reason == "wrong_echo"
    # The prompt prefix is not part of the expression.
    assert score("Compute: add(①⓪①, ①①) = ①⓪⓪⓪", ADD).reason == "wrong_echo"


def test_score_substring_not_enough():
    s = score("add(①⓪①, ①①) = ①⓪⓪⓪①", ADD)
    assert not s.correct
    assert s.partial == pytest.approx(4 / 5)
    s = score("add(①⓪①, ①①) = ①⓪⓪", ADD)
    assert not s.correct
    assert s.partial == pytest.approx(3 / 4)


def test_score_think_and_emoji_stripped():
    out = "<think>5+3 = 8 so =①⓪⓪⓪?</think>\n🎉 add(①⓪①, ①①) = ①⓪⓪⓪ ✅\uFE0F"
    assert score(out, ADD).correct
    assert score("<think>hmm = ⓪</think>add(①⓪①, ①①) = ①⓪⓪⓪", ADD).correct
    # Unclosed think swallows everything after it.
    assert score("<think>add(①⓪①, ①①) = ①⓪⓪⓪", ADD).reason == "empty"
    assert score("add(①⓪①, ①①) = ①⓪⓪⓪\n<think>more", ADD).correct
    # Stray closer: the opener was in the chat template.
    assert score("reasoning = ⓪\n</think>\n\nadd(①⓪①, ①①) = ①⓪⓪⓪", ADD).correct
    # ZWJ emoji sequence between digits is removed; circled digits survive.
    assert score("= ①⓪👨\u200d👩\u200d👧⓪⓪", ADD).correct


def test_score_empty():
    for out in ["", "   ", "\n\t\n", "<think>x</think>", "🎉🎉"]:
        assert score(out, ADD) == B.Score(False, 0.0, "", "empty")


def test_score_partial_numbers():
    assert score("= ①⓪⓪①", ADD).partial == pytest.approx(3 / 4)
    assert score("= ⓪①①①", ADD).partial == 0.0
    assert score("= ①", ADD).partial == pytest.approx(1 / 4)
    s = score("add(①⓪①, ①①) =", ADD)
    assert (s.correct, s.partial, s.got, s.reason) == (False, 0.0, "", "wrong_result")
    assert B._partial("", "") == 0.0


def test_score_todecimal_and_shifts():
    p = Problem("todecimal", (37,), 5)
    assert score("todecimal(①⓪⓪①⓪①) = 37", p).correct
    assert not score("todecimal(①⓪⓪①⓪①) = 037", p).correct
    assert score("tobinary(37) = ①⓪⓪①⓪①", Problem("tobinary", (37,), 5)).correct
    q = Problem("leftshift", (5, 2), 4)
    assert score("leftshift(①⓪①, 2) = ①⓪①⓪⓪", q).correct
    assert score("rightshift(①⓪①, 2) = ①⓪①⓪⓪", q).reason == "wrong_echo"


def test_score_own_completion_always_correct():
    for level in B.LEVELS:
        for p in B.eval_problems(level)[:30]:
            assert score(p.completion, p).correct
