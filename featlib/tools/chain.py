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
``--list`` prints the profiles, and every key with its help (the schema's description, else what it may
be) and default. ``--in-place`` instead executes the source notebooks themselves with
the defaults of their ``parameters`` cell (the ``tiny`` profile), which is how the committed,
executed notebooks are made. A wrong profile or ``--set`` is one line on stderr and exit status 2.

``--jobs N``: after 01-03 (activations, SAEs, matching: what every later notebook reads), which run one
after the other, up to N notebooks run at once. 04-09 read cached artifacts and compute what they miss, so
any order gives the same artifacts (the cache publishes each key once, under a lock); one that reuses what
another trains waits for it (:data:`NEEDS`), and the longest chain of the last run's times goes first. The
CPUs are shared out: with N at once each kernel gets 1/N of the threads (``OMP_NUM_THREADS`` and its kin;
kernels that each spin a full set of OpenMP threads on the same cores run many times slower), so its numbers
are those of a sequential run with that many threads. ``--jobs auto`` (``make figures``) runs two at once where
torch may use at least two CPUs and the memory allows, else one.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import tempfile
import time
import typing
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .. import config
from ..config import PARAMS_DIR, REPO, Config, ConfigError, available_profiles, build, parse_sets, profile_path
from ..plots import RESULTS, resolved_profile
from ..step import write_json as write_json_atomic
from .tidy import tidy

NOTEBOOKS = REPO / "notebooks"
# kernels on this machine talk through Unix sockets (IPC) instead of TCP on localhost, which ipykernel
# warns about on every start ("running over TCP without encryption"); each kernel gets its own socket
# path prefix (:func:`kernel_config`), else kernels started at once pick the same sockets
LOCAL_KERNEL = {"KernelManager": {"transport": "ipc"}}
# notebooks up to this prefix make what every later one reads (activations, SAEs, matching): they run in order
SHARED_STAGES = "03"
# later notebooks that reuse an expensive artifact of another: 09's universal-SAE method steers through the
# universal SAE that 07 trains (run at once, both would train it)
NEEDS = {"09": ("07",)}
# what one kernel of a later notebook holds besides the correlation's accumulator (``--jobs auto``)
KERNEL_BYTES = 2**30
# what sets the CPU arithmetic (the Makefile's PINNED_CPU pins them), recorded in the manifest
ARITHMETIC_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "OPENBLAS_CORETYPE",
)


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


def kernel_config(sockets: Path) -> Any:
    """papermill's kernel settings: IPC sockets named ``<sockets>-<n>`` (a path no other kernel uses)."""
    from traitlets.config import Config

    return Config({"KernelManager": {**LOCAL_KERNEL["KernelManager"], "ip": str(sockets)}})


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order (optionally those whose name starts with one of ``only``)."""
    nbs = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    return [nb for nb in nbs if not only or any(nb.name.startswith(o) for o in only)]


def notebook_parameters(path: Path) -> tuple[str, dict[str, Any]]:
    """``profile`` and ``overrides`` as a notebook's parameters cell sets them (plain literals)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values = {
        s.targets[0].id: ast.literal_eval(s.value)
        for s in ast.parse(cell.source).body
        if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)
    }
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


def describe_keys() -> list[tuple[str, str]]:
    """Every key a profile (or ``--set``) may give, with its help: the field's description in the schema
    (:class:`featlib.config.Profile` and its sections) when it has one, else what it may be; then its default
    ("required" where it has none). ``<id>`` stands for a model id, ``[]`` for an item of a list."""
    return [(key, _help(key, ann, f)) for key, ann, f in _fields(config.Profile, "") if key != "profile"]


def _fields(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, Any, FieldInfo]]:
    """(dotted key, annotation, field) of every leaf of ``model``: a section's fields, a model's per id, a list's
    per item, a mapping of ids to lists (``layers``) per id."""
    for name, f in model.model_fields.items():
        key, ann = f"{prefix}{name}", f.annotation
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _fields(ann, key + ".")
        elif origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
            yield from _fields(args[1], key + ".<id>.")
        elif origin is list and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            yield from _fields(args[0], key + "[].")
        elif origin is dict and typing.get_origin(args[1]) is list:
            yield key + ".<id>", args[1], f
        else:
            yield key, ann, f


def _help(key: str, ann: Any, f: FieldInfo) -> str:
    name = key.rsplit(".", 1)[-1]
    allowed = config.describe(ann, list(f.metadata) if ann is f.annotation else [], name)
    what = f"{f.description}; {allowed}" if f.description else allowed
    if f.is_required():
        return f"{what} (required)"
    return f"{what} (default {json.dumps(f.get_default(call_default_factory=True), ensure_ascii=False)})"


