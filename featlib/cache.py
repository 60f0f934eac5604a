"""Content-addressed artifacts on disk, written atomically.

Every artifact lives at ``<cache root>/<kind>/<key>/`` where ``key`` is a short SHA-256 of the JSON
of everything that produced it (parameters, upstream keys, code version). A folder is published by
writing it under a temporary name and renaming it, and it carries a ``_complete.json`` marker holding
the producing spec and a checksum of every file: a half-written or corrupted artifact is detected
and reported, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

MARKER = "_complete.json"


class CorruptCacheError(RuntimeError):
    """An artifact folder exists but is incomplete or its files do not match their checksums."""


def cache_root() -> Path:
    """The cache root: ``$FEATUNIV_CACHE`` if set (a relative path is taken from the repository
    root, since notebooks run in ``notebooks/``), else ``cache/`` at the repository root."""
    repo = Path(__file__).resolve().parent.parent
    return repo / os.environ.get("FEATUNIV_CACHE", "cache")


def stable_hash(obj: Any, length: int = 16) -> str:
    """SHA-256 (hex, truncated) of ``obj`` serialised as canonical JSON (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_cache_root() -> Path:
    """Where converted models live: ``$FEATUNIV_MODEL_CACHE`` if set, else ``cache/`` at the repository
    root. Separate from :func:`cache_root` so that runs in a fresh artifact cache (tests, ``make
    notebooks``) do not convert the same model again."""
    repo = Path(__file__).resolve().parent.parent
    return repo / os.environ.get("FEATUNIV_MODEL_CACHE", "cache")


def artifact_dir(kind: str, spec: dict[str, Any], root: Path | None = None) -> Path:
    """The folder of the artifact of ``kind`` produced by ``spec`` under ``root`` (default
    :func:`cache_root`); it may not exist yet."""
    return (root or cache_root()) / kind / stable_hash(spec)


def is_complete(path: Path, verify: bool = True) -> bool:
    """True if ``path`` holds a published artifact; raise CorruptCacheError if it is damaged.

    With ``verify`` every file's checksum is compared with the one recorded when it was written.
    """
    if not path.exists():
        return False
    marker = path / MARKER
    if not marker.exists():
        raise CorruptCacheError(
            f"cache folder {path} has no {MARKER}: it was left half-written. "
            f"Fix: delete it (rm -r '{path}') and re-run."
        )
    try:
        meta = json.loads(marker.read_text())
    except json.JSONDecodeError as e:
        raise CorruptCacheError(f"{marker} is not valid JSON ({e}). Fix: delete '{path}' and re-run.") from e
    if verify:
        for name, digest in meta["files"].items():
            f = path / name
            if not f.exists() or file_sha256(f) != digest:
                raise CorruptCacheError(
                    f"cache file {f} is missing or does not match its recorded checksum (corrupt or edited). "
                    f"Fix: delete '{path}' and re-run to rebuild it."
                )
    return True


def read_meta(path: Path) -> dict[str, Any]:
    """The spec and extra metadata recorded with an artifact."""
    return json.loads((path / MARKER).read_text())


@contextmanager
def publish(kind: str, spec: dict[str, Any], meta: dict[str, Any] | None = None, root: Path | None = None) -> Iterator[Path]:
    """Write an artifact atomically: yields a temporary folder; on success checksums and renames it.

    On any exception the temporary folder is removed and nothing is published.
    """
    final = artifact_dir(kind, spec, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        record = {"kind": kind, "key": final.name, "spec": spec, "files": files, **(meta or {})}
        write_json_atomic(tmp / MARKER, record)
        if final.exists():  # a concurrent or damaged earlier copy: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
