"""The one typed config tree, loaded from YAML and validated when it is loaded.

Where it comes from, first match wins: ``--config FILE``, ``$DOJO_CONFIG``, ``dojo.yaml`` in the current
directory, else the defaults below. ``$DOJO_HOME`` overrides ``storage.root`` so several stacks (and test
runs) can live side by side. A relative ``storage.root`` is resolved against the config file's directory
(the current directory when there is no file).

Every field carries a one-line doc (``doc(...)``). Unknown keys and bad values raise ``ValueError`` naming
the key path and what is allowed. ``dojo config show`` prints the resolved tree.

A config is user input, so the reader is strict: YAML anchors and aliases are refused (a few hundred bytes of
aliases expand to gigabytes), a key given twice in one mapping is refused with both lines (YAML would silently
keep the last), every number must be finite, values shown in errors are cut to ``SHOW`` characters, and the
storage root must be a directory dojo can write that is neither ``/`` nor the home directory itself.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

TINY_MODEL_DIR = Path(__file__).resolve().parent.parent / "model" / "assets" / "tiny-qwen3"
SHOW = 200              # characters of a value shown in an error message
MAX_CONFIG_BYTES = 1 << 20


def _show(value) -> str:
    """``repr(value)`` cut to SHOW characters: an error never prints a huge value (repr escapes control chars)."""
    text = repr(value)
    return text if len(text) <= SHOW else text[: SHOW - 1] + "…"


def doc(text: str, default=dataclasses.MISSING, default_factory=dataclasses.MISSING):
    """A dataclass field with a one-line doc kept in its metadata (shown by `dojo config show --docs`)."""
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://")


def is_url(root: str) -> bool:
    """Whether a storage root is an fsspec URL (``s3://bucket/prefix``) rather than a local folder."""
    return bool(URL_RE.match(root))


@dataclass(frozen=True)
class StorageConfig:
    root: str = doc("storage root: a local folder (relative paths resolve against the config file), or an fsspec "
                    "URL such as s3://bucket/prefix (docs/operations.md, S3)", "dojo-home")
    options: dict = doc("fsspec options for a URL root, passed as they are (s3fs: endpoint_url, key, secret, "
                        "client_kwargs, …); left empty, endpoint, region and credentials come from the standard "
                        "AWS environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE, …)",
                        default_factory=dict)
    cache: str = doc("local working copy of a URL root: checkpoints being trained or evaluated, the tokenized "
                     "cache, logs (empty = ~/.cache/dojo/<hash of the root URL>)", "")
    umask: str = doc("umask (octal) for everything dojo writes under the root; 077 keeps data, checkpoints and "
                     "reasons private to you, 007 shares them with your group", "077")


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = doc("base model: an HF model directory or hub id; default is the built-in tiny Qwen3",
                            str(TINY_MODEL_DIR))
    init: Literal["pretrained", "random"] = doc(
        "weights of a new lineage: pretrained = from name_or_path; random = seeded (train.seed) from its config.json",
        "pretrained")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = doc(
        "weights/compute dtype; auto = bfloat16 on CUDA with bf16 support, else float32", "auto")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flex_attention"] = doc(
        "attention kernel; auto = flash_attention_2 when importable on CUDA, else sdpa (docs/model-options.md); "
        "flex_attention = a document mask from the position ids (CUDA for training)", "auto")
    gradient_checkpointing: bool | Literal["auto"] = doc(
        "recompute activations in backward to save memory; auto = off on CPU, and on CUDA off when the VRAM "
        "estimate without it fits the GPU with 20% to spare, else on", "auto")
    compile: bool = doc("torch.compile each decoder layer (regional compilation; pays a compile at start-up)",
                        False)
    trust_remote_code: bool = doc("allow model code from the model directory/hub (off unless you trust it)", False)
    liger: Literal["auto", "on", "off"] = doc(
        "Liger Triton kernels (RoPE, RMSNorm, SwiGLU, fused linear cross-entropy); auto = on with CUDA", "auto")
    lora: bool = doc("train a LoRA adapter instead of the full model (checkpoints are adapters)", False)
    lora_rank: int = doc("LoRA rank", 16)
    lora_alpha: int = doc("LoRA alpha (scale = alpha / rank)", 32)
    lora_dropout: float = doc("LoRA dropout", 0.0)
    lora_target_modules: tuple[str, ...] = doc(
        "module names LoRA adapts", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))


