"""The registry of similarity metrics: each metric family module (:mod:`featlib.metrics.cca`, ...) describes
its metrics as :class:`Metric` objects and :func:`register` s them when imported; :mod:`featlib.similarity`
runs any registered metric by name, and an unknown name is an error (:func:`get`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .common import Pair

#: Settings of :class:`~featlib.metrics.common.Pair` a metric may read (:attr:`Metric.uses`).
SETTINGS = ("variance", "knn_k", "n_splits", "seed")


@dataclass(frozen=True)
class Metric:
    """One similarity metric of paired rows (higher = more similar), as :func:`featlib.similarity.compare_with_nulls`
    and :func:`featlib.similarity.scores` run it. Every callable takes the :class:`~featlib.metrics.common.Pair`."""

    name: str  # the key of summaries, nulls and tables
    display: str  # the name in figures and messages
    min_pairs: int  # fewer pairs: not scorable ("<display> needs at least <min_pairs> pairs"); 0: only `rule`
    score: Callable[[Pair], float]  # the observed score
    null: Callable[[Pair, int], np.ndarray]  # (n_shuffles,) scores of re-paired rows (the null distribution)
    version: int = 1  # of its code: part of the geometry and calibration cache keys; bump when its numbers change
    p_value: Callable[[Pair, float, np.ndarray], float] | None = None  # (pair, observed, null); None: common.p_value
    extra: Callable[[Pair], dict[str, Any]] | None = None  # summary extras (also passed to `rule`)
    checks: Callable[[Pair], dict[str, Any]] | None = None  # more inputs of `rule`, only when n >= min_pairs
    rule: Callable[..., str | None] | None = None  # rule(n, **extras) -> why not scorable, after min_pairs
    uses: tuple[str, ...] = ()  # the Pair settings its score reads (of SETTINGS; every null reads the seed)
    # random_subset_null: None: not drawn; "scorable": NaN on a draw where the metric is not scorable;
    # "plain": the score of every draw (SVCCA: its k > n/2 rule is not applied to the random sets)
    subsets: Literal[None, "scorable", "plain"] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name.isidentifier()):
            raise ValueError(f"a metric name must be an identifier, got {self.name!r}")
        if isinstance(self.min_pairs, bool) or not isinstance(self.min_pairs, int) or self.min_pairs < 0:
            raise ValueError(f"metric {self.name!r}: min_pairs must be an integer >= 0, got {self.min_pairs!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"metric {self.name!r}: version must be an integer >= 1, got {self.version!r}")
        if not set(self.uses) <= set(SETTINGS):
            raise ValueError(f"metric {self.name!r}: uses must name settings of {SETTINGS}, got {self.uses!r}")
        if self.subsets not in (None, "scorable", "plain"):
            raise ValueError(f"metric {self.name!r}: subsets must be None, 'scorable' or 'plain', got {self.subsets!r}")


_REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add ``metric`` (after those registered before it); its name must be new."""
    if not isinstance(metric, Metric):
        raise TypeError(f"register takes a Metric, got {type(metric).__name__}")
    if metric.name in _REGISTRY:
        raise ValueError(f"metric {metric.name!r} is already registered")
    _REGISTRY[metric.name] = metric
    return metric


def unregister(name: str) -> Metric:
    """Remove the metric ``name`` (registered) and return it."""
    get(name)
    return _REGISTRY.pop(name)


@contextmanager
def registered(metric: Metric) -> Iterator[Metric]:
    """``metric`` registered inside the block and unregistered after it (for tests)."""
    register(metric)
    try:
        yield metric
    finally:
        unregister(metric.name)


def get(name: str) -> Metric:
    """The registered metric ``name``; ValueError naming it and the registered metrics if there is none."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown metric {name!r}; registered metrics: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    """The names of every registered metric, in registration order."""
    return tuple(_REGISTRY)


def versions(metrics: tuple[str, ...] | None = None) -> dict[str, int]:
    """``{name: version}`` of ``metrics`` (default: every registered metric): what cache keys record."""
    return {m: get(m).version for m in (names() if metrics is None else metrics)}


def display(name: str) -> str:
    """The display name of ``name``, or ``name`` itself when no such metric is registered."""
    return _REGISTRY[name].display if name in _REGISTRY else name
