"""Residual-stream activations, extracted once and cached on disk in chunks.

Every model reads the *same* token stream (see :mod:`featlib.corpus`). The stream is cut in two:
the first ``data.n_eval_tokens`` tokens (``eval``: SAE metrics and feature matching) and the next
``data.n_train_tokens`` (``train``: SAE training). For each model, split and layer we store
``layer_L.npy``, a (n_tokens, d_model) float32 array of ``blocks.L.hook_resid_post`` (the output of
block L) at every non-BOS position, in row-major token order, and ``tokens.npy`` (n_seqs, seq_len).
Flat token index ``i`` is row ``i // (seq_len - 1)``, column ``1 + i % (seq_len - 1)``.

Arrays are written straight into memory-mapped ``.npy`` files batch by batch (memory bounded by
one batch), in a temporary folder that is renamed when complete (:func:`featlib.cache.publish`).
The cache key covers the model weights, tokenizer, data parameters, layers, hook and code version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from . import cache
from .config import Config
from .corpus import documents, token_stream
from .models import LoadedModel, check_layers, hook_name

CODE_VERSION = 1
SPLITS = ("eval", "train")
DATA_KEYS = ("source", "path", "split", "text_field", "n_docs", "seq_len", "n_train_tokens", "n_eval_tokens")


@dataclass
class Activations:
    """A cached activation artifact of one model and split."""

    path: Path
    layers: list[int]

    @property
    def tokens(self) -> np.ndarray:
        """(n_seqs, seq_len) int64 token ids, BOS in column 0."""
        return np.load(self.path / "tokens.npy")

    @property
    def token_ids(self) -> np.ndarray:
        """(n_tokens,) the token at every stored position (BOS column dropped)."""
        return self.tokens[:, 1:].reshape(-1)

    def layer(self, layer: int) -> np.ndarray:
        """(n_tokens, d_model) float32 memory map of layer ``layer``."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not extracted (have {self.layers}); add it to the profile's layers")
        return np.load(self.path / f"layer_{layer}.npy", mmap_mode="r")

    def mean_norm(self, layer: int, chunk_tokens: int = 8192) -> float:
        """Mean L2 norm of the residual stream at ``layer`` over all stored tokens."""
        norms = [float(x.norm(dim=1).sum()) for x in self.chunks(layer, chunk_tokens)]
        return sum(norms) / len(self.token_ids)

    def chunks(self, layer: int, chunk_tokens: int) -> Iterator[torch.Tensor]:
        """Yield (<= chunk_tokens, d_model) float32 tensors of one layer in token order."""
        arr = self.layer(layer)
        for i in range(0, len(arr), chunk_tokens):
            yield torch.from_numpy(np.array(arr[i : i + chunk_tokens]))


def split_streams(cfg: Config, lm: LoadedModel) -> dict[str, torch.Tensor]:
    """The eval and train token streams (n_seqs, seq_len) of a profile for one tokenizer."""
    d = cfg.data
    body = d["seq_len"] - 1
    n_eval = -(-d["n_eval_tokens"] // body)
    n_train = -(-d["n_train_tokens"] // body)
    rows = token_stream(lm.tokenizer, documents(d), d["seq_len"], (n_eval + n_train) * body, lm.bos_id)
    return {"eval": rows[:n_eval], "train": rows[n_eval:]}


def spec(cfg: Config, lm: LoadedModel, split: str, layers: list[int]) -> dict[str, Any]:
    """Everything that determines one activation artifact."""
    return {
        "model": lm.fingerprint, "tokenizer": lm.tokenizer_fingerprint, "split": split,
        "data": {k: cfg.data[k] for k in DATA_KEYS}, "layers": sorted(layers),
        "hook": "blocks.L.hook_resid_post", "version": CODE_VERSION,
    }


@torch.inference_mode()
def extract(lm: LoadedModel, layers: list[int], rows: torch.Tensor, batch_size: int, out: Path) -> None:
    """Run ``lm`` over ``rows`` (stopping after the deepest of ``layers``) and write tokens.npy and
    layer_L.npy into ``out``."""
    layers = sorted(layers)
    check_layers(lm, layers)
    n_seqs, seq_len = rows.shape
    n_tokens = n_seqs * (seq_len - 1)
    np.save(out / "tokens.npy", rows.numpy())
    arrays = {
        L: np.lib.format.open_memmap(out / f"layer_{L}.npy", mode="w+", dtype=np.float32, shape=(n_tokens, lm.d_model))
        for L in layers
    }
    hooks = {hook_name(L): L for L in layers}
    pos = 0
    for batch in tqdm(rows.split(batch_size), desc=f"{lm.id}: activations", unit="batch"):
        _, acts = lm.model.run_with_cache(
            batch.to(lm.model.cfg.device), names_filter=list(hooks), stop_at_layer=max(layers) + 1
        )
        n = batch.shape[0] * (seq_len - 1)
        for name, L in hooks.items():
            arrays[L][pos : pos + n] = acts[name][:, 1:, :].reshape(n, -1).float().cpu().numpy()
        pos += n
    for arr in arrays.values():
        arr.flush()
    del arrays


def ensure_activations(cfg: Config, lm: LoadedModel) -> dict[str, Activations]:
    """Return the cached eval (and, to train SAEs, train) activations of ``lm``, extracting what is missing."""
    check_layers(lm, cfg.layers[lm.id])
    out: dict[str, Activations] = {}
    streams: dict[str, torch.Tensor] | None = None
    for split in SPLITS:
        layers = split_layers(cfg, lm.id, split)
        if not layers:
            continue
        s = spec(cfg, lm, split, layers)
        path = cache.artifact_dir("activations", s)
        if not cache.is_complete(path):
            streams = streams or split_streams(cfg, lm)
            with cache.publish("activations", s) as tmp:
                extract(lm, layers, streams[split], cfg.data["batch_size"], tmp)
        out[split] = Activations(path, layers)
    return out


def split_layers(cfg: Config, model_id: str, split: str) -> list[int]:
    """The layers stored for one split: every profile layer for ``eval``; for ``train``, every layer
    when SAEs are trained here, else only the universal SAE's layer (none without training tokens)."""
    if split == "eval" or cfg.sae["source"] == "train":
        return sorted(cfg.layers[model_id])
    return [cfg.universal_layers[model_id]] if cfg.data["n_train_tokens"] > 0 else []
