"""The tests' stand-ins for the paper profiles' hub downloads: :mod:`featlib.tools.standins` at its
``small`` scale (GPT-NeoX models with Pythia's architecture at small widths, eai-sparsify SAE folders,
a Gemma Scope ``params.npz`` of the real size, a parquet text dataset), built by the ``standins``
fixture of ``tests/conftest.py``."""

from featlib.tools.standins import GEMMA_LAYER, GEMMA_RELEASE, GEMMA_SAE_ID, build  # noqa: F401