@dataclass(frozen=True)
class DataConfig:
    max_length: int = doc("tokens per packed row; an example longer than this is an error, never truncated", 512)
    system_prompt: str = doc("system prompt added to examples that have none ({date} = today's date)",
                             "You are a careful assistant. Answer in exactly the format asked for.")
    profile: Literal["none", "emoji_think", "regime3"] = doc(
        "training profile (model/profiles.py): system prompt template, example transform, generation-time logit "
        "processors; none = data.system_prompt as is", "none")
    multi_turn: Literal["auto", "rendered", "expand"] = doc(
        "multi-turn policy: rendered = one example, every assistant turn trained as the template renders it; "
        "expand = one example per assistant turn (its reasoning kept); auto = expand only when the template "
        "drops a turn's reasoning", "auto")
    num_proc: int = doc("processes that render and tokenize a large file (0 = every CPU, at most 8; 1 = none)", 0)
    val_fraction: float = doc("share of a file's examples held out for validation loss", 0.02)
    val_max_examples: int = doc("cap on held-out validation examples per file", 64)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = doc("seed for data order, init of new layers and dropout", 1234)
    optimizer: Literal["adamw", "paged_adamw_8bit", "muon"] = doc(
        "adamw; paged_adamw_8bit (bitsandbytes, CUDA only); muon (hidden 2-D weights) + adamw (the rest)", "adamw")
    muon_lr: float = doc("Muon learning rate for the hidden matrices (the old system's hidden_lr)", 0.02)
    muon_momentum: float = doc("Muon momentum", 0.95)
    learning_rate: float = doc("peak learning rate", 3e-3)
    weight_decay: float = doc("AdamW weight decay (not applied to norms and biases)", 0.0)
    adam_beta1: float = doc("AdamW beta1", 0.9)
    adam_beta2: float = doc("AdamW beta2", 0.98)
    warmup_steps: int = doc("linear warm-up steps at the start of the run (global step)", 20)
    schedule: Literal["constant", "cosine", "linear"] = doc(
        "after warm-up: constant, or decay to min_lr_ratio by total_steps", "constant")
    total_steps: int = doc("horizon for cosine/linear decay (global steps)", 10_000)
    min_lr_ratio: float = doc("floor of the decayed learning rate as a share of the peak", 0.1)
    micro_batch_size: int = doc("packed rows per forward pass", 4)
    grad_accum: int = doc("micro-batches per optimizer step", 1)
    max_grad_norm: float = doc("gradient clipping norm (0 = off)", 1.0)
    epochs: float = doc("passes over the file when --steps is not given", 1.0)
    log_every: int = doc("log loss every N optimizer steps", 10)
    save_optimizer: bool = doc("store optimizer/scheduler/RNG state in the checkpoint for exact resume", True)
    cpu_threads: int = doc("torch threads when training or evaluating on CPU (0 = torch's default, one per core); "
                           "1 when a training and an evaluation process share a small CPU", 0)
    report_to: str = doc("experiment trackers through accelerate, comma-separated: none, or any of "
                         "tensorboard, wandb, mlflow, aim, comet_ml, clearml, dvclive, swanlab, trackio (one run per "
                         "lineage; logs under {root}/trackers)", "none")
    processes: int = doc("processes (GPUs) one chunk trains on: above 1 the pipeline and `dojo train` run the chunk "
                         "under `accelerate launch --num_processes N` (data parallel, one share of each step each)", 1)
    distributed: Literal["ddp", "fsdp2"] = doc(
        "with more than one process: ddp (a full replica per GPU) or fsdp2 (parameters, gradients and AdamW state "
        "sharded across the GPUs: full fine-tuning of a model one GPU cannot hold; CUDA only)", "ddp")


@dataclass(frozen=True)
class MaskingConfig:
    min_masked_ratio: float = doc("warn when the share of label=-100 tokens is below this (never refuses)", 0.10)
    max_masked_ratio: float = doc("warn when the share of label=-100 tokens is above this (never refuses)", 0.98)
    check_rows: int = doc("packed rows checked before training (0 = all)", 0)


# The rule names validation.warnings / validation.disabled accept. The rules themselves live in
# validation/content.py (and the reader's warnings in validation/validate.py); the names are here because config
# is checked when it is loaded and sits below validation (docs/architecture.md, Layers).
STANDARD_RULES = ("too_long",)
DEEP_RULES = ("duplicate", "near_duplicate", "answer_in_prompt", "degenerate_answer", "broken_json", "encoding",
              "length_ratio")
READER_WARNINGS = ("bom", "line_endings", "blank_line")
DOWNGRADABLE = DEEP_RULES + READER_WARNINGS
DISABLEABLE = DOWNGRADABLE + STANDARD_RULES     # too_long may be disabled, never downgraded: dojo never truncates
# accelerate's tracker names (accelerate.tracking.LOGGER_TYPE_TO_CLASS); model/trackers.py opens them
REPORT_TO = ("tensorboard", "wandb", "mlflow", "aim", "comet_ml", "clearml", "dvclive", "swanlab", "trackio")


