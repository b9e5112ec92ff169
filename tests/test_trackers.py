"""``train.report_to: tensorboard``: two chunks and an evaluation of one storage root log into one TensorBoard run
(accelerate's TensorBoardTracker) — loss, learning rate and tokens/s per step, the chunk's losses, accuracy per
level and the promotion at the checkpoint's step — read back here from the event files. A tracker that is not
installed is refused by name; ``none`` writes nothing.

    .venv/bin/python -m pytest -q tests/test_trackers.py
"""
from __future__ import annotations


import pytest

from dojo import config
from dojo.generate import generate_file
from model import trackers
from model.train import train_chunk

pytest.importorskip("tensorboard", reason="tensorboard is a dev dependency (pip install -e '.[dev]')")


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [d for d in folder.iterdir() if d.is_dir()]
    assert len(runs) == 1, f"one run per lineage, found {[d.name for d in runs]}"
    events = EventAccumulator(str(runs[0]), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_run_per_lineage(tmp_path, one_torch_thread):
    from dojo import steps

    cfg = config.from_dict({"storage": {"root": str(tmp_path / "root")},
                            "data": {"max_length": 128, "val_fraction": 0.1},
                            "train": {"report_to": "tensorboard", "log_every": 1},
                            "eval": {"batch_size": 64, "max_new_tokens": 8}}, env={})
    data = generate_file("bin", 1, 40, 5, tmp_path / "bin1.jsonl")
    first = train_chunk(cfg, data, steps=2)
    second = train_chunk(cfg, data, steps=2)
    outcome = steps.evaluate_and_promote(cfg, str(second.checkpoint))
    trackers.log_evaluation(cfg, outcome)

    folder = cfg.root / "trackers"
    assert [d.name for d in folder.iterdir()] == [trackers.lineage_run_name(cfg.root)]
    found = scalars(folder)
    assert [s for s, _ in found["train/loss"]] == [1, 2, 3, 4]            # per step, both chunks, global steps
    assert [s for s, _ in found["train/lr"]] == [1, 2, 3, 4]
    assert all(v > 0 for _, v in found["train/tokens_per_s"])
    assert found["chunk/train_loss"] == [(2, pytest.approx(first.train_loss)), (4, pytest.approx(second.train_loss))]
    assert found["chunk/val_loss"] == [(2, pytest.approx(first.val_loss)), (4, pytest.approx(second.val_loss))]
    accuracy = outcome["levels"]["1"]["accuracy"]
    assert found["eval/bin/level_1"] == [(4, pytest.approx(accuracy))]
    assert found["promotion/promoted"] == [(4, 1.0)]                       # the first evaluation promotes


def test_missing_tracker_package_is_refused_by_name(tmp_path, monkeypatch):
    cfg = config.from_dict({"storage": {"root": str(tmp_path / "root")}, "train": {"report_to": "tensorboard,aim"}},
                           env={})
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None if name == "aim" else real(name))
    with pytest.raises(ValueError, match="train.report_to: aim is not installed; pip install aim"):
        trackers.open_run(cfg)


def test_none_opens_nothing(tmp_path):
    cfg = config.from_dict({"storage": {"root": str(tmp_path / "root")}}, env={})
    assert cfg.train.report_to == "none" and trackers.open_run(cfg) is None
    trackers.log_evaluation(cfg, {"skill": "bin", "levels": {}, "promoted": False, "checkpoint": "c", "reason": "",
                                  "step": 1})
    assert not (cfg.root / "trackers").exists()
    with pytest.raises(ValueError, match="train.report_to"):
        config.from_dict({"train": {"report_to": "tensorboard,nope"}}, env={})
