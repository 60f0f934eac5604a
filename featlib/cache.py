"""Content-addressed artifacts on disk, written atomically.

Every artifact lives at ``<cache root>/<kind>/<key>/`` where ``key`` is a short SHA-256 of the JSON
of everything that produced it (parameters, upstream keys, code version). A folder is published by
writing it under a temporary name and renaming it, and it carries a ``_complete.json`` marker holding
the producing spec and a checksum of every file: a half-written or corrupted artifact is detected
and reported, never silently reused. Concurrent writers of one key are safe (the first complete copy
stays; see :func:`publish`); temporary folders of dead processes are swept (:func:`sweep_stale`);
large arrays are allocated on disk before they are written (:func:`reserve`, :func:`preallocated_npy`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise CorruptCacheError(
            f"{marker} does not list the artifact's files (edited or written by another "
            f"program). Fix: delete '{path}' and re-run."
        )
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
def publish(
    kind: str, spec: dict[str, Any], meta: dict[str, Any] | None = None, root: Path | None = None
) -> Iterator[Path]:
    """Write an artifact atomically: yields a temporary folder; on success checksums and renames it.

    On any exception the temporary folder is removed and nothing is published. A complete artifact is
    never deleted: when another process published the same key meanwhile, this copy is discarded (the
    two are made from the same inputs); only a folder without a readable marker is replaced. Renames
    happen under a lock file per key, so that concurrent writers neither crash nor remove each other's
    work, and readers never see a folder disappear.
    """
    from filelock import FileLock

    final = artifact_dir(kind, spec, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final.parent.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{_owner()}.", dir=final.parent))
    try:
        yield tmp
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        record = {"kind": kind, "key": final.name, "spec": spec, "files": files, **(meta or {})}
        write_json_atomic(tmp / MARKER, record)
        locks = final.parent.parent / ".locks"
        locks.mkdir(exist_ok=True)
        with FileLock(locks / f"{kind}-{final.name}.lock"):
            if _complete(final):  # published by another process since we looked: keep that one
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                if final.exists():  # a damaged earlier copy (no readable marker)
                    shutil.rmtree(final)
                os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _complete(path: Path) -> bool:
    """:func:`is_complete` without the checksums, a damaged folder counting as absent."""
    try:
        return is_complete(path, verify=False)
    except CorruptCacheError:
        return False


def _owner() -> str:
    """``host-pid`` of this process, in the names of its temporary folders (see :func:`sweep_stale`)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


_swept: set[Path] = set()


def sweep_stale(root: Path) -> list[Path]:
    """Remove temporary artifact folders left by processes that died (SIGKILL, a full disk, a crash):
    those named for a process of this host that no longer runs. Done once per process and cache root
    (on the first publish); folders of running processes and of other hosts are kept. Returns the removed."""
    root = Path(root)
    if root in _swept:
        return []
    _swept.add(root)
    host = _owner().rsplit("-", 1)[0]
    removed = []
    for tmp in root.glob("*/.*.*.*"):
        m = re.fullmatch(r"\.[0-9a-f]+\.(.+)-(\d+)\.[^.]+", tmp.name)
        if not tmp.is_dir() or m is None or m.group(1) != host or _alive(int(m.group(2))):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class DiskFullError(OSError):
    """Not enough free disk for an artifact; the message names the size needed, the folder and the fix."""


def reserve(folder: Path, nbytes: int, what: str) -> None:
    """Raise :class:`DiskFullError` before writing ``nbytes`` into ``folder`` if the disk holds less free space
    (with 1 % and 64 MiB to spare)."""
    free = shutil.disk_usage(folder).free
    if free < nbytes * 1.01 + (64 << 20):
        raise DiskFullError(
            errno.ENOSPC,
            f"{what} need {_size(nbytes)} in {folder} but only {_size(free)} are free. "
            "Fix: free disk space, or set FEATUNIV_CACHE to a folder on a larger disk.",
        )


def preallocated_npy(path: Path, shape: tuple[int, ...], dtype: Any = "float32") -> Any:
    """A writable ``.npy`` memory map of ``shape`` whose blocks are allocated on disk at once
    (``posix_fallocate``): a full disk raises :class:`DiskFullError` here rather than SIGBUS in a later
    write through the map."""
    import numpy as np

    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate"):
        size = os.path.getsize(path)
        try:
            with open(path, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                del arr
                raise DiskFullError(
                    errno.ENOSPC,
                    f"the disk of {path.parent} is full: {_size(size)} could not be "
                    "allocated for " + path.name + ". Fix: free disk space, or set FEATUNIV_CACHE to "
                    "a folder on a larger disk.",
                ) from None
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    return arr


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


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
