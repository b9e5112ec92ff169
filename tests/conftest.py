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


def pytest_collection_modifyitems(config, items):
    """GPU tests are opt-in by hardware: skipped without CUDA (their docstrings name the machine and command)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
