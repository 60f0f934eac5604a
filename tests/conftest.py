import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# numba's OpenMP pool (umap-learn, pynndescent) keeps spinning beside torch's and slowed every later test
# of the session up to 80x; featlib.atlas picks the work-queue layer too (atlas.numba_workqueue)
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
# The tests' Hugging Face hub cache: empty, or filled with local stand-ins by the `standins` fixture.
# Set before anything imports huggingface_hub, which reads it once.
STANDINS = Path(tempfile.mkdtemp(prefix="featuniv-standins-"))
os.environ["HF_HUB_CACHE"] = str(STANDINS / "hub")


@pytest.fixture(scope="session")
def standins() -> Path:
    """Stand-ins for the paper profiles' hub downloads (see tests/standins.py); returns their root."""
    import huggingface_hub.constants

    import standins as builder

    assert huggingface_hub.constants.HF_HUB_CACHE == os.environ["HF_HUB_CACHE"], "huggingface_hub was imported too early"
    builder.build(STANDINS)
    return STANDINS


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(STANDINS, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """``slow`` (left out by ``make test-fast``) also marks every test under tests/chain/ (a whole chain through
    papermill) and every test that asks for the ``standins`` fixture (about a minute to build them); other slow
    tests carry the marker in their own files (docs/tests.md)."""
    chain = Path(__file__).parent / "chain"
    for item in items:
        if chain in item.path.parents or "standins" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
