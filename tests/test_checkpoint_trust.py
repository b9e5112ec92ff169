"""Checkpoints you can trust: pickle-only weights are refused before any loader runs; a checkpoint's name and
ledger agree; "latest" is the newest checkpoint that passes verification (structure, ledger, training state,
manifest sizes and hashes), and a broken newer one is quarantined loudly, never deleted, so the lineage continues
from the last valid one; broken ledgers and trainer state give errors naming the file, not tracebacks."""
import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import yaml

from dojo import config
from dojo.cli import generate_file, main
from model import checkpoint as ckpt
from model.train import train_chunk
from validation.model_dir import PICKLE_SUFFIXES, check_model_dir, refuse_pickle_weights

SMALL = {"data": {"max_length": 128}, "train": {"micro_batch_size": 2}}


def make_cfg(home: Path, **model):
    return config.from_dict({**SMALL, "storage": {"root": str(home)}, **({"model": model} if model else {})},
                            env={})


def cfg_file(home: Path, monkeypatch, **model) -> Path:
    """A config file for the CLI with ``home`` as the storage root (also as $DOJO_HOME, which would win)."""
    monkeypatch.setenv("DOJO_HOME", str(home))
    path = home.parent / f"{home.name}.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "storage": {"root": str(home)}, "eval": {"max_new_tokens": 8},
                                    **({"model": model} if model else {})}))
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return generate_file("bin", 1, 24, 3, tmp_path_factory.mktemp("data") / "bin_l1.jsonl")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, data_file, one_torch_thread):
    """A storage root with a two-chunk lineage: steps 1 and 2. Tests copy it before breaking anything."""
    home = tmp_path_factory.mktemp("pristine") / "home"
    cfg = make_cfg(home)
    train_chunk(cfg, data_file, steps=1)
    train_chunk(cfg, data_file, steps=1)
    return home


@pytest.fixture
def home(pristine, tmp_path):
    copy = tmp_path / "lineage"
    shutil.copytree(pristine, copy)
    return copy


def steps(home: Path) -> list[int]:
    return [ckpt.parse_name(d.name) for d in ckpt.list_checkpoints(home)]


def newest(home: Path) -> Path:
    return ckpt.candidates(home)[-1]


