"""The cached steps of the study, as the notebooks call them.

Each step returns what it computed and stores it under ``cache/<kind>/<key>/`` with a key derived
from its inputs' keys and its own parameters, so any notebook can run alone in a fresh kernel: it
recomputes only what is missing (printing what it does), and a re-run reuses everything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from . import cache, matching, similarity
from .activations import Activations, ensure_activations
from .correlation import SparseCodes, correlate
from .config import Config
from .models import LoadedModel, load_model
from .saes import encode_chunks, evaluate, get_sae, train_spec

if TYPE_CHECKING:
    from pathlib import Path

    from .atlas import Atlas
    from .universal import UniversalSAE, USAEParams

CODE_VERSION = 2
METRICS = similarity.METRICS
METRIC_NAMES = {"svcca": "SVCCA", "rsa": "RSA", "cka": "linear CKA", "mutual_knn": "mutual k-NN", "procrustes": "Procrustes similarity"}


@dataclass
class Study:
    """Models and cached activations of one profile."""

    cfg: Config
    models: dict[str, LoadedModel]
    acts: dict[str, dict[str, Activations]]
    _strings: dict[str, list[str]] = field(default_factory=dict, repr=False)

    @property
    def ids(self) -> list[str]:
        return list(self.models)

    def sae(self, model_id: str, layer: int) -> Any:
        return get_sae(self.cfg, self.models[model_id], layer, self.acts[model_id])

    def sae_spec(self, model_id: str, layer: int) -> dict[str, Any]:
        if self.cfg.sae["source"] == "train":
            return train_spec(self.cfg, self.acts[model_id]["train"], layer)
        return {k: self.cfg.sae[k].get(model_id) if isinstance(self.cfg.sae[k], dict) else self.cfg.sae[k]
                for k in ("release", "sae_id", "format")} | {"layer": layer}

    def token_strings(self, model_id: str) -> list[str]:
        """Decoded string of every token id of a model's tokenizer (decoded once per study)."""
        if model_id not in self._strings:
            tok = self.models[model_id].tokenizer
            self._strings[model_id] = [tok.decode([i]) for i in range(len(tok))]
        return self._strings[model_id]


def open_study(cfg: Config, device: str = "auto") -> Study:
    """Load the profile's models on ``device`` ("auto": CUDA when present, else CPU; see
    :func:`featlib.models.resolve_device`) and extract (or reuse) their activations on the same units
    (tokens, or positions aligned across tokenizers: ``data.align``)."""
    models = {mid: load_model(mid, spec, device) for mid, spec in cfg.models.items()}
    return Study(cfg, models, ensure_activations(cfg, list(models.values())))


def sae_metrics(study: Study, model_id: str, layer: int) -> dict[str, Any]:
    """Cached :func:`featlib.saes.evaluate` of one SAE on the eval tokens."""
    cfg = study.cfg
    s = {"sae": study.sae_spec(model_id, layer), "eval": study.acts[model_id]["eval"].path.name,
         "ce_batches": cfg.sae["ce_batches"], "version": CODE_VERSION}
    path = cache.artifact_dir("sae_metrics", s)
    if not cache.is_complete(path):
        sae = study.sae(model_id, layer)
        m = evaluate(sae, study.models[model_id], study.acts[model_id]["eval"], layer, cfg.sae["ce_batches"])
        with cache.publish("sae_metrics", s) as tmp:
            cache.write_json_atomic(tmp / "metrics.json", m)
    return json.loads((path / "metrics.json").read_text())


def feature_tokens(study: Study, model_id: str, layer: int) -> dict[str, np.ndarray]:
    """Top-activating eval positions of every SAE feature, their token ids and firing frequency.

    Returns {"positions": (d_sae, k) int64 flat token indices (-1 = fewer than k positive
    activations), "values": (d_sae, k), "token_ids": (d_sae, k) (-1 where no position),
    "freq": (d_sae,) fraction of eval tokens where the feature fires}.
    """
    cfg = study.cfg
    k = cfg.matching["top_k_tokens"]
    acts = study.acts[model_id]["eval"]
    s = {"sae": study.sae_spec(model_id, layer), "eval": acts.path.name, "k": k, "version": CODE_VERSION}
    path = cache.artifact_dir("feature_tokens", s)
    if not cache.is_complete(path):
        codes = sae_codes(study, model_id, layer)
        d_sae, n = int(codes["d_sae"]), len(codes["indptr"]) - 1
        values, pos = matching.top_activations(codes["indptr"], codes["indices"], codes["values"], d_sae, k)
        ids = np.where(pos >= 0, acts.token_ids[np.clip(pos, 0, None)], -1)
        fired = np.bincount(codes["indices"][codes["values"] > 0], minlength=d_sae)
        with cache.publish("feature_tokens", s) as tmp:
            np.savez(tmp / "tokens.npz", positions=pos, values=values, token_ids=ids, freq=fired / n)
    with np.load(path / "tokens.npz") as f:
        return dict(f)


