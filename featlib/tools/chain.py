"""Run the numbered notebooks in order with papermill (``make figures``).

``python -m featlib.tools.chain --profile tiny`` executes ``notebooks/NN_*.ipynb`` with the profile
injected (papermill sets exactly ``profile`` and ``overrides`` in each notebook's parameters cell),
writes the executed copies to ``build/<label>/`` (the sources stay as they are), and writes
``figures/<label>/profile.yaml`` (the resolved profile: every default and override filled in) and
``figures/<label>/manifest.json``: the resolved profile, seconds per notebook, and for every figure
the notebook and profile that made it and the hash of the parameters, and every result table
(``results/<label>/<notebook>__<name>.csv``) with its notebook. ``--only`` re-runs some notebooks and
updates the manifest (the times of the others are kept when the parameters are the same); an
``--only`` that matches no notebook is an error.

``--set KEY=VALUE`` (repeatable) overrides one value of the profile; VALUE is read as YAML
(``--set similarity.n_shuffles=100 --set layers.A=[1,2]``). A run with overrides is labelled
``<profile>+<hash of the overrides>``, so its figures never land in the named profile's folder.
``--list`` prints the profiles. ``--in-place`` instead executes the source notebooks themselves with
the defaults of their ``parameters`` cell (the ``tiny`` profile), which is how the committed,
executed notebooks are made. A wrong profile or ``--set`` is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from jupyter_client.manager import AsyncKernelManager

from ..config import PARAMS_DIR, REPO, ConfigError, available_profiles, build, profile_path
from ..plots import RESULTS, resolved_profile
from ..step import write_json as write_json_atomic
from .tidy import tidy

NOTEBOOKS = REPO / "notebooks"
# kernels on this machine talk through Unix sockets (IPC) instead of TCP on localhost, which ipykernel
# warns about on every start ("running over TCP without encryption")
LOCAL_KERNEL = {"KernelManager": {"transport": "ipc"}}


class IdleShutdownKernelManager(AsyncKernelManager):
    """A kernel manager that does not interrupt the kernel it is shutting down.

    jupyter_client sends SIGINT before its shutdown request; papermill shuts the kernel down right after the
    reply to its last ``kernel_info_request``, so the signal can land while ipykernel is still inside that
    handler, which then logs "KeyboardInterrupt caught in kernel" on a run that succeeded (about one run in
    five here). The chain's kernels are idle when it shuts them down: the shutdown request alone stops them.
    """

    async def _async_interrupt_kernel(self) -> None:
        if not self.shutting_down:
            await super()._async_interrupt_kernel()


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order (optionally those whose name starts with one of ``only``)."""
    nbs = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    return [nb for nb in nbs if not only or any(nb.name.startswith(o) for o in only)]


