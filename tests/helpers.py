"""Small helpers for building test inputs."""
import contextlib
import json
import subprocess
from pathlib import Path

import pytest


def write_jsonl(path: Path, records) -> Path:
    """Write records (dicts, or raw strings written as-is) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def chat(*turns, system=None):
    """chat(("user", "hi"), ("assistant", "yo")) -> a chat_sft_v1 record."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": r, "content": c} for r, c in turns]
    return {"messages": messages}


@contextlib.contextmanager
def tmpfs(mount: Path, options: str):
    """A tmpfs mounted at ``mount`` (created) with ``options`` (e.g. "size=4m", "ro,size=1m") for the block;
    skips the test when mounting is not allowed (it needs root)."""
    mount.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@contextlib.contextmanager
def moto_s3_server():
    """moto's real S3 server (``ThreadedMotoServer``) on 127.0.0.1 and a free port, for the block; yields its
    endpoint URL. Requests are served one at a time: moto checks a conditional write (If-None-Match, If-Match)
    and stores the object in two steps without a lock while its server runs each request on its own thread, so
    two racing conditional PUTs can both pass (seen here: 1 round in 40 of 8 threads creating one key). S3 itself
    applies the condition atomically; serialised, moto does too, and the tests test dojo, not moto's race."""
    import logging
    import threading

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)     # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        app, lock = server._server.app, threading.Lock()

        def serialised(environ, start_response):
            with lock:
                return list(app(environ, start_response))

        server._server.app = serialised      # werkzeug's handler calls self.server.app for every request
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
