"""The bad-input corpus (``tests/data/bad/``): every file breaks ONE thing, and ``dojo validate`` must name it.

For each entry of ``EXPECTED.json``: the structured report (``validate_file``) holds the expected
``rule@version`` at the expected line with the expected severity and nothing unrelated; ``dojo validate``
exits 0 iff the file is accepted and prints ``FILE:LINE: rule RULE`` (``FILE: rule RULE`` for the file as a
whole); and neither the file nor its sidecar changes by a single byte.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from dojo import cli
from dojo import config as C
from model.data import validate_file

BAD = Path(__file__).resolve().parent / "data" / "bad"
MANIFEST: dict[str, dict] = json.loads((BAD / "EXPECTED.json").read_text(encoding="utf-8"))
NON_DATA = {"EXPECTED.json", "make_corpus.py"}
DEPTHS = ("quick", "standard", "deep")


def _corpus_module():
    spec = importlib.util.spec_from_file_location("bad_corpus_maker", BAD / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


corpus = _corpus_module()


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.stem + ".meta.json")


@pytest.fixture(scope="session")
def generated_dir(tmp_path_factory):
    """Generated cases (the 50 MB line) are built once per session, lazily."""
    folder = tmp_path_factory.mktemp("bad_generated")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = corpus.build_generated(name.removesuffix(".jsonl"), folder)
        return built[name]
    return get


@pytest.fixture
def shared_tokenizer(tokenizer, monkeypatch):
    """The CLI loads the configured tokenizer on every STANDARD/DEEP run; hand it the session's copy of the same
    tiny tokenizer (the config must still name the tiny model) so the corpus stays fast."""
    import model.loading

    def load(name_or_path, trust_remote_code=False):
        assert Path(name_or_path) == C.TINY_MODEL_DIR, name_or_path
        return tokenizer
    monkeypatch.setattr(model.loading, "load_tokenizer", load)
    return tokenizer


def all_rules(report) -> set[str]:
    rules = {i.rule for i in report.file_issues} | {w.rule for w in report.warnings}
    return rules | {i.rule for issues in report.rejected.values() for i in issues}


# ---------------------------------------------------------------- the manifest itself
def test_manifest_covers_every_file_and_is_well_formed():
    files = {p.name for p in BAD.iterdir() if p.name != "__pycache__"}   # bytecode of make_corpus.py
    data = {f for f in files if f.endswith(".jsonl")}
    committed = {name for name, e in MANIFEST.items() if not e.get("generated")}
    assert data == committed, f"untested files {sorted(data - committed)}; missing files {sorted(committed - data)}"
    sidecars = {f for f in files if f.endswith(".meta.json")}
    assert {s.removesuffix(".meta.json") + ".jsonl" for s in sidecars} <= committed, "a sidecar without data"
    assert files - data - sidecars == NON_DATA, f"unexpected files {sorted(files - data - sidecars - NON_DATA)}"
    assert len(MANIFEST) >= 40 and len(committed) >= 40
    for name, e in MANIFEST.items():
        assert e["depth"] in DEPTHS, name
        assert e["severity"] in ("error", "warning"), name
        assert isinstance(e["line"], int) and e["line"] >= 0, name
        assert isinstance(e["accepted"], bool), name
        rule, _, version = e["rule"].partition("@")
        assert rule and version.isdigit(), f"{name}: rule must be name@version, got {e['rule']!r}"
        if e["severity"] == "warning":
            assert e["accepted"], f"{name}: a warning alone never rejects a file"
        if e["line"] == 0:
            assert not e["accepted"], f"{name}: a file-level error rejects the file"
        if e.get("generated"):
            assert not (BAD / name).exists(), f"{name} is generated at test time and must not be committed"
    # the spec of every case comes from its sidecar, except the case about having none
    assert [n for n in committed if not sidecar_of(BAD / n).exists()] == ["no_spec.jsonl"]


def test_corpus_is_what_the_generator_writes():
    """The committed files are exactly what make_corpus.py builds (so a case's note describes its bytes)."""
    corpus.CASES.clear()
    corpus.build()
    expected = {f"{name}.jsonl": c for name, c in corpus.CASES.items()}
    committed = {n for n, e in MANIFEST.items() if not e.get("generated")}
    if not corpus.SYLLO_SOURCE.exists():
        committed = {n for n in committed if not n.startswith("syllo_")}
    assert set(expected) == committed
    for name, c in expected.items():
        assert (BAD / name).read_bytes() == c["data"], name
        assert MANIFEST[name] == c["expected"], name
        side = sidecar_of(BAD / name)
        if c["sidecar"] is None:
            assert not side.exists(), name
        elif isinstance(c["sidecar"], str):
            assert side.read_text(encoding="utf-8") == c["sidecar"], name
        else:
            assert json.loads(side.read_text(encoding="utf-8")) == c["sidecar"], name


# ---------------------------------------------------------------- every case
@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_bad_file(name, generated_dir, shared_tokenizer, tmp_path, capsys):
    e = MANIFEST[name]
    if name.startswith("syllo_"):
        pytest.importorskip("skills.syllo")
    path = generated_dir(name) if e.get("generated") else BAD / name
    before = (sha256(path), sha256(sidecar_of(path)))
    argv = ["validate", str(path), "--depth", e["depth"]]
    if e.get("config"):
        cfg_file = tmp_path / "case.yaml"
        cfg_file.write_text(yaml.safe_dump(e["config"]), encoding="utf-8")
        argv += ["--config", str(cfg_file)]
        cfg = C.load(str(cfg_file))
    else:
        cfg = C.load()
    rule, line = e["rule"], e["line"]

    # the structured report
    report = validate_file(path, cfg, depth=e["depth"], tokenizer=shared_tokenizer)
    assert report.depth == e["depth"]
    assert report.accepted is e["accepted"], report.format()
    unversioned_file_rule = False
    if e["severity"] == "error" and line == 0:
        found = [i.rule for i in report.file_issues]
        if rule not in found and rule.partition("@")[0] in found:
            unversioned_file_rule = True           # known source bug, see the end of this test
            rule = rule.partition("@")[0]
        assert found and found[0] == rule, report.format()
        assert report.first_rule() == rule
        assert not report.accepted_lines
    elif e["severity"] == "error":
        assert [i.rule for i in report.rejected.get(line, [])][:1] == [rule], report.format()
        assert line not in report.accepted_lines
        assert not report.file_issues
    else:
        assert any(w.rule == rule and w.line == line for w in report.warnings), report.format()
        assert not report.rejected and not report.file_issues, "a warning case must break nothing else"
    if "many_bad" in name:
        assert report.first_rule() == rule and min(report.rejected) == line
    # one thing broken: nothing but the expected rule (and what the same defect may also raise)
    allowed = {rule, *e.get("other_rules", ())}
    assert all_rules(report) <= allowed, f"unexpected rules {sorted(all_rules(report) - allowed)}"
    if e["severity"] == "error" and line:
        # every other example line is valid: the defect is confined to its line
        others = set(report.rejected) - {line}
        assert others == set() or e.get("other_rules"), f"other lines rejected too: {sorted(others)}"

    # the CLI: exit code and the printed finding
    capsys.readouterr()
    code = cli.main(argv)
    out = capsys.readouterr().out
    assert code == (0 if e["accepted"] else 1), out
    where = f"{path}:{line}" if line else f"{path}"
    assert f"{where}: rule {rule}:" in out, out
    assert ("ACCEPTED" if e["accepted"] else "REJECTED") in out.splitlines()[0]

    # nothing modified: the file and its sidecar are byte for byte what they were
    assert (sha256(path), sha256(sidecar_of(path))) == before

    if unversioned_file_rule:
        pytest.xfail(f"source bug: validation/validate.py reports file-level rules without a version "
                     f"({rule!r}, documented as name@version: {e['rule']!r})")
