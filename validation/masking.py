"""The masking validators, run on real packed rows before any training step.

They exist because the old system's collator masked only the first instruction of a packed row and trained on
every later system prompt and user turn. Each check looks at token ids, labels and position ids (not at how
they were made), so it catches a wrong collator, a wrong template or a wrong tokenizer alike. Hard failures are
structural faults only:

``template_count``   per row, masked→trained transitions = the trained assistant turns the rendering made
                     (the examples' ``trained_turns``), and = the trained assistant headers found in the ids
``trained_content``  no trained token outside an assistant turn: none in a user/system turn, none in a role
                     header or the empty think block, no turn marker
``span_coverage``    every trained assistant turn is trained whole (after its header and an empty think block,
                     through ``<|im_end|>``), and every example's final assistant turn is trained
``position_ids``     position ids restart at 0 at every example of a row and count up by one within it
``trained_count``    exact: a row's trained tokens = the sum of its examples' assistant tokens
``row_balance``      no row without a trained token

``masked_ratio`` (the share of label -100 among real tokens) is reported, and *warned* about outside the band
``masking.min_masked_ratio``–``max_masked_ratio``: real SFT data is often 85–98% prompt (classification,
long-context QA), so a ratio alone never refuses a file.

History turns that the multi-turn policy leaves as context (``data.multi_turn: expand``) are assistant turns
with no trained token: they are allowed, and counted by ``template_count`` through ``trained_turns``.

A row is anything with ``input_ids``, ``labels``, ``position_ids`` and ``lengths`` sequences (e.g.
``model.packing.PackedRow``), plus the per-example ``trained_tokens`` and ``trained_turns`` when known. Padding
is not part of a row here. Every failure says which rule, which row, and which text was wrongly trained or
left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

IGNORE = -100
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHECKS = ("template_count", "trained_content", "span_coverage", "position_ids", "trained_count", "row_balance")
WARNINGS = ("masked_ratio",)


@dataclass(frozen=True)
class Thresholds:
    min_masked_ratio: float = 0.10     # the warning band, never a refusal
    max_masked_ratio: float = 0.98


@dataclass
class CheckResult:
    name: str
    passed: bool = True
    detail: str = ""
    warning_only: bool = False                          # reported as WARN, never refuses
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
        return all(c.passed for c in self.checks if not c.warning_only)

    @property
    def warnings(self) -> list[str]:
        return [f for c in self.checks if c.warning_only and not c.passed for f in c.failures]

    def format(self) -> str:
        lines = [f"masking: {self.rows} rows, {self.tokens} tokens, masked ratio {self.masked_ratio:.3f}"]
        for c in self.checks:
            verdict = "PASS" if c.passed else "WARN" if c.warning_only else "FAIL"
            lines.append(f"  [{verdict}] {c.name}: {c.detail}")
            lines.extend(f"      {f}" for f in c.failures)
        return "\n".join(lines)


class MaskingError(ValueError):
    """A hard masking failure: training must not start."""

    def __init__(self, report: MaskingReport):
        self.report = report
        failed = ", ".join(c.name for c in report.checks if not c.passed and not c.warning_only)
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
    """Run the checks on ``rows`` (the first ``limit`` of them when limit > 0)."""
    dec = _Decoder(tokenizer)
    ratio = CheckResult("masked_ratio", warning_only=True)
    count = CheckResult("template_count")
    content = CheckResult("trained_content")
    coverage = CheckResult("span_coverage")
    positions = CheckResult("position_ids")
    exact = CheckResult("trained_count")
    balance = CheckResult("row_balance")
    total = masked = spans = history = checked = 0
    for r, row in enumerate(rows):           # streamed: rows may be built on demand from the tokenized cache
        if limit and r >= limit:
            break
        checked += 1
        ids, labels, pos = list(row.input_ids), list(row.labels), list(row.position_ids)
        assert len(ids) == len(labels) == len(pos), f"row {r}: ids, labels and position ids differ in length"
        trained_mask = [x != IGNORE for x in labels]
        n_trained = sum(trained_mask)
        total += len(ids)
        masked += len(ids) - n_trained
        if n_trained == 0:
            balance.fail(f"row {r}: every one of its {len(ids)} tokens is masked (nothing trained)")
        # position ids: restart at each example, +1 within
        starts, at = [], 0
        for length in row.lengths:
            starts.append(at)
            if list(pos[at:at + length]) != list(range(length)):
                positions.fail(f"row {r} tokens {at}-{at + length - 1}: position ids {list(pos[at:at + 6])}… do "
                               f"not run 0..{length - 1} for this example (examples would attend to each other)")
            at += length
        if at != len(ids):
            positions.fail(f"row {r}: its examples' lengths add up to {at}, but the row holds {len(ids)} tokens")
        # exact trained count
        expected_tokens = getattr(row, "trained_tokens", ()) or ()
        if expected_tokens and sum(expected_tokens) != n_trained:
            exact.fail(f"row {r}: {n_trained} trained tokens, but its examples' assistant turns hold "
                       f"{sum(expected_tokens)} ({list(expected_tokens)})")
        transitions = sum(1 for k in range(len(labels)) if trained_mask[k] and (k == 0 or not trained_mask[k - 1]))
        expected_turns = getattr(row, "trained_turns", ()) or ()
        if expected_turns and sum(expected_turns) != transitions:
            count.fail(f"row {r}: the rendering trained {sum(expected_turns)} assistant turn(s) but the labels "
                       f"hold {transitions} masked→trained transition(s)")
        for k, (tok, lab) in enumerate(zip(ids, labels)):
            if lab != IGNORE and (tok == dec.im_start or IM_START in dec.piece(tok)):
                content.fail(f"row {r} token {k}: a turn marker is trained: {_snippet(dec.text(ids[k:k + 8]))}")
                break
        turns = list(_turns(ids, dec))
        trained_headers = 0
        last_assistant_of = {}                 # example index -> (trained?, where) of its last assistant turn
        for role, header, body, end in turns:
            stop = min(end + 1, len(ids))
            if role != "assistant":
                wrong = [ids[k] for k in range(header, stop) if trained_mask[k]]
                if wrong:
                    content.fail(f"row {r}: {len(wrong)} token(s) of a {role or '?'} turn are trained: "
                                 f"{_snippet(dec.text(wrong))}")
                continue
            start = _skip_empty_think(ids, body, end, dec)
            scaffold = [ids[k] for k in range(header, start) if trained_mask[k]]
            if scaffold:
                content.fail(f"row {r} tokens {header}-{start - 1}: the assistant header is trained: "
                             f"{_snippet(dec.text(scaffold))}")
            span = range(start, stop)
            trained_here = sum(1 for k in span if trained_mask[k])
            example = max(i for i, s0 in enumerate(starts) if s0 <= header) if starts else 0
            last_assistant_of[example] = (trained_here > 0, header)
            if not span:
                continue
            if trained_here == 0:
                history += 1                   # context turn of an expanded conversation
                continue
            trained_headers += 1
            spans += 1
            if trained_here < len(span):
                untrained = [ids[k] for k in span if not trained_mask[k]]
                coverage.fail(f"row {r} tokens {start}-{stop - 1}: only {trained_here}/{len(span)} tokens of the "
                              f"assistant turn are trained; left out: {_snippet(dec.text(untrained))}")
        if trained_headers != transitions:
            count.fail(f"row {r}: {trained_headers} trained assistant turn(s) but {transitions} masked→trained "
                       f"transition(s)")
        for example, (trained, header) in sorted(last_assistant_of.items()):
            if not trained:
                coverage.fail(f"row {r} token {header}: the final assistant turn of example {example} is not "
                              f"trained")
    share = masked / total if total else 0.0
    ratio.detail = f"{share:.3f} (typical {thresholds.min_masked_ratio:.2f}–{thresholds.max_masked_ratio:.2f}; " \
                   f"a warning, never a refusal)"
    if not thresholds.min_masked_ratio <= share <= thresholds.max_masked_ratio:
        ratio.fail(f"masked ratio {share:.3f} is outside the typical band [{thresholds.min_masked_ratio}, "
                   f"{thresholds.max_masked_ratio}]: check the data if that is unexpected")
    count.detail = "trained turns match the rendering in every row" if count.passed else "mismatch"
    content.detail = "no turn markers or prompt text trained" if content.passed else "prompt text is trained"
    coverage.detail = f"{spans} trained assistant turns, each trained whole; {history} history turn(s) as context"
    positions.detail = "restart at every example" if positions.passed else "examples would attend to each other"
    exact.detail = "trained tokens = the examples' assistant tokens in every row" if exact.passed else "mismatch"
    balance.detail = "every row trains something" if balance.passed else "rows with nothing trained"
    return MaskingReport(checked, total, share, [ratio, count, content, coverage, positions, exact, balance])


def require_ok(report: MaskingReport) -> MaskingReport:
    """Raise MaskingError unless every hard check passed (the masked-ratio band only warns)."""
    if not report.ok:
        raise MaskingError(report)
    return report
