"""Language models wrapped as transformer-lens ``HookedTransformer``s, with their tokenizers.

Model specs (``models.<id>`` in a profile):

* ``{source: local, path: models/tiny/lm-a}``: a model trained by this project (``make models``): a
  folder with ``config.json`` (HookedTransformerConfig fields), ``model.safetensors`` and
  ``tokenizer.json`` (a ``tokenizers`` BPE tokenizer).
* ``{source: hub, name: pythia-70m}``: ``HookedTransformer.from_pretrained_no_processing`` (needs the
  Hugging Face hub). *No processing*: folding LayerNorm and centring the writing weights change the
  residual stream, and published SAEs were trained on the unprocessed one.

Hook convention: layer ``L`` means ``blocks.L.hook_resid_post``, the *output* of block L (what
EleutherAI ``layers.L`` and Gemma Scope ``resid_post`` SAEs read). Hugging Face
``hidden_states[L]`` is the *input* of block L, i.e. ``hidden_states[L + 1]`` is our layer L.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cache import file_sha256, stable_hash
from .config import REPO


@dataclass
class LoadedModel:
    """A hooked model, its tokenizer and identity."""

    id: str
    model: Any  # transformer_lens.HookedTransformer
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    bos_id: int
    fingerprint: str  # hash of the weights file (local) or the hub name
    tokenizer_fingerprint: str

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.cfg.d_model)


def hook_name(layer: int) -> str:
    """The transformer-lens hook our layer index refers to (output of block ``layer``)."""
    return f"blocks.{layer}.hook_resid_post"


def check_layers(lm: LoadedModel, layers: list[int]) -> None:
    """Raise ValueError naming the fix if a requested layer does not exist in the model."""
    bad = [layer for layer in layers if not 0 <= layer < lm.n_layers]
    if bad:
        raise ValueError(
            f"model {lm.id} has {lm.n_layers} layers (0..{lm.n_layers - 1}); layer(s) {bad} do not exist "
            f"(hook blocks.L.hook_resid_post). Fix: edit layers[{lm.id!r}] in the profile."
        )


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of a tokenizer's vocabulary (token string -> id)."""
    return stable_hash(sorted(tokenizer.get_vocab().items()))


def resolve_path(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO / p


def load_local(model_id: str, folder: Path, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load a project-trained model folder (config.json, model.safetensors, tokenizer.json)."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"model folder {folder} lacks {missing}. Fix: run `make models` to (re)train the tiny models."
        )
    cfg = HookedTransformerConfig(**json.loads((folder / "config.json").read_text()), device=device, dtype=getattr(torch, dtype))
    model = HookedTransformer(cfg)
    state = {k: v.to(getattr(torch, dtype)) for k, v in load_file(folder / "model.safetensors").items()}
    model.load_state_dict(state, strict=False)
    model.eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    return LoadedModel(
        id=model_id,
        model=model,
        tokenizer=tok,
        bos_id=int(tok.bos_token_id),
        fingerprint=file_sha256(folder / "model.safetensors")[:16] + ("" if dtype == "float32" else f"-{dtype}"),
        tokenizer_fingerprint=tokenizer_fingerprint(tok),
    )


def load_hub(model_id: str, name: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load a transformer-lens registry model from the Hugging Face hub, unprocessed."""
    from transformer_lens import HookedTransformer

    model = HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=getattr(torch, dtype))
    model.eval()
    tok = model.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return LoadedModel(
        id=model_id, model=model, tokenizer=tok, bos_id=int(bos),
        fingerprint=stable_hash([name, dtype]), tokenizer_fingerprint=tokenizer_fingerprint(tok),
    )


def resolve_device(device: str = "auto") -> str:
    """``"auto"``: the ``FEATUNIV_DEVICE`` environment variable if set, else ``"cuda"`` when a CUDA GPU
    is visible, else ``"cpu"``. Any other value is returned as it is."""
    if device != "auto":
        return device
    return os.environ.get("FEATUNIV_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str, device: str) -> str:
    """``"auto"``: float32 on CPU; on a GPU bfloat16 where supported (A100, L4, H100), else float16
    (T4, V100; safe for Pythia, which was trained in float16 — Gemma-2 profiles ask for bfloat16)."""
    if dtype != "auto":
        return dtype
    if not device.startswith("cuda"):
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def load_model(model_id: str, spec: dict[str, Any], device: str = "auto") -> LoadedModel:
    """Load one model of a profile's ``models`` section on ``device`` (see :func:`resolve_device`)."""
    device = resolve_device(device)
    dtype = resolve_dtype(spec["dtype"], device)
    if spec["source"] == "local":
        return load_local(model_id, resolve_path(spec["path"]), device, dtype)
    if spec["source"] == "hub":
        return load_hub(model_id, spec["name"], device, dtype)
    raise ValueError(f"models.{model_id}.source must be 'local' or 'hub', got {spec['source']!r}")


def require_shared_tokenizer(lms: list[LoadedModel]) -> None:
    """Raise ValueError if the models do not share one tokenizer (token positions would not align)."""
    fps = {lm.tokenizer_fingerprint for lm in lms}
    if len(fps) > 1:
        names = ", ".join(f"{lm.id} ({len(lm.tokenizer)} tokens)" for lm in lms)
        raise ValueError(
            f"the models use different tokenizers: {names}. Matching features by correlation needs the "
            "same token stream in every model. Fix: pick models that share a tokenizer (e.g. two Pythia "
            "sizes) for this profile."
        )
