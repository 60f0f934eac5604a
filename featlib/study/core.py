"""The study: a profile's models, their cached activations, and the *sides* and *comparisons* it scores.

A :class:`Side` is one sparse dictionary: a model, a layer and an SAE variant (the profile's SAE —
published, or trained here with ``sae.seed`` — or an SAE trained here with another seed). A
:class:`Comparison` is two sides read over the same units. Matching (03), the geometry metrics with
their nulls (04–05), concept groups (06) and the atlas (08) take comparisons, so the same chain scores
each comparison the profile lists (``comparisons``: any two of its models, ``cross``), each model's SAE
against a second SAE of the same model and layer trained with another seed (``seed``, the *ceiling*: how
alike can two dictionaries of one network be?) and each model's SAE against the SAE of a random
re-initialisation of the same architecture (``random_init``, the *floor*: what token identity and
architecture give without learning). Ceilings and floors are computed at the layers ``references.layers``
names (:meth:`Study.reference_layers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .. import step
from ..activations import Activations, ensure_activations
from ..config import REFERENCE_KINDS, Config
from ..models import LoadedModel, display_name, load_model, random_init
from ..saes import LossBaselines, SaeTraining, check_width, load_pretrained, load_trained, published_identity, train_all

COMPARISON_KINDS = {
    "cross": "one model vs another (each with the profile's SAE)",
    "model_seed": "one model vs a second training run of its architecture with another seed (each with its SAE)",
    "seed": "one model's SAE vs a second SAE of the same model and layer trained with another seed (ceiling)",
    "random_init": "one model's SAE vs the SAE of a random re-initialisation of its architecture (floor)",
}


@dataclass(frozen=True)
class Side:
    """One sparse dictionary: model ``model`` at layer ``layer`` with its SAE; ``seed`` None is the
    profile's SAE (published, or trained here with ``sae.seed``), an int an SAE trained here with that seed;
    ``random_init``: the model's architecture randomly re-initialised (``comparisons.init_seed``), its SAE
    trained like the profile's."""

    model: str
    layer: int
    seed: int | None = None
    random_init: bool = False

    @property
    def name(self) -> str:
        """E.g. ``A2``, ``A2 (seed 1)`` or ``A2 (random init)``."""
        return (
            f"{self.model}{self.layer}"
            + (" (random init)" if self.random_init else "")
            + ("" if self.seed is None else f" (seed {self.seed})")
        )


@dataclass(frozen=True)
class Comparison:
    """Two sides compared over the same eval units."""

    kind: str  # a key of COMPARISON_KINDS
    a: Side
    b: Side

    @property
    def name(self) -> str:
        """E.g. ``cross A2–B3`` or ``seed A2–A2 (seed 1)``."""
        return f"{self.kind} {self.a.name}–{self.b.name}"

    def at(self, la: int, lb: int) -> Comparison:
        """The same comparison (models and SAE variants) at other layers."""
        return replace(self, a=replace(self.a, layer=la), b=replace(self.b, layer=lb))