def sae_codes(study: Study, model_id: str, layer: int) -> dict[str, np.ndarray]:
    """The SAE codes of one layer's eval tokens, encoded once and cached as sparse rows (CSR).

    Returns {"indptr": (n_tokens + 1,) int64, "indices": (nnz,) int32 feature ids, "values": (nnz,)
    float32, "d_sae": ()}; token t's non-zero codes are ``indices[indptr[t]:indptr[t + 1]]``.
    """
    cfg = study.cfg
    acts = study.acts[model_id]["eval"]
    s = {"sae": study.sae_spec(model_id, layer), "eval": acts.path.name, "version": CODE_VERSION}
    path = cache.artifact_dir("codes", s)
    if not cache.is_complete(path):
        sae = study.sae(model_id, layer)
        n_chunks = -(-len(acts.token_ids) // cfg.matching["chunk_tokens"])
        z = tqdm(encode_chunks(sae, acts, layer, cfg.matching["chunk_tokens"]), total=n_chunks,
                 desc=f"encoding {model_id}{layer}", position=0, leave=False)
        packed = pack_codes(z, int(sae.cfg.d_sae))
        with cache.publish("codes", s) as tmp:
            np.savez(tmp / "codes.npz", **packed)
    with np.load(path / "codes.npz") as f:
        return dict(f)


def pack_codes(chunks: Iterable[torch.Tensor], d_sae: int) -> dict[str, np.ndarray]:
    """(n, d_sae) dense code chunks, in token order -> the sparse rows of :func:`sae_codes`."""
    counts, indices, values = [], [], []
    for z in chunks:
        rows, cols = torch.nonzero(z, as_tuple=True)  # row-major: sorted by token, then feature
        counts.append(torch.bincount(rows, minlength=len(z)).numpy())
        indices.append(cols.numpy().astype(np.int32))
        values.append(z[rows, cols].numpy().astype(np.float32))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    return {"indptr": indptr, "indices": np.concatenate(indices), "values": np.concatenate(values), "d_sae": np.int64(d_sae)}


def code_chunks(codes: dict[str, np.ndarray], chunk_tokens: int) -> Iterator[SparseCodes]:
    """Consecutive chunks of cached codes (:func:`sae_codes`) as :class:`SparseCodes` (zero-padded rows)."""
    indptr, d = codes["indptr"], int(codes["d_sae"])
    for start in range(0, len(indptr) - 1, chunk_tokens):
        ptr = indptr[start : start + chunk_tokens + 1]
        n, lo = len(ptr) - 1, ptr[0]
        per_token = np.diff(ptr)
        row = np.repeat(np.arange(n), per_token)
        slot = np.arange(ptr[-1] - lo) - (ptr[:-1] - lo)[row]
        idx = np.zeros((n, max(1, int(per_token.max(initial=0)))), dtype=np.int64)
        val = np.zeros(idx.shape, dtype=np.float32)
        idx[row, slot] = codes["indices"][lo : ptr[-1]]
        val[row, slot] = codes["values"][lo : ptr[-1]]
        yield SparseCodes(torch.from_numpy(idx), torch.from_numpy(val), d)


def top_token_strings(study: Study, model_id: str, layer: int) -> list[list[str]]:
    """For every feature, the strings of its top-activating units (tokens, or aligned text spans)."""
    acts = study.acts[model_id]["eval"]
    strings = study.token_strings(model_id) if acts.spans is None else []  # aligned units carry their text
    return [acts.unit_strings(row[row >= 0], strings) for row in feature_tokens(study, model_id, layer)["positions"]]


@dataclass
class LayerMatch:
    """Matching of one layer pair: every stage's pairs and the counts."""

    layers: tuple[int, int]
    many_to_one: matching.Matches  # best A partner of every active B feature
    pairs: matching.Matches  # the final pairs (after one-to-one if asked, threshold, token filters)
    counts: dict[str, int]
    key: str


def match_layers(study: Study, la: int, lb: int) -> LayerMatch:
    """Correlation matching of the SAE features of model A at ``la`` and model B at ``lb`` (cached)."""
    cfg = study.cfg
    a, b = study.ids[:2]
    m = cfg.matching
    s = {"A": study.sae_spec(a, la), "B": study.sae_spec(b, lb), "eval": study.acts[a]["eval"].path.name,
         "params": {k: m[k] for k in ("min_r", "one_to_one", "top_k_tokens", "require_shared_token")},
         "version": CODE_VERSION}
    path = cache.artifact_dir("matching", s)
    if not cache.is_complete(path):
        codes_a, codes_b = sae_codes(study, a, la), sae_codes(study, b, lb)
        n_chunks = -(-len(study.acts[a]["eval"].token_ids) // m["chunk_tokens"])

        def chunks() -> Iterator[tuple[SparseCodes, SparseCodes]]:
            return zip(code_chunks(codes_a, m["chunk_tokens"]), code_chunks(codes_b, m["chunk_tokens"]))

        res = correlate(chunks, int(codes_a["d_sae"]), int(codes_b["d_sae"]), max_bytes=m["max_bytes"],
                        progress=partial(tqdm, total=n_chunks, desc=f"correlating A{la}-B{lb}", position=0, leave=False))
        m2o = res.matches()
        counts = {"features_A": len(res.active_a), "features_B": len(res.active_b), "active_A": int(res.active_a.sum()),
                  "active_B": int(res.active_b.sum()), "many_to_one": len(m2o)}
        pairs = m2o
        if m["one_to_one"]:
            pairs = matching.one_to_one(pairs)
            counts["one_to_one"] = len(pairs)
        pairs = matching.threshold(pairs, m["min_r"])
        counts["r_above_threshold"] = len(pairs)
        pairs, filt = matching.concept_filter(pairs, top_token_strings(study, a, la), top_token_strings(study, b, lb),
                                              require_shared=m["require_shared_token"])
        counts["concept_tokens"] = filt["non_concept"]  # kept: no punctuation/whitespace/special top token
        if m["require_shared_token"]:
            counts["shared_top_token"] = filt["shared_token"]
        with cache.publish("matching", s) as tmp:
            np.savez(tmp / "pairs.npz", m2o_a=m2o.idx_a, m2o_b=m2o.idx_b, m2o_r=m2o.r,
                     idx_a=pairs.idx_a, idx_b=pairs.idx_b, r=pairs.r)
            cache.write_json_atomic(tmp / "counts.json", counts)
    with np.load(path / "pairs.npz") as f:
        m2o = matching.Matches(f["m2o_a"], f["m2o_b"], f["m2o_r"])
        pairs = matching.Matches(f["idx_a"], f["idx_b"], f["r"])
    counts = json.loads((path / "counts.json").read_text())
    return LayerMatch((la, lb), m2o, pairs, counts, path.name)


def decoder_rows(study: Study, model_id: str, layer: int, idx: np.ndarray) -> np.ndarray:
    """(len(idx), d_model) float64 decoder vectors of the given features."""
    W = study.sae(model_id, layer).W_dec.detach().double().cpu().numpy()
    return W[np.asarray(idx)]


def compare_pairs(study: Study, match: LayerMatch, n_shuffles: int | None = None) -> dict[str, Any]:
    """SVCCA and RSA of the paired decoder vectors with random re-pairing nulls (cached).

    Returns :func:`featlib.similarity.compare` 's summary plus the layer pair; with fewer than 3
    pairs the scores are None.
    """
    cfg = study.cfg.similarity
    n_shuffles = n_shuffles or cfg["n_shuffles"]
    s = _similarity_spec(study, match, n_shuffles)
    path = cache.artifact_dir("similarity", s)
    if not cache.is_complete(path):
        la, lb = match.layers
        out: dict[str, Any] = {"layers": [la, lb], "n": len(match.pairs), "seed": cfg["seed"], "n_shuffles": n_shuffles}
        if len(match.pairs) >= 3:
            X = decoder_rows(study, study.ids[0], la, match.pairs.idx_a)
            Y = decoder_rows(study, study.ids[1], lb, match.pairs.idx_b)
            summary, nulls = similarity.compare_with_nulls(X, Y, n_shuffles, cfg["seed"], cfg["variance"])
            out |= summary
        else:
            out |= {m: None for m in METRICS}
            nulls = {m: np.array([]) for m in METRICS}
        with cache.publish("similarity", s) as tmp:
            cache.write_json_atomic(tmp / "summary.json", out)
            np.savez(tmp / "nulls.npz", **nulls)
    return json.loads((path / "summary.json").read_text())


def _similarity_spec(study: Study, match: LayerMatch, n_shuffles: int) -> dict[str, Any]:
    cfg = study.cfg.similarity
    return {"match": match.key, "variance": cfg["variance"], "n_shuffles": n_shuffles, "seed": cfg["seed"],
            "version": CODE_VERSION}


def load_nulls(study: Study, match: LayerMatch) -> dict[str, np.ndarray]:
    """The null distributions stored by :func:`compare_pairs` (default shuffles) for ``match``."""
    path = cache.artifact_dir("similarity", _similarity_spec(study, match, study.cfg.similarity["n_shuffles"]))
    with np.load(path / "nulls.npz") as f:
        return dict(f)


def relative_depth(study: Study, model_id: str, layer: int) -> float:
    """(layer + 1) / n_layers: the fraction of the model's blocks that have run at our layer ``layer``."""
    return (layer + 1) / study.models[model_id].n_layers


def layer_labels(study: Study, model_id: str) -> list[str]:
    """Tick labels "L (relative depth)" of a model's profile layers, for comparing models of other depths."""
    return [f"{L} ({relative_depth(study, model_id, L):.2f})" for L in study.cfg.layers[model_id]]


def extraction_table(study: Study) -> "pd.DataFrame":
    """Per model: size, extracted layers with their relative depths, and per split the tokens each model
    read and the units stored (all tokens with one tokenizer; aligned positions or words otherwise)."""
    import pandas as pd

    rows = []
    for mid, lm in study.models.items():
        row = {"model": mid, "layers in model": lm.n_layers, "d_model": lm.d_model,
               "parameters": sum(p.numel() for p in lm.model.parameters()), "extracted layers": study.cfg.layers[mid],
               "relative depths": [round(relative_depth(study, mid, L), 2) for L in study.cfg.layers[mid]]}
        for split, acts in study.acts[mid].items():
            read = int((acts.lengths - 1).sum())
            row |= {f"{split} tokens read": read, f"{split} units": acts.n_units, f"{split} units/tokens": acts.n_units / read}
        rows.append(row)
    return pd.DataFrame(rows)


def unit_sample(study: Study, n: int = 12) -> "pd.DataFrame":
    """``n`` eval units as every model reads them: the unit's text and, per model, the tokens read since
    the previous unit. The sample starts a little before the first unit some model reaches in
    several tokens (at unit 0 when every unit is one token, as with a shared tokenizer)."""
    import pandas as pd

    def since_previous(acts: Activations, u: int) -> np.ndarray:
        seq_len, pos = acts.tokens.shape[1], acts.positions
        start = pos[u - 1] + 1 if u > 0 and pos[u - 1] // seq_len == pos[u] // seq_len else pos[u] // seq_len * seq_len + 1
        return acts.tokens.reshape(-1)[start : pos[u] + 1]

    acts = {m: study.acts[m]["eval"] for m in study.ids}
    n_units = acts[study.ids[0]].n_units
    first = next((u for u in range(n_units) if any(len(since_previous(a, u)) > 1 for a in acts.values())), 0)
    rows = []
    for u in range(max(0, first - n // 2), min(n_units, max(0, first - n // 2) + n)):
        row: dict[str, Any] = {"unit": u}
        for mid, a in acts.items():
            tok, ids = study.models[mid].tokenizer, since_previous(a, u)
            row.setdefault("text", tok.decode([int(ids[-1])]) if a.spans is None else a.unit_strings(np.array([u]), [])[0])
            row[f"{mid} tokens"] = " | ".join(repr(tok.decode([int(t)])) for t in ids)
        rows.append(row)
    return pd.DataFrame(rows)


def same_units(study: Study) -> bool:
    """True if every model's eval units are the same places in the same text (same tokens, or same spans)."""
    first = [study.acts[m]["eval"] for m in study.ids]
    if any(acts.n_units != first[0].n_units for acts in first):
        return False
    if first[0].spans is None:
        return all(np.array_equal(acts.tokens, first[0].tokens) for acts in first)
    return all(np.array_equal(acts.spans, first[0].spans) and acts.texts == first[0].texts for acts in first)


def sae_table(study: Study) -> "pd.DataFrame":
    """Metrics of every SAE of the profile (one row per model and layer)."""
    import pandas as pd

    rows = []
    for mid in study.ids:
        for layer in tqdm(study.cfg.layers[mid], desc=f"SAEs of model {mid}"):
            rows.append({"model": mid, "layer": layer, **sae_metrics(study, mid, layer)})
    return pd.DataFrame(rows)


def context(study: Study, model_id: str, position: int, width: int = 8) -> str:
    """The eval text around unit ``position``, the unit itself in [[double brackets]]."""
    return study.acts[model_id]["eval"].context(position, study.models[model_id].tokenizer, width)


def pair_table(study: Study, match: LayerMatch, n: int = 10) -> "pd.DataFrame":
    """The ``n`` highest-correlation final pairs with each feature's top tokens and top context."""
    import pandas as pd

    a, b = study.ids[:2]
    la, lb = match.layers
    tops = {a: top_token_strings(study, a, la), b: top_token_strings(study, b, lb)}
    pos = {a: feature_tokens(study, a, la)["positions"], b: feature_tokens(study, b, lb)["positions"]}
    order = np.argsort(-match.pairs.r, kind="stable")[:n]
    rows = []
    for i in order:
        fa, fb = int(match.pairs.idx_a[i]), int(match.pairs.idx_b[i])
        rows.append({
            f"{a}{la} feature": fa, f"{b}{lb} feature": fb, "r": float(match.pairs.r[i]),
            f"top tokens {a}": " | ".join(t.strip() for t in tops[a][fa]),
            f"top tokens {b}": " | ".join(t.strip() for t in tops[b][fb]),
            f"top context {a}": context(study, a, pos[a][fa, 0]),
            f"top context {b}": context(study, b, pos[b][fb, 0]),
        })
    return pd.DataFrame(rows)


def layerwise(study: Study) -> "pd.DataFrame":
    """Matching and the five metrics with ``similarity.layerwise_shuffles`` re-pairings for every layer of
    A x every layer of B (one row per cell)."""
    import pandas as pd

    a, b = study.ids[:2]
    cells = [(la, lb) for la in study.cfg.layers[a] for lb in study.cfg.layers[b]]
    rows = []
    for la, lb in tqdm(cells, desc="layer pairs"):
        match = match_layers(study, la, lb)
        s = compare_pairs(study, match, study.cfg.similarity["layerwise_shuffles"])
        row = {f"layer {a}": la, f"layer {b}": lb, f"depth {a}": relative_depth(study, a, la),
               f"depth {b}": relative_depth(study, b, lb), "pairs": s["n"]}
        for metric in METRICS:
            m = s.get(metric) or {}
            row |= {metric: m.get("score", np.nan), f"{metric} null": m.get("null_mean", np.nan),
                    f"{metric} p": m.get("p", np.nan)}
        rows.append(row)
    return pd.DataFrame(rows)


def subspace_scores(study: Study, match: LayerMatch) -> "pd.DataFrame":
    """SVCCA/RSA of every concept group's pairs at one layer pair, with both nulls (see subspaces).

    The candidates are the many-to-one pairs above the correlation threshold (every B feature with
    its best A partner; one-to-one would discard most of a small group). A pair belongs to a group
    when both features join it, which already requires concept tokens, so the generic non-concept
    and shared-token filters are not applied on top.
    """
    import pandas as pd

    from .subspaces import group_features, group_mask, resolve_groups, score_group

    cfg = study.cfg
    a, b = study.ids[:2]
    la, lb = match.layers
    top_a, top_b = top_token_strings(study, a, la), top_token_strings(study, b, lb)
    candidates = matching.threshold(match.many_to_one, cfg.matching["min_r"])
    X_all = decoder_rows(study, a, la, candidates.idx_a)
    Y_all = decoder_rows(study, b, lb, candidates.idx_b)
    sub, sim = cfg.subspaces, cfg.similarity
    rows = []
    for name, keywords in tqdm(resolve_groups(sub["groups"]).items(), desc="concept groups"):
        members = np.flatnonzero(group_mask(candidates, top_a, top_b, keywords))
        row: dict[str, Any] = {"group": name, "keywords": len(keywords),
                               f"features {a}": int(group_features(top_a, keywords).sum()),
                               f"features {b}": int(group_features(top_b, keywords).sum()), "pairs": len(members)}
        # many-to-one pairs can put one feature in every pair of a group: no variance on that side, nothing to score
        scored = len(members) >= max(3, sub["min_features"]) and all(
            len(np.unique(idx[members])) > 1 for idx in (candidates.idx_a, candidates.idx_b))
        s = score_group(X_all, Y_all, members, sim["n_shuffles"], sub["n_random_sets"], sub["seed"], sim["variance"]) if scored else {}
        for metric in ("svcca", "rsa"):
            m = s.get(metric, {})
            row |= {metric: m.get("score", np.nan), f"{metric} null (re-pair)": m.get("null_mean", np.nan),
                    f"{metric} p (re-pair)": m.get("p", np.nan), f"{metric} null (random set)": m.get("random_set_mean", np.nan),
                    f"{metric} p (random set)": m.get("random_set_p", np.nan)}
        rows.append(row)
    return pd.DataFrame(rows)


def _usae_spec(study: Study) -> tuple[dict[str, Any], "USAEParams"]:
    from dataclasses import asdict, fields

    from .universal import USAEParams

    cfg = study.cfg
    params = USAEParams(**{f.name: cfg.universal[f.name] for f in fields(USAEParams)})
    missing = [mid for mid in study.ids if "train" not in study.acts[mid]]
    if missing:
        raise ValueError("the universal SAE trains on the 'train' split, and data.n_train_tokens is 0. "
                         "Fix: set data.n_train_tokens > 0 in the profile.")
    s = {"train": {mid: study.acts[mid]["train"].path.name for mid in study.ids}, "layers": cfg.universal_layers,
         "params": asdict(params), "version": CODE_VERSION}
    return s, params


def universal_sae(study: Study) -> tuple["UniversalSAE", dict[str, Any]]:
    """The universal SAE of the profile's models at ``cfg.universal_layers``, trained on the ``train``
    activations (cached with its seed and training log; see :mod:`featlib.universal`)."""
    from dataclasses import asdict

    from .universal import UniversalSAE, train

    s, params = _usae_spec(study)
    layers = s["layers"]
    path = cache.artifact_dir("usae", s)
    if not cache.is_complete(path):
        device = str(study.models[study.ids[0]].model.cfg.device)
        usae, log = train({mid: study.acts[mid]["train"].layer(layers[mid]) for mid in study.ids}, params, device=device)
        log["tokens_per_second"] = params.batch_size * len(log["seconds"]) / sum(log["seconds"])
        with cache.publish("usae", s, {"seed": params.seed}) as tmp:
            usae.save(tmp, {"layers": layers, "params": asdict(params)})
            cache.write_json_atomic(tmp / "log.json", log)
    return UniversalSAE.load(path), json.loads((path / "log.json").read_text())


def universal_metrics(study: Study) -> dict[str, Any]:
    """Everything notebook 07 shows about the universal SAE, measured on the eval tokens (cached).

    Returns the arrays of :class:`featlib.universal.USAEMetrics` (``r2``, ``fires``, ``cofire``,
    ``anyfire``, ``mean_code``, ``firing_entropy``, ``cofire_proportion``, ``energy``) and, per model:
    ``top_positions_<id>`` (K, 5) eval positions where each concept is largest; ``counterpart_cos_<id>``
    / ``counterpart_<id>`` (K,) the best cosine of each concept's decoder row with the model's own SAE
    (notebook 02) and that SAE feature; ``random_cos_<id>`` the same for random directions. Scalars:
    ``overlap`` (share of notebook 03's final pairs at the same layers that some concept maps onto,
    its counterparts both with cosine > 0.5) and ``overlap_random`` (the same for re-paired pairs).
    """
    from . import universal

    cfg = study.cfg
    usae, _ = universal_sae(study)
    layers = cfg.universal_layers
    u = cfg.universal
    s = {"usae": cache.artifact_dir("usae", _usae_spec(study)[0]).name, "eval": {mid: study.acts[mid]["eval"].path.name for mid in study.ids},
         "sae": {mid: study.sae_spec(mid, layers[mid]) for mid in study.ids}, "threshold": u["fire_threshold"],
         "matching": {k: cfg.matching[k] for k in ("min_r", "one_to_one", "top_k_tokens", "require_shared_token")},
         "version": CODE_VERSION}
    path = cache.artifact_dir("usae_metrics", s)
    if not cache.is_complete(path):
        chunk = cfg.matching["chunk_tokens"]

        def chunks() -> Iterator[dict[str, torch.Tensor]]:
            per_model = [study.acts[mid]["eval"].chunks(layers[mid], chunk) for mid in study.ids]
            return (dict(zip(study.ids, xs)) for xs in zip(*per_model))

        m = universal.measure(usae, tqdm(chunks(), desc="measuring universal SAE", leave=False), u["fire_threshold"])
        out: dict[str, np.ndarray] = {k: getattr(m, k) for k in ("r2", "fires", "cofire", "anyfire", "mean_code",
                                                                  "firing_entropy", "cofire_proportion", "energy")}
        concept_of: dict[str, np.ndarray] = {}
        for i, mid in enumerate(study.ids):
            with torch.no_grad():
                z = (usae.encode(mid, x) for x in study.acts[mid]["eval"].chunks(layers[mid], chunk))
                packed = pack_codes(z, usae.n_latents)
            out[f"top_positions_{mid}"] = matching.top_activations(packed["indptr"], packed["indices"], packed["values"],
                                                                   usae.n_latents, 5)[1]
            W = study.sae(mid, layers[mid]).W_dec.detach().float().cpu()
            cos, arg = universal.max_cosines(usae.W_dec[mid].detach(), W)
            out[f"counterpart_cos_{mid}"], out[f"counterpart_{mid}"] = cos, arg
            out[f"random_cos_{mid}"] = universal.max_cosines(
                universal.random_directions(usae.n_latents, W.shape[1], u["seed"] + i), W)[0]
            concept_of[mid] = np.where(cos > 0.5, arg, -1)
        a, b = study.ids[:2]
        match = match_layers(study, layers[a], layers[b])
        shuffled = np.random.default_rng(u["seed"]).permutation(match.pairs.idx_b)
        scalars = {"overlap": universal.pair_overlap(concept_of[a], concept_of[b], match.pairs.idx_a, match.pairs.idx_b),
                   "overlap_random": universal.pair_overlap(concept_of[a], concept_of[b], match.pairs.idx_a, shuffled),
                   "n_pairs": len(match.pairs), "n_tokens": m.n_tokens}
        with cache.publish("usae_metrics", s) as tmp:
            np.savez(tmp / "metrics.npz", **out)
            cache.write_json_atomic(tmp / "scalars.json", scalars)
    with np.load(path / "metrics.npz") as f:
        out = dict(f)
    return out | json.loads((path / "scalars.json").read_text())



def _restrict(chunk: SparseCodes, lookup: torch.Tensor, n: int) -> SparseCodes:
    """The codes of a subset of features: ``lookup`` (d_sae,) maps a feature to its subset index or -1."""
    idx = lookup[chunk.idx]
    keep = idx >= 0
    return SparseCodes(torch.where(keep, idx, 0), torch.where(keep, chunk.val, 0), n)


def pool_correlations(study: Study, la: int, lb: int, pool_a: np.ndarray, pool_b: np.ndarray) -> np.ndarray:
    """(len(pool_a), len(pool_b)) Pearson correlations of two feature subsets over the eval tokens."""
    a, b = study.ids[:2]
    codes = {a: sae_codes(study, a, la), b: sae_codes(study, b, lb)}
    lookups = {}
    for m, pool in ((a, pool_a), (b, pool_b)):
        lookup = torch.full((int(codes[m]["d_sae"]),), -1, dtype=torch.long)
        lookup[torch.as_tensor(pool)] = torch.arange(len(pool))
        lookups[m] = lookup
    chunk = study.cfg.matching["chunk_tokens"]

    def chunks() -> Iterator[tuple[SparseCodes, SparseCodes]]:
        return ((_restrict(x, lookups[a], len(pool_a)), _restrict(y, lookups[b], len(pool_b)))
                for x, y in zip(code_chunks(codes[a], chunk), code_chunks(codes[b], chunk)))

    return correlate(chunks, len(pool_a), len(pool_b), keep_matrix=True).matrix.numpy()


def feature_atlas(study: Study) -> "Atlas":
    """The atlas of notebook 08 at ``atlas.layer_pair`` (layouts, pairs and neighbourhood preservation
    cached; hover texts and concept groups from the cached top tokens). See :mod:`featlib.atlas`."""
    from html import escape

    from . import atlas as atl
    from .subspaces import group_features, resolve_groups

    cfg = study.cfg
    p = cfg.atlas
    a, b = study.ids[:2]
    la, lb = p["layer_pair"] or cfg.matching["layer_pair"]
    match = match_layers(study, la, lb)
    s = {"match": match.key, "params": p, "min_r": cfg.matching["min_r"], "version": CODE_VERSION}
    path = cache.artifact_dir("atlas", s)
    if not cache.is_complete(path):
        freq = {a: feature_tokens(study, a, la)["freq"], b: feature_tokens(study, b, lb)["freq"]}

        def pool(m: str, matched: np.ndarray) -> np.ndarray:
            active = np.argsort(-freq[m], kind="stable")[: p["n_active"]]
            return np.union1d(matched, active[freq[m][active] > 0]).astype(np.int64)

        if p["matching"] == "best":  # the final pairs of notebook 03
            pool_a, pool_b = pool(a, match.pairs.idx_a), pool(b, match.pairs.idx_b)
            rows = np.stack([np.searchsorted(pool_a, match.pairs.idx_a), np.searchsorted(pool_b, match.pairs.idx_b)], axis=1)
            r = match.pairs.r
        else:  # one-to-one assignment over the pools (candidates: every best partner above min_r)
            cand = matching.threshold(match.many_to_one, cfg.matching["min_r"])
            pool_a, pool_b = pool(a, cand.idx_a), pool(b, cand.idx_b)
            rows, r = atl.hungarian_pairs(pool_correlations(study, la, lb, pool_a, pool_b), cfg.matching["min_r"])
        W_a, W_b = decoder_rows(study, a, la, pool_a), decoder_rows(study, b, lb, pool_b)
        xy_a = atl.umap_xy(W_a, p["seed"], p["n_neighbors"], p["min_dist"])
        xy_b = atl.umap_xy(W_b, p["seed"], p["n_neighbors"], p["min_dist"])
        nbh = atl.neighbourhood_preservation(W_a[rows[:, 0]], W_b[rows[:, 1]], p["knn_k"], p["n_random"], p["seed"])
        with cache.publish("atlas", s, {"seed": p["seed"]}) as tmp:
            np.savez(tmp / "atlas.npz", pool_a=pool_a, pool_b=pool_b, xy_a=xy_a, xy_b=xy_b, rows=rows, r=np.asarray(r))
            cache.write_json_atomic(tmp / "stats.json", {"neighbourhood": nbh})
    with np.load(path / "atlas.npz") as f:
        saved = dict(f)
    stats = json.loads((path / "stats.json").read_text())
    groups = resolve_groups(cfg.subspaces["groups"])
    sides = {}
    for m, L, pool_ids, col in ((a, la, saved["pool_a"], 0), (b, lb, saved["pool_b"], 1)):
        tops = top_token_strings(study, m, L)
        positions = feature_tokens(study, m, L)["positions"]
        member = {g: group_features(tops, kw) for g, kw in groups.items()}
        other = (b, lb, saved["pool_b"]) if col == 0 else (a, la, saved["pool_a"])
        partners: dict[int, list[str]] = {}
        for row, r in zip(saved["rows"], saved["r"]):
            partners.setdefault(int(row[col]), []).append(f"{other[0]}{other[1]} #{int(other[2][row[1 - col]])} (r = {r:.2f})")
        hover, group = [], []
        for i, f in enumerate(pool_ids):
            ctx = [escape(context(study, m, int(q), width=5)) for q in positions[f][:2] if q >= 0]
            hover.append(f"<b>{m}{L} feature {int(f)}</b><br>partners: {', '.join(partners.get(i, ['none']))}<br>"
                         f"top tokens: {escape(' | '.join(tops[f]))}<br>" + "<br>".join(ctx))
            group.append(next((g for g in groups if member[g][f]), ""))
        sides[m] = (hover, group)
    return atl.Atlas(ids=(a, b), layers=(la, lb), pool_a=saved["pool_a"], pool_b=saved["pool_b"], xy_a=saved["xy_a"],
                     xy_b=saved["xy_b"], pairs=saved["rows"], r=saved["r"], hover_a=sides[a][0], hover_b=sides[b][0],
                     group_a=sides[a][1], group_b=sides[b][1], matching=p["matching"], stats=stats)


def atlas_page(study: Study, at: "Atlas") -> "Path":
    """Write the atlas page to ``build/atlas/<profile>/atlas_<A><la>_<B><lb>_<matching>.html``; returns its path."""
    from .atlas import write_html
    from .config import REPO

    (a, b), (la, lb) = at.ids, at.layers
    return write_html(at, REPO / "build" / "atlas" / study.cfg.profile / f"atlas_{a}{la}_{b}{lb}_{at.matching}.html")
