"""The real flows end to end under prefect_test_harness on the tiny model: train/continuous admits curriculum
files through the gate, claims and re-checks them, trains chunks, saves checkpoints with ledgers, moves files to
done/, and (inline here) evaluates, records curriculum progress and promotes; artifacts are read back through the
Prefect client."""
import datetime
import json

import pytest
import yaml

from dojo import config, promotion, queue
from model import checkpoint as ckpt

pytestmark = pytest.mark.slow


def small_config(tmp_path):
    path = tmp_path / "flows.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"max_length": 256},
        "train": {"micro_batch_size": 2, "warmup_steps": 2},
        "eval": {"batch_size": 64, "max_new_tokens": 24},
        "curriculum": {"examples_per_file": 60, "low_water": 1},
        "validation": {"depth": "deep"},
    }))
    return str(path)


def read_artifacts(keys, since):
    """The artifacts with these keys made since ``since`` (the session's server holds other tests' too)."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
                                      sort=ArtifactSort.CREATED_DESC)
    return [a for a in found if a.created >= since]


def test_continuous_trains_evaluates_and_promotes(harness, tmp_path, dojo_home):
    from flows.train_continuous import continuous

    cfg_path = small_config(tmp_path)
    started = datetime.datetime.now(datetime.timezone.utc)
    chunks = continuous(max_chunks=2, steps_per_chunk=6, hand_off="inline", config=cfg_path)
    cfg = config.load(cfg_path)
    assert chunks == 2
    checkpoints = ckpt.list_checkpoints(cfg.root)
    assert [ckpt.read_ledger(c)["step"] for c in checkpoints] == [6, 12]
    second = ckpt.read_ledger(checkpoints[-1])
    assert second["parent"] == checkpoints[0].name and len(second["lineage_files"]) == 2
    assert second["skill"] == "bin" and second["level"] == 1 and "1" in second["eval"]["bin"]
    done = [e for e in queue.list_entries(cfg) if e.state == "done"]
    trained = [e for e in done if not e.name.startswith("spar_")]       # sparring files are mixed in, not trained
    assert len(trained) == 2 and {e.sha256 for e in trained} == set(second["lineage_files"])
    for e in done:
        if e.name.startswith("spar_"):
            assert "mixed into curriculum file" in e.path.with_name(e.path.stem + ".reason.txt").read_text()
    assert not [e for e in queue.list_entries(cfg) if e.state == "processing"]
    pointer = promotion.current(cfg.root)
    assert pointer is not None and pointer["checkpoint"] == checkpoints[0].name   # first eval promotes
    decisions = [json.loads(x) for x in (cfg.root / "state" / "promotions.jsonl").read_text().splitlines()]
    assert len(decisions) == 2 and decisions[0]["promote"] is True
    state = json.loads((cfg.root / "state" / "curriculum.json").read_text())
    assert [h["checkpoint"] for h in state["skills"]["bin"]["history"]] == [c.name for c in checkpoints]
    keys = ["train-progress", "masking-report", "eval-bin", "promotion-decision", "curriculum-state", "lineage-stats",
            *[f"lineage-{e.id}" for e in trained]]
    artifacts = read_artifacts(keys, started)
    assert {a.key for a in artifacts} == set(keys)
    progress = [a for a in artifacts if a.key == "train-progress"]
    assert len(progress) == 2 and all(float(a.data) == 100.0 for a in progress)
    eval_rows = json.loads([a for a in artifacts if a.key == "eval-bin"][0].data)
    assert eval_rows[0]["level"] == 1 and eval_rows[0]["n"] == 187
    assert "PASS" in [a for a in artifacts if a.key == "masking-report"][0].data
    from dojo import oracle          # eval and promotion artifacts link to the Oracle's learning-curve page

    assert oracle.url(cfg) in [a for a in artifacts if a.key == "promotion-decision"][0].data
