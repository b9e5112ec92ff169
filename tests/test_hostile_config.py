"""Hostile and careless configs are refused at load with one short line naming the file, the key and what to
change: YAML anchors/aliases (an alias bomb), duplicate keys, non-finite numbers in any float field, negative or
all-zero curriculum weights, and storage roots dojo must not or cannot use (``/``, the home directory, a file, a
read-only directory). Values in messages are cut, so no input can flood the terminal."""
from __future__ import annotations

import dataclasses
import os
import time
import typing
from pathlib import Path

import pytest

from dojo import cli
from dojo import config as C
from tests.helpers import tmpfs

ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
"""


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def cli_error(capsys, path: Path, *argv: str) -> str:
    """Run `dojo --config PATH config show` (or ``argv``); assert exit 2 with one `dojo: error:` line naming the
    file, and return that line."""
    code = cli.main(["--config", str(path), *(argv or ("config", "show"))])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("dojo: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "internal error" not in err and str(path) in err, err
    return err


def no_home(monkeypatch):
    """storage.root from the file, not from the test's $DOJO_HOME."""
    monkeypatch.delenv("DOJO_HOME", raising=False)


# ---------------------------------------------------------------- YAML itself
def test_an_alias_bomb_is_refused_fast_with_a_short_message(tmp_path, capsys):
    path = write(tmp_path, "train:\n  seed: 1\ncurriculum:\n  skills:\n    - bin\nextra:\n" +
                 "".join("  " + line + "\n" for line in ALIAS_BOMB.splitlines()))
    assert len(path.read_bytes()) < 600
    started = time.monotonic()
    err = cli_error(capsys, path)
    assert time.monotonic() - started < 5
    assert len(err) < 1000 and "anchor &a is not allowed" in err and "line 7" in err


def test_an_alias_is_refused_even_to_a_small_value(tmp_path):
    # the anchor itself is refused first: without aliases it has no use
    with pytest.raises(ValueError, match=r"line 2: the YAML anchor &lr is not allowed"):
        C.load(str(write(tmp_path, "train:\n  learning_rate: &lr 0.001\n  muon_lr: *lr\n")))


@pytest.mark.parametrize("text, key, lines", [
    ("train:\n  seed: 1\n  epochs: 2\n  seed: 2\n", "'seed'", (2, 4)),
    ("train:\n  seed: 1\nmodel:\n  lora: true\ntrain:\n  epochs: 2\n", "'train'", (1, 5)),
    ("curriculum: {window: 3, window: 4}\n", "'window'", (1, 1)),
])
def test_a_duplicate_key_is_refused_naming_the_key_and_both_lines(tmp_path, capsys, text, key, lines):
    err = cli_error(capsys, write(tmp_path, text))
    assert f"the key {key} is given twice" in err and f"(line {lines[0]} and line {lines[1]})" in err


def test_the_same_key_in_different_sections_is_fine(tmp_path):
    cfg = C.load(str(write(tmp_path, "train:\n  seed: 3\ncurriculum:\n  seed: 4\n")))
    assert (cfg.train.seed, cfg.curriculum.seed) == (3, 4)


def test_values_in_messages_are_cut(tmp_path, capsys):
    err = cli_error(capsys, write(tmp_path, "train:\n  seed: " + "x" * 100_000 + "\n"))
    assert "config train.seed:" in err and "use an integer" in err and len(err) < 1000
    err = cli_error(capsys, write(tmp_path, "train:\n  " + "k" * 1000 + ": 1\n"))   # YAML caps plain keys at 1024
    assert "unknown key" in err and len(err) < 1000
    err = cli_error(capsys, write(tmp_path, "train:\n  " + "k" * 100_000 + ": 1\n"))
    assert "not valid YAML: line 2 column" in err and len(err) < 1000


def test_deeply_nested_yaml_is_one_line(tmp_path, capsys):
    err = cli_error(capsys, write(tmp_path, "train: " + "[" * 5000 + "]" * 5000 + "\n"))
    assert len(err) < 1000


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"train:\n  seed: \xff\xfe\n")
    assert "not UTF-8" in cli_error(capsys, path)


# ---------------------------------------------------------------- numbers
def float_fields() -> list[str]:
    out = []
    for section in dataclasses.fields(C.Config):
        hints = typing.get_type_hints(section.default_factory)
        out += [f"{section.name}.{f.name}" for f in dataclasses.fields(section.default_factory)
                if hints[f.name] is float]
    return out


