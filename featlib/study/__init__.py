"""The study, stage by stage: one module per notebook over one cached-step mechanism (:mod:`featlib.step`).

======================  ===========================================================================
``core``                :class:`Study` (models, activations, memoised SAEs), :class:`Side`,
                        :class:`Comparison` (the profile's comparisons, seed ceilings, random-init floors),
                        :func:`open_study`
``codes``               each side's SAE codes (sparse rows), top-activating units, firing frequency
``extraction``  (01)    what every model read and stored, a sample of the units, residual norms
``sae_quality`` (02)    every SAE's explained variance, L0, dead latents, CE loss recovered
``pairs``       (03)    correlation matching of a comparison, its filter funnel, the strongest pairs
``geometry``    (04–05) SVCCA, held-out CCA, RSA, CKA, debiased CKA, mutual k-NN, Procrustes vs
                        re-pairing nulls; the layer grid; the ceilings and floors at every layer
``scale``       (03–06) every cross score between its random-model floor and seed ceiling
``findings``    (01–09) the "What we find" paragraphs, written from the numbers
``groups``      (06)    concept groups (semantic subspaces) of single tokens and of phrases vs re-pairing and
                        random-set nulls; how phrase groups sit relative to each other in each model
``usae``        (07)    the universal SAE and what it shares
``atlas_view``  (08)    the feature atlas of a comparison
``transfer``    (09)    steering directions carried from one model to the other, against controls
======================  ===========================================================================
"""

from .atlas_view import atlas_comparison, atlas_page, feature_atlas, group_colors, pool_correlations
from .codes import FeatureTokens, feature_tokens, sae_codes, top_token_strings
from .core import COMPARISON_KINDS, Comparison, Side, Study, figure_name, open_study
from .extraction import extraction_table, residual_norms, same_units, unit_sample
from .findings import (
    atlas_findings,
    by_comparison,
    extraction_findings,
    firing_findings,
    grid_findings,
    group_findings,
    matching_findings,
    per_comparison,
    phrase_findings,
    sae_findings,
    scale_findings,
    transfer_findings,
)
from .geometry import (
    METRIC_NAMES,
    METRICS,
    Geometry,
    Score,
    compare_pairs,
    geometry_table,
    grid_matrix,
    layer_grid,
    reference_grid,
)
from .groups import (
    interaction_table,
    phrase_interactions,
    phrase_members,
    phrase_rules,
    phrase_scores,
    subspace_scores,
    unit_text,
)
from .pairs import Match, funnel_table, match, pair_table
from .sae_quality import sae_metrics, sae_table
from .scale import calibrate, calibrated_grid, calibration_table
from .transfer import Cell, dose_table, layer_table, success_by_r, success_table, transfer_cells, transfer_gallery
from .usae import (
    PairOverlap,
    USAEResults,
    counterpart_table,
    firing_summary,
    pick_concept,
    universal_metrics,
    universal_sae,
)

__all__ = [
    "COMPARISON_KINDS",
    "Cell",
    "Comparison",
    "FeatureTokens",
    "Geometry",
    "METRICS",
    "METRIC_NAMES",
    "Match",
    "Score",
    "Side",
    "Study",
    "PairOverlap",
    "USAEResults",
    "atlas_comparison",
    "atlas_findings",
    "by_comparison",
    "atlas_page",
    "calibrate",
    "calibrated_grid",
    "calibration_table",
    "compare_pairs",
    "counterpart_table",
    "dose_table",
    "extraction_findings",
    "extraction_table",
    "feature_atlas",
    "feature_tokens",
    "figure_name",
    "firing_findings",
    "firing_summary",
    "funnel_table",
    "geometry_table",
    "grid_findings",
    "grid_matrix",
    "group_colors",
    "group_findings",
    "interaction_table",
    "layer_grid",
    "layer_table",
    "match",
    "matching_findings",
    "open_study",
    "pair_table",
    "per_comparison",
    "phrase_findings",
    "phrase_interactions",
    "phrase_members",
    "phrase_rules",
    "phrase_scores",
    "pick_concept",
    "pool_correlations",
    "reference_grid",
    "residual_norms",
    "sae_codes",
    "sae_findings",
    "sae_metrics",
    "sae_table",
    "same_units",
    "scale_findings",
    "subspace_scores",
    "success_by_r",
    "success_table",
    "top_token_strings",
    "transfer_cells",
    "transfer_findings",
    "transfer_gallery",
    "unit_sample",
    "unit_text",
    "universal_metrics",
    "universal_sae",
]
