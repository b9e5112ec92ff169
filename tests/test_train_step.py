"""The training step (model/train.py: train_step, make_step_batch, prefetch) and gradient checkpointing `auto`
(model/vram.py: choose_checkpointing): the step reads nothing back from the device, does not depend on how a step
is split into micro-batches, the prefetch thread hands its errors over, and the checkpointing choice follows the
VRAM estimate and is recorded in the ledger."""
import dataclasses
import threading
import time

import pytest
import torch

from dojo import config
from dojo.cli import generate_file
from model import checkpoint as ckpt
from model import vram as V
from model.loading import load_model, load_tokenizer, pick_runtime
from model.packing import pack
from model.train import (StepBatch, make_accelerator, make_schedulers, make_step_batch, prefetch,
                         prepare_model_for_training, train_chunk, train_step)

GIB = 1 << 30


@pytest.fixture(scope="module")
def rows():
    from model.chat import tokenize_example
    from skills import bin as B

    tok = load_tokenizer(config.TINY_MODEL_DIR)
    exs = [tokenize_example(B.to_chat(p)["messages"], tok) for p in B.generate(1, 24, 5)]
    return pack(exs, 96), tok.pad_token_id


class PlainSGD(torch.optim.Optimizer):
    """SGD written without a read-back (torch's AdamW reads its step count with .item() on CPU)."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])


def tiny_setup(checkpointing=False, lr=0.1):
    runtime = pick_runtime()
    model = prepare_model_for_training(load_model(config.TINY_MODEL_DIR, runtime), checkpointing, False)
    opt = PlainSGD(model.parameters(), lr)
    train_cfg = dataclasses.replace(config.TrainConfig(), warmup_steps=0)
    accelerator = make_accelerator(runtime)
    model, opt = accelerator.prepare(model, opt)
    return model, [opt], make_schedulers([opt], train_cfg), accelerator


def test_step_reads_nothing_back_from_the_device(rows, monkeypatch):
    """No .item(), float(), int() or .tolist() on a tensor inside the step (forward, backward, clipping, optimizer,
    scheduler): counts come from the host-side labels, the loss stays a tensor."""
    rows, pad = rows
    model, opts, scheds, acc = tiny_setup(checkpointing=True)
    step = make_step_batch(rows[:4], 2, pad)
    assert step.tokens == sum(sum(1 for lab in r.labels[1:] if lab != -100) for r in rows[:4])

    def refuse(*_a, **_k):
        raise AssertionError("a read-back from the device inside the training step")

    for name in ("item", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    loss = train_step(model, step, opts, scheds, acc, max_grad_norm=1.0)
    monkeypatch.undo()
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and float(loss) > 0


def test_step_does_not_depend_on_the_micro_batch_split(rows):
    """4 rows as one micro-batch = 4 micro-batches of 1 (token-weighted mean over the step)."""
    rows, pad = rows
    results = []
    for micro in (4, 1):
        torch.manual_seed(0)
        model, opts, scheds, acc = tiny_setup()
        loss = train_step(model, make_step_batch(rows[:4], micro, pad), opts, scheds, acc, max_grad_norm=1.0)
        results.append((float(loss), {k: v.detach().clone() for k, v in model.state_dict().items()}))
    (la, wa), (lb, wb) = results
    assert la == pytest.approx(lb, rel=1e-5)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


def test_prefetch_yields_in_order_and_hands_errors_over():
    assert [b.tokens for b in prefetch(lambda i: StepBatch([], i, 0, 0), range(7))] == list(range(7))

    def boom(i):
        if i == 2:
            raise ValueError("bad row 2")
        return StepBatch([], i, 0, 0)

    got = []
    with pytest.raises(ValueError, match="bad row 2"):
        for b in prefetch(boom, range(5)):
            got.append(b.tokens)
    assert got == [0, 1]
    gen = prefetch(lambda i: StepBatch([], i, 0, 0), range(1000), depth=2)
    assert next(gen).tokens == 0
    gen.close()   # leaving early stops the producer (it would block on the full queue otherwise)
    assert not [t for t in threading.enumerate() if t.name == "dojo-prefetch"]
    # the consumer leaves while the producer waits to hand over its last item: it still stops
    gen = prefetch(lambda i: StepBatch([], i, 0, 0), range(3), depth=1)
    assert next(gen).tokens == 0
    time.sleep(0.3)
    gen.close()
    assert not [t for t in threading.enumerate() if t.name == "dojo-prefetch"]


# ---------------------------------------------------------------- gradient checkpointing: auto
def test_checkpointing_auto_follows_the_estimate():
    q06 = V.load_config("Qwen/Qwen3-0.6B")
    q4 = V.load_config("Qwen/Qwen3-4B")
    assert V.choose_checkpointing(True, "cpu") == (True, "model.gradient_checkpointing: true")
    assert V.choose_checkpointing(False, "cuda", q4, 2048, 1, "adamw", gpu_bytes=GIB)[0] is False
    on, why = V.choose_checkpointing("auto", "cpu")
    assert not on and "CPU" in why
    # 0.6B at 2048 x 1 fits an 80 GiB GPU with room to spare without checkpointing: off
    on, why = V.choose_checkpointing("auto", "cuda", q06, 2048, 1, "adamw", gpu_bytes=80 * GIB)
    assert not on and why.startswith("auto: off")
    # 4B full fine-tune on a 24 GiB card does not: on, with the numbers
    on, why = V.choose_checkpointing("auto", "cuda", q4, 2048, 1, "paged_adamw_8bit", gpu_bytes=24 * GIB, liger=True)
    assert on and why.startswith("auto: on (estimate without checkpointing") and "24.0 GiB" in why
    # the margin decides: just above the no-checkpointing need, checkpointing stays on
    need = V.estimate(q06, 2048, 1, "adamw", gradient_checkpointing=False).resident_bytes
    assert V.choose_checkpointing("auto", "cuda", q06, 2048, 1, "adamw", gpu_bytes=int(need * 1.05))[0] is True
    assert V.choose_checkpointing("auto", "cuda", q06, 2048, 1, "adamw", gpu_bytes=int(need * 1.3))[0] is False
    assert V.choose_checkpointing("auto", "cuda", None)[0] is True   # unknown model: on


def test_ledger_records_the_checkpointing_choice(tmp_path):
    data = generate_file("bin", 1, 20, 3, tmp_path / "d.jsonl")
    for setting, want in (("auto", False), (True, True)):
        cfg = config.from_dict({"storage": {"root": str(tmp_path / str(setting))},
                                "data": {"max_length": 128, "val_fraction": 0.0},
                                "model": {"gradient_checkpointing": setting}}, env={})
        runtime = ckpt.read_ledger(train_chunk(cfg, data, steps=1).checkpoint)["runtime"]
        assert runtime["gradient_checkpointing"] is want
        assert runtime["gradient_checkpointing_reason"] == V.choose_checkpointing(setting, "cpu")[1]


def test_checkpointing_setting_in_yaml(tmp_path):
    for text, want in (("auto", "auto"), ("true", True), ("false", False)):
        cfg = config.from_dict({"model": {"gradient_checkpointing": {"auto": "auto", "true": True,
                                                                     "false": False}[text]}}, env={})
        assert cfg.model.gradient_checkpointing == want
    with pytest.raises(ValueError, match="model.gradient_checkpointing: 'sometimes'.*true or false.*auto"):
        config.from_dict({"model": {"gradient_checkpointing": "sometimes"}}, env={})
