"""``dojo down`` signals only processes this home's ``dojo up`` started, and ``dojo status`` / ``dojo up`` never
take another home's server for their own. Fast: no Prefect server — a throwaway ``sleep`` stands in for a process
dojo did not start, and a tiny HTTP server (answering /api/health like Prefect) for another home's server.

Every test that could go wrong by signalling records ``os.killpg``/``os.kill`` instead of letting them through
(``no_signals``): a regression to ``killpg(1)`` would otherwise signal every process of the user."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from deployments import stack
from dojo import cli
from dojo import config as C


KILL = os.kill      # the real one: fixtures clean up with it while ``no_signals`` is in force


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        KILL(proc.pid, signal.SIGKILL)
    proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cfg_path(tmp_path) -> Path:
    path = tmp_path / "stack-safety.yaml"
    path.write_text(yaml.safe_dump({"pipeline": {"port": free_port()}}))
    return path


@pytest.fixture
def cfg(cfg_path):
    return C.load(str(cfg_path))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_signals(monkeypatch) -> list:
    """Every signal dojo tries to send, recorded and not sent."""
    sent = []
    monkeypatch.setattr(os, "killpg", lambda pid, sig: sent.append(("killpg", pid, sig)))
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append(("kill", pid, sig)))
    return sent


def start_sleeper(env: dict | None = None, own_session: bool = True) -> subprocess.Popen:
    proc = subprocess.Popen(["sleep", "60"], env=env, start_new_session=own_session)
    deadline = time.monotonic() + 5
    while stack._cmdline(proc.pid) != ["sleep", "60"] and time.monotonic() < deadline:   # until exec is visible
        time.sleep(0.01)
    return proc


@pytest.fixture
def sleeper():
    """A process dojo did not start, in its own session (so it leads its own group, like dojo's processes)."""
    proc = start_sleeper()
    yield proc
    stop(proc)


def record(cfg, processes: dict, token: str = "t0ken") -> Path:
    path = stack.stack_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"home": str(cfg.root), "token": token, "processes": processes}))
    return path


def recorded(cfg) -> dict:
    return json.loads(stack.stack_file(cfg).read_text())["processes"]


def true_identity(pid: int) -> dict:
    ident = stack.identity(pid)
    assert ident is not None
    return ident


# ---------------------------------------------------------------- dojo down: what it must never signal
def test_down_without_a_record_says_so_and_writes_nothing(cfg, cfg_path, capsys):
    code, out, err = run_cli(capsys, "down", "--config", cfg_path)
    assert code == 0, err
    assert f"no stack recorded under {cfg.root}" in out
    assert not Path(cfg.root).exists()                 # not even state/


@pytest.mark.parametrize("pid", [0, 1, -5, "x", None, True, 2.5, [1]])
def test_down_never_signals_an_invalid_pid(cfg, cfg_path, capsys, no_signals, sleeper, pid):
    record(cfg, {"server": {"pid": pid, "starttime": 1, "cmdline": ["prefect"], "boot_id": "b"},
                 "worker-x": {"pid": sleeper.pid}})
    code, out, err = run_cli(capsys, "down", "--config", cfg_path)
    assert code in (0, 2) and "Traceback" not in out + err
    assert no_signals == []
    assert f"pid {pid!r} (server) is not a valid process id; not signalled, entry removed" in out
    assert recorded(cfg) == {}
    assert sleeper.poll() is None


def test_down_never_signals_a_pid_recorded_without_identity(cfg, cfg_path, capsys, no_signals, sleeper):
    record(cfg, {"server": {"pid": sleeper.pid}})         # what an older dojo (or a hand edit) leaves
    code, out, _ = run_cli(capsys, "down", "--config", cfg_path)
    assert code == 0 and no_signals == [] and sleeper.poll() is None
    assert f"pid {sleeper.pid} (server) was recorded without its start time and command line" in out
    assert "not signalled, entry removed" in out and recorded(cfg) == {}


@pytest.mark.parametrize("wrong", [{"starttime": -1}, {"cmdline": ["prefect", "server", "start"]},
                                   {"boot_id": "another-boot"}])