def report_to_names(value: str) -> list[str]:
    """``train.report_to`` as a list of tracker names; ``none`` (or nothing) is the empty list."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    return [] if names == ["none"] else names


@dataclass(frozen=True)
class ValidationConfig:
    depth: Literal["quick", "standard", "deep"] = doc(
        "default check depth: quick = schema, standard = + token lengths, deep = + content checks", "standard")
    accept_ratio: float = doc("a file is accepted when at least this share of its lines is valid", 0.95)
    # duplicate is a warning by default: generated curricula repeat problems on purpose where a level's space is
    # small (BIN level 1 has 187 problems); make it an error for hand-written data by removing it here
    warnings: tuple[str, ...] = doc("rules reported as warnings instead of rejecting the line",
                                    ("duplicate", "near_duplicate", "length_ratio"))
    disabled: tuple[str, ...] = doc("rules not run at all", ())
    min_answer_chars: int = doc("degenerate_answer: an answer shorter than this (stripped) is degenerate", 1)
    max_char_share: float = doc("degenerate_answer: one character above this share of an answer of "
                                "min_share_chars or more is degenerate", 0.8)
    min_share_chars: int = doc("degenerate_answer: answers shorter than this skip the one-character test", 12)
    min_leak_chars: int = doc("answer_in_prompt: answers shorter than this are not searched in the prompt", 8)
    min_length_ratio: float = doc("length_ratio: lowest allowed answer/prompt character ratio", 0.005)
    max_length_ratio: float = doc("length_ratio: highest allowed answer/prompt character ratio", 50.0)


@dataclass(frozen=True)
class CurriculumConfig:
    skills: tuple[str, ...] = doc("skills in priority order (focus and round robin follow this order)", ("bin",))
    strategy: Literal["equal", "focus", "weighted", "catch_up"] = doc(
        "which skill to generate for: round robin, first until mastered, random by weight, lowest level first",
        "focus")
    weights: tuple[float, ...] = doc("weights for the weighted strategy, one per skill (empty = equal)", ())
    window: int = doc("evaluations at the training level averaged to decide an advance", 3)
    threshold: float = doc("advance when the window's mean accuracy reaches this", 0.80)
    low_water: int = doc("top the queue up from the curriculum when fewer files than this are queued", 1)
    examples_per_file: int = doc("examples per generated curriculum file", 2000)
    seed: int = doc("base seed of generated curriculum files (each file gets the next one)", 1)
    promotion_tolerance: float = doc("largest accuracy drop on a mastered level a promotion may cause", 0.05)
    replay_share: float = doc("share of each curriculum file drawn from mastered levels, against forgetting "
                              "(plateaus add to it, up to 0.5)", 0.2)
    plateau_evals: int = doc("evaluations at the training level without a new best that make a plateau (lower "
                             "the learning rate, raise replay, rest the skill; recorded in state/curriculum.json); "
                             "0 = off", 5)
    plateau_lr_factor: float = doc("on a plateau, multiply the skill's learning rate by this (down to 1/8 of "
                                   "train.learning_rate; kept until the skill advances); 1 = never lower it", 0.5)


@dataclass(frozen=True)
class PipelineConfig:
    host: str = doc("address the local Prefect server binds to (dojo up)", "127.0.0.1")
    port: int = doc("port of the local Prefect server and UI (dojo up)", 4200)
    train_pool: str = doc("work pool of train/continuous (one GPU, concurrency 1)", "dojo-train")
    eval_pool: str = doc("work pool of evaluate/checkpoint and curriculum/scheduled", "dojo-eval")
    train_gpus: str = doc("CUDA_VISIBLE_DEVICES for runs on the training pool", "0")
    eval_gpus: str = doc("CUDA_VISIBLE_DEVICES for runs on the eval pool", "1")
    steps_per_chunk: int = doc("optimizer steps per chunk (0 = train.epochs passes over each file)", 200)
    max_chunks: int = doc("stop train/continuous after this many chunks (0 = no limit)", 0)
    max_hours: float = doc("stop train/continuous after this many hours (0 = no limit)", 0.0)
    heartbeat_seconds: int = doc("flow-run heartbeat interval (Prefect's minimum is 30)", 30)
    zombie_window_seconds: int = doc("a run with no heartbeat for this long is marked Crashed (>= 3x heartbeat)",
                                     120)
    max_failures: int = doc("consecutive failed chunks after which train/continuous stops", 3)
    eval_backlog: Literal["newest", "all"] = doc(
        "when checkpoints come faster than the eval pool evaluates them: newest = a run still waiting for an older "
        "checkpoint is superseded (Cancelled as Superseded), so the pool evaluates the newest next; all = every "
        "checkpoint is evaluated, however far behind (also for spar/checkpoint runs)", "newest")
    # repr=False: a config printed or logged whole never shows the database password (to_dict redacts it)
    database_url: str = field(default="", repr=False, metadata={"doc": (
        "the Prefect server's database: empty = SQLite under the root; postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB "
        "for several hosts ($DOJO_DATABASE_URL overrides it; the password is always shown as ***)")})
    eval_concurrency: int = doc("runs the eval pool runs at once across all its workers: the number of eval "
                                "workers (dojo worker, one GPU set each); the train pool always allows 1", 1)


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = doc("prompts per batched greedy generation", 64)
    max_new_tokens: int = doc("generation budget per answer (BIN level 7 answers need ~90 tokens)", 128)
    show_failures: int = doc("wrong answers kept per level in the report", 10)
    cpu_threads: int = doc("torch threads when evaluating, sparring or probing on CPU (0 = train.cpu_threads)", 0)
    mastered_every: int = doc("evaluate mastered levels on every Nth checkpoint of a skill (and always before a "
                              "promotion); 1 = every checkpoint", 3)
    overfit_gap: float = doc("leaderboard warns of overfitting when validation loss minus training loss grew over "
                             "the last 3 evaluated checkpoints and exceeds this", 0.5)


@dataclass(frozen=True)
class ServeConfig:
    enabled: bool = doc("dojo up starts the Oracle (dojo serve), dojo down stops it, dojo status prints its URL",
                        False)
    host: str = doc("address the Oracle binds to; beyond loopback only with a key already set ($DOJO_API_KEY or "
                    "state/serve.key)", "127.0.0.1")
    port: int = doc("port of the Oracle's OpenAI-compatible API and its learning-curve page", 8400)
    max_resident: int = doc("models kept loaded at once; the least recently used idle one is dropped", 2)
    max_tokens: int = doc("largest max_tokens a request may ask for; also the default when it asks for none", 512)
    max_body_bytes: int = doc("largest request body accepted (bytes); a bigger one gets 413", 1 << 20)
    max_queue: int = doc("requests waiting or generating at once; beyond this a request gets 429", 64)
    refresh_seconds: int = doc("the page reloads itself every N seconds (0 = never)", 30)


@dataclass(frozen=True)
class RetentionConfig:
    keep_last_checkpoints: int = doc("checkpoints kept, newest first (>= 1); the promoted one, the best per skill and "
                                     "level, those not yet evaluated and those in retention.keep are kept besides", 10)
    keep: tuple[str, ...] = doc("checkpoint names `dojo maintenance` never removes", ())
    done_days: float = doc("remove trained files in done/ older than this many days (0 = keep forever)", 30.0)
    failed_days: float = doc("remove rejected files in failed/ older than this many days (0 = keep forever)", 90.0)
    trash_days: float = doc("remove deleted files in trash/ older than this many days (0 = keep forever)", 14.0)
    eval_days: float = doc("remove eval reports older than this many days whose checkpoint is gone (0 = keep "
                           "forever)", 90.0)
    quarantine_days: float = doc("remove quarantined checkpoints older than this many days (0 = keep forever)", 0.0)
    cache_days: float = doc("remove tokenized-cache entries built this many days ago whose file is neither queued "
                            "nor in training (0 = keep forever)", 14.0)
    tmp_hours: float = doc("remove temp leftovers of killed writers older than this many hours (>= 1)", 24.0)
    prefect_days: float = doc("Prefect's database keeps finished flow runs and events this many days (dojo up "
                              "turns its vacuum on)", 30.0)
    log_max_mb: float = doc("size of each rotating per-step training log file (logs/train.log)", 10.0)
    log_backups: int = doc("rotated training log files kept beside logs/train.log", 5)


@dataclass(frozen=True)
class SparConfig:
    after: Literal["every", "promoted", "off"] = doc(
        "which checkpoints evaluate/checkpoint spars with: every evaluated one (training continues from the newest, "
        "so its mistakes are the ones to fix), only promoted ones, or none", "every")
    problems: int = doc("fresh problems asked per sparring round (at most half a small level's space)", 100)
    max_age_steps: int = doc("a sparring file is retired unclaimed when the newest checkpoint is more than this many "
                             "steps past the one it came from", 1000)
    epochs: float = doc("passes over a sparring file when it is trained: its chunk is sized to the file, not to "
                        "pipeline.steps_per_chunk (a 100-step chunk would repeat a 270-example file ~10 times)", 1.0)
    mix: bool = doc("mix sparring examples into the next curriculum file of their skill (at most max_share of it, "
                    "queued at high priority) instead of training each sparring file as a chunk of its own: in the "
                    "tiny model's A/B sparring chunks knocked a mastered level from ~0.9 to 0.05-0.2", True)
    max_share: float = doc("sparring's largest share of the examples trained over the last share_window chunks; "
                           "beyond it sparring files wait and the curriculum trains (1 = no cap)", 0.25)
    share_window: int = doc("trained chunks the sparring share is measured over (state/stream.json)", 20)
    idle_max_utilization: float = doc("GPU-idle gate: a background job starts only below this NVML utilisation (%)",
                                      40.0)
    idle_min_free_memory: float = doc("GPU-idle gate: and only with at least this share of GPU memory free", 0.30)
    idle_samples: int = doc("GPU-idle gate: readings that must all be idle", 5)
    idle_sample_seconds: float = doc("GPU-idle gate: seconds between those readings", 1.0)
    idle_retry_seconds: float = doc("GPU-idle gate: seconds to wait after a busy verdict before looking again", 30.0)
    idle_timeout_seconds: float = doc("GPU-idle gate: give up (the run fails, saying why) after this many seconds "
                                      "busy", 1800.0)


@dataclass(frozen=True)
class Config:
    storage: StorageConfig = doc("where data, checkpoints and state live", default_factory=StorageConfig)
    model: ModelConfig = doc("the model being trained", default_factory=ModelConfig)
    data: DataConfig = doc("rendering and packing of examples", default_factory=DataConfig)
    train: TrainConfig = doc("the training loop", default_factory=TrainConfig)
    masking: MaskingConfig = doc("thresholds of the masking validators", default_factory=MaskingConfig)
    eval: EvalConfig = doc("evaluation of checkpoints", default_factory=EvalConfig)
    validation: ValidationConfig = doc("the data gate: spec and content checks", default_factory=ValidationConfig)
    curriculum: CurriculumConfig = doc("what to train next and when a level is mastered",
                                       default_factory=CurriculumConfig)
    pipeline: PipelineConfig = doc("the Prefect stack: server, pools, workers, the continuous loop",
                                   default_factory=PipelineConfig)
    serve: ServeConfig = doc("the Oracle: `dojo serve`, an OpenAI-compatible chat API and learning-curve page",
                             default_factory=ServeConfig)
    retention: RetentionConfig = doc("what `dojo maintenance` and maintenance/daily remove, and what they never do",
                                     default_factory=RetentionConfig)
    spar: SparConfig = doc("sparring: wrong answers of a checkpoint queued as lessons; stale and share guards; "
                           "the GPU-idle gate (docs/sparring.md)", default_factory=SparConfig)

    @property
    def remote(self) -> str | None:
        """The storage root's URL when it is an object store (``s3://bucket/prefix``), else None."""
        return self.storage.root if is_url(self.storage.root) else None

    @property
    def root(self) -> Path:
        """The local folder dojo reads and writes: the storage root itself, or a URL root's working copy."""
        return Path(self.storage.cache) if self.remote else Path(self.storage.root)

    def to_dict(self) -> dict:
        """Plain JSON/YAML-ready data (tuples become lists). Secrets in ``storage.options`` (any key naming a
        secret, password, token or key) are shown as ``***``: this is what ledgers record and `config show`
        prints."""
        data = json.loads(json.dumps(dataclasses.asdict(self)))
        data["storage"]["options"] = _redacted(data["storage"]["options"])
        data["pipeline"]["database_url"] = redact_url(data["pipeline"]["database_url"])
        return data