def auto_jobs(cfg: Config) -> int:
    """``--jobs auto``: notebooks at once after 03: at most 2, as the CPUs torch may use and the memory allow
    (a kernel may hold the correlation's accumulator, ``matching.max_bytes``, and about a GiB besides)."""
    from ..parallel import worker_count

    return worker_count(2, cfg.matching.max_bytes + KERNEL_BYTES)


# the kernels' thread counts, and the cores each may keep busy with single-threaded workers (featlib.parallel)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "FEATUNIV_CPUS")


@contextmanager
def threads_each(jobs: int) -> Iterator[None]:
    """Kernels started inside get 1/``jobs`` of the usable CPUs as their thread count (at least one)."""
    from ..parallel import usable_cpus

    before = {v: os.environ.get(v) for v in THREAD_VARIABLES}
    os.environ.update({v: str(max(1, usable_cpus() // jobs)) for v in THREAD_VARIABLES})
    try:
        yield
    finally:
        for v, value in before.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value


def parse_jobs(value: str, cfg: Config) -> int:
    """``--jobs``: a positive number, or ``auto`` (:func:`auto_jobs`)."""
    if value == "auto":
        return auto_jobs(cfg)
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"--jobs {value!r} is not a positive number or auto. Fix: give e.g. --jobs 2 or --jobs auto.")
    return int(value)


def run(
    profile: str,
    only: list[str] | None = None,
    in_place: bool = False,
    overrides: dict[str, Any] | None = None,
    jobs: int = 1,
) -> dict[str, float]:
    """Execute the chain on a profile name or a profile YAML file (plus overrides); returns seconds per
    notebook. ``jobs``: how many of the notebooks after 03 run at once (see the module doc)."""
    import nbformat
    import papermill

    overrides = dict(overrides or {})
    cfg = build(profile, overrides)  # validate before spending any time
    if in_place:
        defaults = notebook_parameters(notebooks()[0])
        if (cfg.profile, overrides) != defaults:
            raise ConfigError(
                f"--in-place runs the notebooks with their own parameters (profile = {defaults[0]!r}, "
                f"overrides = {defaults[1]!r}), not {cfg.label!r}. Fix: drop --in-place, or run "
                f"--profile {defaults[0]} without --set."
            )
    chosen = notebooks(only)
    if not chosen:
        raise ConfigError(
            f"--only {' '.join(only or [])} matches no notebook; allowed: prefixes of "
            f"{', '.join(nb.stem for nb in notebooks())}. Fix: give e.g. --only 03 04."
        )
    label = cfg.label
    params = {"profile": profile_ref(profile), "overrides": overrides}
    out_dir = REPO / "build" / label
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = resolved_profile(cfg)
    before = _manifest_seconds(fig_dir, cfg.params_hash)  # the last run's: to schedule, and kept after --only

    def execute(nb: Path) -> float:
        t0 = time.time()
        print(f"[{label}] {nb.name}", flush=True)
        out = nb if in_place else out_dir / nb.name
        executed = papermill.execute_notebook(
            str(nb),
            str(out),
            parameters=None if in_place else params,
            cwd=str(NOTEBOOKS),
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
            config=kernel_config(Path(sockets) / nb.name[:2]),
            kernel_manager_class=IdleShutdownKernelManager,
        )
        tidied = out.with_name(out.name + ".tmp")  # progress bars and machine paths dropped (featlib.tools.tidy)
        nbformat.write(tidy(executed), tidied)
        tidied.replace(out)
        seconds = round(time.time() - t0, 1)
        print(f"[{label}] {nb.name} done in {seconds:.0f} s", flush=True)
        return seconds

    timings: dict[str, float] = {}
    later = [nb for nb in chosen if nb.name[:2] > SHARED_STAGES]
    with tempfile.TemporaryDirectory(prefix="featuniv-kernels-") as sockets:
        for nb in chosen:
            if nb not in later:
                timings[nb.stem] = execute(nb)
        if jobs > 1 and len(later) > 1:
            with threads_each(jobs):
                timings.update(run_at_once(later, jobs, execute, before))
        else:
            timings.update((nb.stem, execute(nb)) for nb in later)
    order = [nb.stem for nb in notebooks()]
    # the times of the notebooks not re-run now are kept apart: they come from an earlier run (same parameters)
    earlier = {k: v for k, v in before.items() if k not in timings} if only else {}
    timings = {k: timings[k] for k in order if k in timings}
    figures = sorted(fig_dir.glob("*.png"))
    from ..parallel import cpu_vendor

    manifest = {
        "label": label,
        "profile": cfg.profile,
        "overrides": overrides,
        "params_hash": cfg.params_hash,
        "source": cfg.source,
        "resolved": cfg.as_dict(),
        # where the tables came from: the same arithmetic on a CPU of the same vendor gives the same bytes
        "arithmetic": {"cpu_vendor": cpu_vendor(), **{k: os.environ.get(k) for k in ARITHMETIC_VARIABLES}},
        "seconds": timings,
        "seconds in earlier runs": {k: earlier[k] for k in order if k in earlier},
        "figures": [
            {
                "figure": str(p.relative_to(REPO)),
                "pdf": str(p.with_suffix(".pdf").relative_to(REPO)),
                "notebook": f"notebooks/{p.name.split('__')[0]}.ipynb",
                "profile": cfg.profile,
                "label": label,
                "params_hash": cfg.params_hash,
            }
            for p in figures
        ],
        "results": [
            {"table": str(p.relative_to(REPO)), "notebook": f"notebooks/{p.name.split('__')[0]}.ipynb"}
            for p in sorted((RESULTS / label).glob("*.csv"))
        ],
    }
    write_json_atomic(fig_dir / "manifest.json", manifest)
    return {nb.stem: timings[nb.stem] for nb in chosen}


def run_at_once(
    nbs: list[Path], jobs: int, execute: Callable[[Path], float], before: dict[str, float]
) -> dict[str, float]:
    """``execute`` each notebook, ``jobs`` at a time, each after the ones it :data:`NEEDS` (those among ``nbs``);
    first the one heading the longest chain of ``before``'s seconds (one second where it has none)."""
    names = {nb.name[:2] for nb in nbs}

    def needs(nb: Path) -> set[str]:
        return set(NEEDS.get(nb.name[:2], ())) & names

    def chain_seconds(nb: Path) -> float:
        after = [m for m in nbs if nb.name[:2] in needs(m)]
        return before.get(nb.stem, 1.0) + max((chain_seconds(m) for m in after), default=0.0)

    pending = sorted(nbs, key=chain_seconds, reverse=True)
    done: set[str] = set()
    running: dict[Future[float], Path] = {}
    seconds: dict[str, float] = {}
    with ThreadPoolExecutor(jobs) as ex:
        while pending or running:
            for nb in [nb for nb in pending if needs(nb) <= done][: jobs - len(running)]:
                pending.remove(nb)
                running[ex.submit(execute, nb)] = nb
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                nb = running.pop(f)
                seconds[nb.stem] = f.result()  # a failed notebook raises here; the running ones finish first
                done.add(nb.name[:2])
    return seconds


def _manifest_seconds(fig_dir: Path, params_hash: str) -> dict[str, float]:
    """Seconds per notebook in the manifest of the last runs with these parameters (its own notebooks' and
    those it kept from earlier runs), or nothing."""
    path = fig_dir / "manifest.json"
    before = json.loads(path.read_text()) if path.is_file() else {}
    if before.get("params_hash") != params_hash:
        return {}
    return {**before.get("seconds in earlier runs", {}), **before.get("seconds", {})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m featlib.tools.chain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--profile", default="tiny", help="a profile name (params/NAME.yaml) or a profile YAML file")
    ap.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="sets",
        help="override one value, e.g. similarity.n_shuffles=100 (VALUE is YAML; repeatable)",
    )
    ap.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 03 04")
    ap.add_argument("--in-place", action="store_true", help="execute the source notebooks with their defaults")
    ap.add_argument("--jobs", default="1", help="notebooks run at once after 03: a number or auto (default 1)")
    ap.add_argument(
        "--list", action="store_true", help="list the profiles in params/ and every key with its help, and exit"
    )
    args = ap.parse_args(argv)
    if args.list:
        print("profiles (--profile NAME, in params/):")
        for name, comment in describe_profiles():
            print(f"  {name:14s} {comment}")
        keys = describe_keys()
        width = max(len(k) for k, _ in keys)
        print("keys (in a profile, or --set KEY=VALUE; the defaults are featlib/config.py's):")
        for key, text in keys:
            print(f"  {key:{width}s}  {text}")
        return 0
    t0 = time.time()
    try:
        overrides = parse_sets(args.sets)
        cfg = build(args.profile, overrides)
        label, jobs = cfg.label, parse_jobs(args.jobs, cfg)
        run(args.profile, args.only, args.in_place, overrides, jobs)
    except ConfigError as e:
        print(f"featuniv: {e}", file=sys.stderr)
        return 2
    print(f"[{label}] chain finished in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