def test_down_never_signals_a_reused_pid(cfg, cfg_path, capsys, no_signals, sleeper, wrong):
    """The PID was recorded for another process: the start time, the command line or the boot differs."""
    record(cfg, {"server": {"pid": sleeper.pid, **true_identity(sleeper.pid), **wrong}})
    code, out, _ = run_cli(capsys, "down", "--config", cfg_path)
    assert code == 0 and no_signals == [] and sleeper.poll() is None
    assert f"pid {sleeper.pid} (server) is now another process (started at " in out
    assert "cmd sleep 60); not signalled, entry removed" in out
    assert recorded(cfg) == {}


def test_down_never_signals_a_process_without_this_stacks_token(cfg, cfg_path, capsys, no_signals, sleeper):
    """Same PID, start time and command line, but not started by this stack's ``dojo up``."""
    record(cfg, {"server": {"pid": sleeper.pid, **true_identity(sleeper.pid)}})
    code, out, _ = run_cli(capsys, "down", "--config", cfg_path)
    assert code == 0 and no_signals == [] and sleeper.poll() is None
    assert "not signalled, entry removed" in out and recorded(cfg) == {}


def test_down_never_signals_another_homes_process(cfg, cfg_path, capsys, no_signals, tmp_path):
    """A stack.json copied from another home (same token) names that home's processes: they are not ours."""
    other = start_sleeper({**os.environ, "DOJO_HOME": str(tmp_path / "other"), "DOJO_STACK_TOKEN": "t0ken"})
    try:
        record(cfg, {"server": {"pid": other.pid, **true_identity(other.pid)}})
        code, out, _ = run_cli(capsys, "down", "--config", cfg_path)
        assert code == 0 and no_signals == [] and other.poll() is None
        assert f"pid {other.pid} (server) belongs to the stack of another home ({tmp_path / 'other'})" in out
        assert recorded(cfg) == {}
    finally:
        stop(other)


def test_down_never_signals_a_process_that_does_not_lead_its_group(cfg, cfg_path, capsys, no_signals):
    """Everything matches but the process is in the caller's group: killpg would hit the caller."""
    mate = start_sleeper({**os.environ, "DOJO_HOME": str(cfg.root), "DOJO_STACK_TOKEN": "t0ken"}, own_session=False)
    try:
        record(cfg, {"server": {"pid": mate.pid, **true_identity(mate.pid)}})
        code, out, _ = run_cli(capsys, "down", "--config", cfg_path)
        assert code == 0 and no_signals == [] and mate.poll() is None
        assert f"pid {mate.pid} (server) does not lead its own process group ({os.getpgid(0)})" in out
        assert recorded(cfg) == {}
    finally:
        stop(mate)


def test_down_drops_an_entry_whose_process_ended(cfg, cfg_path, capsys, no_signals):
    ended = subprocess.Popen(["true"])
    ended.wait()
    record(cfg, {"worker-x": {"pid": ended.pid, "starttime": 1, "cmdline": ["true"], "boot_id": "b"}})
    code, out, _ = run_cli(capsys, "down", "--config", cfg_path)
    assert code == 0 and no_signals == []
    assert f"worker-x (pid {ended.pid}) is not running; entry removed" in out and recorded(cfg) == {}


def test_down_reports_a_broken_record_without_a_traceback(cfg, cfg_path, capsys):
    path = record(cfg, {})
    path.write_text('{"processes": [1, 2]}')
    code, out, err = run_cli(capsys, "down", "--config", cfg_path)
    assert code == 2 and str(path) in err and "Traceback" not in out + err


# ---------------------------------------------------------------- dojo down: what it must stop
def test_down_stops_what_this_home_started_and_nothing_else(cfg, cfg_path, capsys, sleeper):
    data = stack._load(cfg)
    pid = stack._spawn(cfg, "worker-sleep", ["sleep", "60"], dict(os.environ), data)
    data["processes"]["server"] = {"pid": sleeper.pid, **true_identity(sleeper.pid)}   # a lie in the record
    stack._save(cfg, data)
    assert stack.check(cfg, data, "worker-sleep") == ("ours", f"worker-sleep (pid {pid})")
    code, out, _ = run_cli(capsys, "down", "--config", cfg_path)
    assert code == 0
    assert f"stopped worker-sleep (pid {pid})" in out
    _, status = os.waitpid(pid, 0)                          # it is our child here: collect it
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert sleeper.poll() is None and "(server) does not carry this stack's token" in out
    assert recorded(cfg) == {}