# ---------------------------------------------------------------- value rules (beyond types)
def _check_values(cfg: Config) -> None:
    rules = [
        ("storage.umask", bool(re.fullmatch(r"0?[0-7]{3}", cfg.storage.umask)), "an octal umask such as 077 or 007"),
        ("data.max_length", cfg.data.max_length >= 16, "an integer >= 16"),
        ("data.val_fraction", 0.0 <= cfg.data.val_fraction < 0.5, "a number in [0, 0.5)"),
        ("data.val_max_examples", cfg.data.val_max_examples >= 0, "an integer >= 0"),
        ("train.learning_rate", 0.0 < cfg.train.learning_rate < 1.0, "a number in (0, 1)"),
        ("train.muon_lr", 0.0 < cfg.train.muon_lr < 1.0, "a number in (0, 1)"),
        ("train.muon_momentum", 0.0 <= cfg.train.muon_momentum < 1.0, "a number in [0, 1)"),
        ("model.lora_rank", cfg.model.lora_rank >= 1, "an integer >= 1"),
        ("model.lora_alpha", cfg.model.lora_alpha >= 1, "an integer >= 1"),
        ("model.lora_dropout", 0.0 <= cfg.model.lora_dropout < 1.0, "a number in [0, 1)"),
        ("model.lora_target_modules", bool(cfg.model.lora_target_modules), "a non-empty list of module names"),
        ("train.weight_decay", cfg.train.weight_decay >= 0.0, "a number >= 0"),
        ("train.adam_beta1", 0.0 <= cfg.train.adam_beta1 < 1.0, "a number in [0, 1)"),
        ("train.adam_beta2", 0.0 <= cfg.train.adam_beta2 < 1.0, "a number in [0, 1)"),
        ("train.warmup_steps", cfg.train.warmup_steps >= 0, "an integer >= 0"),
        ("train.total_steps", cfg.train.total_steps >= 1, "an integer >= 1"),
        ("train.min_lr_ratio", 0.0 <= cfg.train.min_lr_ratio <= 1.0, "a number in [0, 1]"),
        ("train.micro_batch_size", cfg.train.micro_batch_size >= 1, "an integer >= 1"),
        ("train.grad_accum", cfg.train.grad_accum >= 1, "an integer >= 1"),
        ("train.max_grad_norm", cfg.train.max_grad_norm >= 0.0, "a number >= 0"),
        ("train.epochs", cfg.train.epochs > 0.0, "a number > 0"),
        ("train.log_every", cfg.train.log_every >= 1, "an integer >= 1"),
        ("train.cpu_threads", cfg.train.cpu_threads >= 0, "an integer >= 0"),
        ("train.processes", cfg.train.processes >= 1, "an integer >= 1"),
        ("train.distributed", cfg.train.distributed != "fsdp2" or (cfg.train.optimizer == "adamw" and not cfg.model.lora),
         "ddp when train.optimizer is not adamw or model.lora is true (fsdp2 is for full fine-tuning with plain "
         "AdamW, whose state it shards)"),
        ("masking.min_masked_ratio", 0.0 <= cfg.masking.min_masked_ratio <= 1.0, "a number in [0, 1]"),
        ("masking.max_masked_ratio", cfg.masking.min_masked_ratio <= cfg.masking.max_masked_ratio <= 1.0,
         "a number in [masking.min_masked_ratio, 1]"),
        ("masking.check_rows", cfg.masking.check_rows >= 0, "an integer >= 0"),
        ("data.num_proc", cfg.data.num_proc >= 0, "an integer >= 0"),
        ("eval.batch_size", cfg.eval.batch_size >= 1, "an integer >= 1"),
        ("eval.max_new_tokens", cfg.eval.max_new_tokens >= 1, "an integer >= 1"),
        ("eval.cpu_threads", cfg.eval.cpu_threads >= 0, "an integer >= 0"),
        ("eval.show_failures", cfg.eval.show_failures >= 0, "an integer >= 0"),
        ("eval.mastered_every", cfg.eval.mastered_every >= 1, "an integer >= 1 (1 = every checkpoint)"),
        ("eval.overfit_gap", cfg.eval.overfit_gap >= 0.0, "a loss difference >= 0"),
        ("curriculum.skills", bool(cfg.curriculum.skills), "a non-empty list of skills"),
        ("curriculum.weights", not cfg.curriculum.weights or len(cfg.curriculum.weights) == len(cfg.curriculum.skills),
         "empty, or one weight per curriculum skill"),
        ("curriculum.weights", all(w >= 0.0 for w in cfg.curriculum.weights), "weights >= 0"),
        ("curriculum.weights", not cfg.curriculum.weights or any(w > 0.0 for w in cfg.curriculum.weights),
         "weights that are not all zero (or an empty list for equal weights)"),
        ("curriculum.window", cfg.curriculum.window >= 1, "an integer >= 1"),
        ("curriculum.threshold", 0.0 < cfg.curriculum.threshold <= 1.0, "a number in (0, 1]"),
        ("curriculum.low_water", cfg.curriculum.low_water >= 0, "an integer >= 0"),
        ("curriculum.examples_per_file", cfg.curriculum.examples_per_file >= 1, "an integer >= 1"),
        ("curriculum.promotion_tolerance", 0.0 <= cfg.curriculum.promotion_tolerance <= 1.0, "a number in [0, 1]"),
        ("curriculum.replay_share", 0.0 <= cfg.curriculum.replay_share <= 0.5, "a number in [0, 0.5]"),
        ("curriculum.plateau_evals", cfg.curriculum.plateau_evals >= 0, "an integer >= 0 (0 = off)"),
        ("curriculum.plateau_lr_factor", 0.0 < cfg.curriculum.plateau_lr_factor <= 1.0,
         "a number in (0, 1] (1 = never lower the learning rate)"),
        ("pipeline.port", 1 <= cfg.pipeline.port <= 65535, "a port number"),
        ("pipeline.steps_per_chunk", cfg.pipeline.steps_per_chunk >= 0, "an integer >= 0"),
        ("pipeline.max_chunks", cfg.pipeline.max_chunks >= 0, "an integer >= 0"),
        ("pipeline.max_hours", cfg.pipeline.max_hours >= 0, "a number >= 0"),
        ("pipeline.heartbeat_seconds", cfg.pipeline.heartbeat_seconds >= 30, "an integer >= 30 (Prefect's minimum)"),
        ("pipeline.zombie_window_seconds", cfg.pipeline.zombie_window_seconds >= 3 * cfg.pipeline.heartbeat_seconds,
         "an integer >= 3 x pipeline.heartbeat_seconds (a shorter window crashes healthy runs)"),
        ("pipeline.max_failures", cfg.pipeline.max_failures >= 1, "an integer >= 1"),
        ("pipeline.eval_concurrency", cfg.pipeline.eval_concurrency >= 1, "an integer >= 1"),
        ("train.report_to", all(n in REPORT_TO for n in report_to_names(cfg.train.report_to)) and bool(
            cfg.train.report_to.strip()), "none, or a comma-separated list of " + ", ".join(REPORT_TO)),
        ("serve.host", bool(cfg.serve.host.strip()), "an address such as 127.0.0.1"),
        ("serve.port", 1 <= cfg.serve.port <= 65535, "a port number"),
        ("serve.max_resident", cfg.serve.max_resident >= 1, "an integer >= 1"),
        ("serve.max_tokens", 1 <= cfg.serve.max_tokens <= 1 << 16, "an integer in [1, 65536]"),
        ("serve.max_body_bytes", 1024 <= cfg.serve.max_body_bytes <= 1 << 28, "a number of bytes in [1024, 2**28]"),
        ("serve.max_queue", cfg.serve.max_queue >= 1, "an integer >= 1"),
        ("serve.refresh_seconds", cfg.serve.refresh_seconds >= 0, "an integer >= 0"),
        ("retention.keep_last_checkpoints", cfg.retention.keep_last_checkpoints >= 1,
         "an integer >= 1 (the newest checkpoint is where training resumes)"),
        *((f"retention.{k}", getattr(cfg.retention, k) >= 0.0, "a number of days >= 0 (0 = keep forever)")
          for k in ("done_days", "failed_days", "trash_days", "eval_days", "quarantine_days", "cache_days")),
        ("retention.tmp_hours", cfg.retention.tmp_hours >= 1.0,
         "a number of hours >= 1 (a younger temp file may belong to a live writer)"),
        ("retention.prefect_days", cfg.retention.prefect_days >= 1.0, "a number of days >= 1"),
        ("retention.log_max_mb", cfg.retention.log_max_mb > 0.0, "a number of MB > 0"),
        ("retention.log_backups", cfg.retention.log_backups >= 1, "an integer >= 1"),
        ("spar.problems", 1 <= cfg.spar.problems <= 100_000, "an integer in [1, 100000]"),
        ("spar.max_age_steps", cfg.spar.max_age_steps >= 0, "an integer >= 0"),
        ("spar.epochs", 0.0 < cfg.spar.epochs <= 100.0, "a number of passes in (0, 100]"),
        ("spar.max_share", 0.0 <= cfg.spar.max_share <= 1.0, "a number in [0, 1] (1 = no cap)"),
        ("spar.share_window", cfg.spar.share_window >= 1, "an integer >= 1"),
        ("spar.idle_max_utilization", 0.0 < cfg.spar.idle_max_utilization <= 100.0, "a percentage in (0, 100]"),
        ("spar.idle_min_free_memory", 0.0 <= cfg.spar.idle_min_free_memory <= 1.0, "a number in [0, 1]"),
        ("spar.idle_samples", cfg.spar.idle_samples >= 1, "an integer >= 1"),
        ("spar.idle_sample_seconds", cfg.spar.idle_sample_seconds >= 0.0, "a number of seconds >= 0"),
        ("spar.idle_retry_seconds", cfg.spar.idle_retry_seconds > 0.0, "a number of seconds > 0"),
        ("spar.idle_timeout_seconds", cfg.spar.idle_timeout_seconds >= 0.0, "a number of seconds >= 0"),
        ("validation.accept_ratio", 0.0 <= cfg.validation.accept_ratio <= 1.0, "a number in [0, 1]"),
        ("validation.max_char_share", 0.0 < cfg.validation.max_char_share <= 1.0, "a number in (0, 1]"),
        ("validation.min_answer_chars", cfg.validation.min_answer_chars >= 0, "an integer >= 0"),
        ("validation.min_share_chars", cfg.validation.min_share_chars >= 1, "an integer >= 1"),
        ("validation.min_leak_chars", cfg.validation.min_leak_chars >= 1, "an integer >= 1"),
        ("validation.min_length_ratio", cfg.validation.min_length_ratio >= 0.0, "a number >= 0"),
        ("validation.max_length_ratio", cfg.validation.max_length_ratio > cfg.validation.min_length_ratio,
         "a number > validation.min_length_ratio"),
    ]
    from skills import SKILLS

    unknown = [s for s in cfg.curriculum.skills if s not in SKILLS]
    if unknown:
        raise ValueError(f"config curriculum.skills: {_show(unknown[0])} is not allowed; use skills from "
                         f"{', '.join(SKILLS)}")
    for key, names, known in (("validation.warnings", cfg.validation.warnings, DOWNGRADABLE),
                              ("validation.disabled", cfg.validation.disabled, DISABLEABLE)):
        for name in names:
            if name not in known:
                raise ValueError(f"config {key}: {_show(name)} is not allowed; use rules from {', '.join(known)}")
    for key, ok, allowed in rules:
        if not ok:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            raise ValueError(f"config {key}: {_show(value)} is not allowed; use {allowed}")


