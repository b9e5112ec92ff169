"""The whole storage root on S3 (moto's real S3 server), shared by two "hosts" — two working copies of one
``s3://`` root: the queue (a file added on one host is claimed on the other, exactly once), two chunks with exact
resume across the hosts, evaluation and promotion through the shared pointers, and a process killed mid-upload
that leaves no committed checkpoint while the next chunk resumes from the last committed one."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dojo import config, gate, mirror, promotion, queue, steps
from dojo.generate import generate_file
from dojo.objstore import list_committed
from model import checkpoint as ckpt
from model.train import train_chunk
from tests.helpers import moto_s3_server

REPO = Path(__file__).resolve().parent.parent
SMALL = {"data": {"max_length": 128}, "train": {"micro_batch_size": 2}, "eval": {"max_new_tokens": 8}}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server with a fresh bucket; the AWS environment points at it for the module."""
    import boto3

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in [*env, "AWS_ENDPOINT_URL"]}
    with moto_s3_server() as endpoint:
        os.environ.update(env, AWS_ENDPOINT_URL=endpoint)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="dojo-test")
        try:
            yield endpoint
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def host(tmp_path: Path, name: str, root: str) -> config.Config:
    return config.from_dict({**SMALL, "storage": {"root": root, "cache": str(tmp_path / name)}}, env={})


@pytest.fixture
def root(s3, request):
    return f"s3://dojo-test/{request.node.name}"


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return generate_file("bin", 1, 40, 3, tmp_path_factory.mktemp("data") / "bin_l1.jsonl")


def test_queue_is_shared_and_a_file_is_claimed_once(tmp_path, root, data_file, one_torch_thread):
    a, b = host(tmp_path, "a", root), host(tmp_path, "b", root)
    admission = gate.admit(a, data_file)
    assert admission.accepted
    st = mirror.store(a)
    assert f"queue/normal/{data_file.name}" in st.list("queue")
    assert [e.id for e in queue.queued(b)] == [admission.entry.id]        # host b sees what host a queued
    claimed = queue.claim(b)
    assert claimed is not None and claimed.state == "processing"
    assert queue.claim(a) is None                                          # already claimed elsewhere
    assert set(st.list("processing")) == {f"processing/{data_file.name}", "processing/bin_l1.meta.json"}
    assert not st.list("queue")
    queue.finish(b, claimed.id, "done")
    assert [e.state for e in queue.list_entries(a)] == ["done"]
    with pytest.raises(ValueError, match="already done"):
        queue.add(a, data_file)