# ---------------------------------------------------------------- one stack per home
FAKE_PREFECT = """
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print(self.path, flush=True)
        body = {"/api/health": True, "/api/admin/settings": {"home": sys.argv[2]}}.get(self.path, [])
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    do_POST = do_GET
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture
def other_home_server(cfg, tmp_path):
    """Another home's "Prefect server" on this home's configured port; yields (its home, the paths it was asked)."""
    other = tmp_path / "other-home"
    log = tmp_path / "fake-prefect.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", FAKE_PREFECT, str(cfg.pipeline.port), str(other / "prefect")],
                                env={**os.environ, "DOJO_HOME": str(other)}, stdout=out, start_new_session=True)
    deadline = time.monotonic() + 10
    while stack._port_free("127.0.0.1", cfg.pipeline.port):
        assert proc.poll() is None and time.monotonic() < deadline, "the stand-in server did not start"
        time.sleep(0.05)
    yield other, lambda: log.read_text().split()
    stop(proc)


def test_status_in_a_fresh_home_does_not_report_another_homes_server(cfg, cfg_path, capsys, other_home_server):
    other, asked = other_home_server
    assert stack._get(stack.api_url(cfg) + "/health", 2)[0] == 200      # the port does answer like Prefect
    assert not stack.healthy(cfg)
    code, out, err = run_cli(capsys, "status", "--config", cfg_path)
    assert code == 0, err
    assert f"no server of this home ({cfg.root}) is running" in out
    assert f"port {cfg.pipeline.port} is held by" in out and f"serving dojo home {other}" in out
    assert "healthy" not in out and "pool " not in out and "last runs" not in out
    assert set(asked()) <= {"/api/health", "/api/admin/settings"}      # no pools, workers or runs asked for
    assert not stack.stack_file(cfg).exists()


def test_status_does_not_take_a_recorded_server_it_cannot_prove(cfg, capsys, other_home_server, sleeper):
    """A record whose server PID is now something else: the port answering does not make it this home's."""
    record(cfg, {"server": {"pid": sleeper.pid, **true_identity(sleeper.pid), "starttime": -1}})
    out = stack.status(cfg, log=lambda *_: None)
    assert out["server"] is False and out["processes"] == {"server": False}
    assert sleeper.poll() is None


def test_up_chooses_another_port_when_another_home_holds_the_configured_one(cfg, other_home_server):
    other, _ = other_home_server
    data = stack._load(cfg)
    port, note = stack.choose_port(cfg, data)
    assert port != cfg.pipeline.port and stack._port_free(cfg.pipeline.host, port)
    assert f"port {cfg.pipeline.port} is taken by" in note and f"serving dojo home {other}" in note
    assert f"this home's server uses port {port}" in note


def test_choose_port_keeps_the_configured_port_when_free(cfg):
    assert stack.choose_port(cfg, stack._load(cfg)) == (cfg.pipeline.port, None)


def test_api_url_uses_the_port_recorded_for_this_home_only(cfg):
    path = record(cfg, {})
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "port": 4321}))
    assert stack.api_url(cfg) == f"http://{cfg.pipeline.host}:4321/api"
    assert stack.stack_env(cfg)["PREFECT_API_URL"] == f"http://{cfg.pipeline.host}:4321/api"
    path.write_text(json.dumps({**data, "port": 4321, "home": "/another/home"}))     # a copied record
    assert stack.api_url(cfg) == f"http://{cfg.pipeline.host}:{cfg.pipeline.port}/api"


def test_port_owner_names_a_prefect_server_it_cannot_inspect(cfg, other_home_server, monkeypatch):
    """Another user's server: its process cannot be read, so the answer of /api/admin/settings names its home."""
    other, _ = other_home_server
    monkeypatch.setattr(stack, "_listeners", lambda port, pids=None: [])
    owner = stack.port_owner(cfg.pipeline.host, cfg.pipeline.port)
    assert owner == f"a Prefect server with PREFECT_HOME {other / 'prefect'}"
