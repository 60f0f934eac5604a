"""Notebook 07: a universal SAE over every model of the profile (see :mod:`featlib.universal`) — trained
once, then measured: cross-reconstruction, firing entropy, co-firing vs energy, counterparts in each
model's own SAE, and overlap with the pairs of each comparison it reads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import matching, sparse_rows, step, universal
from .core import Comparison, Side, Study
from .pairs import match, matching_artifact

VERSION = 5  # 4: training decodes the active latents only (universal.selected_rows); 5: and forms the encoder
# gradient from the selected latents only (universal.selected_linear)
METRICS_VERSION = 6  # 6: the pair overlap of every comparison the universal SAE reads (was: the first two models')
COUNTERPART_COS = 0.5  # a concept's decoder row has a counterpart in an SAE when their cosine exceeds this


def usae_params(study: Study) -> universal.USAEParams:
    """The training parameters (the ``universal`` section less ``layers``, ``fire_threshold``, ``concept``)."""
    return universal.USAEParams(**{f.name: getattr(study.cfg.universal, f.name) for f in fields(universal.USAEParams)})


def usae_artifact(study: Study) -> step.Artifact:
    """The universal SAE over the models and layers of ``cfg.universal_layers``, trained on their ``train``
    activations (cached; inputs: those activations; parameters: the layers and the training parameters only)."""
    params, layers = usae_params(study), study.cfg.universal_layers

    def produce(tmp: Path) -> None:
        device = study.models[next(iter(layers))].device
        usae, log = universal.train(
            {mid: study.acts[mid]["train"].layer(layer) for mid, layer in layers.items()}, params, device=device
        )
        rate = params.batch_size * len(log["seconds"]) / sum(log["seconds"])
        usae.save(tmp, {"layers": layers, "params": asdict(params)})
        step.write_json(tmp / "log.json", {**log, "tokens_per_second": rate})

    inputs = {f"train_{mid}": study.acts[mid]["train"].key for mid in layers}
    return step.run(
        "usae",
        {"layers": layers, "params": asdict(params)},
        inputs,
        produce,
        version=VERSION,
        meta={"seed": params.seed},
    )


def universal_sae(study: Study) -> tuple[universal.UniversalSAE, dict[str, Any]]:
    """The trained universal SAE and its training log."""
    art = usae_artifact(study)
    return universal.UniversalSAE.load(art.path), art.json("log.json")


@dataclass(frozen=True)
class PairOverlap:
    """How many of a comparison's final pairs (03) a universal concept recovers: both features are the
    counterparts (cosine > 0.5) of one concept in their SAEs; ``overlap_random``: the same for re-paired pairs."""

    comparison: str
    a: str  # side names, e.g. "A2"
    b: str
    overlap: float
    overlap_random: float
    n_pairs: int


@dataclass(frozen=True)
class USAEResults:
    """What notebook 07 shows, measured on the eval units (arrays over the K concepts, M models)."""

    ids: list[str]
    r2: np.ndarray  # (M, M) encode with model i, decode into model j
    fires: np.ndarray  # (M, K) units where the concept fires for each model
    cofire: np.ndarray  # (K,) units where it fires for every model
    anyfire: np.ndarray  # (K,) units where it fires for some model
    mean_code: np.ndarray  # (M, K)
    firing_entropy: np.ndarray  # (K,) 0: one model only, 1: every model equally; NaN: never fires
    cofire_proportion: np.ndarray  # (K,)
    energy: np.ndarray  # (K,) ||E[z] decoder row|| summed over models
    top_positions: dict[str, np.ndarray]  # model -> (K, 5) eval units where the concept is largest
    counterpart_cos: dict[str, np.ndarray]  # model -> (K,) best cosine with the model's own SAE
    counterpart: dict[str, np.ndarray]  # model -> (K,) that SAE feature
    random_cos: dict[str, np.ndarray]  # model -> (K,) the same for random directions
    overlaps: list[PairOverlap]  # every comparison whose two sides the universal SAE reads
    n_tokens: int

    @property
    def fired(self) -> np.ndarray:
        """(K,) bool: concepts that fire at least once."""
        return np.isfinite(self.firing_entropy)


PER_MODEL = ("top_positions", "counterpart_cos", "counterpart", "random_cos")
ARRAYS = ("r2", "fires", "cofire", "anyfire", "mean_code", "firing_entropy", "cofire_proportion", "energy")


def reads(study: Study, comparison: Comparison) -> bool:
    """Whether the universal SAE reads both sides of ``comparison`` (their models, at their layers)."""
    layers = study.cfg.universal_layers
    return all(layers.get(s.model) == s.layer for s in (comparison.a, comparison.b))


def read_comparisons(study: Study) -> list[Comparison]:
    """The profile's comparisons whose two sides the universal SAE reads."""
    return [c for c in study.listed if reads(study, c)]


