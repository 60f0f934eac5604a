"""Run the numbered notebooks in order with papermill (``make figures``).

``python -m featlib.chain --profile tiny`` executes ``notebooks/NN_*.ipynb`` with the profile's
parameters injected, writes the executed copies to ``build/<profile>/`` (the sources stay as they
are), and writes ``figures/<profile>/manifest.json``: for every figure, the notebook and profile that
made it and the hash of the parameters. ``--in-place`` instead executes the source notebooks
themselves with the defaults of their ``parameters`` cell (the ``tiny`` profile), which is how the
committed, executed notebooks are made.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .cache import write_json_atomic
from .config import REPO, build, load_profile
from .plots import FIGURES

NOTEBOOKS = REPO / "notebooks"


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order (optionally those whose name starts with one of ``only``)."""
    nbs = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    return [nb for nb in nbs if not only or any(nb.name.startswith(o) for o in only)]


def run(profile: str, only: list[str] | None = None, in_place: bool = False) -> dict[str, float]:
    """Execute the chain on a profile name or a profile YAML file; returns seconds per notebook."""
    import papermill

    params = load_profile(profile)
    profile = params["profile"]  # the label of the output folders
    cfg = build(profile, **{k: v for k, v in params.items() if k != "profile"})  # validate before spending any time
    out_dir = REPO / "build" / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    for nb in notebooks(only):
        t0 = time.time()
        print(f"[{profile}] {nb.name}", flush=True)
        papermill.execute_notebook(
            str(nb), str(nb if in_place else out_dir / nb.name), parameters=None if in_place else params,
            cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False, log_output=False,
        )
        timings[nb.stem] = round(time.time() - t0, 1)
        print(f"[{profile}] {nb.name} done in {timings[nb.stem]:.0f} s", flush=True)
    figures = sorted(p for p in (FIGURES / profile).glob("*.png"))
    manifest = {
        "profile": profile, "params_hash": cfg.params_hash, "seconds": timings,
        "figures": [
            {"figure": str(p.relative_to(REPO)), "pdf": str(p.with_suffix(".pdf").relative_to(REPO)),
             "notebook": f"notebooks/{p.name.split('__')[0]}.ipynb", "profile": profile, "params_hash": cfg.params_hash}
            for p in figures
        ],
    }
    if not only:
        write_json_atomic(FIGURES / profile / "manifest.json", manifest)
    return timings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny", help="a profile name (params/NAME.yaml) or a profile YAML file")
    ap.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 03 04")
    ap.add_argument("--in-place", action="store_true", help="execute the source notebooks with their defaults")
    args = ap.parse_args(argv)
    t0 = time.time()
    run(args.profile, args.only, args.in_place)
    print(f"[{args.profile}] chain finished in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
