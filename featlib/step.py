"""One cached-step mechanism: every artifact of the study is made here (the only caller of
:mod:`featlib.cache`).

A *step* has a kind (``"codes"``, ``"matching"``, ...), named *inputs* — the artifacts (or, for
things that are not artifacts, such as a published SAE or a model's weights, an identity key) that
it reads — and its own explicit *parameters*. Its key is the hash of the inputs' keys, the
parameters and the step's code version, and nothing else:

* an upstream change (another model, dtype, data or SAE) gives the input another key, so every
  step downstream of it is re-keyed;
* a parameter the step does not read is not in its key, so changing it reuses the artifact.

Artifacts are published atomically with a checksum of every file (:mod:`featlib.cache`): a
half-written or damaged folder is reported with the folder to delete, never reused. A process checks an
artifact's checksums once: it is not read again while its files on disk keep their size, modification
time and inode (a deleted, replaced or edited artifact is checked, or made, again).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import cache

stable_hash = cache.stable_hash
file_sha256 = cache.file_sha256
write_json = cache.write_json_atomic
reserve = cache.reserve
preallocated_npy = cache.preallocated_npy


@dataclass(frozen=True)
class Artifact:
    """A published artifact: ``<cache root>/<kind>/<key>/``."""

    kind: str
    path: Path

    @property
    def key(self) -> str:
        return self.path.name

    def json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of an ``.npz`` file of the artifact, loaded into memory."""
        with np.load(self.path / name) as f:
            return dict(f)

    @property
    def meta(self) -> dict[str, Any]:
        """What was recorded when it was published: the spec (inputs, params, version) and extras."""
        return cache.read_meta(self.path)


Input = Artifact | str
_planning = False


_sha256_seen: dict[tuple[str, int, int], str] = {}


def content_sha256(path: Path) -> str:
    """SHA-256 of a file, hashed once per process while its size and modification time stay the same."""
    st = Path(path).stat()
    tag = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if tag not in _sha256_seen:
        _sha256_seen[tag] = file_sha256(path)
    return _sha256_seen[tag]


def identity(obj: Any) -> str:
    """The key of something that is not an artifact (a published SAE's name, a model's weights)."""
    return stable_hash(obj)


_verified: dict[Path, tuple[tuple[str, int, int, int], ...]] = {}  # folder -> its files' stat when last verified


def _signature(path: Path) -> tuple[tuple[str, int, int, int], ...] | None:
    """(name, size, mtime_ns, inode) of every file of an artifact folder; None when it is not there."""
    try:
        with os.scandir(path) as it:
            stats = [(e.name, e.stat()) for e in it]
    except (FileNotFoundError, NotADirectoryError):
        return None
    return tuple(sorted((n, st.st_size, st.st_mtime_ns, st.st_ino) for n, st in stats))


def spec(params: Mapping[str, Any], inputs: Mapping[str, Input], version: int) -> dict[str, Any]:
    """What a step's key is the hash of: its inputs' keys, its parameters and its code version."""
    keys = {name: x.key if isinstance(x, Artifact) else str(x) for name, x in inputs.items()}
    return {"inputs": keys, "params": dict(params), "version": version}


def run(
    kind: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, Input],
    produce: Callable[[Path], Any],
    *,
    version: int,
    meta: Mapping[str, Any] | None = None,
    root: Path | None = None,
    verify: bool = True,
) -> Artifact:
    """The artifact of one step: reused when it is published, else made by ``produce(folder)``, which
    writes its files into a temporary folder that is published atomically when it returns.

    ``meta`` is recorded with the artifact (seeds, what ran) but is not part of its key. ``root``:
    another cache root (converted models live in their own); ``verify``: check every file's checksum
    on reuse (off only for large artifacts that are read by other libraries).
    """
    s = spec(params, inputs, version)
    path = cache.artifact_dir(kind, s, root)
    if _planning:
        return Artifact(kind, path)
    if (before := _verified.get(path)) is not None and before == _signature(path):
        return Artifact(kind, path)
    if not cache.is_complete(path, verify=verify):
        with cache.publish(kind, s, dict(meta or {}), root) as tmp:
            produce(tmp)
    if verify and (verified := _signature(path)) is not None:
        _verified[path] = verified
    return Artifact(kind, path)


@contextmanager
def planning() -> Iterator[None]:
    """Inside this block :func:`run` makes nothing: it returns the artifact each step *would* make, so
    the keys of a whole chain can be computed (and compared) without training or extracting anything.
    Only the ``*_artifact`` functions of :mod:`featlib.study` (and ``Study.sae_input``, which locates a
    trained SAE this way) are meant to be called inside it."""
    global _planning
    before, _planning = _planning, True
    try:
        yield
    finally:
        _planning = before


model_cache_root = cache.model_cache_root