@dataclass
class Study:
    """Models and cached activations of one profile, with its SAEs memoised per side."""

    cfg: Config
    models: dict[str, LoadedModel]
    acts: dict[str, dict[str, Activations]]
    _saes: dict[Side, Any] = field(default_factory=dict, repr=False)
    _random: dict[str, tuple[LoadedModel, dict[str, Activations]]] = field(default_factory=dict, repr=False)
    _strings: dict[str, list[str]] = field(default_factory=dict, repr=False)
    # phrase-group members per (side, rule) (06; featlib.study.groups.phrase_members)
    phrase_memo: dict[tuple[Side, str], Any] = field(default_factory=dict, repr=False)
    # clean and zero-ablated next-token losses per (model, eval units, batches), shared by its SAEs (02)
    ce_baselines: dict[tuple[str, str, int], LossBaselines] = field(default_factory=dict, repr=False)

    @property
    def ids(self) -> list[str]:
        return list(self.models)

    # ---- sides and comparisons -------------------------------------------------------------
    @property
    def listed(self) -> list[Comparison]:
        """The comparisons the profile lists (``comparisons``), in its order."""
        return [Comparison(c.kind, Side(c.a, c.layers[0]), Side(c.b, c.layers[1])) for c in self.cfg.comparisons]

    @property
    def comparisons(self) -> list[Comparison]:
        """The profile's comparisons, then the ceilings (``seed``) and floors (``random_init``) of their sides
        (:meth:`references`), each once."""
        refs = [r for c in self.listed for r in self.references(c)]
        order = {k: i for i, k in enumerate(REFERENCE_KINDS)}
        return self.listed + sorted(dict.fromkeys(refs), key=lambda r: order[r.kind])

    def references(self, comparison: Comparison) -> list[Comparison]:
        """The ceilings (``seed``) and floors (``random_init``) of the cell ``comparison``: for each of its sides
        whose model is among ``references.models``, when listed in ``references.run`` and computed at that
        side's layer (:meth:`reference_layers`)."""
        refs, out = self.cfg.references, []
        for k in REFERENCE_KINDS:
            if k not in refs.run:
                continue
            for side in (comparison.a, comparison.b):
                m = side.model
                if m in refs.models and side.layer in self.reference_layers(m):
                    own = Side(m, side.layer)
                    other = (
                        Side(m, side.layer, seed=refs.second_seed)
                        if k == "seed"
                        else Side(m, side.layer, random_init=True)
                    )
                    out.append(Comparison(k, own, other))
        return out  # a comparison's two sides are two models (config.build refuses a == b): no repeats

    def has_references(self, comparison: Comparison) -> bool:
        """Whether the cell ``comparison`` has a ceiling and a floor for each of its sides' models that
        ``references.models`` lists (and at least one): what calibrating it needs."""
        refs = self.references(comparison)
        models = [s.model for s in (comparison.a, comparison.b) if s.model in self.cfg.references.models]
        return bool(models) and all(sum(r.kind == k for r in refs) == len(models) for k in REFERENCE_KINDS)

    def diagonal(self, comparison: Comparison) -> list[tuple[int, int]]:
        """The layer pairs of ``comparison``'s two models of equal relative depth: each extracted layer of the
        model with fewer of them with the other model's extracted layer nearest in relative depth (ties: the
        shallower one); (layer of side a, layer of side b)."""
        a, b = comparison.a.model, comparison.b.model
        la_all, lb_all = self.cfg.layers[a], self.cfg.layers[b]
        flip = len(la_all) > len(lb_all)
        (x, xs), (y, ys) = ((b, lb_all), (a, la_all)) if flip else ((a, la_all), (b, lb_all))
        out = []
        for lx in xs:
            ly = min(ys, key=lambda L: (round(abs(self.relative_depth(y, L) - self.relative_depth(x, lx)), 9), L))
            out.append((ly, lx) if flip else (lx, ly))
        return out

    def reference_layers(self, model_id: str) -> list[int]:
        """The layers of ``model_id`` with a ceiling and a floor (``references.layers``: ``focus`` = its layers
        in the comparisons; ``diagonal`` = also the :meth:`diagonal` of each comparison naming it; ``all`` =
        every extracted layer)."""
        where = self.cfg.references.layers
        if where == "all":
            return list(self.cfg.layers[model_id])
        out = set()
        for c in self.listed:
            cells = [(c.a.layer, c.b.layer)] + (self.diagonal(c) if where == "diagonal" else [])
            for i, side in enumerate((c.a, c.b)):
                if side.model == model_id:
                    out |= {cell[i] for cell in cells}
        return sorted(out)

    def reference_sides(self) -> list[Side]:
        """Every side of a ceiling or floor at every layer where they are computed (over every comparison's grid)."""
        sides = {r.b for c in self.listed for cell in self.grid(c) for r in self.references(cell)}
        return sorted(sides, key=lambda s: (self.ids.index(s.model), s.layer, s.random_init))

    def comparison(self, kind: str) -> Comparison:
        """The profile's first comparison of ``kind`` (``cross``, ``seed``, ``random_init``)."""
        found = [c for c in self.comparisons if c.kind == kind]
        if not found:
            raise ValueError(
                f"comparison {kind!r} is not in this profile (comparisons: "
                f"{', '.join(c.name for c in self.comparisons)}). Fix: list it in comparisons, or "
                "add it to references.run, in the profile (or overrides)."
            )
        return found[0]

    @property
    def focus(self) -> Comparison:
        """The profile's first comparison (``comparisons[0]``)."""
        return self.listed[0]

    def grid(self, comparison: Comparison) -> list[Comparison]:
        """``comparison`` at every extracted layer of its side A x every extracted layer of its side B."""
        la_all, lb_all = self.cfg.layers[comparison.a.model], self.cfg.layers[comparison.b.model]
        return [comparison.at(la, lb) for la in la_all for lb in lb_all]

    # ---- SAEs ------------------------------------------------------------------------------
    def sae_input(self, side: Side) -> step.Input:
        """What identifies a side's SAE as a step input, without training it: the trained SAE's
        artifact (located under :func:`featlib.step.planning`), or the published SAE's name (release,
        id, format, layer)."""
        with step.planning():
            return self._sae_source(side)

    def _training(self, side: Side) -> SaeTraining | None:
        """How ``side``'s SAE is trained here; None for the published SAE of ``sae.source: pretrained``."""
        if self.cfg.sae.source == "pretrained" and side.seed is None and not side.random_init:
            return None
        return SaeTraining.of(
            self.cfg,
            side.model,
            side.layer,
            self.acts_of(side, "train"),
            self.cfg.sae.seed if side.seed is None else side.seed,
        )

    def _sae_source(self, side: Side) -> step.Input:
        training = self._training(side)
        return published_identity(self.cfg, side.model, side.layer) if training is None else training.artifact()

    def train_saes(self, sides: list[Side]) -> int:
        """Train the SAEs of ``sides`` that are trained here and not cached yet, in parallel worker processes
        where more than one fits (:func:`featlib.saes.train_all`); returns the number of workers (1: each
        SAE trains when first asked for)."""
        return train_all([t for t in map(self._training, sides) if t is not None])

    def sae(self, side: Side) -> Any:
        """The SAE of ``side`` (loaded once per study; trained and cached first when needed)."""
        if side not in self._saes:
            lm = self.model_of(side)
            device = lm.device
            source = self._sae_source(side)
            sae = (
                load_trained(source, device)
                if isinstance(source, step.Artifact)
                else load_pretrained(self.cfg, side.model, side.layer, device)
            )
            check_width(sae, lm, side.layer)
            self._saes[side] = sae.eval()
        return self._saes[side]

    def _random_model(self, model_id: str) -> tuple[LoadedModel, dict[str, Activations]]:
        """The random re-initialisation of ``model_id`` and its activations on the profile's units (made once)."""
        if model_id not in self._random:
            lm = random_init(self.models[model_id], self.cfg.references.init_seed)
            others = [lm if m == model_id else self.models[m] for m in self.ids]
            self._random[model_id] = lm, ensure_activations(self.cfg, others)[model_id]
        return self._random[model_id]

    def model_of(self, side: Side) -> LoadedModel:
        """The model ``side`` reads: the profile's, or its random re-initialisation."""
        return self._random_model(side.model)[0] if side.random_init else self.models[side.model]

    def acts_of(self, side: Side, split: str = "eval") -> Activations:
        """The ``split`` activations ``side``'s SAE reads (same units for every side of a model)."""
        return self._random_model(side.model)[1][split] if side.random_init else self.acts[side.model][split]

    def decoder_rows(self, side: Side, idx: np.ndarray) -> np.ndarray:
        """(len(idx), d_model) float64 decoder vectors of features ``idx`` of ``side``'s SAE."""
        W = self.sae(side).W_dec.detach()
        return W[np.asarray(idx, dtype=np.int64)].double().cpu().numpy()

    # ---- units and text --------------------------------------------------------------------
    def eval_acts(self, model_id: str) -> Activations:
        return self.acts[model_id]["eval"]

    def token_strings(self, model_id: str) -> list[str]:
        """Decoded string of every token id of a model's tokenizer (decoded once per study)."""
        if model_id not in self._strings:
            tok = self.models[model_id].tokenizer
            self._strings[model_id] = [tok.decode([i]) for i in range(len(tok))]
        return self._strings[model_id]

    def unit_strings(self, model_id: str, units: np.ndarray) -> list[str]:
        """The text of each of ``units`` (eval units of ``model_id``)."""
        acts = self.eval_acts(model_id)
        return acts.unit_strings(units, self.token_strings(model_id) if acts.spans is None else [])

    def context(self, model_id: str, unit: int, width: int = 8) -> str:
        """The eval text around ``unit``, the unit itself in [[double brackets]]."""
        return self.eval_acts(model_id).context(unit, self.models[model_id].tokenizer, width)

    def relative_depth(self, model_id: str, layer: int) -> float:
        """(layer + 1) / n_layers: the fraction of the model's blocks that have run at our layer ``layer``."""
        return (layer + 1) / self.models[model_id].n_layers

    def model_names(self) -> dict[str, str]:
        """Model id -> the name figures show (:func:`featlib.models.display_name`), e.g. ``{"A": "SmolLM2-135M-Instruct"}``."""
        return {mid: display_name(spec) for mid, spec in self.cfg.models.items()}

    def layer_labels(self, model_id: str) -> list[str]:
        """Tick labels "L (relative depth)" of a model's profile layers, for comparing models of other depths."""
        return [f"{L} ({self.relative_depth(model_id, L):.2f})" for L in self.cfg.layers[model_id]]


def open_study(cfg: Config, device: str = "auto") -> Study:
    """Load the profile's models on ``device`` ("auto": CUDA when present, else CPU; see
    :func:`featlib.models.resolve_device`) and extract (or reuse) their activations on the same units
    (tokens, or positions aligned across tokenizers: ``data.align``)."""
    models = {mid: load_model(mid, spec, device) for mid, spec in cfg.models.items()}
    return Study(cfg, models, ensure_activations(cfg, list(models.values())))


def figure_name(study: Study, name: str, comparison: Comparison) -> str:
    """A figure's name for ``comparison``: ``name`` for the profile's first comparison, ``name_<a><la>-<b><lb>``
    (e.g. ``heatmaps_A2-C1``) for the others, so that each comparison has its own file."""
    c = comparison
    return name if c == study.focus else f"{name}_{c.a.model}{c.a.layer}-{c.b.model}{c.b.layer}"