@dataclass(frozen=True)
class MetricsParams:
    """What the measurements of notebook 07 read of ``universal`` (and hash into their key)."""

    fire_threshold: float
    seed: int


def metrics_artifact(study: Study) -> step.Artifact:
    """What notebook 07 measures on the eval units (cached; inputs: the universal SAE, the eval activations
    and SAE of each model it reads, the matchings of :func:`read_comparisons`; parameters:
    :class:`MetricsParams` — ``universal.fire_threshold``, and ``universal.seed`` for the random directions)."""
    layers, params = (
        study.cfg.universal_layers,
        MetricsParams(study.cfg.universal.fire_threshold, study.cfg.universal.seed),
    )
    ids = list(layers)
    sides = {mid: Side(mid, layers[mid]) for mid in ids}
    comps = read_comparisons(study)
    inputs: dict[str, step.Input] = {"usae": usae_artifact(study)}
    inputs |= {f"matching_{i}": matching_artifact(study, c) for i, c in enumerate(comps)}
    for mid in ids:
        inputs |= {f"eval_{mid}": study.eval_acts(mid).key, f"sae_{mid}": study.sae_input(sides[mid])}

    def produce(tmp: Path) -> None:
        usae, _ = universal_sae(study)
        chunk = study.cfg.matching.chunk_tokens

        def chunks() -> Iterator[dict[str, torch.Tensor]]:
            per_model = [study.eval_acts(mid).chunks(layers[mid], chunk) for mid in ids]
            return (dict(zip(ids, xs)) for xs in zip(*per_model))

        m = universal.measure(usae, tqdm(chunks(), desc="measuring universal SAE", leave=False), params.fire_threshold)
        out = {k: getattr(m, k) for k in ARRAYS}
        concept_of: dict[str, np.ndarray] = {}
        for i, mid in enumerate(ids):
            with torch.no_grad():
                packed = sparse_rows.pack(
                    (usae.encode(mid, x) for x in study.eval_acts(mid).chunks(layers[mid], chunk)), usae.n_latents
                )
            out[f"top_positions_{mid}"] = matching.top_activations(
                packed.indptr, packed.indices, packed.data, usae.n_latents, 5
            )[1]
            W = study.sae(sides[mid]).W_dec.detach().float().cpu()
            cos, arg = universal.max_cosines(usae.W_dec[mid].detach(), W)
            out[f"counterpart_cos_{mid}"], out[f"counterpart_{mid}"] = cos, arg
            out[f"random_cos_{mid}"] = universal.max_cosines(
                universal.random_directions(usae.n_latents, W.shape[1], params.seed + i), W
            )[0]
            concept_of[mid] = np.where(cos > COUNTERPART_COS, arg, -1)
        overlaps = []
        for c in comps:
            pairs, (a, b) = match(study, c).pairs, (c.a.model, c.b.model)
            shuffled = np.random.default_rng(params.seed).permutation(pairs.idx_b)
            overlaps.append(
                {
                    "comparison": c.name,
                    "a": c.a.name,
                    "b": c.b.name,
                    "overlap": universal.pair_overlap(concept_of[a], concept_of[b], pairs.idx_a, pairs.idx_b),
                    "overlap_random": universal.pair_overlap(concept_of[a], concept_of[b], pairs.idx_a, shuffled),
                    "n_pairs": len(pairs),
                }
            )
        np.savez(tmp / "metrics.npz", **out)
        step.write_json(tmp / "scalars.json", {"overlaps": overlaps, "n_tokens": m.n_tokens})

    return step.run("usae_metrics", asdict(params), inputs, produce, version=METRICS_VERSION)


