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


def postgres_bin() -> Path | None:
    """The directory of PostgreSQL's server binaries (initdb, pg_ctl, postgres), or None when there are none."""
    import glob
    import shutil

    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                                                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit()
                                                   else 0, reverse=True)]
    return next((c for c in candidates if (c / "pg_ctl").exists() and (c / "postgres").exists()), None)


@contextlib.contextmanager
def postgres_cluster(password: str = "pg-s3cret-Pa55"):
    """A throwaway PostgreSQL cluster for the block: initdb in a temp dir (owned by the ``postgres`` user when we
    run as root: initdb refuses root), listening on 127.0.0.1 and a free port (password auth) with its unix
    socket in the temp dir, and a database ``prefect`` owned by the user ``dojo``. Yields the
    ``postgresql+asyncpg://dojo:PASSWORD@127.0.0.1:PORT/prefect`` URL; the cluster is stopped and its directory
    removed on exit, also on failure. Skips the test when no PostgreSQL server binaries exist."""
    import os
    import shutil
    import socket
    import tempfile

    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) in PATH or /usr/lib/postgresql/*/bin; "
                    "install postgresql-15 (.ci/run does)")
    as_root = os.geteuid() == 0
    if as_root:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to own the cluster (initdb refuses root)")
    top = Path(tempfile.mkdtemp(prefix="dojo-pg-"))
    data, log = top / "data", top / "postgres.log"

    def run(*argv: str) -> None:
        argv = ("runuser", "-u", "postgres", "--", *argv) if as_root else argv
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
                               + (f"\n{log.read_text()[-3000:]}" if log.exists() else ""))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = False
    try:
        (top / "pw").write_text(password + "\n")
        if as_root:
            os.chmod(top, 0o700)
            for p in (top, top / "pw"):
                os.chown(p, owner.pw_uid, owner.pw_gid)
        run(str(bindir / "initdb"), "-D", str(data), "-U", "dojo", f"--pwfile={top / 'pw'}", "--auth=scram-sha-256",
            "--auth-local=trust", "-E", "UTF8", "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
            f"-p {port} -k {top} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start")
        started = True
        run(str(bindir / "psql"), "-h", str(top), "-p", str(port), "-U", "dojo", "-d", "postgres", "-v",
            "ON_ERROR_STOP=1", "-c", "CREATE DATABASE prefect")
        yield f"postgresql+asyncpg://dojo:{password}@127.0.0.1:{port}/prefect"
    finally:
        if started:
            try:
                run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(top, ignore_errors=True)
