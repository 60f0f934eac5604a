"""``make site``: the executed notebooks as a static site, readable offline or from any static host.

``python -m featlib.tools.site [--label tiny ...] [--out build/site]`` renders, for each label, its
executed notebooks to HTML with nbconvert (JupyterLab's template; figures are inlined in the outputs):
``tiny`` from the committed ``notebooks/``, other labels from their committed runs in
``notebooks/<label>/`` (``smollm-gemma``) or from ``build/<label>/`` (what ``make figures PROFILE=...``
leaves there). Notebook 08 shows its atlas page in an IFrame that points into
``build/atlas/<label>/``: the page is copied beside the notebook (``<label>/atlas/``) and the IFrame
pointed at the copy, so the site works from disk; a page that is not on this machine is replaced by a
note naming ``make atlas``. ``index.html`` lists every label's notebooks with their titles and what
each shows. Every link is relative: open ``build/site/index.html`` in a browser.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import nbformat

from ..config import REPO
from .chain import NOTEBOOKS, notebooks

IFRAME_SRC = re.compile(r'(<iframe\b[^>]*\bsrc=")([^"]+)(")')
INDEX = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>featuniv: executed notebooks</title>
<style>
 body { font-family: sans-serif; max-width: 56em; margin: 2em auto; line-height: 1.45; color: #222; }
 h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; } li { margin: .5em 0; } .what { color: #555; }
</style></head><body>
<h1>featuniv: feature universality across language models</h1>
<p>The study's notebooks as executed, one list per profile. Each page is the notebook with its outputs;
notebook 08's atlas page is interactive and works offline.</p>
{% for label, pages in labels.items() %}<h2>{{ label }}</h2><ol>
{% for p in pages %}<li><a href="{{ label }}/{{ p.file }}">{{ p.title }}</a><br><span class="what">{{ p.what }}</span></li>
{% endfor %}</ol>
{% endfor %}</body></html>
"""


@dataclass(frozen=True)
class Page:
    file: str  # the HTML file, relative to its label's folder
    title: str  # "01 · Residual-stream activations ..."
    what: str  # the first sentence of the title cell's "What it shows" (its paragraph, when it has no full stop)


def sources() -> dict[str, Path]:
    """Label -> folder of executed notebooks: ``tiny`` (the committed ``notebooks/``), the committed runs of
    other profiles (``notebooks/<label>/``, e.g. ``smollm-gemma``), and every ``build/<label>/`` that holds
    executed numbered notebooks (a local ``make figures`` run; it replaces the committed run of its label)."""
    found = {"tiny": NOTEBOOKS}
    for root in (NOTEBOOKS, REPO / "build"):
        for folder in sorted(root.glob("*/")):
            if folder.name != "tiny" and not folder.name.startswith(".") and any(folder.glob("[0-9][0-9]_*.ipynb")):
                found[folder.name] = folder
    return found


def describe(nb: nbformat.NotebookNode, file: str) -> Page:
    """The title (the title cell's heading) and the first sentence of "What it shows" of one notebook."""
    text = nb.cells[0].source
    title = next((ln[2:].strip() for ln in text.splitlines() if ln.startswith("# ")), file)
    _, found, rest = text.partition("**What it shows.**")
    paragraph = re.split(r"\n\s*\n|\n\s*[-*] ", rest.strip())[0] if found else ""
    sentence = re.match(r"(.+?\.)(\s|$)", paragraph, re.S)
    what = sentence.group(1) if sentence else paragraph.rstrip(" :") + " …"
    return Page(file, title, " ".join(what.replace("`", "").replace("*", "").split()))


def embed_atlas(nb: nbformat.NotebookNode, label: str, folder: Path) -> list[str]:
    """Copy the atlas pages that ``nb``'s IFrames show into ``folder/atlas/`` and point the IFrames there;
    an IFrame whose page is missing becomes a note. Returns the pages that were missing."""
    missing = []

    def repoint(match: re.Match) -> str:
        src = (NOTEBOOKS / match.group(2)).resolve()
        if not src.is_file():
            missing.append(str(src.relative_to(REPO)) if src.is_relative_to(REPO) else str(src))
            return match.group(0)
        (folder / "atlas").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / "atlas" / src.name)
        return f"{match.group(1)}atlas/{html.escape(src.name)}{match.group(3)}"

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            page = out.get("data", {}).get("text/html")
            page = "".join(page) if isinstance(page, list) else page
            if page is None or "<iframe" not in page:
                continue
            before = len(missing)
            page = IFRAME_SRC.sub(repoint, page)
            if len(missing) > before:
                page = (
                    f"<p><em>The atlas page {html.escape(missing[-1])} is not on this machine: run "
                    f"<code>make atlas PROFILE={html.escape(label.split('+')[0])}</code>, then "
                    "<code>make site</code> again.</em></p>"
                )
            out["data"]["text/html"] = page
    return missing


def build_site(out: Path, labels: list[str] | None = None) -> Path:
    """Render the executed notebooks of ``labels`` (default: every label of :func:`sources`) into ``out``;
    returns ``out/index.html``."""
    from jinja2 import Template
    from nbconvert import HTMLExporter

    found = sources()
    unknown = sorted(set(labels or []) - set(found))
    if unknown:
        raise SystemExit(
            f"featuniv site: no executed notebooks for {', '.join(unknown)}; allowed: {', '.join(found)}. "
            "Fix: run `make figures PROFILE=<profile>` first, or pick one of those."
        )
    if out.exists() and any(out.iterdir()) and not (out / "index.html").is_file():
        raise SystemExit(f"featuniv site: {out} holds files that are not a site. Fix: give another --out.")
    tmp = out.with_name(f".{out.name}.tmp")  # built whole, then put in place of the old site
    shutil.rmtree(tmp, ignore_errors=True)
    exporter = HTMLExporter(template_name="lab")
    listed: dict[str, list[Page]] = {}
    for label in labels or list(found):
        folder = tmp / label
        folder.mkdir(parents=True, exist_ok=True)
        listed[label] = []
        for path in notebooks():
            src = found[label] / path.name
            if not src.is_file():
                continue
            nb = nbformat.read(src, as_version=4)
            for page in embed_atlas(nb, label, folder):
                print(
                    f"featuniv site: {page} is missing (run `make atlas`); {label}/{path.stem}.html shows a note instead"
                )
            body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": f"{label}: {path.stem}"}})
            (folder / f"{path.stem}.html").write_text(body, encoding="utf-8")
            listed[label].append(describe(nb, f"{path.stem}.html"))
    (tmp / "index.html").write_text(Template(INDEX).render(labels=listed), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out / "index.html"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m featlib.tools.site", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--label", action="append", dest="labels", help="a label to render (repeatable; default all)")
    ap.add_argument("--out", default=str(REPO / "build" / "site"), help="the site's folder (default build/site)")
    args = ap.parse_args(argv)
    index = build_site(Path(args.out), args.labels)
    print(f"site: {index} ({', '.join(sorted(p.name for p in index.parent.iterdir() if p.is_dir()))})")


if __name__ == "__main__":
    main()