# ---------------------------------------------------------------- building typed dataclasses from dicts
def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp``; return it (ints are accepted where floats are)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ValueError(f"config {key}: {_show(value)} is not allowed; use one of "
                             f"{', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config {key}: {_show(value)} is not allowed; use a list")
        (item,) = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        wanted = []
        for arg in args:   # the first type that takes the value (bool | Literal["auto"]: true, false or auto)
            try:
                return _coerce(value, arg, key)
            except ValueError as exc:
                wanted.append(str(exc).rpartition("; use ")[2])
        raise ValueError(f"config {key}: {_show(value)} is not allowed; use {', or '.join(wanted)}")
    if tp is dict:
        return _mapping(value, key)
    if dataclasses.is_dataclass(tp):
        if value is None:   # an empty section (only comments under it) means its defaults
            value = {}
        if not isinstance(value, dict):
            raise ValueError(f"config {key}: expected a mapping of settings, got {_show(value)}")
        return _build(tp, value, key + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config {key}: {_show(value)} is not allowed; use true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config {key}: {_show(value)} is not allowed; use an integer")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-3` (no dot) as a string; accept what is plainly a number
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config {key}: {_show(value)} is not allowed; use a number")
        try:
            value = float(value)
        except OverflowError:           # an integer too large for a float
            value = math.inf
        if not math.isfinite(value):    # .inf / .nan: every float field is a finite number
            raise ValueError(f"config {key}: {_show(value)} is not allowed; use a finite number")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"config {key}: {_show(value)} is not allowed; use a string")
        return value
    raise AssertionError(f"unsupported config annotation {tp} at {key}")


