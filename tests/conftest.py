"""Shared fixtures. Tests never download: HF offline mode is forced here, and every test gets its own
storage root through $DOJO_HOME so nothing touches a real stack."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from dojo.config import TINY_MODEL_DIR  # noqa: E402

# The real Qwen3 tokenizer, chat template and Qwen3-0.6B config.json (no weights), kept outside the repo.
QWEN3_DIR = Path(os.environ.get("DOJO_QWEN3_TOKENIZER")
                 or Path(__file__).resolve().parent.parent.parent / "shared" / "qwen3-tokenizer")


@pytest.fixture(autouse=True)
def dojo_home(tmp_path, monkeypatch):
    """A private storage root per test; no dojo.yaml from the working directory leaks in."""
    home = tmp_path / "home"
    monkeypatch.setenv("DOJO_HOME", str(home))
    monkeypatch.delenv("DOJO_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model gains nothing from intra-op threads, and on a busy 2-core CI box OpenMP spin-waiting makes
    model-heavy test modules ~10x slower; restore the setting afterwards so other modules are unaffected."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer():
    from model.loading import load_tokenizer

    return load_tokenizer(TINY_MODEL_DIR)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return TINY_MODEL_DIR


def _require_qwen3_dir() -> Path:
    if not (QWEN3_DIR / "tokenizer.json").is_file():
        pytest.skip(f"the real Qwen3 tokenizer is not at {QWEN3_DIR} (set $DOJO_QWEN3_TOKENIZER to a folder with "
                    f"Qwen3's tokenizer files and config.json)")
    return QWEN3_DIR


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    """The real Qwen3 tokenizer and chat template (skipped when QWEN3_DIR is absent)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_require_qwen3_dir()))


@pytest.fixture(scope="session")
def qwen3_small_dir(tmp_path_factory) -> Path:
    """A weightless model directory: the real Qwen3 tokenizer and template, and a tiny Qwen3 config.json (hidden
    64, 2 layers, real vocab). Train it with ``model.init: random``."""
    from model.loading import make_small_qwen3_dir

    return make_small_qwen3_dir(tmp_path_factory.mktemp("qwen3-small"), _require_qwen3_dir())


def pytest_collection_modifyitems(config, items):
    """GPU tests are opt-in by hardware: skipped without CUDA (their docstrings name the machine and command)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real Prefect server for the whole session (SQLite under a temporary PREFECT_HOME), for the tests that run
    flows in this process: starting one costs ~20 s on a 2-core box, and three modules used to start their own
    (prefect_test_harness). Each test still gets a fresh storage root; what they read back from the server they
    filter by their own names."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    home = tmp_path_factory.mktemp("prefect-home")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db")
    log = open(home / "server.log", "ab")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the tests' Prefect server did not come up; see {home / 'server.log'}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def harness(prefect_server):
    """This test's in-process Prefect client talks to the session's server (and only this test's)."""
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["DO_NOT_TRACK"] = "1"
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect.logging.handlers import APILogWorker

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield prefect_server
        APILogWorker.drain_all(timeout=5)     # this test's run logs reach the server while it is still there
