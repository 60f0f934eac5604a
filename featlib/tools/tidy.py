"""What an executed notebook keeps: its results, not the run's progress bars or the machine it ran on.

Progress bars show progress while a cell runs; stored, they are noise (notebook 07 held 1,561 of them,
02 one widget per SAE stuck at "0%"). :func:`tidy_outputs` drops tqdm's text bars from stderr (every
other stderr line, a warning say, stays) and the widget views of ``tqdm.auto``, whose state a stored
notebook does not keep anyway. :func:`tidy` also drops the widgets' saved state from the notebook's
metadata, and stores papermill's notebook paths relative to the
repository, so that no machine's folders are committed. The chain (:mod:`featlib.tools.chain`) tidies
every notebook it executes; nbval's plugin (``tests/nbval_plugin.py``) tidies the fresh run the same
way before comparing.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..config import REPO

# tqdm's bar with a total ("desc:  35%|███▍      | 102400/294912 [00:06<00:11, 16950.74it/s]") and
# without one ("desc: 12it [00:01, 9.50it/s]")
BAR = re.compile(r"\d{1,3}%\|[^|]*\|\s*[\d.]+[kMG]?/[\d.?]+[kMG]?\s*\[|\d+(\.\d+)?[kMG]?it \[\d+:\d\d")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the cursor moves of nested bars
WIDGET = "application/vnd.jupyter.widget-view+json"


def _without_bars(text: str) -> str:
    """``text`` (a stderr stream) without its progress-bar segments (split at carriage returns and newlines)."""
    kept = [seg for seg in re.split(r"[\r\n]", text) if ANSI.sub("", seg).strip() and not BAR.search(seg)]
    return "".join(seg + "\n" for seg in kept)


def tidy_outputs(outputs: list[Any]) -> list[Any]:
    """A code cell's outputs without progress bars: stderr streams lose their bar lines (and are dropped
    when nothing else is left), widget views are dropped; every other output is kept as it is."""
    kept = []
    for out in outputs:
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            text = out["text"] if isinstance(out["text"], str) else "".join(out["text"])
            text = _without_bars(text)
            if text:
                kept.append(type(out)({**out, "text": text}))
        elif not (out.get("output_type") == "display_data" and WIDGET in out.get("data", {})):
            kept.append(out)
    return kept


def tidy(nb: Any) -> Any:
    """``nb`` (an nbformat notebook, changed in place and returned) with tidied outputs in every code cell,
    without the saved state of widgets, and papermill's ``input_path`` / ``output_path`` relative to the
    repository."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = tidy_outputs(cell.outputs)
    nb.metadata.pop("widgets", None)  # the dropped widget views' saved state (230 KB in notebook 02)
    pm = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if pm.get(key) and os.path.isabs(pm[key]):
            pm[key] = os.path.relpath(pm[key], REPO)
    return nb