SECRET_RE = re.compile(r"secret|passw|token|key|credential", re.I)


def _redacted(options):
    if isinstance(options, dict):
        return {k: "***" if SECRET_RE.search(k) and not isinstance(v, dict) else _redacted(v)
                for k, v in options.items()}
    return options


DATABASE_SCHEMES = ("postgresql+asyncpg", "sqlite+aiosqlite")


def redact_url(url: str) -> str:
    """``url`` with the password of its user part shown as ``***`` (``scheme://user:***@host:port/db``). The last
    ``@`` ends the user part, so a password with an unencoded ``@`` or ``/`` is hidden whole too."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep or at < 0:
        return url
    user = rest[:at].partition(":")[0]
    return f"{scheme}://{user}:***@{rest[at + 1:]}" if ":" in rest[:at] else url


def database_address(url: str) -> tuple[str, int]:
    """(host, port) of a ``postgresql+asyncpg://`` URL (port 5432 when none is given); ValueError when they are
    missing or malformed (the message never holds the password)."""
    rest = url.partition("://")[2]
    hostpart = rest[rest.rfind("@") + 1:].partition("/")[0]
    host, colon, port = hostpart.rpartition(":") if not hostpart.endswith("]") else (hostpart, "", "")
    if not colon:
        host, port = hostpart, "5432"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{_show(redact_url(url))} has no valid HOST:PORT")
    return host, int(port)


def _check_database_url(url: str, key: str) -> None:
    """Refuse a database URL the Prefect server cannot use; the error shows it with its password as ``***``."""
    if not url:
        return
    shown = _show(redact_url(url))
    use = ("use postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE (or sqlite+aiosqlite:///PATH), or leave it "
           "empty for SQLite under the storage root")
    scheme, _, rest = url.partition("://")
    if scheme not in DATABASE_SCHEMES or not rest or any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError(f"{key}: {shown} is not allowed; {use}")
    if scheme == "sqlite+aiosqlite":
        if not rest.startswith("/") or not rest.strip("/"):
            raise ValueError(f"{key}: {shown} is not allowed; use sqlite+aiosqlite:///ABSOLUTE/PATH/prefect.db")
        return
    try:
        database_address(url)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}; {use}") from None
    if not rest[rest.rfind("@") + 1:].partition("/")[2].partition("?")[0]:
        raise ValueError(f"{key}: {shown} names no database; {use}")


def _mapping(value, key: str, depth: int = 0) -> dict:
    """A free-form mapping (storage.options): string keys; strings, numbers, booleans, lists and mappings of
    them as values, at most 4 levels deep."""
    if value is None:
        return {}
    if not isinstance(value, dict) or depth > 4:
        raise ValueError(f"config {key}: {_show(value)} is not allowed; use a mapping (at most 4 levels deep)")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise ValueError(f"config {key}: the key {_show(k)} is not allowed; use string keys")
        if isinstance(v, dict):
            v = _mapping(v, f"{key}.{k}", depth + 1)
        elif isinstance(v, list):
            if not all(isinstance(x, (str, int, float, bool)) for x in v):
                raise ValueError(f"config {key}.{k}: {_show(v)} is not allowed; use a list of plain values")
        elif not isinstance(v, (str, int, float, bool)) or isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"config {key}.{k}: {_show(v)} is not allowed; use a string, number or boolean")
        out[k] = v
    return out


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            shown = key if isinstance(key, str) and len(key) <= SHOW and key.isprintable() else _show(key)
            raise ValueError(f"config {prefix}{shown}: unknown key; allowed keys here: {', '.join(names)}")
    kwargs = {name: _coerce(data[name], hints[name], prefix + name) for name in names if name in data}
    return cls(**kwargs)


def _check_root(root: Path, key: str) -> None:
    """Refuse a storage root dojo must not or cannot use: ``/``, the home directory itself (dojo creates inbox/,
    queue/, state/, … directly in the root), a file, a path below a file, or an existing directory that is not
    writable (a read-only mount: the first write would fail deep inside a run)."""
    def refuse(why: str):
        raise ValueError(f"{key}: {_show(str(root))} is not allowed; {why}")

    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):    # no $HOME and no passwd entry
        home = None
    if root == Path(root.anchor):
        refuse("use a folder of its own, e.g. /srv/dojo (not the filesystem root)")
    if root == home:
        refuse("use a folder of its own, e.g. ~/dojo-home (not the home directory itself)")
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "it is" if existing == root else f"{existing} is"
        refuse(f"{where} a file, not a directory; use a directory (or a path where one can be created)")
    if existing == root and not os.access(root, os.W_OK | os.X_OK):
        refuse("dojo cannot write there (read-only or no permission); use a writable directory")


def _url_root(storage: StorageConfig, url: str, key: str, base_dir: Path | None) -> StorageConfig:
    """A URL storage root checked for shape (scheme, bucket, no credentials in it), its trailing '/' dropped,
    and its local working copy (``storage.cache``) resolved and checked like a local root."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ValueError(f"{key}: {parts.scheme}://***@{parts.netloc.rsplit('@', 1)[1]}… is not allowed: credentials "
                         f"belong in the environment or storage.options, never in the URL")
    if not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{key}: {_show(url)} is not allowed; use scheme://bucket[/prefix] (credentials belong in "
                         f"the environment or storage.options, never in the URL)")
    url = url.rstrip("/")
    if storage.cache.strip():
        cache = Path(storage.cache).expanduser()
        if not cache.is_absolute():
            cache = (base_dir or Path.cwd()) / cache
    else:
        import hashlib

        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        cache = base / "dojo" / hashlib.sha256(url.encode()).hexdigest()[:12]   # as dojo.objstore.default_cache_dir
    cache = cache.resolve()
    _check_root(cache, "config storage.cache")
    return dataclasses.replace(storage, root=url, cache=str(cache))