def quarantined(home: Path) -> list[dict]:
    log_file = home / ckpt.QUARANTINE_LOG
    return [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.exists() else []


def assert_quarantined(home: Path, name: str, reason: str, caplog) -> None:
    # (a later chunk may reuse the name: the same step from the valid parent, saved in the same minute)
    assert (home / "quarantine" / name).is_dir(), "moved to quarantine/, never deleted"
    (record,) = [r for r in quarantined(home) if r["name"] == name]
    assert reason in record["reason"] and record["time"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(name in w and reason in w for w in warnings), warnings


# ---------------------------------------------------------------- pickle-only weights
@pytest.fixture
def no_loaders(monkeypatch):
    """Fail the test if anything tries to unpickle or hand a directory to transformers."""
    import torch
    import transformers

    def boom(*args, **kwargs):
        raise AssertionError(f"a loader ran: {args!r}")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", boom)


class Canary:
    """Unpickling this touches a file: proof that code would have run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def pickle_only_dir(tmp_path: Path, tiny_model_dir: Path, weights: str = "pytorch_model.bin") -> Path:
    d = tmp_path / "pickle-model"
    shutil.copytree(tiny_model_dir, d)
    (d / "model.safetensors").unlink()
    (d / weights).write_bytes(pickle.dumps(Canary(tmp_path / "pwned")))
    return d


def test_eval_refuses_pickle_only_dir_before_loading(tmp_path, tiny_model_dir, no_loaders, capsys,
                                                      monkeypatch):
    d = pickle_only_dir(tmp_path, tiny_model_dir)
    assert main(["eval", str(d), "--skill", "bin", "--levels", "1", "--config", str(cfg_file(tmp_path / "h", monkeypatch))]) == 2
    err = capsys.readouterr().err
    assert f"dojo: error: {d} holds only pickle weights (pytorch_model.bin)" in err
    assert "safetensors only" in err and "save_pretrained" in err and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("suffix", PICKLE_SUFFIXES)
def test_load_model_refuses_pickle_only_dir(tmp_path, tiny_model_dir, no_loaders, suffix):
    from model.loading import load_model, pick_runtime

    d = pickle_only_dir(tmp_path, tiny_model_dir, f"weights{suffix}")
    for init in ("pretrained", "random"):
        with pytest.raises(ValueError, match=f"{d} holds only pickle weights .*safetensors only"):
            load_model(d, pick_runtime(), init=init)
    assert any("pickle" in p for p in check_model_dir(d).problems)
    assert not (tmp_path / "pwned").exists()


def test_pickle_beside_safetensors_is_not_pickle_only(tmp_path, tiny_model_dir):
    d = tmp_path / "both"
    shutil.copytree(tiny_model_dir, d)
    (d / "training_args.bin").write_bytes(b"\x80\x04N.")
    refuse_pickle_weights(d)   # transformers reads model.safetensors; the stray pickle is never loaded
    assert check_model_dir(d).ok


def test_pickle_only_adapter_is_refused(tmp_path, no_loaders):
    from model.loading import load_model, pick_runtime

    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x", "peft_type": "LORA"}))
    (d / "adapter_model.bin").write_bytes(pickle.dumps(Canary(tmp_path / "pwned")))
    with pytest.raises(ValueError, match="holds only pickle weights \\(adapter_model.bin\\)"):
        load_model(d, pick_runtime())
    assert any("pickle" in p for p in check_model_dir(d).problems)


def test_train_refuses_pickle_only_base_before_loading(tmp_path, tiny_model_dir, data_file, no_loaders):
    d = pickle_only_dir(tmp_path, tiny_model_dir)
    with pytest.raises(ValueError, match="holds only pickle weights"):
        train_chunk(make_cfg(tmp_path / "h", name_or_path=str(d)), data_file, steps=1)
    assert not (tmp_path / "pwned").exists()


def test_pickle_only_newest_checkpoint_is_quarantined(home, data_file, caplog):
    broken = newest(home)
    (broken / "model.safetensors").unlink()
    (broken / "pytorch_model.bin").write_bytes(b"\x80\x04N.")
    with caplog.at_level(logging.WARNING, logger="dojo.checkpoint"):
        result = train_chunk(make_cfg(home), data_file, steps=1)
    assert_quarantined(home, broken.name, "only pickle weights", caplog)
    assert result.step == 2 and ckpt.read_ledger(result.checkpoint)["parent"].startswith("checkpoint-1-")


# ---------------------------------------------------------------- name and ledger agree
def test_name_ledger_mismatch_is_quarantined_and_lineage_continues(home, data_file, caplog):
    """A directory named step 999999 whose ledger says step 2 once pinned "latest" forever."""
    valid = newest(home)
    bogus = home / "checkpoints" / "checkpoint-999999-20990101-0000"
    shutil.copytree(valid, bogus)
    with caplog.at_level(logging.WARNING, logger="dojo.checkpoint"):
        assert ckpt.latest_checkpoint(home) == valid
    assert_quarantined(home, bogus.name, "its name says step 999999 but its ledger says step 2", caplog)
    cfg = make_cfg(home)
    third = train_chunk(cfg, data_file, steps=1)
    fourth = train_chunk(cfg, data_file, steps=1)
    assert (third.step, fourth.step) == (3, 4)
    assert ckpt.read_ledger(third.checkpoint)["parent"] == valid.name
    assert ckpt.read_ledger(fourth.checkpoint)["parent"] == third.checkpoint.name


def test_ledger_name_must_match_directory(home, caplog):
    valid = newest(home)
    renamed = home / "checkpoints" / "checkpoint-2-20990101-0000"
    shutil.copytree(valid, renamed)
    assert any(f"its ledger names it {valid.name!r}" in p for p in ckpt.verify_checkpoint(renamed))
    assert ckpt.latest_checkpoint(home) == valid and (home / "quarantine" / renamed.name).is_dir()


# ---------------------------------------------------------------- truncated / corrupted files
@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "legacy-no-manifest"])
def test_truncated_weights_in_newest_are_quarantined(home, data_file, caplog, manifest):
    broken = newest(home)
    if not manifest:
        (broken / ckpt.MANIFEST).unlink()   # as written before manifests: the header check still catches it
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="dojo.checkpoint"):
        result = train_chunk(make_cfg(home), data_file, steps=1)
    assert_quarantined(home, broken.name, "model.safetensors", caplog)
    assert result.step == 2 and ckpt.read_ledger(result.checkpoint)["parent"].startswith("checkpoint-1-")
    assert steps(home) == [1, 2] and (home / "quarantine" / broken.name / "model.safetensors").stat().st_size


def test_flipped_byte_of_same_size_is_caught_by_the_manifest(home, caplog):
    broken = newest(home)
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF    # inside the last tensor: the size and the header stay valid
    weights.write_bytes(bytes(data))
    assert check_model_dir(broken).ok and ckpt.verify_checkpoint(broken, hashes=False) == []
    assert ckpt.verify_checkpoint(broken) == [f"model.safetensors does not match its sha256 in {ckpt.MANIFEST} "
                                              f"(changed or corrupted)"]
    with caplog.at_level(logging.WARNING, logger="dojo.checkpoint"):
        assert ckpt.latest_checkpoint(home).name.startswith("checkpoint-1-")
    assert_quarantined(home, broken.name, "does not match its sha256", caplog)


def test_manifest_covers_every_file_but_the_ledger(home):
    latest = newest(home)
    manifest = json.loads((latest / ckpt.MANIFEST).read_text())
    on_disk = {p.relative_to(latest).as_posix() for p in latest.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {ckpt.LEDGER, ckpt.MANIFEST}
    assert {"model.safetensors", "training_state/optimizer.safetensors", "training_state/trainer.json"} \
        <= set(manifest["files"])
    entry = manifest["files"]["model.safetensors"]
    assert entry == {"size": (latest / "model.safetensors").stat().st_size,
                     "sha256": ckpt.sha256_file(latest / "model.safetensors")}
    ckpt.update_ledger(latest, eval={"bin": {"1": 0.5}})   # evaluation writes the ledger: still valid
    (latest / "notes.txt").write_text("hi")                # an unlisted file is not
    assert ckpt.verify_checkpoint(latest) == [f"files not in {ckpt.MANIFEST}: notes.txt"]


def test_checkpoint_without_manifest_is_accepted_and_said(home, caplog):
    latest = newest(home)
    (latest / ckpt.MANIFEST).unlink()
    with caplog.at_level(logging.INFO, logger="dojo.checkpoint"):
        assert ckpt.latest_checkpoint(home) == latest
    assert any(latest.name in r.getMessage() and "written before manifests" in r.getMessage()
               for r in caplog.records)
    assert quarantined(home) == []


# ---------------------------------------------------------------- broken ledger / trainer state
def test_ledger_that_is_a_list(home, data_file, capsys, caplog, monkeypatch):
    broken = newest(home)
    (broken / ckpt.LEDGER).write_text("[]")
    with pytest.raises(ValueError, match=f"{broken / ckpt.LEDGER}: the checkpoint ledger must be a JSON object"):
        ckpt.read_ledger(broken)
    # named explicitly: refused with the file's name, exit 2, no traceback
    assert main(["eval", str(broken), "--levels", "1", "--config", str(cfg_file(home, monkeypatch))]) == 2
    err = capsys.readouterr().err
    assert f"{broken / ckpt.LEDGER}: the checkpoint ledger must be a JSON object" in err and "Traceback" not in err
    # as the newest of the lineage: quarantined, and training continues from the valid parent
    with caplog.at_level(logging.WARNING, logger="dojo.checkpoint"):
        assert main(["train", str(data_file), "--steps", "1", "--config", str(cfg_file(home, monkeypatch))]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["step"] == 2 and ckpt.read_ledger(out["checkpoint"])["parent"].startswith("checkpoint-1-")
    assert_quarantined(home, broken.name, "must be a JSON object", caplog)


def test_trainer_state_without_data(home, data_file, capsys, caplog, monkeypatch):
    broken = newest(home)
    trainer = broken / ckpt.STATE_DIR / "trainer.json"
    trainer.write_text(json.dumps({"__dict__": [["global_step", 2]]}))
    with pytest.raises(ValueError, match=f"{trainer}: the trainer state must hold global_step and data"):
        ckpt.read_trainer_state(broken)
    assert main(["eval", broken.name, "--levels", "1", "--config", str(cfg_file(home, monkeypatch))]) == 2
    err = capsys.readouterr().err
    assert f"{trainer}: the trainer state must hold" in err and "Traceback" not in err
    with caplog.at_level(logging.WARNING, logger="dojo.checkpoint"):
        assert main(["eval", "latest", "--levels", "1", "--config", str(cfg_file(home, monkeypatch))]) == 0
    assert_quarantined(home, broken.name, "trainer.json", caplog)
    assert "checkpoint-1-" in capsys.readouterr().out   # the report of the valid one
    assert train_chunk(make_cfg(home), data_file, steps=1).step == 2


def test_garbage_training_state_json_names_the_file(home):
    broken = newest(home)
    optimizer = broken / ckpt.STATE_DIR / "optimizer.json"
    optimizer.write_text("not json")
    with pytest.raises(ValueError, match=f"{optimizer}: the training state is not valid JSON"):
        ckpt.load_state(optimizer.parent, "optimizer")
    assert any(str(optimizer) in p for p in ckpt.verify_checkpoint(broken))
