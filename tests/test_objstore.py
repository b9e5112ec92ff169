"""dojo/objstore.py: the same behaviour tests against a local folder and against moto's real S3 server.

Every test that takes ``store`` runs twice: ``[local]`` on a LocalStore in tmp_path, ``[s3]`` on an FsspecStore
(s3fs) over ``ThreadedMotoServer`` on 127.0.0.1, reached the way production reaches S3 — endpoint, region and
dummy credentials from the standard AWS environment (AWS_ENDPOINT_URL, …), no storage options. Concurrency is
real: threads and separate processes racing on one key. The crash test SIGKILLs a process mid-upload.

Run: ``pytest tests/test_objstore.py`` (30–40 s on 2 busy cores).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from dojo.objstore import (MANIFEST, Conflict, CorruptTree, FsspecStore, KeyNotFound, LocalStore, NotCommitted,
                           StoreError, committed, default_cache_dir, fetch_tree, get_json, list_committed,
                           open_store, redact, update_json, upload_tree)
from tests.helpers import moto_s3_server

BUCKET = "dojo-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server for this module, the AWS environment pointing at it, and the bucket."""
    with pytest.MonkeyPatch.context() as mp, moto_s3_server() as endpoint:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        s3_client().create_bucket(Bucket=BUCKET)
        yield endpoint


def s3_client():
    import boto3

    return boto3.client("s3")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """A fresh, empty store: a folder, or a unique prefix in the moto bucket (its cache in tmp_path)."""
    if request.param == "local":
        return open_store(tmp_path / "root")
    request.getfixturevalue("s3_endpoint")
    return open_store(f"s3://{BUCKET}/{uuid.uuid4().hex}", cache_dir=tmp_path / "cache")


def behind(store, key: str, data: bytes) -> None:
    """Write an object without going through ``store`` (another process or host, a bit flip on disk)."""
    if isinstance(store, LocalStore):
        path = store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        bucket, _, prefix = store.url.removeprefix("s3://").partition("/")
        s3_client().put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)


def make_tree(folder: Path, files: int = 4, size: int = 4096) -> Path:
    """A folder of ``files`` random files (one nested), like a small checkpoint."""
    folder.mkdir(parents=True)
    for i in range(files):
        rel = f"part-{i}.bin" if i else "training_state/trainer.bin"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(os.urandom(size + i))
    return folder


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- objects
def test_write_read_size_list_delete(store):
    store.write("queue/normal/a.jsonl", b"one\n")
    store.write("queue/normal2/b.jsonl", b"two\n")
    assert store.read("queue/normal/a.jsonl") == b"one\n"
    assert store.size("queue/normal/a.jsonl") == 4
    assert store.exists("queue/normal/a.jsonl") and not store.exists("queue/normal")   # a prefix is no object
    with store.open("queue/normal/a.jsonl") as f:
        assert f.read() == b"one\n"
    assert store.list("queue/normal") == {"queue/normal/a.jsonl": 4}          # not queue/normal2/
    assert list(store.list()) == ["queue/normal/a.jsonl", "queue/normal2/b.jsonl"]
    store.write("queue/normal/a.jsonl", b"replaced")
    assert store.read("queue/normal/a.jsonl") == b"replaced"
    store.delete("queue/normal/a.jsonl")
    store.delete("queue/normal/a.jsonl")                                       # missing: not an error
    with pytest.raises(KeyNotFound, match="queue/normal/a.jsonl"):
        store.read("queue/normal/a.jsonl")
    with pytest.raises(FileNotFoundError):                                    # KeyNotFound is one
        store.size("queue/normal/a.jsonl")
    assert store.list("nothing/here") == {}


def test_listing_sees_a_new_object_at_once(store):
    store.write("done/old.jsonl", b"x")
    assert list(store.list("done")) == ["done/old.jsonl"]         # a first listing, which a cache would keep
    behind(store, "done/new.jsonl", b"y")                         # written by someone else
    assert list(store.list("done")) == ["done/new.jsonl", "done/old.jsonl"]
    assert store.exists("done/new.jsonl")