def test_two_chunks_resume_exactly_across_hosts_and_promotion_is_shared(tmp_path, root, data_file,
                                                                         one_torch_thread):
    a, b = host(tmp_path, "a", root), host(tmp_path, "b", root)
    first = train_chunk(a, data_file, steps=2)
    assert list_committed(mirror.store(a), "checkpoints") == [f"checkpoints/{first.checkpoint.name}"]
    second = train_chunk(b, data_file, steps=2)                 # host b resumes from host a's checkpoint
    ledger = ckpt.read_ledger(second.checkpoint)
    assert ledger["step"] == 4 and ledger["parent"] == first.checkpoint.name
    # the same two chunks on one local root give the same weights: the resume across hosts is exact
    local = config.from_dict({**SMALL, "storage": {"root": str(tmp_path / "local")}}, env={})
    train_chunk(local, data_file, steps=2)
    here = train_chunk(local, data_file, steps=2)
    got, want = load_file(second.checkpoint / "model.safetensors"), load_file(here.checkpoint / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    out = steps.evaluate_and_promote(a, second.checkpoint.name)
    assert out["promoted"]
    st = mirror.store(a)
    assert b'"checkpoint": "%s"' % second.checkpoint.name.encode() in st.read("state/promoted.json")
    assert st.exists(f"eval/{second.checkpoint.name}.json") and st.exists("state/curriculum.json")
    assert b'"eval"' in st.read(f"checkpoints/{second.checkpoint.name}/.ledger.json")   # the ledger update too
    with mirror.shared_file(b, *promotion.POINTERS):                    # host b reads the shared pointer
        assert promotion.current(b.root)["checkpoint"] == second.checkpoint.name


KILL_MID_UPLOAD = """
import os, sys, time
from pathlib import Path
from dojo import config
from dojo.objstore import FsspecStore
from model.train import train_chunk

put, sent = FsspecStore.put_file, []
def stalling(self, local, key):
    put(self, local, key)
    sent.append(key)
    if key.startswith("checkpoints/") and len(sent) == 2:
        print("UPLOADING", flush=True)
        time.sleep(600)
FsspecStore.put_file = stalling
cfg = config.from_dict({**eval(sys.argv[1]), "storage": {"root": sys.argv[2], "cache": sys.argv[3]}}, env={})
train_chunk(cfg, sys.argv[4], steps=2)
"""


def test_killed_mid_upload_leaves_no_committed_checkpoint_and_the_next_chunk_resumes(tmp_path, root, data_file,
                                                                                     one_torch_thread):
    a = host(tmp_path, "a", root)
    first = train_chunk(a, data_file, steps=2)
    proc = subprocess.Popen([sys.executable, "-c", KILL_MID_UPLOAD, repr(SMALL), root, str(tmp_path / "killed"),
                             str(data_file)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 300
        while proc.stdout.readline().strip() != "UPLOADING":
            assert proc.poll() is None and time.monotonic() < deadline, "the trainer ended before its upload"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    st = mirror.store(a)
    partial = {k.split("/")[1] for k in st.list("checkpoints")} - {first.checkpoint.name}
    assert len(partial) == 1                                   # objects of the killed upload are there …
    assert list_committed(st, "checkpoints") == [f"checkpoints/{first.checkpoint.name}"]   # … but not committed
    # the killed host's own working copy holds the complete local checkpoint; it still resumes from the committed
    killed = host(tmp_path, "killed", root)
    assert ckpt.latest(killed).name == first.checkpoint.name
    nxt = train_chunk(killed, data_file, steps=2)
    assert ckpt.read_ledger(nxt.checkpoint)["parent"] == first.checkpoint.name
    assert [p.name.rsplit("-", 1)[0] for p in (tmp_path / "killed" / "uncommitted").iterdir()] == list(partial)
    assert list_committed(st, "checkpoints") == sorted(f"checkpoints/{n}" for n in (first.checkpoint.name,
                                                                                   nxt.checkpoint.name))


def test_retention_on_the_store_keeps_promoted_best_and_newest(tmp_path, root, data_file, one_torch_thread):
    import json

    from dojo import maintenance

    a = host(tmp_path, "a", root)
    a = config.from_dict({**SMALL, "storage": {"root": root, "cache": str(tmp_path / "a")},
                          "retention": {"keep_last_checkpoints": 1, "done_days": 30}}, env={})
    names = [train_chunk(a, data_file, steps=1).checkpoint.name for _ in range(5)]
    st = mirror.store(a)
    for name, scores in zip(names, [{"bin": {"1": 0.9}}, {"bin": {"1": 0.5}}, None, {"bin": {"1": 0.3}},
                                    {"bin": {"1": 0.2}}]):
        if scores:                                   # what evaluation pushes: the ledger with its scores
            ledger = json.loads(st.read(f"checkpoints/{name}/.ledger.json"))
            st.write(f"checkpoints/{name}/.ledger.json", json.dumps({**ledger, "eval": scores}).encode())
    promotion.promote_by_hand(a, mirror.fetch_checkpoint(a, names[1]), "the user's choice")
    assert b"the user's choice" in st.read("state/promotions.jsonl")
    st.write("checkpoints/checkpoint-99-20261101-0000/model.safetensors", b"x" * 100)   # an upload that died
    entry = queue.add(a, data_file)
    queue.claim(a)
    queue.finish(a, entry.id, "done")
    todo = maintenance.plan(a, now=time.time() + 40 * 86400)
    assert {(r.kind, r.path.name) for r in todo.removals} >= {
        ("checkpoint", names[3]), ("tmp", "checkpoint-99-20261101-0000"), ("done", data_file.name)}
    assert not {names[0], names[1], names[2], names[4]} & {r.path.name for r in todo.removals}, todo.format()
    maintenance.apply(a, todo)
    assert list_committed(st, "checkpoints") == sorted(f"checkpoints/{n}" for n in names if n != names[3])
    assert not st.list("checkpoints/checkpoint-99-20261101-0000") and not st.list("done")
    assert data_file.name.encode() in st.read("state/retired.jsonl")
    b = host(tmp_path, "b", root)
    with pytest.raises(ValueError, match="removed from done/ by retention"):
        queue.add(b, data_file)                       # the other host refuses it too


def test_one_trainer_per_root_across_hosts(tmp_path, root):
    import json

    from dojo.storage import LockedError

    a, b = host(tmp_path, "a", root), host(tmp_path, "b", root)
    with mirror.exclusive_lease(a, "train", "a training chunk"):
        with pytest.raises(LockedError, match="already running under s3://"):
            with mirror.exclusive_lease(b, "train", "a training chunk"):
                pass
    with mirror.exclusive_lease(b, "train", "a training chunk"):      # released: the other host may start
        pass
    st = mirror.store(a)
    st.write("locks/train", json.dumps({"host": "gone-host", "pid": 1, "until": time.time() - 1}).encode())
    with mirror.exclusive_lease(b, "train", "a training chunk"):      # an expired lease is taken over
        assert json.loads(st.read("locks/train"))["pid"] == os.getpid()
    assert not st.exists("locks/train")


def test_the_stacks_runs_load_the_same_remote_root(tmp_path):
    """`dojo up` on an s3:// root: the flow runs its workers start must load the config with the same remote root
    (and so pull and push the store), not take the local working copy for a plain local root."""
    from deployments import stack

    cfg = host(tmp_path, "a", "s3://dojo-test/stack")
    env = stack.stack_env(cfg)
    assert env["DOJO_HOME"] == "s3://dojo-test/stack"
    again = config.from_dict({**SMALL, "storage": {"cache": str(tmp_path / "a")}}, env={"DOJO_HOME": env["DOJO_HOME"]})
    assert (again.remote, again.root) == (cfg.remote, cfg.root)
    local = config.from_dict({"storage": {"root": str(tmp_path / "home")}}, env={})
    assert stack.stack_env(local)["DOJO_HOME"] == str(local.root)
