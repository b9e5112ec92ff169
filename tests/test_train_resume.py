"""Exact resume: two chunks of N steps equal one chunk of 2N steps (same data, same seed), and training
really changes the weights and lowers the loss."""
import pytest
import torch
from safetensors.torch import load_file

from dojo import config
from dojo.cli import generate_file
from model import checkpoint as ckpt
from model.train import train_chunk

SMALL = {
    "data": {"max_length": 128, "val_fraction": 0.1, "val_max_examples": 8},
    # warm-up spans the chunk boundary, so a lost scheduler state would show
    "train": {"micro_batch_size": 2, "grad_accum": 2, "warmup_steps": 3, "schedule": "cosine",
              "total_steps": 12, "learning_rate": 0.003, "log_every": 1},
}


def small_config(home, **overrides):
    data = {k: dict(v) for k, v in SMALL.items()}
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    data["storage"] = {"root": str(home)}
    return config.from_dict(data, env={})


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    # 44 examples -> 40 trained -> ~20 rows of 2 examples -> 5 steps per epoch: 2N = 8 crosses an epoch
    return generate_file("bin", 1, 44, 7, tmp_path_factory.mktemp("data") / "bin1.jsonl")


def weights(checkpoint):
    return load_file(str(checkpoint / "model.safetensors"))


def optimizer_tensors(checkpoint):
    return load_file(str(checkpoint / ckpt.STATE_DIR / "optimizer.safetensors"))


def test_two_chunks_equal_one_double_chunk(tmp_path, data_file):
    n = 4
    split = small_config(tmp_path / "split")
    first = train_chunk(split, data_file, steps=n)
    second = train_chunk(split, data_file, steps=n)
    whole = train_chunk(small_config(tmp_path / "whole"), data_file, steps=2 * n)

    assert (first.step, second.step, whole.step) == (n, 2 * n, 2 * n)
    a, b = ckpt.read_ledger(second.checkpoint), ckpt.read_ledger(whole.checkpoint)
    assert a["parent"] == ckpt.read_ledger(first.checkpoint)["name"]
    assert b["parent"] is None
    # Same op sequence on the same inputs: fp32 on CPU is deterministic, so the tolerance only absorbs
    # summation-order noise far below one AdamW update (lr 3e-3).
    wa, wb = weights(second.checkpoint), weights(whole.checkpoint)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-6, msg=name)
    oa, ob = optimizer_tensors(second.checkpoint), optimizer_tensors(whole.checkpoint)
    assert oa.keys() == ob.keys()
    for name in oa:
        torch.testing.assert_close(oa[name], ob[name], rtol=0, atol=1e-6, msg=name)
    assert a["learning_rate"] == pytest.approx(b["learning_rate"], rel=1e-12)
    sa = ckpt.load_state(second.checkpoint / ckpt.STATE_DIR, "trainer")
    sb = ckpt.load_state(whole.checkpoint / ckpt.STATE_DIR, "trainer")
    assert sa == sb and sa["data"]["epoch"] == 1, "data position (epoch, row) must match and cross an epoch"
    assert a["total_examples_trained"] == b["total_examples_trained"]


def test_a_changed_learning_rate_takes_effect_at_the_next_chunk(tmp_path, data_file):
    """The saved optimizer and scheduler state must not bring back the parent's rate: a user who edits
    train.learning_rate (or a plateau that lowers it) gets the new peak at the resumed point of the schedule, with
    Adam's moments kept. An unchanged config resumes exactly (the test above)."""
    n = 4
    home = tmp_path / "h"
    cosine = small_config(home)
    train_chunk(cosine, data_file, steps=n)
    halved = small_config(home, train={"learning_rate": 0.0015})
    second = train_chunk(halved, data_file, steps=n)
    whole = train_chunk(small_config(tmp_path / "whole"), data_file, steps=2 * n)
    a, b = ckpt.read_ledger(second.checkpoint), ckpt.read_ledger(whole.checkpoint)
    assert a["learning_rate"] == pytest.approx(b["learning_rate"] / 2, rel=1e-9)   # same schedule point, half peak
    assert a["step"] == b["step"] == 2 * n and a["has_optimizer_state"]
    wa, wb = weights(second.checkpoint), weights(whole.checkpoint)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) > 1e-5     # it trained at the other rate


