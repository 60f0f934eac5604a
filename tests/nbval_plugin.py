"""A pytest plugin for `make test-nbval` (``-p tests.nbval_plugin``), two changes to nbval:

* the fresh run is tidied as the chain tidies the committed notebooks (``featlib.tools.tidy``: no
  progress bars, no progress widgets), and stderr is not compared: what is left of it is library
  warnings, which name the kernel's temporary files; stdout and every display still are.
* after a cell has finished, nbval waits a fixed 5 s for its last outputs; on a loaded machine (`make
  test` runs two lanes) the kernel can take longer to flush them, and the cell failed with "Timeout of 5
  seconds exceeded waiting for output". It waits up to 2 minutes.
"""

import pytest

from featlib.tools.tidy import tidy_outputs

OUTPUT_TIMEOUT_S = 120


def without_stderr(outputs):
    return [o for o in tidy_outputs(outputs) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if hasattr(item, "output_timeout") and hasattr(item, "compare_outputs"):
            item.output_timeout = OUTPUT_TIMEOUT_S
            compare = item.compare_outputs
            item.compare_outputs = (lambda test, ref, skip_compare=None, compare=compare:
                                    compare(without_stderr(test), without_stderr(ref), skip_compare))
