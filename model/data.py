"""The data path, once: check a file with the one rule set, render and tokenize each line once, keep the result
in a tokenized cache, and hand training packed, checked rows without re-reading or re-tokenizing the file.

    check_file(path, cfg, depth, spec, tokenizer)   the gate / `dojo validate` / `dojo pack-check`: a FileReport
                                                    (and, when asked, the tokenized examples as a cache build)
    load_tokenized(cfg, path, tokenizer)            training: the file's cache entry, built (strictly) on a miss
    prepare(cfg, path, tokenizer)                   training: holdout, packing plan and masking report

**The tokenized cache** lives under ``{root}/cache/tokenized/{key}/``: ``examples.arrow`` (an Arrow stream written
batch by batch, opened memory-mapped with ``datasets.Dataset.from_file``) and ``meta.json``, written last, which
commits the entry. The key hashes everything that decides the tokens: the file's sha256, the tokenizer's
vocabulary and chat template, the profile and system prompt, ``data.max_length``, ``data.multi_turn`` and
``DATA_VERSION`` (bump it whenever rendering or tokenization changes). The gate's STANDARD pass writes the
entry of the file it queues, so the first chunk on a file starts without tokenizing, and so does every later
chunk; the packing plan and the masking verdict are cached beside it (``prepared-*.npz`` / ``.json``).

Training is the gate's own check at STANDARD depth, strict: any rejected line refuses the whole file with a
DataError naming file, line and rule@version — the same rules, so every line the gate accepts, training accepts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.chat import tokenize_conversation, with_system_prompt
from model.packing import PackedRow, PackPlan, pack_bfd
from validation.errors import DataError, Issue
from validation.masking import MaskingReport, Thresholds, validate_rows
from validation.validate import VALIDATOR, FileReport, check_file as check_lines

log = logging.getLogger("dojo.data")
DATA_VERSION = "2"          # rendering/tokenization code: part of every cache key
CACHE_DIR = ("cache", "tokenized")
BATCH = 2048                # examples per Arrow record batch


# ---------------------------------------------------------------- rendering for one config
@dataclass(frozen=True)
class Rendering:
    """How a config turns messages into training examples: profile transform, system prompt, multi-turn policy."""
    profile: str
    system_prompt: str
    multi_turn: str

    @classmethod
    def of(cls, cfg) -> "Rendering":
        from model.profiles import resolve

        profile, system_prompt = resolve(cfg.data.profile, cfg.data.system_prompt)
        return cls(profile.name, system_prompt, cfg.data.multi_turn)

    def tokenize(self, messages, tokenizer, source: str):
        """(examples, turns the template rewrote) of one line, or the RenderError that refuses it."""
        from model.chat import RenderError
        from model.profiles import get_profile

        try:
            examples = tokenize_conversation(with_system_prompt(get_profile(self.profile).transform(messages),
                                                                self.system_prompt), tokenizer, source,
                                             self.multi_turn)
        except RenderError as exc:
            return exc
        return examples, sum(e.rewritten for e in examples)

    def tokenizer_for(self, tokenizer, num_proc: int = 1) -> "BatchTokenizer":
        return BatchTokenizer(self, tokenizer, num_proc)


_WORKER: tuple | None = None        # (rendering, tokenizer) of a tokenizing worker process
# Workers start only once this many lines were tokenized in-process: spawning them costs ~3 s (measured on 2 CPUs,
# real Qwen3 tokenizer: 20k lines 7.9 s in-process vs 9.5 s with 2 workers; 100k lines 40.4 s vs 25.6 s).
POOL_AFTER_LINES = 16384


def _init_worker(rendering: "Rendering", tokenizer) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"     # each worker is one process already
    _WORKER = (rendering, tokenizer)


def _tokenize_items(items):
    rendering, tokenizer = _WORKER
    return [rendering.tokenize(messages, tokenizer, source) for messages, source in items]


class BatchTokenizer:
    """``validation.validate``'s tokenize callable: a batch of (messages, source) → one result per line, in
    order. With ``num_proc`` > 1, large batches are spread over worker processes; call ``close`` (or use it as
    a context manager) to stop them. Workers are *spawned* (fresh interpreters that receive the tokenizer once),
    not forked: this runs inside Prefect workers, whose threads may hold locks at fork time."""

    def __init__(self, rendering: Rendering, tokenizer, num_proc: int = 1):
        self.rendering, self.tokenizer, self.num_proc = rendering, tokenizer, num_proc
        self._pool = None
        self._done = 0

    def __call__(self, items: list) -> list:
        self._done += len(items)
        if self.num_proc <= 1 or (self._pool is None and self._done - len(items) < POOL_AFTER_LINES):
            return [self.rendering.tokenize(m, self.tokenizer, s) for m, s in items]
        if self._pool is None:
            import multiprocessing

            self._pool = multiprocessing.get_context("spawn").Pool(self.num_proc, initializer=_init_worker,
                                                                   initargs=(self.rendering, self.tokenizer))
        size = -(-len(items) // (4 * self.num_proc))
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        return [r for chunk in self._pool.map(_tokenize_items, chunks) for r in chunk]

    def single(self, messages, source: str):
        """One line, raising its RenderError (for callers outside the file check)."""
        result = self.rendering.tokenize(messages, self.tokenizer, source)
        if isinstance(result, Exception):
            raise result
        return result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def num_proc(cfg) -> int:
    """Processes for tokenizing a file: ``data.num_proc``, or (0 = auto) every CPU, at most 8."""
    return cfg.data.num_proc or min(8, os.cpu_count() or 1)


_TOKENIZER_IDS: dict[int, tuple[object, str]] = {}


def tokenizer_id(tokenizer) -> str:
    """sha256 of the tokenizer's full definition (vocabulary, merges, added tokens) and its chat template."""
    hit = _TOKENIZER_IDS.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        if backend.padding is not None or backend.truncation is not None:
            backend.no_padding()      # call-time settings a padded batch call leaves behind, not the vocabulary
            backend.no_truncation()   # (the wrapper sets both again on every call of its own)
        h.update(backend.to_str().encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(b"\0" + str(tokenizer.chat_template or "").encode())
    _TOKENIZER_IDS[id(tokenizer)] = (tokenizer, h.hexdigest())
    return h.hexdigest()


def cache_key(cfg, tokenizer, sha256: str, rendering: Rendering | None = None) -> str:
    rendering = rendering or Rendering.of(cfg)
    parts = {"file": sha256, "tokenizer": tokenizer_id(tokenizer), "profile": rendering.profile,
             "system_prompt": rendering.system_prompt, "multi_turn": rendering.multi_turn,
             "max_length": cfg.data.max_length, "data_version": DATA_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def verdict_key(cfg) -> str:
    """What an admission verdict depends on besides the file: validator version and the config that decides
    it (validation rules, rendering, length, tokenizer source). Equal keys mean the verdict can be reused."""
    parts = {"validator": VALIDATOR, "data_version": DATA_VERSION, "validation": cfg.to_dict()["validation"],
             "data": {k: v for k, v in cfg.to_dict()["data"].items() if k not in ("val_fraction", "val_max_examples", "num_proc")},
             "model": cfg.model.name_or_path}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the cache
SCHEMA_FIELDS = (("line", "int32"), ("input_ids", "list<int32>"), ("labels", "list<int32>"), ("length", "int32"),
                 ("trained_tokens", "int32"), ("assistant_turns", "int16"), ("trained_turns", "int16"),
                 ("rewritten", "int16"), ("group", "string"))


def _schema():
    import pyarrow as pa

    types = {"int32": pa.int32(), "int16": pa.int16(), "string": pa.string(), "list<int32>": pa.list_(pa.int32())}
    return pa.schema([(name, types[t]) for name, t in SCHEMA_FIELDS])


class CacheBuild:
    """Tokenized examples streamed into an Arrow file in a private temp folder; ``commit`` publishes it."""

    def __init__(self, root: Path):
        import pyarrow as pa

        self.base = Path(root).joinpath(*CACHE_DIR)
        self.tmp = self.base / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        self._sink = pa.OSFile(str(self.tmp / "examples.arrow"), "wb")
        self._writer = pa.ipc.new_stream(self._sink, _schema())
        self._rows: dict[str, list] = {name: [] for name, _ in SCHEMA_FIELDS}
        self.examples = self.lines = self.rewritten = 0

    def add(self, line: int, examples, group: str) -> None:
        self.lines += 1
        for e in examples:
            row = self._rows
            row["line"].append(line)
            row["input_ids"].append(e.input_ids)
            row["labels"].append(e.labels)
            row["length"].append(len(e.input_ids))
            row["trained_tokens"].append(e.trained_tokens)
            row["assistant_turns"].append(e.assistant_turns)
            row["trained_turns"].append(e.trained_turns)
            row["rewritten"].append(e.rewritten)
            row["group"].append(group)
            self.examples += 1
            self.rewritten += e.rewritten
        if len(self._rows["line"]) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows["line"]:
            self._writer.write_batch(pa.record_batch([pa.array(self._rows[n], type=t)
                                                      for (n, _), t in zip(SCHEMA_FIELDS, _schema().types)],
                                                     schema=_schema()))
            self._rows = {name: [] for name, _ in SCHEMA_FIELDS}

    def _close(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._sink.close()
            self._writer = None

    def commit(self, key: str, meta: dict) -> Path:
        """Publish under ``key`` (meta.json last: an entry without it is never read). Idempotent."""
        self._close()
        dest = self.base / key
        (self.tmp / "meta.json").write_text(json.dumps({**meta, "examples": self.examples, "lines": self.lines,
                                                        "rewritten_turns": self.rewritten}, indent=2) + "\n")
        try:
            os.rename(self.tmp, dest)               # the whole folder at once: a published entry is always complete
        except OSError:
            if not (dest / "meta.json").exists():
                raise
            self.discard()                          # another process published the same entry first
        return dest

    def discard(self) -> None:
        self._close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def line_group(messages) -> str:
    """The holdout group of a line: the hash of its content (all examples of an expanded line stay together)."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# ---------------------------------------------------------------- checking a file
def check_file(path: str | Path, cfg, depth: str | None = None, spec: str | None = None, tokenizer=None,
               build_cache: bool = False, label: str | None = None) -> tuple[FileReport, CacheBuild | None]:
    """The one check of a data file (``validation.validate.check_file`` with this config's rendering). At
    STANDARD and DEEP every line is rendered and tokenized once; with ``build_cache`` the accepted lines'
    examples are written to a CacheBuild the caller commits (``commit_cache``) or discards."""
    depth = depth or cfg.validation.depth
    if depth == "quick":
        return check_lines(path, cfg, depth, spec, label=label), None
    if tokenizer is None:
        from model.loading import load_tokenizer

        tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    build = CacheBuild(cfg.root) if build_cache else None
    on_accept = (lambda line, examples, messages: build.add(line, examples, line_group(messages))) if build else None
    try:
        with Rendering.of(cfg).tokenizer_for(tokenizer, num_proc(cfg)) as tokenize:
            report = check_lines(path, cfg, depth, spec, tokenize, on_accept, label)
    except BaseException:
        if build:
            build.discard()
        raise
    return report, build


def commit_cache(cfg, build: CacheBuild | None, tokenizer, sha256: str, source: str) -> Path | None:
    """Publish a cache build as the entry of the file whose content hash is ``sha256``."""
    if build is None:
        return None
    key = cache_key(cfg, tokenizer, sha256)
    return build.commit(key, {"key": key, "sha256": sha256, "source": source, "data_version": DATA_VERSION,
                              "validator": VALIDATOR, "max_length": cfg.data.max_length})


def validate_file(path: str | Path, cfg, depth: str | None = None, spec: str | None = None,
                  tokenizer=None) -> FileReport:
    """The report of ``check_file`` alone (``dojo validate``; nothing cached)."""
    return check_file(path, cfg, depth, spec, tokenizer)[0]


def training_spec(path: str | Path) -> str:
    """The spec training reads ``path`` with: its sidecar's, else chat_sft_v1 (``dojo train`` on a plain chat
    file). The queue's gate stays deny-by-default: a queued file needs a spec."""
    from validation.validate import resolve_spec

    return resolve_spec(Path(path), None)[0] or "chat_sft_v1"


def tokenize_file(cfg, path: str | Path, tokenizer) -> tuple[FileReport, list]:
    """Every training example of ``path`` in memory, strictly (DataError on any rejected line), without touching
    the cache: for ``dojo pack-check`` and tests on files that are not queued."""
    examples: list = []
    with Rendering.of(cfg).tokenizer_for(tokenizer, num_proc(cfg)) as tokenize:
        report = check_lines(path, cfg, "standard", _spec_or_unreadable(path), tokenize,
                             lambda line, exs, _: examples.extend(exs))
    issues = report.file_issues + [i for n in sorted(report.rejected) for i in report.rejected[n]]
    if issues:
        raise DataError(issues)
    return report, examples


def _spec_or_unreadable(path) -> str | None:
    try:
        return training_spec(path)
    except ValueError:        # a broken sidecar: check_file reports it as the file's issue
        return None


# ---------------------------------------------------------------- training's view
@dataclass
class TokenizedData:
    """A file's examples, memory-mapped (``datasets.Dataset``), with their lengths as an array."""
    dir: Path
    dataset: object
    meta: dict

    @property
    def lengths(self) -> np.ndarray:
        return self.dataset.data.column("length").to_numpy()

    def __len__(self) -> int:
        return len(self.dataset)


def _open(entry: Path) -> TokenizedData:
    import datasets

    meta = json.loads((entry / "meta.json").read_text())
    return TokenizedData(entry, datasets.Dataset.from_file(str(entry / "examples.arrow")), meta)


def load_tokenized(cfg, path: str | Path, tokenizer, sha256: str | None = None) -> TokenizedData:
    """The tokenized examples of ``path``: its cache entry, or — on a miss — the strict STANDARD check that
    builds it (a file with any rejected line raises DataError listing every one; nothing is trained)."""
    from dojo.storage import sha256_file

    path = Path(path)
    try:
        sha256 = sha256 or sha256_file(path)
    except (OSError, ValueError) as exc:       # ValueError: not a regular file (a FIFO is never opened)
        raise DataError([Issue(str(path), 0, "unreadable@1", str(exc))]) from None
    key = cache_key(cfg, tokenizer, sha256)
    entry = Path(cfg.root).joinpath(*CACHE_DIR, key)
    if (entry / "meta.json").exists():
        log.info("tokenized cache hit for %s (%s)", path.name, key)
        return _open(entry)
    report, build = check_file(path, cfg, "standard", _spec_or_unreadable(path), tokenizer, build_cache=True)
    issues = report.file_issues + [i for n in sorted(report.rejected) for i in report.rejected[n]]
    if issues:
        if build:
            build.discard()
        raise DataError(issues)
    return _open(commit_cache(cfg, build, tokenizer, sha256, str(path)))


@dataclass
class PreparedData:
    """What a chunk trains from: packed rows (built on demand), held-out rows, and the masking verdict."""
    data: TokenizedData
    plan: PackPlan
    val_plan: PackPlan
    examples: int
    val_examples: int
    masking: MaskingReport
    fill_ratio: float
    rewritten_turns: int

    def rows(self, indices, plan: PackPlan | None = None) -> list[PackedRow]:
        plan = plan or self.plan
        wanted = [np.asarray(plan.members(int(i))) for i in indices]
        flat = np.concatenate(wanted) if wanted else np.zeros(0, dtype=np.int64)
        batch = self.data.dataset[flat.tolist()] if len(flat) else {}
        out, at = [], 0
        for members in wanted:
            span = range(at, at + len(members))
            ids, labels, positions = [], [], []
            for k in span:
                ids.extend(batch["input_ids"][k])
                labels.extend(batch["labels"][k])
                positions.extend(range(batch["length"][k]))
            out.append(PackedRow(tuple(ids), tuple(labels), tuple(positions), tuple(int(m) for m in members),
                                 tuple(batch["length"][k] for k in span),
                                 tuple(batch["trained_tokens"][k] for k in span),
                                 tuple(batch["trained_turns"][k] for k in span)))
            at += len(members)
        return out

    def val_rows(self) -> list[PackedRow]:
        return self.rows(range(len(self.val_plan)), self.val_plan) if len(self.val_plan) else []

    @property
    def n_rows(self) -> int:
        return len(self.plan)


def holdout_mask(groups, fraction: float, cap: int) -> np.ndarray:
    """True for held-out examples: the lines with the smallest content hashes (the same ones every chunk).
    ``groups`` is an Arrow string column (or a list); computed in Arrow, no Python list per example."""
    import pyarrow as pa
    import pyarrow.compute as pc

    groups = groups if isinstance(groups, (pa.Array, pa.ChunkedArray)) else pa.array(groups, pa.string())
    distinct = pc.unique(groups)
    n_val = min(cap, int(len(distinct) * fraction))
    if n_val == 0:
        return np.zeros(len(groups), dtype=bool)
    chosen = pc.take(distinct, pc.array_sort_indices(distinct)[:n_val])
    return pc.is_in(groups, value_set=chosen).to_numpy(zero_copy_only=False)


def prepare(cfg, path: str | Path, tokenizer, sha256: str | None = None) -> PreparedData:
    """Tokenized examples → held-out split → best-fit-decreasing plan → masking checks on the real rows. The
    plan and the verdict are cached with the entry, so a later chunk on the file only opens them."""
    data = load_tokenized(cfg, path, tokenizer, sha256)
    m = cfg.masking
    sub = hashlib.sha256(json.dumps({"val": [cfg.data.val_fraction, cfg.data.val_max_examples],
                                     "masking": [m.min_masked_ratio, m.max_masked_ratio, m.check_rows],
                                     "v": DATA_VERSION}).encode()).hexdigest()[:12]
    plan_file, report_file = data.dir / f"prepared-{sub}.npz", data.dir / f"prepared-{sub}.json"
    lengths = data.lengths
    if plan_file.exists() and report_file.exists():
        saved = np.load(plan_file)
        plan, val_plan = PackPlan(saved["order"], saved["starts"]), PackPlan(saved["val_order"], saved["val_starts"])
        masking = _report_from_dict(json.loads(report_file.read_text()))
    else:
        held = holdout_mask(data.dataset.data.column("group"), cfg.data.val_fraction, cfg.data.val_max_examples)
        train_idx, val_idx = np.flatnonzero(~held), np.flatnonzero(held)
        plan = _plan(train_idx, lengths, cfg.data.max_length)
        val_plan = _plan(val_idx, lengths, cfg.data.max_length)
        prepared = PreparedData(data, plan, val_plan, 0, 0, None, 0.0, 0)
        checked = range(min(len(plan), m.check_rows) if m.check_rows else len(plan))
        masking = validate_rows(_chunked_rows(prepared, checked), tokenizer,
                                Thresholds(m.min_masked_ratio, m.max_masked_ratio))
        tmp = plan_file.with_name(f".{plan_file.name}.{os.getpid()}.npz")
        np.savez(tmp, order=plan.order, starts=plan.starts, val_order=val_plan.order, val_starts=val_plan.starts)
        os.replace(tmp, plan_file)
        tmp = report_file.with_name(f".{report_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(_report_to_dict(masking)))
        os.replace(tmp, report_file)
    fill = plan.tokens(lengths) / (len(plan) * cfg.data.max_length) if len(plan) else 0.0
    return PreparedData(data, plan, val_plan, len(plan.order), len(val_plan.order), masking, fill,
                        int(data.meta.get("rewritten_turns", 0)))


def _plan(indices: np.ndarray, lengths: np.ndarray, max_length: int) -> PackPlan:
    bins = pack_bfd(lengths[indices].tolist(), max_length)
    return PackPlan.from_bins([[int(indices[i]) for i in b] for b in bins])


def _chunked_rows(prepared: PreparedData, indices, size: int = 256):
    indices = list(indices)
    for i in range(0, len(indices), size):
        yield from prepared.rows(indices[i:i + size])


def _report_to_dict(r: MaskingReport) -> dict:
    return {"rows": r.rows, "tokens": r.tokens, "masked_ratio": r.masked_ratio,
            "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail, "failures": c.failures,
                        "warning_only": c.warning_only} for c in r.checks]}


def _report_from_dict(d: dict) -> MaskingReport:
    from validation.masking import CheckResult

    return MaskingReport(d["rows"], d["tokens"], d["masked_ratio"],
                         [CheckResult(name=c["name"], passed=c["passed"], detail=c["detail"],
                                      warning_only=c["warning_only"], failures=c["failures"]) for c in d["checks"]])