def test_resume_without_optimizer_state_differs(tmp_path, data_file):
    """Negative control: the equivalence test above can fail. Without the saved optimizer/scheduler/data
    position the second chunk restarts Adam's moments, the warm-up and the data order, and lands elsewhere."""
    n = 4
    lossy = small_config(tmp_path / "lossy", train={"save_optimizer": False})
    train_chunk(lossy, data_file, steps=n)
    second = train_chunk(lossy, data_file, steps=n)
    whole = train_chunk(small_config(tmp_path / "whole"), data_file, steps=2 * n)
    assert not ckpt.read_ledger(second.checkpoint)["has_optimizer_state"]
    wa, wb = weights(second.checkpoint), weights(whole.checkpoint)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) > 1e-4


def test_training_changes_weights_and_lowers_loss(tmp_path, tiny_model_dir, data_file):
    cfg = small_config(tmp_path / "h", train={"warmup_steps": 2, "schedule": "constant"})
    first = train_chunk(cfg, data_file, steps=5)
    later = train_chunk(cfg, data_file, steps=15)
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    trained = weights(later.checkpoint)
    assert any(not torch.equal(base[k], trained[k]) for k in base)
    assert later.train_loss < first.train_loss * 0.7, (first.train_loss, later.train_loss)
    assert later.val_loss is not None and later.val_loss < first.val_loss


def test_new_file_starts_at_its_beginning(tmp_path, data_file):
    """Resuming on a different file keeps weights/optimizer but reads the new file from row 0."""
    cfg = small_config(tmp_path / "h")
    train_chunk(cfg, data_file, steps=3)
    other = generate_file("bin", 1, 30, 99, tmp_path / "other.jsonl")
    result = train_chunk(cfg, other, steps=2)
    state = ckpt.load_state(ckpt.latest_checkpoint(cfg.root) / ckpt.STATE_DIR, "trainer")
    assert result.step == 5
    assert state["data"]["sha256"] == ckpt.sha256_file(other)
    assert (state["data"]["epoch"], state["data"]["offset"]) == (0, 2 * 4)


def test_changed_base_model_is_refused(tmp_path, data_file, tiny_model_dir):
    """Continuing a lineage from a different base model would silently mix two models: refused, named."""
    cfg = small_config(tmp_path / "h")
    train_chunk(cfg, data_file, steps=1)
    other = tmp_path / "other-model"
    import shutil

    shutil.copytree(tiny_model_dir, other)
    config_json = other / "config.json"
    config_json.write_text(config_json.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    changed = config.from_dict({**{k: dict(v) for k, v in SMALL.items()}, "storage": {"root": str(cfg.root)},
                                "model": {"name_or_path": str(other)}}, env={})
    with pytest.raises(ValueError, match="were trained from .*tiny-qwen3"):
        train_chunk(changed, data_file, steps=1)
    assert len(ckpt.list_checkpoints(cfg.root)) == 1


def test_one_chunk_at_a_time_per_storage_root(tmp_path, data_file):
    from dojo.storage import LockedError, exclusive_lock

    cfg = small_config(tmp_path / "h")
    with exclusive_lock(cfg.root / "state" / "train.lock", "a training chunk"):
        with pytest.raises(LockedError, match=r"already running .*pid \d+"):
            train_chunk(cfg, data_file, steps=1)
    assert ckpt.list_checkpoints(cfg.root) == []
    train_chunk(cfg, data_file, steps=1)   # released: the next chunk runs
