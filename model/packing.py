"""Best-fit-decreasing packing of tokenized examples into ``max_length`` rows, and the batch collator.

Every example keeps its own position ids (0, 1, 2, … restarting at each example). The model is called with
``attention_mask=None`` and these position ids; transformers then derives the packed-sequence layout from the
position resets: a block-diagonal causal mask on the sdpa/eager path (``masking_utils.
find_packed_sequence_indices``) and varlen ``cu_seqlens`` on the FlashAttention path. No example attends to
another; ``tests/test_packing.py`` checks that packed per-example losses equal separate forwards.

Padding (to the longest row of a micro-batch) is its own position run starting at 0, so it forms its own
block, and its labels are -100.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch

from model.chat import IGNORE, TokenizedExample
from validation.errors import DataError, Issue


@dataclass(frozen=True)
class PackedRow:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    position_ids: tuple[int, ...]
    examples: tuple[int, ...]     # indices into the example list, in row order
    lengths: tuple[int, ...]      # token count of each packed example
    trained_tokens: tuple[int, ...] = ()   # each example's assistant tokens (the exact masking check)
    trained_turns: tuple[int, ...] = ()    # each example's trained assistant turns

    def __len__(self) -> int:
        return len(self.input_ids)


def check_lengths(examples: list[TokenizedExample], max_length: int) -> None:
    """Refuse examples longer than ``max_length``: dojo never truncates (a cut answer teaches garbage)."""
    issues = []
    for ex in examples:
        if len(ex) > max_length:
            file, _, line = ex.source.rpartition(":")
            issues.append(Issue(file or ex.source, int(line) if line.isdigit() else 0, "too_long",
                                f"the example is {len(ex)} tokens, longer than data.max_length={max_length}; "
                                f"raise max_length or split the example", str(len(ex))))
    if issues:
        raise DataError(issues)


def pack_bfd(lengths: list[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing: longest first, each into the fullest bin it still fits. Returns index lists.

    Deterministic: ties keep the original order (stable sort) and the lowest-numbered bin.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []   # sorted (remaining capacity, bin id)
    for i in order:
        size = lengths[i]
        assert 0 < size <= max_length, f"example {i} has length {size}; check_lengths must run first"
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            remaining, b = free.pop(at)
        else:
            b, remaining = len(bins), max_length
            bins.append([])
        bins[b].append(i)
        if remaining - size > 0:
            bisect.insort(free, (remaining - size, b))
    return bins


def build_row(members, examples) -> PackedRow:
    """One packed row from its member indices and the examples they index (anything with ``input_ids``,
    ``labels``, ``trained_tokens`` and ``trained_turns``)."""
    ids, labels, positions = [], [], []
    for i in members:
        ex = examples[i]
        ids.extend(ex.input_ids)
        labels.extend(ex.labels)
        positions.extend(range(len(ex.input_ids)))
    return PackedRow(tuple(ids), tuple(labels), tuple(positions), tuple(members),
                     tuple(len(examples[i].input_ids) for i in members),
                     tuple(examples[i].trained_tokens for i in members),
                     tuple(examples[i].trained_turns for i in members))


def pack(examples: list[TokenizedExample], max_length: int) -> list[PackedRow]:
    """Pack examples into rows of at most ``max_length`` tokens (raises DataError on over-long ones)."""
    check_lengths(examples, max_length)
    return [build_row(members, examples) for members in pack_bfd([len(e) for e in examples], max_length)]


@dataclass(frozen=True)
class PackPlan:
    """A packing as flat arrays (no Python list per row): row i holds examples ``order[starts[i]:starts[i+1]]``."""
    order: np.ndarray     # (n_examples,) int64
    starts: np.ndarray    # (n_rows + 1,) int64

    @classmethod
    def from_bins(cls, bins: list[list[int]]) -> "PackPlan":
        order = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=sum(len(b) for b in bins))
        starts = np.zeros(len(bins) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in bins], out=starts[1:])
        return cls(order, starts)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def members(self, row: int) -> np.ndarray:
        return self.order[self.starts[row]:self.starts[row + 1]]

    def tokens(self, lengths: np.ndarray) -> int:
        return int(lengths[self.order].sum())


def collate(rows: list[PackedRow], pad_id: int, width: int | None = None) -> dict[str, torch.Tensor]:
    """Stack rows into (B, T) tensors padded to the longest row (or to ``width``); padding is its own position
    run."""
    width = max([len(r) for r in rows] + [width or 0])
    ids, labels, positions = [], [], []
    for r in rows:
        pad = width - len(r)
        ids.append(list(r.input_ids) + [pad_id] * pad)
        labels.append(list(r.labels) + [IGNORE] * pad)
        positions.append(list(r.position_ids) + list(range(pad)))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),        # (B, T)
        "labels": torch.tensor(labels, dtype=torch.long),        # (B, T)
        "position_ids": torch.tensor(positions, dtype=torch.long),  # (B, T)
    }


def fill_ratio(rows: list[PackedRow], max_length: int) -> float:
    """Share of the row capacity holding real tokens."""
    return sum(len(r) for r in rows) / (len(rows) * max_length) if rows else 0.0
