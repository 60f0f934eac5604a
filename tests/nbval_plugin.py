"""A pytest plugin for `make test-nbval` (``-p tests.nbval_timeouts``): after a cell has finished, nbval
waits a fixed 5 s for its last outputs; on a loaded machine (`make test` runs two lanes) the kernel can
take longer to flush them, and the cell fails with "Timeout of 5 seconds exceeded waiting for output"."""

import pytest

OUTPUT_TIMEOUT_S = 120


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = OUTPUT_TIMEOUT_S