def test_every_float_field_is_listed():
    assert "train.epochs" in float_fields() and len(float_fields()) >= 20


@pytest.mark.parametrize("key", float_fields())
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e999", "'inf'", "'nan'"])
def test_every_float_field_must_be_finite(tmp_path, key, value):
    section, name = key.split(".")
    with pytest.raises(ValueError, match=rf"config {section}\.{name}: .* is not allowed; use a finite number"):
        C.load(str(write(tmp_path, f"{section}:\n  {name}: {value}\n")))


def test_epochs_inf_through_the_cli(tmp_path, capsys):
    err = cli_error(capsys, write(tmp_path, "train:\n  epochs: .inf\n"))
    assert "config train.epochs: inf is not allowed; use a finite number" in err


@pytest.mark.parametrize("weights, allowed", [
    ("[-1]", "weights >= 0"),
    ("[0]", "not all zero"),
    ("[0.0]", "not all zero"),
])
def test_curriculum_weights_must_be_non_negative_and_not_all_zero(tmp_path, capsys, weights, allowed):
    err = cli_error(capsys, write(tmp_path, f"curriculum:\n  skills: [bin]\n  weights: {weights}\n"))
    assert "config curriculum.weights:" in err and allowed in err


def test_weights_with_a_zero_among_positive_ones_are_fine(tmp_path):
    cfg = C.load(str(write(tmp_path, "curriculum:\n  skills: [bin, syllo]\n  weights: [0, 2]\n")))
    assert cfg.curriculum.weights == (0.0, 2.0)


# ---------------------------------------------------------------- the storage root
def test_the_filesystem_root_is_refused(tmp_path, capsys, monkeypatch):
    no_home(monkeypatch)
    err = cli_error(capsys, write(tmp_path, "storage:\n  root: /\n"))
    assert "config storage.root: '/' is not allowed" in err and "not the filesystem root" in err
    with pytest.raises(ValueError, match=r"\$DOJO_HOME: '/' is not allowed"):
        C.load(env={"DOJO_HOME": "/"})


def test_the_home_directory_itself_is_refused(tmp_path, capsys, monkeypatch):
    no_home(monkeypatch)
    home = tmp_path / "userhome"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    err = cli_error(capsys, write(tmp_path, "storage:\n  root: '~'\n"))   # a bare ~ is YAML's null
    assert "not the home directory itself" in err
    assert C.load(str(write(tmp_path, "storage:\n  root: ~/dojo\n"))).root == home / "dojo"   # below it is fine


def test_a_root_that_is_a_file_is_refused(tmp_path, capsys, monkeypatch):
    no_home(monkeypatch)
    (tmp_path / "afile").write_text("x")
    err = cli_error(capsys, write(tmp_path, "storage:\n  root: afile\n"))
    assert "is a file, not a directory" in err and "afile" in err
    err = cli_error(capsys, write(tmp_path, "storage:\n  root: afile/below\n"))   # cannot be created either
    assert f"{tmp_path / 'afile'} is a file, not a directory" in err


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory on a read-only tmpfs (root is needed to mount; skipped without it). os.access reports a
    read-only mount as not writable even for root, unlike a chmod 0555 directory."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        yield mount


def test_a_read_only_root_is_refused_at_load(tmp_path, capsys, monkeypatch, read_only_dir):
    no_home(monkeypatch)
    err = cli_error(capsys, write(tmp_path, f"storage:\n  root: {read_only_dir}\n"))
    assert "dojo cannot write there (read-only or no permission)" in err
    monkeypatch.setenv("DOJO_HOME", str(read_only_dir))
    with pytest.raises(ValueError, match=r"\$DOJO_HOME: .* dojo cannot write there"):
        C.load()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write a chmod 0555 directory (see the read-only mount test)")
def test_a_root_without_write_permission_is_refused_at_load(tmp_path, monkeypatch):
    no_home(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(ValueError, match="dojo cannot write there"):
        C.load(str(write(tmp_path, f"storage:\n  root: {locked}\n")))


def test_a_root_that_does_not_exist_yet_is_fine(tmp_path, monkeypatch):
    no_home(monkeypatch)
    assert C.load(str(write(tmp_path, "storage:\n  root: new/deeper\n"))).root == tmp_path / "new" / "deeper"
