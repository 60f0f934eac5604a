"""The chain's command line (featlib.tools.chain) without running any notebook: --list, --set, errors."""

import shutil
import subprocess
import sys

import nbformat
import pytest

from featlib import config, plots
from featlib.tools import chain


def test_list_prints_every_profile_with_its_first_comment_then_every_key_with_its_help(capsys):
    assert chain.main(["--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    keys_at = next(i for i, line in enumerate(out) if line.startswith("keys "))
    profiles = out[1:keys_at]
    assert out[0].startswith("profiles ") and [line.split()[0] for line in profiles] == config.available_profiles()
    tiny = next(line for line in profiles if line.split()[0] == "tiny")
    assert "The default profile" in tiny
    helps = {line.split()[0]: line.split(None, 1)[1] for line in out[keys_at + 1:]}
    # every field of every section, once; a field's description where the schema gives one
    for section in config.SECTIONS:
        model = config.Profile.model_fields[section].annotation
        if section in ("profile", "models", "layers", "comparisons"):
            continue
        for name, field in model.model_fields.items():
            if (section, name) == ("subspaces", "phrases"):
                continue
            key = f"{section}.{name}"
            assert key in helps, key
            if field.description:
                assert helps[key].startswith(field.description), (key, helps[key])
    assert helps["universal.models"] == "the models it reads; [] = every model of the profile; a list of strings (default [])"
    assert helps["comparisons[].layers"].endswith("(required)") and "comparisons[].a" in helps
    assert helps["matching.min_r"] == "pairs kept have a Pearson r above this; a number, 0 <= min_r < 1 (default 0.1)"
    assert helps["models.<id>.dtype"].endswith("; 'float32', 'float16', 'bfloat16', 'auto' (default \"float32\")")
    assert helps["layers.<id>"].endswith("; a list of integers >= 0 (required)") and "subspaces.phrases.rule" in helps


def test_set_values_are_read_as_yaml():
    assert config.parse_sets(["similarity.n_shuffles=100", "layers.A=[1, 2]", "matching.one_to_one=false",
                              "models.B={source: hub, name: pythia-70m}", "sae.lr=0.001"]) == {
        "similarity.n_shuffles": 100, "layers.A": [1, 2], "matching.one_to_one": False,
        "models.B": {"source": "hub", "name": "pythia-70m"}, "sae.lr": 0.001}
    assert config.parse_sets(["similarity.n_shuffles='100'"]) == {"similarity.n_shuffles": "100"}  # then rejected by build
    assert chain.parse_sets is config.parse_sets


@pytest.mark.parametrize("argv,says", [
    (["--profile", "tiny", "--set", "similarity.n_shufles=10"], "unknown key similarity.n_shufles"),
    (["--profile", "tiny", "--set", "sae.architecture=jumprelu"], "sae.architecture = 'jumprelu' is not allowed"),
    (["--profile", "tiny", "--set", "similarity.n_shuffles"], "is not KEY=VALUE"),
    (["--profile", "tiny", "--set", "layers.A=[1, 2"], "not valid YAML"),
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--profile", "tiny", "--set", "similarity.n_shuffles=5", "--in-place"], "--in-place runs the notebooks"),
    (["--profile", "tiny", "--jobs", "0"], "--jobs '0' is not a positive number or auto"),
])
def test_a_bad_profile_or_set_is_one_line_and_exit_2(capsys, argv, says):
    assert chain.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("featuniv: ") and says in err and "Fix" in err
    assert "\n" not in err and "Traceback" not in captured.err + captured.out


def test_the_module_exits_2_with_one_line_on_stderr():
    r = subprocess.run([sys.executable, "-m", "featlib.tools.chain", "--profile", "tiny", "--set", "universal.update=everything"],
                       capture_output=True, text=True, cwd=config.REPO, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("featuniv: params/tiny.yaml (override universal.update): ")


def test_run_injects_profile_and_overrides_and_writes_the_resolved_profile(tmp_path, monkeypatch):
    """papermill gets exactly {profile, overrides}; outputs go to the label's folders (no notebook is run)."""
    import papermill

    calls = []

    def execute(src, dst, parameters, **kw):  # writes and returns the notebook unexecuted, as papermill its copy
        calls.append((src, dst, parameters))
        shutil.copy(src, dst)
        return nbformat.read(dst, as_version=4)

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setattr(plots, "FIGURES", tmp_path / "figures")
    monkeypatch.setattr(chain, "REPO", tmp_path)
    timings = chain.run("smoke", overrides={"similarity.n_shuffles": 10})
    cfg = config.build("smoke", {"similarity.n_shuffles": 10})
    assert cfg.label != "smoke" and set(timings) == {nb.stem for nb in chain.notebooks()}
    assert all(p == {"profile": "smoke", "overrides": {"similarity.n_shuffles": 10}} for _, _, p in calls)
    assert all(dst.startswith(str(tmp_path / "build" / cfg.label)) for _, dst, _ in calls)
    folder = tmp_path / "figures" / cfg.label
    assert (folder / "profile.yaml").read_text() == cfg.resolved_yaml()
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["label"] == cfg.label and manifest["profile"] == "smoke"
    assert manifest["overrides"] == {"similarity.n_shuffles": 10} and manifest["params_hash"] == cfg.params_hash
    assert manifest["resolved"] == cfg.as_dict() and set(manifest["seconds"]) == set(timings)
    # a profile file by path is injected as its absolute path (the notebooks run in notebooks/)
    mine = tmp_path / "mine.yaml"
    mine.write_text((config.PARAMS_DIR / "smoke.yaml").read_text().replace("profile: smoke", "profile: mine"))
    calls.clear()
    chain.run(str(mine), only=["01"])
    assert calls and calls[0][2] == {"profile": str(mine.resolve()), "overrides": {}}
    assert (tmp_path / "figures" / "mine" / "profile.yaml").exists()
    assert json.loads((tmp_path / "figures" / "mine" / "manifest.json").read_text())["seconds"].keys() == {"01_extract_activations"}
    # re-running one notebook keeps the others' times apart, as an earlier run's
    chain.run("smoke", only=["02"], overrides={"similarity.n_shuffles": 10})
    again = json.loads((folder / "manifest.json").read_text())
    assert list(again["seconds"]) == ["02_saes"]
    assert list(again["seconds in earlier runs"]) == [s for s in manifest["seconds"] if s != "02_saes"]


@pytest.mark.slow
def test_jobs_run_the_notebooks_after_03_at_once_and_01_to_03_alone(tmp_path, monkeypatch):
    """With --jobs 2, 01-03 (what every later notebook reads) run one after the other, each alone; the later ones
    two at a time, 09 only after 07 (whose universal SAE it reuses), the longest chain of the last run's times
    first; the manifest lists every notebook in order."""
    import json
    import threading
    import time

    import papermill

    running: set[str] = set()
    spans: dict[str, tuple[float, float, frozenset[str]]] = {}
    lock = threading.Lock()

    def execute(src, dst, parameters, **kw):
        name = src.rsplit("/", 1)[1][:2]
        with lock:
            running.add(name)
            start = time.perf_counter()
        time.sleep(1.0 if name == "07" else 0.2)  # 07 outlasts 04, 05, 06 and 08 together
        with lock:
            spans[name] = (start, time.perf_counter(), frozenset(running))
            running.discard(name)
        shutil.copy(src, dst)
        return nbformat.read(dst, as_version=4)

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setattr(plots, "FIGURES", tmp_path / "figures")
    monkeypatch.setattr(chain, "RESULTS", tmp_path / "results")  # not the smoke chain's real tables
    monkeypatch.setattr(chain, "REPO", tmp_path)
    names = [nb.name[:2] for nb in chain.notebooks()]
    first, later = names[:3], names[3:]
    assert first[-1] == chain.SHARED_STAGES and chain.NEEDS == {"09": ("07",)}
    timings = chain.run("smoke", jobs=2)
    assert [t[:2] for t in timings] == names
    assert all(spans[n][2] == {n} for n in first)  # alone
    assert max(spans[n][1] for n in first) <= min(spans[n][0] for n in later)
    assert max(len(spans[n][2]) for n in later) == 2  # two at once, never more
    assert spans["09"][0] >= spans["07"][1]
    def first_two() -> set[str]:
        return set(sorted(later, key=lambda n: spans[n][0])[:2])

    assert first_two() == {"07", "04"}  # no times yet: the chain 07 -> 09 first, then in order
    # a second run starts with the longest chain of the first's times (from the manifest)
    cfg = config.build("smoke")
    manifest = tmp_path / "figures" / cfg.label / "manifest.json"
    seconds = json.loads(manifest.read_text())["seconds"]
    assert list(seconds) == [nb.stem for nb in chain.notebooks()]
    stems = {nb.name[:2]: nb.stem for nb in chain.notebooks()}
    seconds[stems["05"]] = 99.0
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "seconds": seconds}))
    spans.clear()
    chain.run("smoke", jobs=2)
    assert first_two() == {"05", "07"} and spans["09"][0] >= spans["07"][1]


async def _signals_sent_at_shutdown(manager_class) -> list[int]:
    from traitlets.config import Config

    km = manager_class(config=Config(chain.LOCAL_KERNEL))
    await km.start_kernel()
    sent: list[int] = []
    send = km.provisioner.send_signal

    async def spy(signum: int) -> None:
        sent.append(signum)
        await send(signum)

    km.provisioner.send_signal = spy
    await km.shutdown_kernel()
    assert not await km.is_alive()
    return sent


def test_the_chain_stops_its_kernels_without_an_interrupt(tmp_path, monkeypatch):
    """jupyter_client's own manager sends SIGINT first, which ipykernel logs as "KeyboardInterrupt caught in
    kernel" when it lands in a handler (about one papermill run in five here); the chain's manager does not."""
    import asyncio
    import signal

    from jupyter_client.manager import AsyncKernelManager

    monkeypatch.chdir(tmp_path)  # the IPC sockets' files
    assert signal.SIGINT in asyncio.run(_signals_sent_at_shutdown(AsyncKernelManager))
    assert signal.SIGINT not in asyncio.run(_signals_sent_at_shutdown(chain.IdleShutdownKernelManager))