def from_dict(data: dict | None, base_dir: Path | None = None, env: dict | None = None) -> Config:
    """Build and validate a Config from a plain mapping (as parsed from YAML)."""
    env = os.environ if env is None else env
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config: the top level must be a mapping of sections, got {type(data).__name__}")
    cfg = _build(Config, data)
    if not cfg.storage.root.strip():
        raise ValueError(f"config storage.root: {_show(cfg.storage.root)} is not allowed; use a non-empty path")
    if not cfg.model.name_or_path.strip():
        raise ValueError("config model.name_or_path: '' is not allowed; use an HF model directory or hub id")
    root_key = "$DOJO_HOME" if env.get("DOJO_HOME", "").strip() else "config storage.root"
    root = env["DOJO_HOME"].strip() if env.get("DOJO_HOME", "").strip() else cfg.storage.root
    if is_url(root):
        cfg = dataclasses.replace(cfg, storage=_url_root(cfg.storage, root, root_key, base_dir))
    else:
        if env.get("DOJO_HOME", "").strip():
            root_path = Path(root).expanduser().absolute()   # relative to where the user stands
        else:
            root_path = Path(root).expanduser()
            if not root_path.is_absolute():
                root_path = (base_dir or Path.cwd()) / root_path
        root_path = root_path.resolve()
        _check_root(root_path, root_key)
        cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root=str(root_path)))
    model_path = (base_dir or Path.cwd()) / cfg.model.name_or_path
    if not Path(cfg.model.name_or_path).is_absolute() and model_path.exists():
        # a relative model directory resolves like storage.root; anything else stays a hub id
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=str(model_path.resolve())))
    db_key = "config pipeline.database_url"
    if env.get("DOJO_DATABASE_URL", "").strip():       # keeps the database password out of dojo.yaml
        db_key = "$DOJO_DATABASE_URL"
        cfg = dataclasses.replace(cfg, pipeline=dataclasses.replace(
            cfg.pipeline, database_url=env["DOJO_DATABASE_URL"].strip()))
    _check_database_url(cfg.pipeline.database_url, db_key)
    _check_values(cfg)
    return cfg