def test_copy_and_move(store, tmp_path):
    store.write("a/x", b"data")
    store.copy("a/x", "b/x")
    store.move("a/x", "c/x")
    assert store.list() == {"b/x": 4, "c/x": 4}
    with pytest.raises(KeyNotFound, match="a/x"):
        store.move("a/x", "d/x")
    store.put_file(make_tree(tmp_path / "t", files=1) / "training_state/trainer.bin", "f/trainer.bin")
    store.get_file("f/trainer.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == (tmp_path / "t/training_state/trainer.bin").read_bytes()


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "..", "a\\b", "./a", "a/.x.json.lock"])
def test_bad_keys_are_refused(store, key):
    with pytest.raises(ValueError, match="not a valid storage key"):
        store.write(key, b"x")


# ---------------------------------------------------------------- exclusive create
def test_exclusive_create_has_one_winner_among_threads(store):
    barrier, results = threading.Barrier(8), {}

    def claim(i):
        barrier.wait()
        results[i] = store.create("processing/file.claim", f"run-{i}".encode())

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1
    assert store.read("processing/file.claim") == f"run-{winners[0]}".encode()   # the winner's, whole
    assert not store.create("processing/file.claim", b"late")


# ---------------------------------------------------------------- compare-and-swap
def test_replace_if_with_a_stale_version_raises_conflict(store):
    assert store.read_versioned("state/promoted.json") == (None, None)
    v1 = store.replace_if("state/promoted.json", b"1", None)            # None: must not exist
    data, version = store.read_versioned("state/promoted.json")
    assert (data, version) == (b"1", v1)
    v2 = store.replace_if("state/promoted.json", b"2", v1)
    assert v2 != v1
    assert list(store.list("state")) == ["state/promoted.json"]          # no lock or temp files listed
    with pytest.raises(Conflict, match="state/promoted.json: changed since it was read"):
        store.replace_if("state/promoted.json", b"stale", v1)
    with pytest.raises(Conflict, match="already exists"):
        store.replace_if("state/promoted.json", b"new", None)
    store.write("state/promoted.json", b"3")                            # a blind write also changes the version
    with pytest.raises(Conflict):
        store.replace_if("state/promoted.json", b"lost", v2)
    store.delete("state/promoted.json")
    with pytest.raises(Conflict, match="deleted"):
        store.replace_if("state/promoted.json", b"gone", v2)
    assert store.read_versioned("state/promoted.json") == (None, None)


def increment(state: dict) -> dict:
    return {**state, "n": state.get("n", 0) + 1}


def test_update_json_from_threads_loses_no_update(store):
    def work():
        for _ in range(10):
            update_json(store, "state/curriculum.json", increment, default={})

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert get_json(store, "state/curriculum.json") == {"n": 40}


def test_local_cas_takes_the_same_lock_as_storage_locked(tmp_path):
    """Code that still does ``with storage.locked(path)`` read-modify-writes and LocalStore's compare-and-swap
    exclude each other, so the two can be mixed while callers move to the store."""
    from dojo.storage import locked

    store = open_store(tmp_path / "root")
    store.write("state/curriculum.json", b'{"n": 1}')
    done = threading.Event()
    with locked(store.root / "state/curriculum.json"):
        t = threading.Thread(target=lambda: (update_json(store, "state/curriculum.json", increment), done.set()))
        t.start()
        assert not done.wait(0.3)                                        # waits for the lock …
    t.join(10)
    assert done.is_set() and get_json(store, "state/curriculum.json") == {"n": 2}    # … then lands


# One claimant and a few increments per process, started together once every process has imported everything.
RACER = r"""
import sys, time
from pathlib import Path
from dojo.objstore import open_store, update_json
root, go, name, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
store = open_store(root)
store.exists("warm-up")                       # connect before the start line
print("ready", flush=True)
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.005)
print("won" if store.create("processing/claim", name.encode()) else "lost", flush=True)
for _ in range(n):
    update_json(store, "state/counter.json", lambda d: {"n": d.get("n", 0) + 1}, default={})
print("done", flush=True)
"""


