"""Tests for skills.syllo: lexicon, generation, eval hold-out, scoring, and the old system's syllo_v1 records."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from skills import syllo as S
from skills import syllo_v1 as V
from skills.syllo import Problem, Word, score

COMPAT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "compat" / "syllo_v1"


# --------------------------------------------------------------- fixtures


def _family_problem(red_herrings=("zo",)) -> Problem:
    """A hand-made 4-word puzzle independent of the lexicon."""
    words = (
        Word("always", ("al", "ways"), "without variation or change, in every case", "definition"),
        Word("believe", ("be", "lieve"), "be confident about something", "definition"),
        Word("family", ("fam", "i", "ly"), "a social unit living together", "definition"),
        Word("looking", ("look", "ing"), "Synonym: searching", "synonym"),
    )
    bank = ("ing", "fam", "ways", "al", "i", "look", "be", "ly", "lieve") + tuple(red_herrings)
    return Problem(words, bank, tuple(red_herrings), 1, "test-1")


def _payload(problem: Problem) -> dict:
    return json.loads(problem.completion)


def _dump(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"))


def _load_records():
    records = []
    for path in sorted(COMPAT_DIR.glob("level_*.jsonl")):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                records.append((f"{path.name}:{lineno}", json.loads(line)))
    return records


RECORDS = _load_records()


# ------------------------------------------------------------------ lexicon


def test_real_lexicon_loads():
    assert S.LEXICON_PATH == Path(S.__file__).with_name("syllo_lexicon.tsv")
    lexicon = S.load_lexicon()
    assert len(lexicon) >= 300
    assert S.load_lexicon() is lexicon  # cached
    assert len({e.word for e in lexicon}) == len(lexicon)
    for e in lexicon:
        assert "".join(e.syllables) == e.word and e.definition
    # Enough clue material for every level's clue types.
    assert sum(bool(e.clue_text("definition")) for e in lexicon) >= 300
    assert sum(bool(e.clue_text("synonym")) for e in lexicon) >= 50
    assert sum(bool(e.clue_text("category")) for e in lexicon) >= 50


HEADER = "word\tsyllables\tdefinition\tsynonym\tcategory\n"


@pytest.mark.parametrize(
    "body, match",
    [
        ("family\tfam-i-ly\ta social unit\tkin\tgroup\nalso\tal-so\tin addition\n", r":3: expected 5"),
        ("family\tfam-i-ly\ta social unit\tkin\tgroup\nalso\tal-sa\tin addition\t\t\n", r":3: syllables 'al-sa' join"),
        ("family\tfam--ly\ta social unit\tkin\tgroup\n", r":2: empty syllable"),
        ("family\tfam-i-ly\t\tkin\tgroup\n", r":2: empty definition"),
        ("Family\tFam-i-ly\ta social unit\tkin\tgroup\n", r":2: word must be lowercase letters"),
        ("family\tfam-i-ly\ta\t\t\n\nfamily\tfam-i-ly\tb\t\t\n", r":4: duplicate word 'family' \(first on line 2\)"),
    ],
)
def test_malformed_lexicon_rows(tmp_path, body, match):
    path = tmp_path / "lex.tsv"
    path.write_text(HEADER + body, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        S.load_lexicon(path)


def test_lexicon_bad_header_and_empty(tmp_path):
    path = tmp_path / "lex.tsv"
    path.write_text("word\tsyllables\tdefinition\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r":1: header"):
        S.load_lexicon(path)
    path2 = tmp_path / "lex2.tsv"
    path2.write_text(HEADER, encoding="utf-8")
    with pytest.raises(ValueError, match="no entries"):
        S.load_lexicon(path2)


def test_lexicon_clue_text_never_leaks_word():
    entry = S.LexiconEntry("family", ("fam", "i", "ly"), "a family unit", "kin", "")
    assert entry.clue_text("definition") is None
    assert entry.clue_text("synonym") == "Synonym: kin"
    assert entry.clue_text("category") is None


# --------------------------------------------------------------- generation


def test_api_constants():
    assert S.GENERATOR_ID == "syllo" and S.SKILL == "syllo" and S.GENERATOR_VERSION == "1.0.0"
    assert S.LEVELS == (1, 2, 3, 4, 5)
    assert S.WORDS_PER_LEVEL == {1: 4, 2: 5, 3: 6, 4: 7, 5: 8}
    assert S.RED_HERRINGS == {1: 0, 2: 0, 3: 1, 4: 2, 5: 3}
    for level in S.LEVELS:
        assert S.covers_space(level) is False
        assert S.problem_space_size(level) is None


@pytest.mark.parametrize("level", S.LEVELS)
def test_generate_deterministic_and_seed_dependent(level):
    a = S.generate(level, 30, 1)
    assert a == S.generate(level, 30, 1)
    b = S.generate(level, 30, 2)
    assert [p.key for p in a] != [p.key for p in b]
    assert [p.bank for p in a] != [p.bank for p in b]


def test_generate_does_not_touch_global_rng():
    random.seed(123)
    before = random.random()
    random.seed(123)
    S.generate(3, 20, 9)
    assert random.random() == before


@pytest.mark.parametrize("level", S.LEVELS)
def test_generated_puzzles_respect_level(level):
    lexicon = {e.word: e for e in S.load_lexicon()}
    problems = S.generate(level, 200, 5)
    seen_types = Counter()
    for p in problems:
        assert p.level == level
        assert len(p.words) == S.WORDS_PER_LEVEL[level]
        assert len(p.red_herrings) == S.RED_HERRINGS[level]
        assert len({w.word for w in p.words}) == len(p.words)  # distinct words
        tiles = Counter(s for w in p.words for s in w.syllables)
        assert Counter(p.bank) == tiles + Counter(p.red_herrings)
        assert len(set(p.red_herrings)) == len(p.red_herrings)
        assert not set(p.red_herrings) & set(tiles)
        others = {s for word, e in lexicon.items() if word not in {w.word for w in p.words} for s in e.syllables}
        assert set(p.red_herrings) <= others
        for w in p.words:
            entry = lexicon[w.word]
            assert w.syllables == entry.syllables
            assert w.clue_type in S.LEVEL_CLUE_TYPES[level]
            assert w.clue == entry.clue_text(w.clue_type)
            assert w.word not in w.clue.lower()
            seen_types[w.clue_type] += 1
    assert set(seen_types) == set(S.LEVEL_CLUE_TYPES[level])  # every allowed type actually occurs


def test_level_clue_types():
    assert S.LEVEL_CLUE_TYPES[1] == S.LEVEL_CLUE_TYPES[2] == ("definition",)
    assert S.LEVEL_CLUE_TYPES[3] == ("definition", "synonym")
    assert S.LEVEL_CLUE_TYPES[4] == S.LEVEL_CLUE_TYPES[5] == ("definition", "synonym", "category")


@pytest.mark.parametrize("bad", [0, 6, -1, "1", True])
def test_bad_level(bad):
    with pytest.raises(ValueError):
        S.generate(bad, 1, 0)
    with pytest.raises(ValueError):
        S.eval_problems(bad)
    with pytest.raises(ValueError):
        S.problem_space_size(bad)


def test_bad_count():
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ValueError):
            S.generate(1, bad, 0)
    assert S.generate(1, 0, 0) == []


# ------------------------------------------------------------------ eval set


@pytest.mark.parametrize("level", S.LEVELS)
def test_eval_sets_fixed_and_distinct(level):
    problems = S.eval_problems(level)
    assert len(problems) == S.EVAL_SIZE
    assert problems == S.eval_problems(level)
    assert problems is not S.eval_problems(level)  # a fresh list each call
    assert len({p.key for p in problems}) == S.EVAL_SIZE
    assert S.eval_keys(level) == frozenset(p.key for p in problems)
    assert all(p.level == level for p in problems)


@pytest.mark.parametrize("level", S.LEVELS)
@pytest.mark.parametrize("seed", [0, 12345])
def test_generate_disjoint_from_eval(level, seed):
    keys = S.eval_keys(level)
    assert not keys & {p.key for p in S.generate(level, 500, seed)}


def test_generate_redraws_held_out(monkeypatch):
    plain = S.generate(2, 5, 77)
    held = frozenset(p.key for p in plain[:3])
    monkeypatch.setattr(S, "_eval_keys", lambda level, path: held)
    redrawn = S.generate(2, 5, 77)
    assert not held & {p.key for p in redrawn}


def test_key_is_sorted_word_set():
    p = _family_problem()
    assert p.key == "syllo:always,believe,family,looking"
    shuffled = Problem(tuple(reversed(p.words)), tuple(reversed(p.bank)), p.red_herrings, 2, "other")
    assert shuffled.key == p.key


# ------------------------------------------------------------- formats


def test_prompt_and_answer_format():
    p = _family_problem()
    lines = p.prompt.splitlines()
    assert "1. ___ ___ \u2014 without variation or change, in every case" in lines
    assert "3. ___ ___ ___ \u2014 a social unit living together" in lines
    assert "4. ___ ___ \u2014 Synonym: searching" in lines
    assert "Syllable bank: ing | fam | ways | al | i | look | be | ly | lieve | zo" in lines
    assert "1 tile is a red herring that fits no word." in p.prompt
    for w in p.words:
        assert w.answer not in p.prompt
    assert p.answer == p.completion
    assert p.completion == (
        '{"solutions":[{"ans_num":1,"syllables":["al","ways"],"answer":"ALWAYS"},'
        '{"ans_num":2,"syllables":["be","lieve"],"answer":"BELIEVE"},'
        '{"ans_num":3,"syllables":["fam","i","ly"],"answer":"FAMILY"},'
        '{"ans_num":4,"syllables":["look","ing"],"answer":"LOOKING"}],"unused_tiles":["zo"]}'
    )
    assert "\n" not in p.completion
    none = _family_problem(red_herrings=())
    assert "Use every tile exactly once." in none.prompt
    assert "red herring" not in none.prompt
    assert _payload(none)["unused_tiles"] == []
    two = _family_problem(red_herrings=("zo", "ab"))
    assert "2 tiles are red herrings that fit no word." in two.prompt
    assert _payload(two)["unused_tiles"] == ["ab", "zo"]  # sorted


def test_to_chat():
    p = S.generate(3, 1, 4)[0]
    chat = S.to_chat(p)
    assert chat == {"messages": [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.completion}]}


@pytest.mark.parametrize("level", S.LEVELS)
def test_prompt_lists_every_clue_and_tile(level):
    for p in S.generate(level, 20, 3) + S.eval_problems(level)[:20]:
        lines = p.prompt.splitlines()
        for i, w in enumerate(p.words, start=1):
            assert f"{i}. {' '.join(['___'] * len(w.syllables))} \u2014 {w.clue}" in lines
        assert "Syllable bank: " + " | ".join(p.bank) in lines


def test_problem_validation():
    p = _family_problem()
    with pytest.raises(ValueError, match="does not balance"):
        Problem(p.words, p.bank[:-1], p.red_herrings, 1, "x")  # red herring missing from the bank
    with pytest.raises(ValueError, match="does not balance"):
        Problem(p.words, p.bank + ("extra",), p.red_herrings, 1, "x")
    with pytest.raises(ValueError, match="level"):
        Problem(p.words, p.bank, p.red_herrings, 6, "x")
    with pytest.raises(ValueError, match="do not join"):
        Word("family", ("fam", "ly"), "clue", "definition")
    with pytest.raises(ValueError, match="single line"):
        Word("family", ("fam", "i", "ly"), "two\nlines", "definition")
    with pytest.raises(ValueError, match="bad syllable"):
        Word("family", ("fam", "i|", "ly"), "clue", "definition")


# ------------------------------------------------------------------- scoring


@pytest.mark.parametrize("level", S.LEVELS)
def test_own_completion_scores_correct(level):
    for p in S.generate(level, 50, 8) + S.eval_problems(level):
        for strict in (False, True):
            s = score(p.completion, p, strict=strict)
            assert s == S.Score(True, 1.0, ",".join(w.answer for w in p.words), "correct")


def test_score_order_and_case_free():
    p = _family_problem()
    payload = _payload(p)
    payload["solutions"].reverse()
    assert score(_dump(payload), p).correct
    assert score(_dump(payload), p, strict=True).correct  # ans_num still maps to the right clues
    for e in payload["solutions"]:
        e["answer"] = e["answer"].lower()
    s = score(_dump(payload), p, strict=True)
    assert s.correct and s.reason == "correct"


def test_score_one_wrong_word_partial():
    p = _family_problem()
    payload = _payload(p)
    payload["solutions"][2]["answer"] = "FAMILIES"
    s = score(_dump(payload), p)
    assert (s.correct, s.reason, s.partial) == (False, "wrong_answers", 3 / 4)
    assert s.got == "ALWAYS,BELIEVE,FAMILIES,LOOKING"


def test_score_extra_and_missing_answers():
    p = _family_problem()
    payload = _payload(p)
    payload["solutions"].append({"ans_num": 5, "syllables": ["zo"], "answer": "ZO"})
    s = score(_dump(payload), p)
    assert (s.correct, s.reason, s.partial) == (False, "wrong_answers", 4 / 5)  # extras never earn full credit
    payload = _payload(p)
    del payload["solutions"][0]
    s = score(_dump(payload), p)
    assert (s.correct, s.partial) == (False, 3 / 4)
    payload = _payload(p)
    payload["solutions"][1]["answer"] = "ALWAYS"  # duplicate answer: multiset, not set
    s = score(_dump(payload), p)
    assert (s.correct, s.partial) == (False, 3 / 4)


def test_score_extra_text_around_json():
    p = _family_problem()
    out = "Sure! Here is my answer:\n```json\n" + p.completion + "\n```\nHope that helps {really}."
    assert score(out, p, strict=True).correct
    # The first object that decodes and has "solutions" counts; a second (wrong) one is ignored.
    wrong = _payload(p)
    wrong["solutions"][0]["answer"] = "NEVER"
    out = '{"note": 1} ' + p.completion + " " + _dump(wrong)
    assert score(out, p, strict=True).correct
    assert not score(_dump(wrong) + " " + p.completion, p).correct


def test_score_no_json_bad_json_empty():
    p = _family_problem()
    assert score("ALWAYS BELIEVE FAMILY LOOKING", p) == S.Score(False, 0.0, "", "no_json")
    assert score(p.completion[:-12], p).reason == "bad_json"  # truncated
    assert score(p.completion[:40], p).reason == "bad_json"
    assert score('{"solutions": "ALWAYS"}', p).reason == "bad_json"
    assert score('{"answers": ["ALWAYS"]}', p).reason == "bad_json"
    assert score("", p) == S.Score(False, 0.0, "", "empty")
    assert score("  \n\t", p).reason == "empty"
    assert score("<think>hmm</think>\n", p).reason == "empty"


def test_score_think_tags_stripped():
    p = _family_problem()
    wrong = _payload(p)
    wrong["solutions"][0]["answer"] = "NEVER"
    decoy = _dump(wrong)
    assert score(f"<think>maybe {decoy}</think>{p.completion}", p, strict=True).correct
    assert score(f"reasoning {decoy}</think>\n{p.completion}", p, strict=True).correct  # opener in the prompt
    assert score(f"{p.completion}<think>{decoy}", p).correct  # unclosed think runs to the end
    assert score(f"<think>{p.completion}", p).reason == "empty"
    assert score("\U0001F914 " + p.completion + " \u2705", p, strict=True).correct  # emoji stripped


def test_strict_wrong_syllables():
    p = _family_problem()
    payload = _payload(p)
    payload["solutions"][0]["syllables"], payload["solutions"][1]["syllables"] = (
        payload["solutions"][1]["syllables"],
        payload["solutions"][0]["syllables"],
    )
    out = _dump(payload)
    assert score(out, p).correct
    s = score(out, p, strict=True)
    assert (s.correct, s.reason, s.partial) == (False, "strict_syllables", 1.0)
    payload = _payload(p)
    payload["solutions"][2]["syllables"] = ["fa", "mi", "ly"]  # joins to FAMILY, but not the bank's tiles
    assert score(_dump(payload), p).correct
    assert score(_dump(payload), p, strict=True).reason == "strict_syllables"
    payload = _payload(p)
    del payload["solutions"][3]["syllables"]
    assert score(_dump(payload), p, strict=True).reason == "strict_syllables"
    payload = _payload(p)
    payload["solutions"][2]["syllables"] = ["FAM", "I", "LY"]  # tiles compare case-insensitively
    assert score(_dump(payload), p, strict=True).correct


def test_strict_unbalanced_inventory():
    p = _family_problem()
    for unused in ([], ["zo", "zo"], ["ing", "zo"]):
        payload = _payload(p)
        payload["unused_tiles"] = unused
        assert score(_dump(payload), p).correct
        assert score(_dump(payload), p, strict=True).reason == "strict_inventory"
    payload = _payload(p)
    del payload["unused_tiles"]
    assert score(_dump(payload), p, strict=True).reason == "strict_inventory"
    none = _family_problem(red_herrings=())
    payload = _payload(none)
    del payload["unused_tiles"]  # nothing left over: a missing list is fine
    assert score(_dump(payload), none, strict=True).correct


def test_strict_numbering():
    p = _family_problem()
    payload = _payload(p)
    payload["solutions"][0]["ans_num"], payload["solutions"][1]["ans_num"] = 2, 1
    out = _dump(payload)
    assert score(out, p).correct
    s = score(out, p, strict=True)
    assert (s.correct, s.reason) == (False, "strict_numbering")
    for bad in ("1", 0, 5, None, True):
        payload = _payload(p)
        payload["solutions"][0]["ans_num"] = bad
        assert score(_dump(payload), p, strict=True).reason == "strict_numbering", bad


# ---------------------------------------------------------- old records

# The old system's solutions_sequence layout writes "unused_tiles": [] even when the puzzle has red herrings.
# These records' own solutions therefore fail the strict inventory check (their answers are right).
STALE_UNUSED_TILES = {
    ("level_10.jsonl:6", "syllo_api_00006"),
    ("level_10.jsonl:16", "syllo_api_00016"),
    ("level_4.jsonl:14", "syllo_api_00014"),
    ("level_4.jsonl:18", "syllo_api_00018"),
    ("level_5.jsonl:10", "syllo_api_00010"),
    ("level_6.jsonl:5", "syllo_api_00005"),
    ("level_6.jsonl:6", "syllo_api_00006"),
    ("level_6.jsonl:12", "syllo_api_00012"),
    ("level_9.jsonl:11", "syllo_api_00011"),
    ("level_9.jsonl:14", "syllo_api_00014"),
    ("level_9.jsonl:16", "syllo_api_00016"),
}


def test_compat_corpus_present():
    assert len(RECORDS) == 200, f"expected 200 syllo_v1 records under {COMPAT_DIR}"


@pytest.mark.parametrize("where, record", RECORDS, ids=[w for w, _ in RECORDS])
def test_compat_record(where, record):
    assert V.check_record(record) == []
    problem = V.from_record(record)
    n = len(record["words"])
    assert problem.level == {4: 1, 5: 2, 6: 3, 7: 4}.get(n, 5)
    assert problem.puzzle_id == record["puzzle_id"]
    assert problem.bank == tuple(record["syllable_bank"])
    assert problem.red_herrings == tuple(record["red_herrings"])
    assert [w.clue_type for w in problem.words] == [w["hint_type"] for w in record["words"]]

    chat = V.record_to_chat(record)
    user, assistant = chat["messages"]
    assert (user["role"], assistant["role"]) == ("user", "assistant")
    lines = user["content"].splitlines()
    for i, w in enumerate(record["words"], start=1):
        assert f"{i}. {' '.join(['___'] * len(w['syllables']))} \u2014 {w['definition']}" in lines
    assert "Syllable bank: " + " | ".join(record["syllable_bank"]) in lines
    assert score(assistant["content"], problem, strict=True).correct

    own = V.record_solution_text(record)
    assert "\n" not in own
    assert score(own, problem).correct
    strict = score(own, problem, strict=True)
    if (where, record["puzzle_id"]) in STALE_UNUSED_TILES:
        assert record["output_variant"] == "solutions_sequence"
        assert json.loads(record["solution"])["unused_tiles"] == [] and record["red_herrings"]
        assert (strict.correct, strict.reason) == (False, "strict_inventory")
    else:
        assert strict.correct, strict


def test_compat_stale_unused_tiles_finding_is_exact():
    found = {
        (where, r["puzzle_id"])
        for where, r in RECORDS
        if not score(V.record_solution_text(r), V.from_record(r), strict=True).correct
    }
    assert found == STALE_UNUSED_TILES
    layouts = Counter(r["output_variant"] for _, r in RECORDS)
    assert len(layouts) == 12  # every old layout is exercised


def test_compat_large_old_puzzles_map_to_level5():
    big = [r for _, r in RECORDS if len(r["words"]) >= 9]
    assert {len(r["words"]) for r in big} == {9, 10}
    for r in big:
        p = V.from_record(r)
        assert p.level == 5 and len(p.words) == len(r["words"])
        assert f"{len(r['words'])}. " in p.prompt


def test_record_solution_text_falls_back_to_words():
    _, record = RECORDS[0]
    for solution in ("1. ALWAYS 2. ...", json.dumps({"mystery": 1})):
        r = dict(record, solution=solution)
        assert V.record_solution_text(r) == V.from_record(r).completion


def _mutated(change):
    record = json.loads(json.dumps(RECORDS[0][1]))
    change(record)
    return record


def _rules(record):
    return [rule for rule, _ in V.check_record(record)]


def test_check_record_findings():
    known = {name for name, _ in V.RECORD_RULES}
    cases = [
        (lambda r: None, []),
        (lambda r: r.pop("syllable_bank"), ["missing_key"]),
        (lambda r: r.__setitem__("words", "family"), ["bad_type"]),
        (lambda r: r["words"][0].__setitem__("syllables", ["al", ""]), ["bad_type"]),
        (lambda r: r.__setitem__("level", "3"), ["level"]),
        (lambda r: r.__setitem__("level", True), ["level"]),
        (lambda r: r["rules"].__setitem__("word_count", 5), ["word_count"]),
        (lambda r: r["words"][0].__setitem__("slots", ["___"]), ["slot_count"]),
        (lambda r: r["words"][0].__setitem__("label", "allways"), ["syllables_join"]),
        (lambda r: r["syllable_bank"].remove("ly"), ["syllables_in_bank"]),
        (lambda r: r["syllable_bank"].append("zz"), ["bank_balance"]),
        (lambda r: r["red_herrings"].append("zz"), ["bank_balance"]),
        (lambda r: (r["syllable_bank"].append("zz"), r["red_herrings"].append("zz")), []),
    ]
    for change, expected in cases:
        record = _mutated(change)
        assert _rules(record) == expected, (expected, V.check_record(record))
        assert set(_rules(record)) <= known
        if expected:
            with pytest.raises(ValueError, match=expected[0]):
                V.from_record(record)
    assert V.check_record([]) == [("record_type", "expected a JSON object, got list")]
    messages = dict(V.check_record(_mutated(lambda r: r["syllable_bank"].append("zz"))))
    assert "['zz']" in messages["bank_balance"]
