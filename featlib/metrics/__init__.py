"""Similarity metrics of paired rows, one module per family, each registering its metrics
(:class:`~featlib.metrics.registry.Metric`) in :mod:`featlib.metrics.registry`:

* :mod:`~featlib.metrics.cca`: ``svcca`` (SVCCA), ``svcca_heldout`` (held-out CCA);
* :mod:`~featlib.metrics.rsa`: ``rsa``;
* :mod:`~featlib.metrics.cka`: ``cka`` (linear CKA), ``cka_debiased`` (debiased linear CKA);
* :mod:`~featlib.metrics.knn`: ``mutual_knn`` (mutual k-NN);
* :mod:`~featlib.metrics.procrustes`: ``procrustes`` (Procrustes similarity);

and :mod:`~featlib.metrics.common` what they share. :data:`FAMILIES` lists these modules; importing them in its
order registers :data:`METRICS` in the summary order. :mod:`featlib.similarity` runs them; add a metric with a
new module listed there (docs/layout.md, "Adding a metric").
"""

from __future__ import annotations

import importlib

from .registry import Metric, display, get, names, register, registered, unregister, versions

#: The metric family modules, imported (so registering their metrics) in this order: the order of :data:`METRICS`.
FAMILIES: tuple[str, ...] = ("cca", "rsa", "cka", "knn", "procrustes")
for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")

#: The metrics featlib's own modules register, in summary order: what :func:`featlib.similarity.compare_with_nulls`
#: and :func:`featlib.similarity.scores` compute by default, and the geometry and calibration steps compute.
METRICS: tuple[str, ...] = names()
#: Display names of :data:`METRICS`.
METRIC_NAMES: dict[str, str] = {m: get(m).display for m in METRICS}
#: Metrics :func:`featlib.similarity.random_subset_null` can draw.
SUBSET_METRICS: tuple[str, ...] = tuple(m for m in METRICS if get(m).subsets)

__all__ = [
    "FAMILIES",
    "METRICS",
    "METRIC_NAMES",
    "SUBSET_METRICS",
    "Metric",
    "display",
    "get",
    "names",
    "register",
    "registered",
    "unregister",
    "versions",
]
