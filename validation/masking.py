"""The five masking validators, run on real packed rows before any training step.

They exist because the old system's collator masked only the first instruction of a packed row and trained on
every later system prompt and user turn. Each check looks only at token ids and labels (not at how they were
made), so it catches a wrong collator, a wrong template or a wrong tokenizer alike:

1. ``masked_ratio``     share of label -100 among real tokens within [min, max] (config ``masking``)
2. ``template_count``   per row: assistant headers = masked→trained transitions
3. ``trained_content``  no trained token is or contains a turn marker, no user/system text is trained, and no
                        assistant header (role line, empty think block) is trained
4. ``span_coverage``    every assistant span (after its header and an empty think block, through
                        ``<|im_end|>``) is at least ``min_span_trained`` trained, its ``<|im_end|>`` included
5. ``row_balance``      no row all-masked or all-trained

A row is anything with ``input_ids``, ``labels`` and ``position_ids`` sequences (e.g. ``model.packing.
PackedRow``). Padding is not part of a row here. Every failure says which rule, which row, and which text was
wrongly trained or left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

IGNORE = -100
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHECKS = ("masked_ratio", "template_count", "trained_content", "span_coverage", "row_balance")


@dataclass(frozen=True)
class Thresholds:
    min_masked_ratio: float = 0.30
    max_masked_ratio: float = 0.85
    min_span_trained: float = 0.90


@dataclass
class CheckResult:
    name: str
    passed: bool = True
    detail: str = ""
    failures: list[str] = field(default_factory=list)   # one line per offending row/span (capped)

    def fail(self, message: str, cap: int = 10) -> None:
        self.passed = False
        if len(self.failures) < cap:
            self.failures.append(message)


@dataclass
class MaskingReport:
    rows: int
    tokens: int
    masked_ratio: float
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    def format(self) -> str:
        lines = [f"masking: {self.rows} rows, {self.tokens} tokens, masked ratio {self.masked_ratio:.3f}"]
        for c in self.checks:
            lines.append(f"  [{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.detail}")
            lines.extend(f"      {f}" for f in c.failures)
        return "\n".join(lines)


class MaskingError(ValueError):
    """A hard masking failure: training must not start."""

    def __init__(self, report: MaskingReport):
        self.report = report
        failed = ", ".join(c.name for c in report.checks if not c.passed)
        super().__init__(f"masking validation failed ({failed}); refusing to train.\n{report.format()}")


class _Decoder:
    """Decodes single ids with a cache (validators decode the same few ids over and over)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}
        self.im_start = tokenizer.convert_tokens_to_ids(IM_START)
        self.im_end = tokenizer.convert_tokens_to_ids(IM_END)

    def piece(self, token_id: int) -> str:
        if token_id not in self.cache:
            self.cache[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return self.cache[token_id]

    def text(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def _turns(ids, dec: _Decoder):
    """Yield (role, header_start, body_start, end) for each turn in a row; end is the im_end index (or len)."""
    i, n = 0, len(ids)
    while i < n:
        if ids[i] != dec.im_start:
            i += 1
            continue
        j, role = i + 1, ""
        while j < n and "\n" not in dec.piece(ids[j]) and ids[j] != dec.im_start:
            role += dec.piece(ids[j])
            j += 1
        if j < n and "\n" in dec.piece(ids[j]):
            role += dec.piece(ids[j]).split("\n")[0]
            j += 1
        end = j
        while end < n and ids[end] not in (dec.im_end, dec.im_start):
            end += 1
        yield role.strip(), i, j, end
        i = end if end < n and ids[end] == dec.im_start else end + 1


def _skip_empty_think(ids, start: int, end: int, dec: _Decoder) -> int:
    """Index after an empty ``<think>\\n\\n</think>\\n\\n`` block at ``start`` (template scaffolding), else start."""
    j = start
    text = ""
    while j < end and len(text) < 32:
        text += dec.piece(ids[j])
        j += 1
        if text.strip() == "<think>" or text.strip() == "":
            continue
        if text.replace("<think>", "", 1).strip() == "</think>":
            while j < end and not dec.piece(ids[j]).strip():
                j += 1
            return j
        break
    return start


def _snippet(text: str, limit: int = 80) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return repr(text)


def validate_rows(rows, tokenizer, thresholds: Thresholds = Thresholds(), limit: int = 0) -> MaskingReport:
    """Run the five checks on ``rows`` (the first ``limit`` of them when limit > 0)."""
    rows = list(rows)[:limit] if limit else list(rows)
    dec = _Decoder(tokenizer)
    ratio = CheckResult("masked_ratio")
    count = CheckResult("template_count")
    content = CheckResult("trained_content")
    coverage = CheckResult("span_coverage")
    balance = CheckResult("row_balance")
    total = masked = spans = 0
    worst_cover = 1.0
    for r, row in enumerate(rows):
        ids, labels = list(row.input_ids), list(row.labels)
        assert len(ids) == len(labels), f"row {r}: ids and labels differ in length"
        n_masked = sum(1 for x in labels if x == IGNORE)
        total += len(ids)
        masked += n_masked
        # 5. row balance
        if n_masked == len(ids):
            balance.fail(f"row {r}: every one of its {len(ids)} tokens is masked (nothing trained)")
        elif n_masked == 0:
            balance.fail(f"row {r}: all {len(ids)} tokens are trained, prompts included: "
                         f"{_snippet(dec.text(ids))}")
        # 2. headers vs masked->trained transitions
        turns = list(_turns(ids, dec))
        headers = sum(1 for role, *_ in turns if role == "assistant")
        transitions = sum(1 for k in range(len(labels)) if labels[k] != IGNORE and (k == 0 or labels[k - 1] == IGNORE))
        if headers != transitions:
            count.fail(f"row {r}: {headers} assistant header(s) but {transitions} masked→trained transition(s)")
        # 3. trained content must hold no turn markers
        for k, (tok, lab) in enumerate(zip(ids, labels)):
            if lab != IGNORE and (tok == dec.im_start or IM_START in dec.piece(tok)):
                window = ids[k:k + 8]
                content.fail(f"row {r} token {k}: a turn marker is trained: {_snippet(dec.text(window))}")
                break
        for role, header, body, end in turns:
            # 3 (cont.). anything trained inside a user/system turn is wrongly trained text
            if role != "assistant":
                trained = [ids[k] for k in range(header, min(end + 1, len(ids))) if labels[k] != IGNORE]
                if trained:
                    content.fail(f"row {r}: {len(trained)} token(s) of a {role or '?'} turn are trained: "
                                 f"{_snippet(dec.text(trained))}")
                continue
            start = _skip_empty_think(ids, body, end, dec)
            # 3 (cont.). the role header and the empty think block are prompt, never trained
            scaffold = [ids[k] for k in range(header, start) if labels[k] != IGNORE]
            if scaffold:
                content.fail(f"row {r} tokens {header}-{start - 1}: the assistant header is trained: "
                             f"{_snippet(dec.text(scaffold))}")
            # 4. assistant span coverage (closing im_end included when present), and the im_end itself:
            # a model that never learns <|im_end|> never stops
            stop = min(end + 1, len(ids))
            span = range(start, stop)
            if not span:
                continue
            spans += 1
            share = sum(1 for k in span if labels[k] != IGNORE) / len(span)
            worst_cover = min(worst_cover, share)
            if share < thresholds.min_span_trained:
                untrained = [ids[k] for k in span if labels[k] == IGNORE]
                coverage.fail(f"row {r} tokens {start}-{stop - 1}: only {share:.0%} of the assistant span is "
                              f"trained; left out: {_snippet(dec.text(untrained))}")
            if end < len(ids) and ids[end] == dec.im_end and labels[end] == IGNORE:
                coverage.fail(f"row {r} token {end}: the closing {IM_END} of an assistant turn is not trained")
    # 1. masked ratio over all checked real tokens
    share = masked / total if total else 0.0
    ratio.detail = f"{share:.3f} (allowed {thresholds.min_masked_ratio:.2f}–{thresholds.max_masked_ratio:.2f})"
    if not thresholds.min_masked_ratio <= share <= thresholds.max_masked_ratio:
        ratio.fail(f"masked ratio {share:.3f} is outside [{thresholds.min_masked_ratio}, "
                   f"{thresholds.max_masked_ratio}]")
    count.detail = "assistant headers match trained spans in every row" if count.passed else "mismatch"
    content.detail = "no turn markers or prompt text trained" if content.passed else "prompt text is trained"
    coverage.detail = (f"{spans} assistant spans, least covered {worst_cover:.0%} "
                       f"(need ≥ {thresholds.min_span_trained:.0%})")
    balance.detail = "no row all-masked or all-trained" if balance.passed else "degenerate rows"
    return MaskingReport(len(rows), total, share, [ratio, count, content, coverage, balance])


def require_ok(report: MaskingReport) -> MaskingReport:
    """Raise MaskingError unless every check passed."""
    if not report.ok:
        raise MaskingError(report)
    return report