def notebook_parameters(path: Path) -> tuple[str, dict[str, Any]]:
    """``profile`` and ``overrides`` as a notebook's parameters cell sets them (plain literals)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values = {s.targets[0].id: ast.literal_eval(s.value) for s in ast.parse(cell.source).body
              if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)}
    return values["profile"], values.get("overrides") or {}


def profile_ref(profile: str) -> str:
    """What papermill injects as ``profile``: a name in params/, else the YAML file's absolute path
    (the notebooks run in notebooks/, so a relative path would not resolve there)."""
    path = profile_path(profile).resolve()
    return profile if path == (PARAMS_DIR / f"{profile}.yaml").resolve() else str(path)


def describe_profiles() -> list[tuple[str, str]]:
    """Every profile in params/ with the first comment line of its YAML."""
    out = []
    for name in available_profiles():
        lines = (PARAMS_DIR / f"{name}.yaml").read_text().splitlines()
        first = next((ln.lstrip("#").strip() for ln in lines if ln.startswith("#")), "")
        out.append((name, first))
    return out


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["similarity.n_shuffles=100", "layers.A=[1, 2]"]`` -> ``{"similarity.n_shuffles": 100, "layers.A": [1, 2]}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not KEY=VALUE. Fix: write e.g. --set similarity.n_shuffles=100.")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({' '.join(str(e).split())}). "
                              "Fix: quote it, e.g. --set 'layers.A=[1, 2]'.") from None
    return out


def run(profile: str, only: list[str] | None = None, in_place: bool = False,
        overrides: dict[str, Any] | None = None) -> dict[str, float]:
    """Execute the chain on a profile name or a profile YAML file (plus overrides); returns seconds per notebook."""
    import nbformat
    import papermill
    from traitlets.config import Config

    overrides = dict(overrides or {})
    cfg = build(profile, overrides)  # validate before spending any time
    if in_place:
        defaults = notebook_parameters(notebooks()[0])
        if (cfg.profile, overrides) != defaults:
            raise ConfigError(f"--in-place runs the notebooks with their own parameters (profile = {defaults[0]!r}, "
                              f"overrides = {defaults[1]!r}), not {cfg.label!r}. Fix: drop --in-place, or run "
                              f"--profile {defaults[0]} without --set.")
    chosen = notebooks(only)
    if not chosen:
        raise ConfigError(f"--only {' '.join(only or [])} matches no notebook; allowed: prefixes of "
                          f"{', '.join(nb.stem for nb in notebooks())}. Fix: give e.g. --only 03 04.")
    label = cfg.label
    params = {"profile": profile_ref(profile), "overrides": overrides}
    out_dir = REPO / "build" / label
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = resolved_profile(cfg)
    timings: dict[str, float] = {}
    for nb in chosen:
        t0 = time.time()
        print(f"[{label}] {nb.name}", flush=True)
        out = nb if in_place else out_dir / nb.name
        executed = papermill.execute_notebook(
            str(nb), str(out), parameters=None if in_place else params,
            cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False, log_output=False,
            config=Config(LOCAL_KERNEL), kernel_manager_class=IdleShutdownKernelManager,
        )
        tidied = out.with_name(out.name + ".tmp")  # progress bars and machine paths dropped (featlib.tools.tidy)
        nbformat.write(tidy(executed), tidied)
        tidied.replace(out)
        timings[nb.stem] = round(time.time() - t0, 1)
        print(f"[{label}] {nb.name} done in {timings[nb.stem]:.0f} s", flush=True)
    if only and (fig_dir / "manifest.json").is_file():  # keep the times of the notebooks not re-run now
        before = json.loads((fig_dir / "manifest.json").read_text())
        if before.get("params_hash") == cfg.params_hash:
            timings = {**before.get("seconds", {}), **timings}
    figures = sorted(fig_dir.glob("*.png"))
    manifest = {
        "label": label, "profile": cfg.profile, "overrides": overrides, "params_hash": cfg.params_hash,
        "source": cfg.source, "resolved": cfg.as_dict(), "seconds": timings,
        "figures": [
            {"figure": str(p.relative_to(REPO)), "pdf": str(p.with_suffix(".pdf").relative_to(REPO)),
             "notebook": f"notebooks/{p.name.split('__')[0]}.ipynb", "profile": cfg.profile, "label": label,
             "params_hash": cfg.params_hash}
            for p in figures
        ],
        "results": [{"table": str(p.relative_to(REPO)), "notebook": f"notebooks/{p.name.split('__')[0]}.ipynb"}
                    for p in sorted((RESULTS / label).glob("*.csv"))],
    }
    write_json_atomic(fig_dir / "manifest.json", manifest)
    return {nb.stem: timings[nb.stem] for nb in chosen}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m featlib.tools.chain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny", help="a profile name (params/NAME.yaml) or a profile YAML file")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", dest="sets",
                    help="override one value, e.g. similarity.n_shuffles=100 (VALUE is YAML; repeatable)")
    ap.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 03 04")
    ap.add_argument("--in-place", action="store_true", help="execute the source notebooks with their defaults")
    ap.add_argument("--list", action="store_true", help="list the profiles in params/ and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, comment in describe_profiles():
            print(f"{name:14s} {comment}")
        return 0
    t0 = time.time()
    try:
        overrides = parse_sets(args.sets)
        label = build(args.profile, overrides).label
        run(args.profile, args.only, args.in_place, overrides)
    except ConfigError as e:
        print(f"featuniv: {e}", file=sys.stderr)
        return 2
    print(f"[{label}] chain finished in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
