import json

import pytest

from featlib import cache
from featlib.config import REPO


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUNIV_CACHE", str(tmp_path))
    return tmp_path


def test_publish_is_atomic_and_verified(tmp_cache):
    spec = {"x": 1}
    with cache.publish("thing", spec, {"seed": 3}) as tmp:
        (tmp / "a.txt").write_text("hello")
    path = cache.artifact_dir("thing", spec)
    assert cache.is_complete(path)
    assert cache.read_meta(path)["seed"] == 3
    assert not list(path.parent.glob(".*")), "no temporary folder left behind"


def test_failure_leaves_nothing_behind(tmp_cache):
    with pytest.raises(RuntimeError):
        with cache.publish("thing", {"x": 2}) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert not cache.artifact_dir("thing", {"x": 2}).exists()
    assert not list((tmp_cache / "thing").iterdir())


def test_corrupt_file_is_detected(tmp_cache):
    with cache.publish("thing", {"x": 3}) as tmp:
        (tmp / "a.txt").write_text("hello")
    path = cache.artifact_dir("thing", {"x": 3})
    (path / "a.txt").write_text("hellO")
    with pytest.raises(cache.CorruptCacheError, match="does not match its recorded checksum.*delete"):
        cache.is_complete(path)


def test_half_written_folder_is_detected(tmp_cache):
    path = cache.artifact_dir("thing", {"x": 4})
    path.mkdir(parents=True)
    (path / "a.txt").write_text("partial")
    with pytest.raises(cache.CorruptCacheError, match="half-written"):
        cache.is_complete(path)


def test_stable_hash_is_order_independent():
    assert cache.stable_hash({"a": 1, "b": [1, 2]}) == cache.stable_hash({"b": [1, 2], "a": 1})
    assert cache.stable_hash({"a": 1}) != cache.stable_hash({"a": 2})


def test_write_json_atomic(tmp_path):
    cache.write_json_atomic(tmp_path / "d" / "x.json", {"a": 1})
    assert json.loads((tmp_path / "d" / "x.json").read_text()) == {"a": 1}
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["x.json"]


def test_relative_cache_path_is_taken_from_the_repository(monkeypatch):
    """Notebooks run in notebooks/: a relative FEATUNIV_CACHE must not depend on the working directory."""
    monkeypatch.setenv("FEATUNIV_CACHE", "build/some-cache")
    assert cache.cache_root() == REPO / "build/some-cache"


def test_a_verified_artifact_is_not_hashed_again_until_it_changes_on_disk(tmp_cache, monkeypatch):
    """step.run checks an artifact's checksums once per process; an edit, a deletion or a replacement of
    its files on disk is noticed (their size, modification time or inode change) and checked again."""
    import os
    import shutil

    from featlib import step

    made, hashed = [], []
    real_sha = cache.file_sha256
    monkeypatch.setattr(cache, "file_sha256", lambda p: hashed.append(p.name) or real_sha(p))
    monkeypatch.setattr(step, "_verified", {})

    def run():
        return step.run("thing", {"x": 5}, {}, lambda tmp: made.append(1) or (tmp / "a.txt").write_text("hello"), version=1)

    art = run()
    assert made == [1] and hashed == ["a.txt"], "published: hashed once"
    hashed.clear()
    assert run() == art and run() == art and hashed == [], "reused: not hashed again"
    (art.path / "a.txt").write_text("hellO")  # same size, a later modification time
    with pytest.raises(cache.CorruptCacheError, match="does not match its recorded checksum"):
        run()
    shutil.rmtree(art.path)
    assert run() == art and made == [1, 1], "deleted: made again"
    hashed.clear()
    copy = art.path.with_name("copy")
    shutil.copytree(art.path, copy)
    shutil.rmtree(art.path)
    os.replace(copy, art.path)  # replaced by an identical folder: new inodes
    assert run() == art and hashed == ["a.txt"] and made == [1, 1], "replaced: checked again, reused"
