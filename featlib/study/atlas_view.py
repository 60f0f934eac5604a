"""Notebook 08: the feature atlas of one comparison — two linked UMAP maps of its matched and most
active features, the page's hover texts and concept groups, and neighbourhood preservation (see
:mod:`featlib.atlas`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path

import numpy as np

from .. import atlas as atl
from .. import matching, phrases, plots, sparse_rows, step
from ..config import REPO
from ..correlation import correlate
from ..subspaces import group_features, resolve_groups
from .codes import feature_tokens, top_token_strings
from .core import Comparison, Side, Study
from .pairs import code_pairs, match

VERSION = 3


def pool_correlations(study: Study, comparison: Comparison, pool_a: np.ndarray, pool_b: np.ndarray) -> np.ndarray:
    """(len(pool_a), len(pool_b)) Pearson correlations of two feature subsets of the sides over the eval units."""
    d_a, d_b, chunks = code_pairs(study, comparison)
    look_a, look_b = sparse_rows.lookup(pool_a, d_a), sparse_rows.lookup(pool_b, d_b)

    def restricted():
        return (
            (sparse_rows.restrict(x, look_a, len(pool_a)), sparse_rows.restrict(y, look_b, len(pool_b)))
            for x, y in chunks()
        )

    matrix = correlate(restricted, len(pool_a), len(pool_b), keep_matrix=True).matrix
    assert matrix is not None  # keep_matrix
    return matrix.numpy()


def atlas_comparison(study: Study) -> Comparison:
    """The comparison ``atlas.comparison`` names, at ``atlas.layers`` (default: its own layers)."""
    c = study.listed[study.cfg.atlas.comparison]
    return c.at(*study.cfg.atlas.layers) if study.cfg.atlas.layers else c


@dataclass(frozen=True)
class AtlasParams:
    """What the atlas reads of ``atlas`` and ``matching`` (and hashes into its key)."""

    matching: str
    n_active: int
    n_neighbors: int
    min_dist: float
    knn_k: int
    n_random: int
    seed: int
    min_r: float

    @classmethod
    def of(cls, study: Study) -> AtlasParams:
        a = study.cfg.atlas
        return cls(
            a.matching, a.n_active, a.n_neighbors, a.min_dist, a.knn_k, a.n_random, a.seed, study.cfg.matching.min_r
        )


def _label(side: Side) -> str:
    return side.model if side.seed is None else f"{side.model} (seed {side.seed})"


def feature_atlas(study: Study, comparison: Comparison | None = None) -> atl.Atlas:
    """The atlas of ``comparison`` (default :func:`atlas_comparison`): layouts, pairs and neighbourhood
    preservation cached (inputs: the matching and both sides' top units); hover texts and concept
    groups from the cached top units."""
    cfg, p = study.cfg, AtlasParams.of(study)
    c = comparison or atlas_comparison(study)
    m = match(study, c)
    freq = {s: feature_tokens(study, s).freq for s in (c.a, c.b)}

    def pool(side: Side, matched: np.ndarray) -> np.ndarray:
        active = np.argsort(-freq[side], kind="stable")[: p.n_active]
        return np.union1d(matched, active[freq[side][active] > 0]).astype(np.int64)

    def produce(tmp: Path) -> None:
        if p.matching == "best":  # the final pairs of notebook 03
            pool_a, pool_b = pool(c.a, m.pairs.idx_a), pool(c.b, m.pairs.idx_b)
            rows = np.stack([np.searchsorted(pool_a, m.pairs.idx_a), np.searchsorted(pool_b, m.pairs.idx_b)], axis=1)
            r = m.pairs.r
        else:  # one-to-one assignment over the pools (candidates: every best partner above min_r)
            cand = matching.threshold(m.many_to_one, p.min_r)
            pool_a, pool_b = pool(c.a, cand.idx_a), pool(c.b, cand.idx_b)
            rows, r = atl.hungarian_pairs(pool_correlations(study, c, pool_a, pool_b), p.min_r)
        W_a, W_b = study.decoder_rows(c.a, pool_a), study.decoder_rows(c.b, pool_b)
        xy_a = atl.umap_xy(W_a, p.seed, p.n_neighbors, p.min_dist)
        xy_b = atl.umap_xy(W_b, p.seed, p.n_neighbors, p.min_dist)
        nbh = atl.neighbourhood_preservation(W_a[rows[:, 0]], W_b[rows[:, 1]], p.knn_k, p.n_random, p.seed)
        np.savez(tmp / "atlas.npz", pool_a=pool_a, pool_b=pool_b, xy_a=xy_a, xy_b=xy_b, rows=rows, r=np.asarray(r))
        step.write_json(tmp / "stats.json", {"neighbourhood": nbh})

    inputs = {
        "matching": m.artifact,
        "tokens_A": feature_tokens(study, c.a).artifact,
        "tokens_B": feature_tokens(study, c.b).artifact,
    }
    art = step.run("atlas", asdict(p), inputs, produce, version=VERSION, meta={"seed": p.seed, "comparison": c.name})
    saved, stats = art.arrays("atlas.npz"), art.json("stats.json")
    groups = resolve_groups(cfg.subspaces.groups)
    texts = {}
    for side, other, pool_ids, col in ((c.a, c.b, saved["pool_a"], 0), (c.b, c.a, saved["pool_b"], 1)):
        tops = top_token_strings(study, side)
        positions = feature_tokens(study, side).positions
        member = {g: group_features(tops, kw) for g, kw in groups.items()}
        other_pool = saved["pool_b"] if col == 0 else saved["pool_a"]
        partners: dict[int, list[str]] = {}
        for row, r in zip(saved["rows"], saved["r"]):
            partners.setdefault(int(row[col]), []).append(
                f"{other.name} #{int(other_pool[row[1 - col]])} (r = {r:.2f})"
            )
        hover, group = [], []
        for i, f in enumerate(pool_ids):
            ctx = [escape(study.context(side.model, int(q), width=5)) for q in positions[f][:2] if q >= 0]
            hover.append(
                f"<b>{side.name} feature {int(f)}</b><br>partners: {', '.join(partners.get(i, ['none']))}<br>"
                f"top tokens: {escape(' | '.join(tops[f]))}<br>" + "<br>".join(ctx)
            )
            group.append(next((g for g in groups if member[g][f]), ""))
        texts[col] = (hover, group)
    return atl.Atlas(
        ids=(_label(c.a), _label(c.b)),
        layers=(c.a.layer, c.b.layer),
        pool_a=saved["pool_a"],
        pool_b=saved["pool_b"],
        xy_a=saved["xy_a"],
        xy_b=saved["xy_b"],
        pairs=saved["rows"],
        r=saved["r"],
        hover_a=texts[0][0],
        hover_b=texts[1][0],
        group_a=texts[0][1],
        group_b=texts[1][1],
        matching=p.matching,
        stats=stats,
    )


def group_colors(study: Study) -> dict[str, str]:
    """Concept group -> colour for every figure and the atlas page (:func:`featlib.plots.group_colors` over
    the profile's ``subspaces.groups`` in their order, then the phrase groups of ``subspaces.phrases`` not among them)."""
    tokens = list(resolve_groups(study.cfg.subspaces.groups))
    more = [g for g in phrases.resolve_groups(study.cfg.subspaces.phrases.groups) if g not in tokens]
    return plots.group_colors(tokens + more)


def atlas_page(study: Study, at: atl.Atlas) -> Path:
    """Write the atlas page to ``build/atlas/<label>/atlas_<A><la>_<B><lb>_<matching>.html``; returns its path."""
    (a, b), (la, lb) = at.ids, at.layers
    name = f"atlas_{a}{la}_{b}{lb}_{at.matching}".replace(" ", "").replace("(", "_").replace(")", "")
    return atl.write_html(at, REPO / "build" / "atlas" / study.cfg.label / f"{name}.html", group_colors(study))
