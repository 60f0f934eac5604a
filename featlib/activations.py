"""Residual-stream activations, extracted once and cached on disk in chunks.

Every model reads the *same* text (see :mod:`featlib.corpus` and :mod:`featlib.alignment`). The
stream is cut in two: the first ``data.n_eval_tokens`` units (``eval``: SAE metrics and feature
matching) and the next ``data.n_train_tokens`` (``train``: SAE training). A *unit* is a token when
the models share a tokenizer, else an aligned position or a word (``data.align``, see
:mod:`featlib.alignment`): unit ``i`` is the same place in the text for every model. For each model,
split and layer we store ``layer_L.npy``, a (n_units, d_model) float32 array of
``blocks.L.hook_resid_post`` (the output of block L), plus ``tokens.npy`` (n_rows, seq_len),
``lengths.npy``, ``unit_index.npy`` and ``positions.npy`` (see :class:`featlib.alignment.RowSet`) and,
for aligned text, ``spans.npy`` and ``texts.json``.

Arrays are written straight into memory-mapped ``.npy`` files batch by batch (memory bounded by
one batch), in a temporary folder that is renamed when complete (:func:`featlib.step.run`).
The cache key covers the model (by content: :attr:`LoadedModel.fingerprint`), every model's tokenizer,
the data parameters and the text's content (a text file's SHA-256, a hub dataset's revision), layers,
hook and code version. Extraction stops after the deepest requested layer. The layer files are
allocated on disk before the models run, so a full disk stops it at once with the space needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import step
from .alignment import RowSet, aligned_rowsets, token_rowset
from .config import Config, Data
from .corpus import documents, text_sha256, token_stream
from .models import LoadedModel, check_context, check_layers, hook_name, residuals

CODE_VERSION = 3
SPLITS = ("eval", "train")


@dataclass(frozen=True)
class TextParams:
    """The text the units are read from, and how: the ``data`` keys that change the units (not ``batch_size``,
    ``seed``), ``align`` resolved (:func:`resolve_align`), and ``content``, what the text is
    (:func:`featlib.corpus.text_sha256`)."""

    source: str
    path: str
    revision: str
    data_files: str
    split: str
    text_field: str
    n_docs: int
    seq_len: int
    n_train_tokens: int
    n_eval_tokens: int
    align: str
    content: str

    @classmethod
    def of(cls, data: Data, align: str) -> TextParams:
        return cls(**{k: getattr(data, k) for k in DATA_KEYS}, align=align, content=text_sha256(data))


DATA_KEYS = tuple(f.name for f in fields(TextParams) if f.name not in ("align", "content"))  # of the data section


@dataclass(frozen=True)
class ActivationParams:
    """What one activation artifact is made with besides the model's weights (its step's key): the model's
    tokenizer, the split, the text, the layers, every model's tokenizer where the units are aligned across them
    (else none), the hook, and the forward implementation where the model has a transformers form
    (:attr:`LoadedModel.forward_impl`; None: the hooked model's, and not in the key)."""

    tokenizer: str
    split: str
    data: TextParams
    layers: tuple[int, ...]
    tokenizers: tuple[str, ...]
    hook: str = "blocks.L.hook_resid_post"
    forward: str | None = None

    def key(self) -> dict[str, Any]:
        out = asdict(self)
        return out if self.forward is not None else {k: v for k, v in out.items() if k != "forward"}


@dataclass
class Activations:
    """A cached activation artifact of one model and split."""

    path: Path
    layers: list[int]

    @property
    def key(self) -> str:
        """The key of the artifact (an input key of every step that reads these activations)."""
        return self.path.name

    @cached_property
    def tokens(self) -> np.ndarray:
        """(n_rows, seq_len) int64 token ids, BOS in column 0 (right-padded for aligned text)."""
        return np.load(self.path / "tokens.npy")

    @cached_property
    def lengths(self) -> np.ndarray:
        """(n_rows,) real tokens per row, BOS included."""
        return np.load(self.path / "lengths.npy")

    @cached_property
    def unit_index(self) -> np.ndarray:
        """(n_rows, seq_len) int64 unit of every position (-1: not stored)."""
        return np.load(self.path / "unit_index.npy")

    @cached_property
    def positions(self) -> np.ndarray:
        """(n_units,) flat index (row * seq_len + column) of every unit's last token."""
        return np.load(self.path / "positions.npy")

    @cached_property
    def token_ids(self) -> np.ndarray:
        """(n_units,) the (last) token of every stored unit."""
        return self.tokens.reshape(-1)[self.positions]

    @property
    def n_units(self) -> int:
        return len(self.positions)

    def unit_strings(self, units: np.ndarray, token_strings: list[str]) -> list[str]:
        """The text of each of ``units``: its token's string, or for aligned text the unit's span."""
        spans, texts = self.spans, self.texts
        if spans is not None:
            assert texts is not None  # aligned text stores both
            return [texts[r][s:e] for r, s, e in spans[np.asarray(units, dtype=np.int64)]]
        ids = self.token_ids[np.asarray(units, dtype=np.int64)]
        return [token_strings[t] for t in ids]

    def context(self, unit: int, tokenizer: Any, width: int = 8) -> str:
        """The text around ``unit`` (``width`` tokens, or 5 x ``width`` characters), the unit in [[brackets]]."""
        spans, texts = self.spans, self.texts
        if spans is not None:
            assert texts is not None  # aligned text stores both
            row, s, e = spans[int(unit)]
            text = texts[row]
            left, right = text[max(0, s - 5 * width) : s], text[e : e + 5 * width]
            return f"{left}[[{text[s:e]}]]{right}".replace("\n", " ")
        seq_len = self.tokens.shape[1]
        row, col = divmod(int(self.positions[int(unit)]), seq_len)
        seq = self.tokens[row, : self.lengths[row]]
        left = tokenizer.decode(seq[max(1, col - width) : col].tolist())
        right = tokenizer.decode(seq[col + 1 : col + 1 + width].tolist())
        return f"{left}[[{tokenizer.decode([int(seq[col])])}]]{right}".replace("\n", " ")

    @cached_property
    def spans(self) -> np.ndarray | None:
        """(n_units, 3) (row, first char, end char) of every unit in :attr:`texts`; None for token streams."""
        f = self.path / "spans.npy"
        return np.load(f) if f.exists() else None

    @cached_property
    def texts(self) -> list[str] | None:
        """The row texts of aligned text; None for token streams."""
        f = self.path / "texts.json"
        return json.loads(f.read_text()) if f.exists() else None

    def layer(self, layer: int) -> np.ndarray:
        """(n_units, d_model) float32 memory map of layer ``layer``."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not extracted (have {self.layers}); add it to the profile's layers")
        return np.load(self.path / f"layer_{layer}.npy", mmap_mode="r")

    def mean_norm(self, layer: int, chunk_tokens: int = 8192) -> float:
        """Mean L2 norm of the residual stream at ``layer`` over all stored units."""
        norms = [float(x.norm(dim=1).sum()) for x in self.chunks(layer, chunk_tokens)]
        return sum(norms) / self.n_units

    def chunks(self, layer: int, chunk_tokens: int) -> Iterator[torch.Tensor]:
        """Yield (<= chunk_tokens, d_model) float32 tensors of one layer in unit order."""
        arr = self.layer(layer)
        for i in range(0, len(arr), chunk_tokens):
            yield torch.from_numpy(np.array(arr[i : i + chunk_tokens]))


def shares_tokenizer(lms: list[LoadedModel]) -> bool:
    return len({lm.tokenizer_fingerprint for lm in lms}) == 1


def resolve_align(cfg: Config, lms: list[LoadedModel]) -> str:
    """``data.align`` with ``auto`` resolved: ``tokens`` when the models share a tokenizer, else ``token_end``.

    Raises ValueError naming the fix when ``tokens`` is asked of models with different tokenizers.
    """
    align, shared = cfg.data.align, shares_tokenizer(lms)
    if align == "auto":
        return "tokens" if shared else "token_end"
    if align == "tokens" and not shared:
        names = ", ".join(f"{lm.id} ({len(lm.tokenizer)} tokens)" for lm in lms)
        raise ValueError(
            f"the models use different tokenizers: {names}, so token positions do not line up. Fix: set "
            "data.align to 'token_end' (positions where both tokenizers end a token at the same character) or "
            "'word' (per-word pooling), or 'auto'."
        )
    return align


def rowsets(cfg: Config, lms: list[LoadedModel], align: str, heldout_rows: int = 0) -> dict[str, dict[str, RowSet]]:
    """{split: {model id: RowSet}}: the rows every model reads and its units (see :mod:`featlib.alignment`).

    ``heldout_rows`` > 0 adds a split ``"heldout"`` of the text that follows: that many rows of the token
    stream, or segments holding at least that many rows' worth of aligned units. The eval and train
    splits do not depend on it."""
    d = cfg.data
    splits = SPLITS + (("heldout",) if heldout_rows else ())
    if align == "tokens":
        lm = lms[0]
        body = d.seq_len - 1
        sizes = [-(-d.n_eval_tokens // body), -(-d.n_train_tokens // body), heldout_rows][: len(splits)]
        rows = token_stream(lm.tokenizer, documents(d), d.seq_len, sum(sizes) * body, lm.bos_id).numpy()
        parts = np.split(rows, np.cumsum(sizes)[:-1])
        return {split: {m.id: token_rowset(r) for m in lms} for split, r in zip(splits, parts)}
    toks = {lm.id: lm.tokenizer for lm in lms}
    pad = {lm.id: lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.bos_id for lm in lms}
    need = [d.n_eval_tokens, d.n_train_tokens, heldout_rows * d.seq_len][: len(splits)]
    aligned = aligned_rowsets(documents(d), toks, {lm.id: lm.bos_id for lm in lms}, pad, d.seq_len, need, align)
    return dict(zip(splits, aligned))


def heldout_rows(cfg: Config, lms: list[LoadedModel], n_rows: int, n_tokens: int) -> dict[str, np.ndarray]:
    """{model id: (n_rows, n_tokens) int64}: each model's first ``n_tokens`` tokens (BOS first) of the same
    ``n_rows`` rows of held-out text, the text that follows the eval and train splits (:func:`rowsets`).

    Aligned text: the next segments long enough in every tokenizer. Raises ValueError, naming the fix,
    when the text runs out."""
    try:
        held = rowsets(cfg, lms, resolve_align(cfg, lms), heldout_rows=n_rows)["heldout"]
    except ValueError as e:
        raise ValueError(f"{e} (transfer.n_rows = {n_rows} held-out rows after the eval and train text)") from None
    ids = [lm.id for lm in lms]
    long = np.flatnonzero(np.all([held[m].lengths >= n_tokens for m in ids], axis=0))[:n_rows]
    if len(long) < n_rows:
        raise ValueError(
            f"only {len(long)} held-out segments have {n_tokens} tokens in every tokenizer, "
            f"{n_rows} are needed. Fix: lower transfer.n_tokens or transfer.n_rows."
        )
    return {m: held[m].tokens[long, :n_tokens] for m in ids}


def params(
    cfg: Config, lm: LoadedModel, split: str, layers: list[int], align: str, lms: list[LoadedModel]
) -> ActivationParams:
    """The parameters of one activation artifact besides the model's weights (aligned units depend on
    every model's tokenizer)."""
    return ActivationParams(
        lm.tokenizer_fingerprint,
        split,
        TextParams.of(cfg.data, align),
        tuple(sorted(layers)),
        tuple(sorted(m.tokenizer_fingerprint for m in lms)) if align != "tokens" else (),
        forward=lm.forward_impl if lm.build_hf is not None else None,
    )


@torch.inference_mode()
def extract(lm: LoadedModel, layers: list[int], rows: RowSet, batch_size: int, out: Path) -> None:
    """Run ``lm`` over ``rows`` (stopping after the deepest of ``layers``) and write the row arrays and
    layer_L.npy (n_units, d_model) into ``out``: each unit's residual, or the mean over its tokens. The
    forward is transformers' where the model has that form (:attr:`LoadedModel.forward_impl`; the same
    residual to float rounding, without transformer-lens's copies and explicit masks), else the hooked
    model's."""
    layers = sorted(layers)
    check_layers(lm, layers)
    np.save(out / "tokens.npy", rows.tokens)
    np.save(out / "lengths.npy", rows.lengths)
    np.save(out / "unit_index.npy", rows.unit_index)
    np.save(out / "positions.npy", rows.positions)
    if rows.spans is not None:
        np.save(out / "spans.npy", rows.spans)
        step.write_json(out / "texts.json", rows.texts)
    step.reserve(out, len(layers) * rows.n_units * lm.d_model * 4, f"{lm.id}'s activations")
    arrays = {L: step.preallocated_npy(out / f"layer_{L}.npy", (rows.n_units, lm.d_model)) for L in layers}
    hooks = {hook_name(L): L for L in layers}
    tokens, units = torch.from_numpy(rows.tokens), torch.from_numpy(rows.unit_index)
    for start in tqdm(range(0, len(tokens), batch_size), desc=f"{lm.id}: activations", unit="batch"):
        width = int(rows.lengths[start : start + batch_size].max())  # padding past the longest row is not run
        idx = units[start : start + batch_size, :width].reshape(-1)
        keep = idx >= 0
        if not keep.any():
            continue
        batch = tokens[start : start + batch_size, :width]
        if lm.build_hf is not None:
            acts = residuals(lm.hf_model, batch.to(lm.device), layers)
        else:
            cache = lm.model.run_with_cache(
                batch.to(lm.model.cfg.device), names_filter=list(hooks), stop_at_layer=max(layers) + 1
            )[1]
            acts = {L: cache[name] for name, L in hooks.items()}
        lo, hi = int(idx[keep].min()), int(idx[keep].max()) + 1
        slot = idx[keep] - lo
        counts = torch.bincount(slot, minlength=hi - lo).clamp(min=1).unsqueeze(1).float()
        for L in layers:
            x = acts[L].reshape(-1, lm.d_model)[keep.to(acts[L].device)].float().cpu()
            pooled = torch.zeros(hi - lo, lm.d_model).index_add_(0, slot, x) / counts
            arrays[L][lo:hi] = pooled.numpy()
    for arr in arrays.values():
        arr.flush()
    del arrays


def ensure_activations(cfg: Config, lms: list[LoadedModel]) -> dict[str, dict[str, Activations]]:
    """{model id: {split: Activations}}: the cached eval (and, where needed, train) activations of every
    model on the same units, extracting what is missing."""
    for lm in lms:
        check_layers(lm, cfg.layers[lm.id])
        check_context(lm, cfg.data.seq_len)
    align = resolve_align(cfg, lms)
    out: dict[str, dict[str, Activations]] = {lm.id: {} for lm in lms}
    parts: dict[str, dict[str, RowSet]] | None = None
    for lm in lms:
        for split in SPLITS:
            p = params(cfg, lm, split, split_layers(cfg, lm.id, split), align, lms)

            def produce(tmp: Path, lm: LoadedModel = lm, p: ActivationParams = p) -> None:
                nonlocal parts
                parts = parts or rowsets(cfg, lms, p.data.align)
                extract(lm, list(p.layers), parts[p.split][lm.id], cfg.data.batch_size, tmp)

            art = step.run(
                "activations", p.key(), {"model": lm.fingerprint}, produce, version=CODE_VERSION, meta={"align": align}
            )
            out[lm.id][split] = Activations(art.path, list(p.layers))
    return out


def split_layers(cfg: Config, model_id: str, split: str) -> list[int]:
    """The layers stored for one split: every profile layer for ``eval``; for ``train``, every layer
    when SAEs are trained here, else only the universal SAE's layer."""
    if split == "eval" or cfg.sae.source == "train":
        return sorted(cfg.layers[model_id])
    return [cfg.universal_layers[model_id]]
