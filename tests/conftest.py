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
