"""Each side's SAE codes of the eval units, encoded once and cached as sparse rows, and what is read
from them: every feature's top-activating units, their text, and its firing frequency."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from .. import matching, sparse_rows, step
from ..saes import encode_chunks
from .core import Side, Study

VERSION = 3


def codes_artifact(study: Study, side: Side) -> step.Artifact:
    """The cached codes of ``side`` (inputs: the SAE and the eval activations; no parameters: the chunk size,
    ``matching.chunk_tokens``, bounds the memory and does not change the codes)."""
    acts = study.acts_of(side)
    chunk = study.cfg.matching.chunk_tokens

    def produce(tmp: Path) -> None:
        sae = study.sae(side)
        z = tqdm(
            encode_chunks(sae, acts, side.layer, chunk),
            total=-(-acts.n_units // chunk),
            desc=f"encoding {side.name}",
            position=0,
            leave=False,
        )
        sp.save_npz(tmp / "codes.npz", sparse_rows.pack(z, int(sae.cfg.d_sae)))

    return step.run("codes", {}, {"sae": study.sae_input(side), "eval": acts.key}, produce, version=VERSION)


def sae_codes(study: Study, side: Side) -> sp.csr_array:
    """(n_units, d_sae) float32 CSR codes of ``side``'s SAE over the eval units (see :mod:`featlib.sparse_rows`)."""
    return sp.csr_array(sp.load_npz(codes_artifact(study, side).path / "codes.npz"))


@dataclass(frozen=True)
class FeatureTokens:
    """Where every feature of one side fires most, and how often it fires."""

    positions: np.ndarray  # (d_sae, k) int64 eval units, descending activation; -1 = fewer than k positive
    values: np.ndarray  # (d_sae, k) float32 activations there (0 where no unit)
    freq: np.ndarray  # (d_sae,) fraction of eval units where the feature fires
    artifact: step.Artifact


@dataclass(frozen=True)
class TokensParams:
    """The parameter of a side's top activations (its step's key): ``k`` (``matching.top_k_tokens``) units per feature."""

    k: int


def feature_tokens_artifact(study: Study, side: Side) -> step.Artifact:
    """The cached top activations of ``side`` (inputs: its codes; parameters: :class:`TokensParams`)."""
    codes_art = codes_artifact(study, side)
    p = TokensParams(study.cfg.matching.top_k_tokens)

    def produce(tmp: Path) -> None:
        codes = sae_codes(study, side)
        values, pos = matching.top_activations(codes.indptr, codes.indices, codes.data, codes.shape[1], p.k)
        fired = np.bincount(codes.indices[codes.data > 0], minlength=codes.shape[1])
        np.savez(tmp / "tokens.npz", positions=pos, values=values, freq=fired / codes.shape[0])

    return step.run("feature_tokens", asdict(p), {"codes": codes_art}, produce, version=VERSION)


def feature_tokens(study: Study, side: Side) -> FeatureTokens:
    """Top-activating eval units of every feature of ``side`` and its firing frequency (cached)."""
    art = feature_tokens_artifact(study, side)
    return FeatureTokens(**art.arrays("tokens.npz"), artifact=art)


def top_token_strings(study: Study, side: Side) -> list[list[str]]:
    """For every feature of ``side``, the strings of its top-activating units (tokens, or aligned text spans)."""
    return [study.unit_strings(side.model, row[row >= 0]) for row in feature_tokens(study, side).positions]