def test_processes_claim_once_and_lose_no_update(store, tmp_path):
    go, procs, n = tmp_path / "go", [], 10
    for i in range(2):                   # two: the cross-process case (threads race 4 and 8 wide above)
        procs.append(subprocess.Popen([sys.executable, "-c", RACER, store.url, str(go), f"run-{i}", str(n)],
                                      stdout=subprocess.PIPE, text=True))
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        go.touch()
        outcomes = []
        for p in procs:
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0
            outcomes.append(out.split()[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sorted(outcomes) == ["lost", "won"]
    assert store.read("processing/claim") == f"run-{outcomes.index('won')}".encode()
    assert get_json(store, "state/counter.json") == {"n": 2 * n}


def test_update_json_leaves_an_unchanged_value_unwritten_and_names_bad_json(store):
    update_json(store, "s.json", increment, default={})
    _, version = store.read_versioned("s.json")
    assert update_json(store, "s.json", lambda d: d) == {"n": 1}
    assert store.read_versioned("s.json")[1] == version
    store.write("bad.json", b"{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        update_json(store, "bad.json", increment)


# ---------------------------------------------------------------- committed trees
def test_tree_without_its_marker_is_invisible(store, tmp_path):
    src = make_tree(tmp_path / "ckpt")
    for rel, data in tree_bytes(src).items():                 # every file, but no marker
        store.write(f"checkpoints/half/{rel}", data)
    upload_tree(store, src, "checkpoints/whole")
    assert committed(store, "checkpoints/half") is None
    assert list_committed(store, "checkpoints") == ["checkpoints/whole"]
    with pytest.raises(NotCommitted, match=f"checkpoints/half: not a committed tree .*no {MANIFEST}"):
        fetch_tree(store, "checkpoints/half")


def test_committed_tree_downloads_byte_identical(store, tmp_path):
    src = make_tree(tmp_path / "ckpt", files=5, size=200_000)
    manifest = upload_tree(store, src, "checkpoints/c1")
    assert committed(store, "checkpoints/c1") == manifest
    assert store.list("checkpoints/c1")[f"checkpoints/c1/{MANIFEST}"] > 0
    got = fetch_tree(store, "checkpoints/c1")
    fetched = tree_bytes(got)
    assert fetched.pop(MANIFEST)
    assert fetched == tree_bytes(src)
    assert fetch_tree(store, "checkpoints/c1") == got                   # cached copy reused
    assert upload_tree(store, src, "checkpoints/c1") == manifest         # a retried upload: no-op
    (src / "part-1.bin").write_bytes(b"other content")
    with pytest.raises(StoreError, match="already committed with other content"):
        upload_tree(store, src, "checkpoints/c1")
    if isinstance(store, FsspecStore):
        assert got.is_relative_to(store.cache_dir)
        assert not [p for p in got.parent.iterdir() if p != got]          # no temp folders left


def test_corrupt_objects_are_refused(store, tmp_path):
    src = make_tree(tmp_path / "ckpt")
    upload_tree(store, src, "checkpoints/c1")
    upload_tree(store, src, "checkpoints/c2")
    size = len((src / "part-1.bin").read_bytes())
    behind(store, "checkpoints/c1/part-1.bin", os.urandom(size))        # same size, other bytes
    with pytest.raises(CorruptTree, match="checkpoints/c1: does not match its manifest .*part-1.bin"):
        fetch_tree(store, "checkpoints/c1")
    behind(store, "checkpoints/c2/part-2.bin", b"truncated")           # another size: not even committed
    assert list_committed(store, "checkpoints") == ["checkpoints/c1"]  # sizes only; hashes are for fetch
    with pytest.raises(NotCommitted, match="part-2.bin is 9 bytes"):
        fetch_tree(store, "checkpoints/c2")
    if isinstance(store, FsspecStore):                                  # nothing half-made left in the cache
        assert not (store.cache_dir / "checkpoints").exists() or not list((store.cache_dir / "checkpoints").iterdir())


def test_a_hostile_marker_cannot_write_outside_the_cache(store, tmp_path):
    import json

    behind(store, "checkpoints/evil/x", b"data")
    entry = {"size": 4, "sha256": "0" * 64}
    for files in ({"../../../escape": entry}, {"/etc/escape": entry}, {"x": entry, MANIFEST: entry}):
        behind(store, f"checkpoints/evil/{MANIFEST}", json.dumps({"files": files}).encode())
        assert committed(store, "checkpoints/evil") is None
        with pytest.raises(NotCommitted, match="not plain relative paths"):
            fetch_tree(store, "checkpoints/evil")
    assert not list(tmp_path.rglob("escape"))


# Uploads a tree, reporting each file and stalling after the second, so the test can kill it mid-upload.
UPLOADER = r"""
import sys, time
from pathlib import Path
from dojo.objstore import open_store, upload_tree
store = open_store(sys.argv[1])
put, count = store.put_file, [0]
def slow_put(local, key):
    put(local, key)
    count[0] += 1
    print("uploaded", key, flush=True)
    if count[0] == 2:
        time.sleep(60)
store.put_file = slow_put
upload_tree(store, Path(sys.argv[2]), sys.argv[3])
print("committed", flush=True)
"""


def test_a_process_killed_mid_upload_leaves_no_committed_tree(store, tmp_path):
    src = make_tree(tmp_path / "ckpt", files=6, size=300_000)
    proc = subprocess.Popen([sys.executable, "-c", UPLOADER, store.url, str(src), "checkpoints/c9"],
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert all(line.startswith("uploaded checkpoints/c9/") for line in lines), lines
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(store.list("checkpoints/c9")) == 2                          # the partial upload is there …
    assert committed(store, "checkpoints/c9") is None                      # … and invisible
    assert list_committed(store, "checkpoints") == []
    with pytest.raises(NotCommitted):
        fetch_tree(store, "checkpoints/c9")
    upload_tree(store, src, "checkpoints/c9")                               # the next attempt commits it
    assert list_committed(store, "checkpoints") == ["checkpoints/c9"]


def test_a_checkpoint_manifest_is_the_commit_marker(store, tmp_path, one_torch_thread):
    """A folder that already has model/checkpoint.py's manifest commits with it as is; the ledger (outside the
    manifest: evaluation updates it) travels along, and the fetched copy passes checkpoint's own check."""
    from model.checkpoint import LEDGER, _manifest_problems, build_manifest
    from dojo.storage import write_json

    name = "checkpoints/checkpoint-10-20261202-1200"
    remote = isinstance(store, FsspecStore)
    src = make_tree((store.cache_dir if remote else tmp_path) / name)   # remote: saved in the working copy
    write_json(src / MANIFEST, build_manifest(src))
    write_json(src / LEDGER, {"step": 10})
    manifest = upload_tree(store, src, name)
    assert manifest["files"] == build_manifest(src)["files"] and manifest["unhashed"] == [LEDGER]
    if remote:
        assert fetch_tree(store, name) == src                            # the folder it came from: no download
        store = open_store(store.url, cache_dir=tmp_path / "another-host")
    got = fetch_tree(store, name)
    assert (got / LEDGER).read_bytes() == (src / LEDGER).read_bytes()
    assert _manifest_problems(got, hashes=True) == []


# ---------------------------------------------------------------- opening a root
def test_open_store_picks_the_backend_and_never_prints_credentials(tmp_path, s3_endpoint, monkeypatch):
    assert isinstance(open_store(tmp_path / "r"), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}/r"), LocalStore)
    with pytest.raises(ValueError, match="storage.options .* apply only to fsspec URLs"):
        open_store(tmp_path / "r", {"anon": True})
    assert redact("s3://AKIDEXAMPLE:s3cr3t@bucket/x") == "s3://***@bucket/x"
    missing = open_store("s3://no-such-bucket-here/x", {"key": "testing", "secret": "s3cr3t-value"})
    with pytest.raises(StoreError, match="s3://no-such-bucket-here/x/a: cannot write it") as err:
        missing.write("a", b"x")
    assert "bucket does not exist" in str(err.value)
    for call in (lambda: missing.read("a"), lambda: missing.read_versioned("a"), lambda: missing.list()):
        with pytest.raises(StoreError, match="bucket does not exist") as err2:   # never "missing, use a default"
            call()
        assert not isinstance(err2.value, KeyNotFound)
    assert "s3cr3t-value" not in str(err.value) + repr(missing)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir("s3://b/p").parent == tmp_path / "xdg" / "dojo"
    assert default_cache_dir("s3://b/p") != default_cache_dir("s3://b/q")
    assert open_store("s3://b/p").cache_dir == default_cache_dir("s3://b/p")
