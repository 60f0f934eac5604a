"""Rows of text that every model reads, and the *units* at which their activations are compared.

Feature matching correlates two models' activations position by position, so both must stand at
the same place in the same text. With one tokenizer (``data.align: tokens``) a unit is a token: all
models read one token stream (:func:`featlib.corpus.token_stream`). Models with different
tokenizers cut the text differently; then every row is one *segment* of a document (whole words,
short enough for every tokenizer's ``seq_len - 1`` tokens), each model tokenises it itself (right
padding, after its BOS token), and units are defined on character offsets:

* ``token_end``: the positions where both tokenizers end a token at the same character. A unit's
  activation is each model's residual at its token ending there: both models have then read exactly
  the same text. Its label is the text of the longer of the two tokens.
* ``word``: every whitespace-delimited word; each model's activation is the mean of the residuals of
  its tokens whose last character lies in the word (per-word pooling). Every word aligns.

Units are numbered row by row; :class:`RowSet` records, per model, which positions make each unit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

MODES = ("tokens", "token_end", "word")
CHARS_PER_TOKEN = 2.5  # first guess of a segment's length; segments are shortened until they fit


@dataclass
class RowSet:
    """The rows one model reads and the units stored from them.

    tokens: (n_rows, seq_len) int64, BOS in column 0, right-padded with ``pad_id``.
    lengths: (n_rows,) int64 real tokens per row, BOS included.
    unit_index: (n_rows, seq_len) int64 unit of every position (-1: not stored); units ascend by row.
    positions: (n_units,) int64 flat index (row * seq_len + column) of each unit's last token.
    spans: (n_units, 3) int64 (row, first char, end char) in ``texts``; None for token streams.
    texts: the row texts (segments); None for token streams.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    unit_index: np.ndarray
    positions: np.ndarray
    spans: np.ndarray | None = None
    texts: list[str] | None = None

    @property
    def n_units(self) -> int:
        return len(self.positions)


def token_rowset(rows: np.ndarray) -> RowSet:
    """A shared-tokenizer stream (n_rows, seq_len), BOS in column 0: every non-BOS token is a unit."""
    n, seq_len = rows.shape
    unit_index = np.full((n, seq_len), -1, dtype=np.int64)
    unit_index[:, 1:] = np.arange(n * (seq_len - 1)).reshape(n, seq_len - 1)
    positions = (np.arange(n)[:, None] * seq_len + np.arange(1, seq_len)[None, :]).reshape(-1)
    return RowSet(rows.astype(np.int64), np.full(n, seq_len, dtype=np.int64), unit_index, positions)


def segments(docs: Iterable[str], tokenizers: dict[str, Any], max_tokens: int) -> Iterable[str]:
    """Cut documents into segments of whole words that every tokenizer encodes in <= ``max_tokens`` tokens."""
    budget = int(max_tokens * CHARS_PER_TOKEN)
    for doc in docs:
        words = [m.group() for m in re.finditer(r"\s*\S+", doc)]
        i = 0
        while i < len(words):
            j, size = i, 0
            while j < len(words) and (size + len(words[j]) <= budget or j == i):
                size += len(words[j])
                j += 1
            while True:
                text = "".join(words[i:j]).strip()
                longest = max(len(t.encode(text, add_special_tokens=False)) for t in tokenizers.values())
                if longest <= max_tokens or j == i + 1:
                    break
                j = i + max(1, (j - i) * max_tokens // longest - 1)
            if longest <= max_tokens:  # a single word longer than a row is skipped
                yield text
            i = j


def _units(
    text: str, offsets: dict[str, list[tuple[int, int]]], mode: str
) -> list[tuple[int, int, dict[str, list[int]]]]:
    """Units of one segment: (first char, end char, {model: token indices (0-based, no BOS)})."""
    if mode == "token_end":
        last: dict[str, dict[int, int]] = {}
        for mid, offs in offsets.items():
            last[mid] = {e: i for i, (s, e) in enumerate(offs) if e > s}  # the last token ending at e
        common = sorted(set.intersection(*(set(v) for v in last.values())))
        return [
            (min(offsets[m][last[m][e]][0] for m in offsets), e, {m: [last[m][e]] for m in offsets}) for e in common
        ]
    if mode == "word":
        words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        starts = np.array([w[0] for w in words])
        members: dict[str, dict[int, list[int]]] = {m: {} for m in offsets}
        for mid, offs in offsets.items():
            for i, (s, e) in enumerate(offs):
                if e <= s or not text[s:e].strip():
                    continue
                w = int(np.searchsorted(starts, e - 1, side="right")) - 1
                if w >= 0 and e - 1 < words[w][1]:
                    members[mid].setdefault(w, []).append(i)
        both = [w for w in range(len(words)) if all(w in members[m] for m in offsets)]
        return [(words[w][0], words[w][1], {m: members[m][w] for m in offsets}) for w in both]
    raise ValueError(f"data.align must be one of {MODES}, got {mode!r}")


def aligned_rowsets(
    docs: Iterable[str],
    tokenizers: dict[str, Any],
    bos: dict[str, int],
    pad: dict[str, int],
    seq_len: int,
    n_units: list[int],
    mode: str,
) -> list[dict[str, RowSet]]:
    """Rows of document segments and their aligned units, for consecutive splits of ``n_units[i]`` units.

    Returns one {model id: RowSet} per split; every model has the same units in the same order (each
    split holds at least its ``n_units``, whole rows). Raises ValueError when the text runs out.
    """
    splits: list[dict[str, RowSet]] = []
    rows: list[tuple[str, dict[str, list[int]], list]] = []
    have = 0
    seg_iter = iter(segments(docs, tokenizers, seq_len - 1))
    for need in n_units:
        rows, have = [], 0
        while have < need:
            text = next(seg_iter, None)
            if text is None:
                raise ValueError(
                    f"the text yields too few aligned units ({have} of {need} in the last split, align={mode!r}). "
                    "Fix: lower data.n_train_tokens / data.n_eval_tokens or give more text."
                )
            ids, offs = {}, {}
            for mid, tok in tokenizers.items():
                enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
                ids[mid], offs[mid] = enc["input_ids"], enc["offset_mapping"]
            units = _units(text, offs, mode)
            rows.append((text, ids, units))
            have += len(units)
        splits.append({mid: _rowset(rows, mid, bos[mid], pad[mid], seq_len) for mid in tokenizers})
    return splits


def _rowset(rows: list[tuple[str, dict[str, list[int]], list]], mid: str, bos: int, pad: int, seq_len: int) -> RowSet:
    n = len(rows)
    tokens = np.full((n, seq_len), pad, dtype=np.int64)
    unit_index = np.full((n, seq_len), -1, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    positions, spans, u = [], [], 0
    for r, (_text, ids, units) in enumerate(rows):
        tokens[r, 0] = bos
        tokens[r, 1 : 1 + len(ids[mid])] = ids[mid]
        lengths[r] = 1 + len(ids[mid])
        for start, end, members in units:
            cols = [1 + i for i in members[mid]]
            unit_index[r, cols] = u
            positions.append(r * seq_len + max(cols))
            spans.append((r, start, end))
            u += 1
    return RowSet(
        tokens,
        lengths,
        unit_index,
        np.array(positions, dtype=np.int64),
        np.array(spans, dtype=np.int64).reshape(-1, 3),
        [t for t, _, _ in rows],
    )
