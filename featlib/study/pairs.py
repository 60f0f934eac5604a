"""Notebook 03: matching the features of a comparison's two sides by the correlation of their codes.

Every active feature of side B gets its best side-A partner (many-to-one); one-to-one keeps, per A
feature, the pair with the highest r; then r > ``min_r``; then pairs whose features' top units are
concept tokens (no punctuation, whitespace or special tokens); then, if asked, pairs whose features
share a top token. The funnel records how many pairs survive each stage, in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import matching, sparse_rows, step
from ..config import Matching
from ..correlation import SparseCodes
from .codes import codes_artifact, feature_tokens, feature_tokens_artifact, sae_codes, top_token_strings
from .core import Comparison, Study

if TYPE_CHECKING:
    import pandas as pd

VERSION = 4  # 4: one sparse product of the cached codes (same pairs as the streamed engine of 3)


@dataclass(frozen=True)
class MatchParams:
    """What a matching step reads of ``matching`` (and hashes into its key); ``max_bytes``, a memory bound, and
    ``chunk_tokens`` do not change the pairs and are not part of it."""

    min_r: float
    one_to_one: bool
    require_shared_token: bool

    @classmethod
    def of(cls, m: Matching) -> MatchParams:
        return cls(m.min_r, m.one_to_one, m.require_shared_token)


@dataclass(frozen=True)
class Match:
    """The matching of one comparison: every stage's pairs and the funnel."""

    comparison: Comparison
    many_to_one: matching.Matches  # best A partner of every active B feature
    pairs: matching.Matches  # the final pairs (after one-to-one if asked, threshold, token filters)
    funnel: dict[str, int]  # features, active features, then pairs kept after each stage, in order
    artifact: step.Artifact


def code_pairs(
    study: Study, comparison: Comparison
) -> tuple[int, int, Callable[[], Iterator[tuple[SparseCodes, SparseCodes]]]]:
    """(d_A, d_B, chunks): the two sides' cached codes replayed chunk by chunk, as the correlation engine reads them."""
    ca, cb = sae_codes(study, comparison.a), sae_codes(study, comparison.b)
    n = study.cfg.matching.chunk_tokens

    def chunks() -> Iterator[tuple[SparseCodes, SparseCodes]]:
        return zip(sparse_rows.chunks(ca, n), sparse_rows.chunks(cb, n))

    return ca.shape[1], cb.shape[1], chunks


def matching_artifact(study: Study, comparison: Comparison) -> step.Artifact:
    """The cached matching of ``comparison`` (inputs: both sides' codes and top units; parameters:
    :class:`MatchParams`: ``matching.min_r``, ``one_to_one``, ``require_shared_token``)."""
    p, max_bytes = MatchParams.of(study.cfg.matching), study.cfg.matching.max_bytes
    a, b = comparison.a, comparison.b
    inputs = {
        "codes_A": codes_artifact(study, a),
        "codes_B": codes_artifact(study, b),
        "tokens_A": feature_tokens_artifact(study, a),
        "tokens_B": feature_tokens_artifact(study, b),
    }

    def produce(tmp: Path) -> None:
        res = sparse_rows.correlate(sae_codes(study, a), sae_codes(study, b), max_bytes=max_bytes)
        m2o = res.matches()
        funnel = {
            "features_A": len(res.active_a),
            "features_B": len(res.active_b),
            "active_A": int(res.active_a.sum()),
            "active_B": int(res.active_b.sum()),
            "many_to_one": len(m2o),
        }
        pairs = m2o
        if p.one_to_one:
            pairs = matching.one_to_one(pairs)
            funnel["one_to_one"] = len(pairs)
        pairs = matching.threshold(pairs, p.min_r)
        funnel["r_above_threshold"] = len(pairs)
        pairs, filt = matching.concept_filter(
            pairs, top_token_strings(study, a), top_token_strings(study, b), require_shared=p.require_shared_token
        )
        funnel["concept_tokens"] = filt["non_concept"]  # kept: no punctuation/whitespace/special top token
        if p.require_shared_token:
            funnel["shared_top_token"] = filt["shared_token"]
        np.savez(
            tmp / "pairs.npz",
            m2o_a=m2o.idx_a,
            m2o_b=m2o.idx_b,
            m2o_r=m2o.r,
            idx_a=pairs.idx_a,
            idx_b=pairs.idx_b,
            r=pairs.r,
        )
        step.write_json(tmp / "funnel.json", list(funnel.items()))  # a list: the order is the pipeline's

    return step.run("matching", asdict(p), inputs, produce, version=VERSION, meta={"comparison": comparison.name})


def match(study: Study, comparison: Comparison) -> Match:
    """Correlation matching of ``comparison`` (see the module doc and :func:`matching_artifact`)."""
    art = matching_artifact(study, comparison)
    f = art.arrays("pairs.npz")
    return Match(
        comparison,
        matching.Matches(f["m2o_a"], f["m2o_b"], f["m2o_r"]),
        matching.Matches(f["idx_a"], f["idx_b"], f["r"]),
        dict(art.json("funnel.json")),
        art,
    )


def funnel_table(matches: list[Match]) -> pd.DataFrame:
    """Features and pairs kept after each stage, one column per comparison, stages in pipeline order."""
    import pandas as pd

    return pd.DataFrame({m.comparison.name: pd.Series(m.funnel) for m in matches})


def pair_table(study: Study, match: Match, n: int | None = 10) -> pd.DataFrame:
    """The ``n`` highest-correlation final pairs (``n`` None: all), strongest first: the comparison, each
    side's name and feature, r, and each feature's top tokens and top context (``[[unit]]`` marked)."""
    import pandas as pd

    c = match.comparison
    sides = {"A": c.a, "B": c.b}
    tops = {k: top_token_strings(study, s) for k, s in sides.items()}
    pos = {k: feature_tokens(study, s).positions for k, s in sides.items()}
    order = np.argsort(-match.pairs.r, kind="stable")[:n]
    rows = []
    for i in order:
        f = {"A": int(match.pairs.idx_a[i]), "B": int(match.pairs.idx_b[i])}
        row = {
            "comparison": c.name,
            "side A": c.a.name,
            "feature A": f["A"],
            "side B": c.b.name,
            "feature B": f["B"],
            "r": float(match.pairs.r[i]),
        }
        row |= {f"top tokens {k}": " | ".join(t.strip() for t in tops[k][f[k]]) for k in sides}
        row |= {f"top context {k}": study.context(s.model, int(pos[k][f[k], 0])) for k, s in sides.items()}
        rows.append(row)
    return pd.DataFrame(rows)