def universal_metrics(study: Study) -> USAEResults:
    """Everything notebook 07 shows about the universal SAE (see :func:`metrics_artifact`)."""
    art = metrics_artifact(study)
    arrays: dict[str, Any] = art.arrays("metrics.npz")
    ids = list(study.cfg.universal_layers)
    per_model: dict[str, Any] = {name: {mid: arrays[f"{name}_{mid}"] for mid in ids} for name in PER_MODEL}
    scalars = art.json("scalars.json")
    return USAEResults(
        ids=ids,
        **{k: arrays[k] for k in ARRAYS},
        **per_model,
        overlaps=[PairOverlap(**o) for o in scalars["overlaps"]],
        n_tokens=scalars["n_tokens"],
    )


def firing_summary(res: USAEResults) -> dict[str, float]:
    """Firing statistics: how many concepts fire, their firing entropy, and how co-firing tracks energy
    (Pearson r of log co-fires vs log energy, over all concepts that co-fire and over the top quarter)."""
    entropy, cofire, energy, fired = res.firing_entropy, res.cofire, res.energy, res.fired
    both = (cofire > 0) & (energy > 0)
    r_all = r_top = float("nan")
    if both.sum() >= 3:
        r_all = float(np.corrcoef(np.log(cofire[both]), np.log(energy[both]))[0, 1])
        top = both & (cofire >= np.quantile(cofire[both], 0.75))
        if top.sum() >= 3:
            r_top = float(np.corrcoef(np.log(cofire[top]), np.log(energy[top]))[0, 1])
    return {
        "concepts that fire": int(fired.sum()),
        "of them with entropy > 0.9": float((entropy[fired] > 0.9).mean()),
        "with entropy < 0.1": float((entropy[fired] < 0.1).mean()),
        "that co-fire at least once": int(both.sum()),
        "median co-fire proportion": float(np.nanmedian(res.cofire_proportion)),
        "r(log co-fires, log energy)": r_all,
        "r, top quarter by co-fires": r_top,
    }


def pick_concept(res: USAEResults, concept: int = -1) -> int:
    """``concept`` if >= 0, else the most energetic concept among those firing in every model about
    equally (firing entropy > 0.9), or the most energetic one if none does."""
    if concept >= 0:
        return concept
    shared = np.flatnonzero(res.fired & (np.nan_to_num(res.firing_entropy) > 0.9))
    return int(shared[np.argmax(res.energy[shared])]) if len(shared) else int(np.argmax(res.energy))


def counterpart_table(res: USAEResults, layers: dict[str, int]) -> Any:
    """Per model: concepts that fire, the share with a counterpart (cosine > 0.5) in the model's own SAE,
    the same share for random directions, and the median best cosine."""
    import pandas as pd

    f = res.fired
    return pd.DataFrame(
        [
            {
                "model": m,
                "layer": layers[m],
                "concepts": int(f.sum()),
                "counterpart (cos > 0.5)": float((res.counterpart_cos[m][f] > COUNTERPART_COS).mean()),
                "random directions": float((res.random_cos[m][f] > COUNTERPART_COS).mean()),
                "median best cosine": float(np.median(res.counterpart_cos[m][f])),
            }
            for m in res.ids
        ]
    )