def config_path(explicit: str | None = None, env: dict | None = None) -> Path | None:
    """Which YAML file to load: --config, then $DOJO_CONFIG, then ./dojo.yaml; None means defaults."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("DOJO_CONFIG"):
        return Path(env["DOJO_CONFIG"])
    local = Path.cwd() / "dojo.yaml"
    return local if local.exists() else None


class _Refused(yaml.MarkedYAMLError):
    """YAML that parses but that a dojo config may not use (an alias, an anchor, a duplicate key)."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses anchors and aliases before anything is expanded, and duplicate keys."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(problem=f"the YAML alias *{event.anchor[:SHOW]} is not allowed in a dojo config; "
                                   f"write the value out", problem_mark=event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise _Refused(problem=f"the YAML anchor &{event.anchor[:SHOW]} is not allowed in a dojo config "
                                   f"(nor are aliases); write values out", problem_mark=event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _Refused(problem=f"the key {_show(key)} is given twice in one mapping (line {seen[key]} "
                                           f"and line {line}); keep one", problem_mark=key_node.start_mark)
                seen[key] = line
            except TypeError:          # an unhashable key: the base class says so
                continue
        return super().construct_mapping(node, deep=deep)


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line: where and what (PyYAML's own text spans lines and quotes the offending line)."""
    if isinstance(exc, _Refused):
        return f"config file {path}: line {exc.problem_mark.line + 1}: {exc.problem}"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = "; ".join(str(x) for x in (exc.context, exc.problem) if x)
        text = f"line {mark.line + 1} column {mark.column + 1}: {what}"
    else:
        text = " ".join(str(exc).split())
    return f"config file {path}: not valid YAML: {text[: 2 * SHOW]}"


def load(explicit: str | None = None, env: dict | None = None) -> Config:
    """Load, validate and resolve the config. Errors name the file and the key."""
    path = config_path(explicit, env)
    if path is None:
        return from_dict({}, None, env)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist (from --config or $DOJO_CONFIG)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"config file {path}: {path.stat().st_size} bytes is too big for a dojo config "
                         f"(at most {MAX_CONFIG_BYTES})")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except UnicodeDecodeError:
        raise ValueError(f"config file {path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ValueError(_yaml_error(path, exc)) from None
    except RecursionError:
        raise ValueError(f"config file {path}: nested too deeply to be a dojo config") from None
    try:
        return from_dict(data, path.resolve().parent, env)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def docs() -> dict[str, str]:
    """Key path -> one-line doc for every field (for `dojo config show --docs` and the docs test)."""
    out = {}
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory):
            out[f"{section.name}.{f.name}"] = f.metadata.get("doc", "")
    return out
