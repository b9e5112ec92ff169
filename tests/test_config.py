"""dojo.config: defaults, every config file in the repo, unknown keys, bad types and values, file resolution
($DOJO_HOME, --config, $DOJO_CONFIG, ./dojo.yaml), relative paths, and the per-field docs."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from dojo import config as C
from dojo.config import TINY_MODEL_DIR

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("storage", "model", "data", "train", "masking", "eval")
SKIP_DIRS = {".venv", "venv", ".git", "node_modules", "__pycache__", ".pytest_cache", ".github"}
SKIP_NAMES = {"prefect.yaml", "prefect.yml"}


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, name: str = "cfg.yaml") -> C.Config:
    return C.load(str(write_yaml(tmp_path / name, text)))


def error_of(tmp_path: Path, text: str, name: str = "cfg.yaml") -> str:
    with pytest.raises(ValueError) as info:
        load_text(tmp_path, text, name)
    return str(info.value)


# ---------------------------------------------------------------- defaults
def test_defaults_resolve_to_tiny_model_and_absolute_root(dojo_home):
    cfg = C.load()                       # no --config, no $DOJO_CONFIG, no ./dojo.yaml (cwd is tmp_path)
    assert cfg.model.name_or_path == str(TINY_MODEL_DIR)
    assert (TINY_MODEL_DIR / "config.json").is_file()
    assert Path(cfg.storage.root).is_absolute()
    assert cfg.root == dojo_home.resolve()
    assert cfg == C.from_dict({}, env={"DOJO_HOME": str(dojo_home)})
    assert cfg.train == C.TrainConfig() and cfg.data == C.DataConfig() and cfg.masking == C.MaskingConfig()


def test_default_root_without_dojo_home_is_under_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("DOJO_HOME")
    cfg = C.load()
    assert cfg.root == (tmp_path / "dojo-home").resolve()


def test_defaults_run_the_tiny_model_on_cpu():
    import torch

    from model.chat import generation_prompt
    from model.loading import Runtime, load_model, load_tokenizer, pick_runtime

    cfg = C.load()
    runtime = pick_runtime(cfg.model.dtype, cfg.model.attn_implementation)
    if runtime.device == "cpu":
        assert runtime == Runtime("cpu", "float32", "sdpa")
    else:                                 # on a GPU box, still prove the defaults run on CPU
        runtime = Runtime("cpu", "float32", "sdpa")
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    model = load_model(cfg.model.name_or_path, runtime, cfg.model.trust_remote_code)
    text = generation_prompt([{"role": "user", "content": "Compute: add(①, ①)"}], tokenizer)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert next(model.parameters()).device.type == "cpu"
    assert logits.shape[:2] == ids.shape and logits.shape[-1] >= len(tokenizer) - 1
    assert torch.isfinite(logits).all()


# ---------------------------------------------------------------- every config file in the repo
def repo_config_files() -> list[Path]:
    """YAML files in the repo that are dojo configs: named dojo*.y(a)ml, or a mapping using a dojo section."""
    found = []
    for dirpath, dirnames, filenames in os.walk(REPO):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            if not name.endswith((".yaml", ".yml")) or name in SKIP_NAMES:
                continue
            path = Path(dirpath) / name
            if name.startswith("dojo"):
                found.append(path)
                continue
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError):
                continue   # not ours to judge
            if isinstance(data, dict) and set(data) & set(SECTIONS):
                found.append(path)
    return sorted(found)


def test_repo_config_discovery_finds_root_dojo_yaml():
    assert REPO / "dojo.yaml" in repo_config_files()


@pytest.mark.parametrize("path", repo_config_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_repo_config_loads(path, monkeypatch):
    cfg = C.load(str(path))
    assert isinstance(cfg, C.Config)
    # and without $DOJO_HOME its (relative) storage root lands beside the file, never in the cwd
    monkeypatch.delenv("DOJO_HOME")
    cfg = C.load(str(path))
    assert Path(cfg.storage.root).is_absolute()


def test_root_dojo_yaml_resolves_root_beside_itself():
    cfg = C.load(str(REPO / "dojo.yaml"), env={})
    assert cfg.root == REPO / "dojo-home"
    assert cfg.model.name_or_path == str(TINY_MODEL_DIR)   # its empty `model:` section means defaults


# ---------------------------------------------------------------- unknown keys
def test_unknown_top_level_key(tmp_path):
    msg = error_of(tmp_path, "trian:\n  seed: 1\n")
    assert "config trian: unknown key" in msg
    assert "allowed keys here: " + ", ".join(SECTIONS) in msg


def test_unknown_nested_key_names_path_and_allowed_keys(tmp_path):
    msg = error_of(tmp_path, "train:\n  learning_rat: 0.001\n")
    assert "train.learning_rat" in msg
    allowed = msg.split("allowed keys here:", 1)[1]
    names = [f.name for f in dataclasses.fields(C.TrainConfig)]
    assert [k.strip() for k in allowed.split(",")] == names
    assert "learning_rate" in names


def test_unknown_key_in_other_sections(tmp_path):
    assert "model.name" in error_of(tmp_path, "model:\n  name: Qwen\n")
    assert "storage.path" in error_of(tmp_path, "storage:\n  path: x\n")


# ---------------------------------------------------------------- types
@pytest.mark.parametrize("text, key, allowed", [
    ("train:\n  micro_batch_size: '4'\n", "train.micro_batch_size", "use an integer"),
    ("train:\n  micro_batch_size: true\n", "train.micro_batch_size", "use an integer"),
    ("train:\n  micro_batch_size: 4.5\n", "train.micro_batch_size", "use an integer"),
    ("data:\n  max_length: null\n", "data.max_length", "use an integer"),
    ("train:\n  learning_rate: fast\n", "train.learning_rate", "use a number"),
    ("train:\n  learning_rate: false\n", "train.learning_rate", "use a number"),
    ("model:\n  gradient_checkpointing: 1\n", "model.gradient_checkpointing", "use true or false"),
    ("model:\n  trust_remote_code: 'yes please'\n", "model.trust_remote_code", "use true or false"),
    ("data:\n  system_prompt: 42\n", "data.system_prompt", "use a string"),
    ("model:\n  name_or_path: [a, b]\n", "model.name_or_path", "use a string"),
])
def test_wrong_type_names_key_and_allowed(tmp_path, text, key, allowed):
    msg = error_of(tmp_path, text)
    assert f"config {key}:" in msg and allowed in msg


def test_int_is_accepted_where_a_float_is_expected(tmp_path):
    cfg = load_text(tmp_path, "train:\n  weight_decay: 1\n  epochs: 2\n")
    assert cfg.train.weight_decay == 1.0 and isinstance(cfg.train.weight_decay, float)
    assert cfg.train.epochs == 2.0 and isinstance(cfg.train.epochs, float)


def test_section_must_be_a_mapping(tmp_path):
    msg = error_of(tmp_path, "train: 5\n")
    assert "config train: expected a mapping" in msg


def test_empty_section_and_empty_file_mean_defaults(tmp_path):
    assert load_text(tmp_path, "model:\n# only a comment\ntrain:\n") == C.load()
    assert load_text(tmp_path, "", name="empty.yaml") == C.load()


@pytest.mark.parametrize("text, key, allowed", [
    ("model:\n  dtype: float64\n", "model.dtype", "auto, float32, bfloat16, float16"),
    ("model:\n  attn_implementation: flash\n", "model.attn_implementation", "auto, sdpa, eager, flash_attention_2"),
    ("train:\n  schedule: Cosine\n", "train.schedule", "constant, cosine, linear"),
    ("train:\n  schedule: 1\n", "train.schedule", "constant, cosine, linear"),
])
def test_bad_literal_lists_allowed_values(tmp_path, text, key, allowed):
    msg = error_of(tmp_path, text)
    assert f"config {key}:" in msg and f"use one of {allowed}" in msg


def test_every_literal_value_is_accepted(tmp_path):
    for schedule in ("constant", "cosine", "linear"):
        assert load_text(tmp_path, f"train:\n  schedule: {schedule}\n").train.schedule == schedule
    for dtype in ("auto", "float32", "bfloat16", "float16"):
        assert load_text(tmp_path, f"model:\n  dtype: {dtype}\n").model.dtype == dtype


# ---------------------------------------------------------------- ranges
@pytest.mark.parametrize("text, key", [
    ("train:\n  micro_batch_size: -1\n", "train.micro_batch_size"),
    ("train:\n  micro_batch_size: 0\n", "train.micro_batch_size"),
    ("train:\n  grad_accum: 0\n", "train.grad_accum"),
    ("train:\n  learning_rate: 0\n", "train.learning_rate"),
    ("train:\n  learning_rate: 1.5\n", "train.learning_rate"),
    ("train:\n  learning_rate: .nan\n", "train.learning_rate"),
    ("train:\n  adam_beta2: 1.0\n", "train.adam_beta2"),
    ("train:\n  warmup_steps: -5\n", "train.warmup_steps"),
    ("train:\n  total_steps: 0\n", "train.total_steps"),
    ("train:\n  epochs: 0\n", "train.epochs"),
    ("train:\n  log_every: 0\n", "train.log_every"),
    ("data:\n  max_length: 8\n", "data.max_length"),
    ("data:\n  val_fraction: 0.5\n", "data.val_fraction"),
    ("data:\n  val_fraction: -0.1\n", "data.val_fraction"),
    ("masking:\n  min_masked_ratio: 1.2\n", "masking.min_masked_ratio"),
    ("masking:\n  max_masked_ratio: 0.05\n", "masking.max_masked_ratio"),          # < min (0.10)
    ("masking:\n  min_masked_ratio: 0.6\n  max_masked_ratio: 0.5\n", "masking.max_masked_ratio"),
    ("data:\n  multi_turn: all\n", "data.multi_turn"),
    ("eval:\n  batch_size: 0\n", "eval.batch_size"),
    ("eval:\n  max_new_tokens: 0\n", "eval.max_new_tokens"),
])
def test_out_of_range_values_are_refused(tmp_path, text, key):
    msg = error_of(tmp_path, text)
    assert f"config {key}:" in msg and "is not allowed; use " in msg


def test_range_edges_are_accepted(tmp_path):
    cfg = load_text(tmp_path, "data:\n  max_length: 16\n  val_fraction: 0\n"
                              "masking:\n  min_masked_ratio: 0.5\n  max_masked_ratio: 0.5\n"
                              "train:\n  warmup_steps: 0\n  max_grad_norm: 0\n")
    assert cfg.data.max_length == 16 and cfg.masking.max_masked_ratio == 0.5


def test_error_message_says_what_is_allowed_for_max_masked_ratio(tmp_path):
    msg = error_of(tmp_path, "masking:\n  max_masked_ratio: 0.05\n")
    assert "0.05" in msg and "[masking.min_masked_ratio, 1]" in msg


# ---------------------------------------------------------------- files
def test_invalid_yaml_names_the_file(tmp_path):
    path = write_yaml(tmp_path / "broken.yaml", "train: [unclosed\n  seed: 1\n")
    with pytest.raises(ValueError, match="not valid YAML") as info:
        C.load(str(path))
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ValueError, match="does not exist") as info:
        C.load(str(missing))
    assert str(missing) in str(info.value)


def test_missing_dojo_config_file(monkeypatch, tmp_path):
    monkeypatch.setenv("DOJO_CONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(ValueError, match="gone.yaml does not exist"):
        C.load()


def test_config_path_that_is_a_directory(tmp_path):
    (tmp_path / "adir.yaml").mkdir()
    with pytest.raises(ValueError, match="does not exist"):
        C.load(str(tmp_path / "adir.yaml"))


@pytest.mark.parametrize("text, kind", [("- storage\n- train\n", "list"), ("just a string\n", "str"),
                                        ("42\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    msg = error_of(tmp_path, text)
    assert "top level must be a mapping" in msg and kind in msg


def test_load_error_starts_with_the_file_path(tmp_path):
    path = write_yaml(tmp_path / "sub" / "cfg.yaml", "train:\n  learning_rat: 0.1\n")
    with pytest.raises(ValueError) as info:
        C.load(str(path))
    assert str(info.value).startswith(f"{path}: config train.learning_rat")
    path.write_text("train:\n  micro_batch_size: -1\n")
    with pytest.raises(ValueError) as info:
        C.load(str(path))
    assert str(info.value).startswith(f"{path}: config train.micro_batch_size")


# ---------------------------------------------------------------- $DOJO_HOME and relative paths
def test_dojo_home_overrides_storage_root(tmp_path, dojo_home):
    cfg = load_text(tmp_path, "storage:\n  root: /somewhere/else\n")
    assert cfg.root == dojo_home.resolve()
    assert C.load(str(tmp_path / "cfg.yaml"), env={}).root == Path("/somewhere/else")


def test_relative_dojo_home_resolves(tmp_path):
    cfg = C.from_dict({}, env={"DOJO_HOME": "rel-home"})
    assert cfg.root == (tmp_path / "rel-home").resolve()


def test_relative_storage_root_resolves_against_config_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("DOJO_HOME")
    path = write_yaml(tmp_path / "conf" / "deep" / "dojo.yaml", "storage:\n  root: ../store\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = C.load(str(path))
    assert cfg.root == (tmp_path / "conf" / "store").resolve()
    assert cfg.root != (elsewhere / "../store").resolve()
    # a relative --config path resolves the same way
    assert C.load(os.path.relpath(path, elsewhere)).root == cfg.root


def test_home_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.delenv("DOJO_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "userhome"))
    cfg = load_text(tmp_path, "storage:\n  root: ~/dojo\n")
    assert cfg.root == (tmp_path / "userhome" / "dojo").resolve()


def test_relative_model_dir_resolves_against_config_folder(tmp_path, monkeypatch):
    (tmp_path / "conf" / "mymodel").mkdir(parents=True)
    path = write_yaml(tmp_path / "conf" / "cfg.yaml", "model:\n  name_or_path: mymodel\n")
    monkeypatch.chdir(tmp_path)
    assert C.load(str(path)).model.name_or_path == str((tmp_path / "conf" / "mymodel").resolve())
    # a name that is no local folder stays a hub id
    path.write_text("model:\n  name_or_path: Qwen/Qwen3-0.6B\n")
    assert C.load(str(path)).model.name_or_path == "Qwen/Qwen3-0.6B"


# ---------------------------------------------------------------- which file
def test_cwd_dojo_yaml_is_picked_up(tmp_path):
    write_yaml(tmp_path / "dojo.yaml", "train:\n  micro_batch_size: 5\n")
    assert C.config_path() == tmp_path / "dojo.yaml"
    assert C.load().train.micro_batch_size == 5


def test_dojo_config_env_is_picked_up(tmp_path, monkeypatch):
    write_yaml(tmp_path / "dojo.yaml", "train:\n  micro_batch_size: 5\n")
    other = write_yaml(tmp_path / "other" / "x.yaml", "train:\n  micro_batch_size: 7\n")
    monkeypatch.setenv("DOJO_CONFIG", str(other))
    assert C.load().train.micro_batch_size == 7          # beats ./dojo.yaml
    assert C.load(env={}).train.micro_batch_size == 5     # an explicit env mapping is honoured


def test_explicit_config_beats_dojo_config(tmp_path, monkeypatch):
    env_file = write_yaml(tmp_path / "env.yaml", "train:\n  micro_batch_size: 7\n")
    cli_file = write_yaml(tmp_path / "cli.yaml", "train:\n  micro_batch_size: 9\n")
    monkeypatch.setenv("DOJO_CONFIG", str(env_file))
    assert C.config_path(str(cli_file)) == cli_file
    assert C.load(str(cli_file)).train.micro_batch_size == 9


def test_empty_dojo_config_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("DOJO_CONFIG", "")
    assert C.config_path() is None
    assert C.load() == C.from_dict({})


# ---------------------------------------------------------------- the tree
def test_config_is_frozen():
    cfg = C.load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.seed = 1  # type: ignore[misc]


def test_to_dict_round_trips():
    cfg = C.load()
    assert C.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())), env={}) == cfg


def test_docs_cover_every_field_with_text():
    d = C.docs()
    expected = {f"{s.name}.{f.name}" for s in dataclasses.fields(C.Config)
                for f in dataclasses.fields(s.default_factory)}
    assert set(d) == expected and len(d) > 30
    empty = [k for k, v in d.items() if not isinstance(v, str) or not v.strip()]
    assert not empty, f"fields without a doc: {empty}"
    assert all("\n" not in v for v in d.values()), "docs are one line each"
    for section in dataclasses.fields(C.Config):
        assert section.metadata.get("doc", "").strip(), f"section {section.name} has no doc"


def test_empty_storage_root_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("DOJO_HOME")
    msg = error_of(tmp_path, "storage:\n  root: ''\n")
    assert "config storage.root:" in msg and "a non-empty path" in msg
