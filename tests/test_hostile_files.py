"""Hostile and careless files: dojo never hangs, never widens permissions, queues exactly the bytes it checked,
survives a full disk without half-moved files or temp leftovers, and answers with one line instead of a
traceback (``--debug`` shows it).

The disk-full cases run on a small tmpfs mounted by the test (root is needed to mount; without it they skip and
say so)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dojo import cli
from dojo import config as C
from dojo import queue
from dojo.generate import generate_file
from tests.helpers import tmpfs


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> bool:
    return err.startswith("dojo: error: ") and err.count("\n") == 1 and "Traceback" not in err


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


# ---------------------------------------------------------------- not a regular file: never read, never hangs
def test_a_fifo_as_data_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    for argv in (["queue", "add", fifo], ["validate", fifo, "--spec", "chat_sft_v1"], ["train", fifo]):
        proc = subprocess.run([sys.executable, "-m", "dojo.cli", *map(str, argv)], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)       # a hang fails the test by timeout
        assert proc.returncode in (1, 2), (argv, proc.stderr)
        assert "FIFO (named pipe)" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_symlinks_are_followed_only_to_regular_files(tmp_path, capsys):
    device = tmp_path / "zero.jsonl"
    device.symlink_to("/dev/zero")
    code, _, err = run_cli(capsys, "queue", "add", device)
    assert code == 2 and one_line_error(err) and "a character device" in err
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    code, _, err = run_cli(capsys, "queue", "add", folder)
    assert code == 2 and "a directory" in err
    real = generate_file("bin", 1, 30, 4, tmp_path / "data" / "real.jsonl")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    link.with_name("link.meta.json").symlink_to(real.with_name("real.meta.json"))
    code, out, err = run_cli(capsys, "queue", "add", link)
    assert code == 0, err
    [entry] = queue.queued(C.load())
    assert not entry.path.is_symlink() and entry.path.read_bytes() == real.read_bytes()


# ---------------------------------------------------------------- permissions
def test_copies_keep_a_private_source_private_and_the_root_is_private(tmp_path, capsys, dojo_home):
    src = generate_file("bin", 1, 30, 5, tmp_path / "secret.jsonl")
    src.chmod(0o600)
    (tmp_path / "loose.yaml").write_text("storage:\n  umask: '022'\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "queue", "add", src, "--config", tmp_path / "loose.yaml")
    assert code == 0, err
    [entry] = queue.queued(C.load())
    assert mode(entry.path) == 0o600                       # a loose umask never widens a private source
    # a rejected private file: its reason quotes the bad line, and stays as private as the file
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "my password is hunter2"\n', encoding="utf-8")
    bad.with_name("bad.meta.json").write_text('{"spec": "chat_sft_v1"}', encoding="utf-8")
    bad.chmod(0o600)
    code, _, _ = run_cli(capsys, "queue", "add", bad, "--config", tmp_path / "loose.yaml")
    assert code == 1
    [reason] = (dojo_home / "failed").glob("*.reason.txt")
    assert "hunter2" in reason.read_text() and mode(reason) == 0o600


def test_the_default_umask_makes_the_storage_root_private(tmp_path, capsys, dojo_home):
    src = generate_file("bin", 1, 30, 6, tmp_path / "open.jsonl")
    src.chmod(0o644)
    assert run_cli(capsys, "queue", "add", src)[0] == 0
    for folder in (dojo_home / "queue", dojo_home / "queue" / "normal", dojo_home / "state"):
        assert mode(folder) == 0o700, folder
    [entry] = queue.queued(C.load())
    assert mode(entry.path) == 0o600                       # storage.umask 077 (the default)


# ---------------------------------------------------------------- exactly the bytes that were checked
def test_a_file_appended_to_while_it_is_checked_queues_only_what_was_checked(tmp_path, monkeypatch):
    from dojo import gate
    from model import data

    src = generate_file("bin", 1, 20, 7, tmp_path / "growing.jsonl")
    before = src.read_bytes()
    real = data.check_file

    def appending(path, *args, **kwargs):
        with open(src, "a", encoding="utf-8") as f:           # the user's file grows while the copy is checked
            f.write("not json at all\n" + json.dumps({"messages": []}) + "\n")
        return real(path, *args, **kwargs)
    monkeypatch.setattr(data, "check_file", appending)
    admission = gate.admit(C.load(), src)
    assert admission.accepted and admission.entry.examples == 20
    assert admission.entry.path.read_bytes() == before      # the snapshot, not the grown file
    meta = json.loads(admission.entry.path.with_name(admission.entry.path.stem + ".meta.json").read_text())
    assert meta["queue"]["original_path"] == str(src.resolve())   # the user's file, not the staging copy


# ---------------------------------------------------------------- errors, not tracebacks
def test_a_file_name_too_long_for_the_file_system_is_one_line(tmp_path, capsys):
    name = "x" * 248 + ".jsonl"                             # the data file fits, its sidecar name does not
    src = tmp_path / name
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                            {"role": "assistant", "content": "b"}]}) + "\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "queue", "add", src)
    assert code == 2 and one_line_error(err), err
    assert "too long" in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    fifo = tmp_path / "p.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO"):
        cli.main(["queue", "add", str(fifo), "--debug"])


# ---------------------------------------------------------------- a full disk
@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """DOJO_HOME on a 4 MiB tmpfs, unmounted afterwards."""
    with tmpfs(tmp_path / "disk", "size=4m") as mount:
        monkeypatch.setenv("DOJO_HOME", str(mount / "home"))
        yield mount / "home"


def fill(disk: Path) -> None:
    """Use up every free byte of the file system holding ``disk``."""
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    try:                                                    # the last few blocks, byte by byte
        with open(disk / "filler2", "wb") as f:
            while True:
                f.write(b"\0" * 512)
                f.flush()
    except OSError:
        pass


def test_disk_full_priority_and_delete_move_nothing_and_leave_no_temp_files(tmp_path, capsys, small_disk):
    src = generate_file("bin", 1, 30, 8, tmp_path / "d.jsonl")
    assert run_cli(capsys, "queue", "add", src)[0] == 0
    [entry] = queue.queued(C.load())
    sidecar = entry.path.with_name(entry.path.stem + ".meta.json")
    before = {p: p.read_bytes() for p in (entry.path, sidecar)}
    fill(small_disk.parent)
    for argv in (["queue", "priority", entry.id, "high"], ["queue", "delete", entry.id]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and one_line_error(err), err
        assert "disk is full" in err
        assert {p: p.read_bytes() for p in before} == before      # still queued/normal, sidecar unchanged
        assert json.loads(sidecar.read_text())["queue"]["state"] == "queued"
        assert leftovers(small_disk) == []
    (small_disk.parent / "filler").unlink()                        # space again: the same command works
    (small_disk.parent / "filler2").unlink(missing_ok=True)
    assert run_cli(capsys, "queue", "priority", entry.id, "high")[0] == 0
    assert json.loads(next((small_disk / "queue" / "high").glob("*.meta.json")).read_text())["queue"]["state"] \
        == "queued"


def test_disk_full_during_training_is_one_line_and_leaves_no_partial_checkpoint(tmp_path, capsys, small_disk):
    src = generate_file("bin", 1, 40, 9, tmp_path / "t.jsonl")
    fill(small_disk.parent)
    code, _, err = run_cli(capsys, "train", src, "--steps", "1")
    assert code == 2 and one_line_error(err), err
    assert "disk is full" in err or "No space left" in err
    folder = small_disk / "checkpoints"
    assert not folder.exists() or not any(folder.iterdir())
    assert leftovers(small_disk) == []
