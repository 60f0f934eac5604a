"""The committed notebooks reproduce bitwise on another machine only if the CPU arithmetic is pinned
(the Makefile's PINNED_CPU, used by `make notebooks` and `make test-nbval`). Here: a tiny language
model's forward pass and a short SAE training under that environment give the hashes they gave where
the notebooks were executed. Unpinned, an AVX-512 Intel machine trains another SAE (its own MKL path),
and so does two threads instead of one there; MKL's other code paths (MKL_CBWR=COMPATIBLE) do too."""

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from featlib.config import REPO
from featlib.parallel import cpu_vendor

SCRIPT = """
import hashlib
import numpy as np, torch
from featlib import models, saes

def digest(tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]

lm = models.load_local("A", models.resolve_path("models/tiny/lm-a"))
tokens = torch.arange(1, 129).reshape(2, 64) * 7 % 500
_, cache = lm.model.run_with_cache(tokens, names_filter=models.hook_name(3))
x = np.random.default_rng(0).standard_normal((4096, 32)).astype(np.float32)
x[:, :4] *= 5  # a few strong directions, as in a residual stream
params = {"architecture": "topk", "expansion": 4, "k": 4, "lr": 3e-3, "batch_size": 256, "epochs": 2,
          "b_dec_init": "mean"}
sae = saes.train_sae(x, params, seed=0)
print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(),
      digest([cache[models.hook_name(3)]]), digest(sae.state_dict().values()))
"""
# under PINNED_CPU, per CPU vendor (MKL's AVX2 branch is Intel's; other vendors get its "AUTO" branch):
# the vendor of the machine that executed the committed notebooks (an AMD EPYC)
EXPECTED = {"AuthenticAMD": "AVX2 1 19a7d827fdb299aa e37959c4be9603d2"}


def pinned_env() -> dict[str, str]:
    line = next(l for l in (REPO / "Makefile").read_text().splitlines() if l.startswith("PINNED_CPU :="))
    return dict(re.findall(r"(\w+)=(\S+)", line.split(":=", 1)[1]))


def run(env: dict[str, str]) -> str:
    """The script's last line, run with ``env`` on top of this process's environment."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=dict(os.environ) | env, cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the pin is for x86-64 CPUs")
def test_pinned_cpu_arithmetic_gives_the_committed_numbers():
    if cpu_vendor() not in EXPECTED:
        pytest.skip(f"no reference for {cpu_vendor()} CPUs: MKL computes differently there, so nbval's "
                    "sanitizer masks what another SAE changes")
    got = run(pinned_env())
    if not got.startswith("AVX2 1 "):
        pytest.skip(f"this CPU cannot run the pinned kernels (got {got.split()[:2]})")
    assert got == EXPECTED[cpu_vendor()], (
        f"pinned CPU arithmetic gave {got}, the committed notebooks were executed with {EXPECTED[cpu_vendor()]}: "
        "`make notebooks` outputs will not reproduce here")


def make_dry_run(*args: str) -> str:
    """The command lines ``make -n`` prints for ``args`` (the venv taken as installed)."""
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_figures_uses_the_committed_notebooks_arithmetic_on_tiny():
    """`make figures` on tiny runs the chain under PINNED_CPU, as `make notebooks` (and nbval) do; ARITH=native and
    other profiles do not pin; a wrong ARITH stops make with the fix."""
    pins = " ".join(f"{k}={v}" for k, v in pinned_env().items())
    chain = [l for l in make_dry_run("figures").splitlines() if "featlib.tools.chain" in l]
    assert len(chain) == 1 and pins in chain[0] and "FEATUNIV_CPUS=" in chain[0], chain
    assert pins in next(l for l in make_dry_run("notebooks").splitlines() if "featlib.tools.chain" in l)
    for args in (("figures", "ARITH=native"), ("figures", "PROFILE=smollm-gemma")):
        line = next(l for l in make_dry_run(*args).splitlines() if "featlib.tools.chain" in l)
        assert not any(k in line for k in pinned_env()), (args, line)
    bad = subprocess.run(["make", "-n", "figures", "ARITH=fast"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "ARITH=fast is not pinned or native. Fix:" in bad.stderr


@pytest.mark.beside_nbval
def test_a_pinned_run_writes_the_committed_tables_byte_for_byte():
    """nbval has just re-executed the committed notebooks with the pinned arithmetic (`make test`'s second lane),
    rewriting results/tiny/: on a CPU of the vendor that executed them (figures/tiny/manifest.json), every table is
    the committed one, byte for byte, as `make figures` on tiny gives them. On another vendor the reproduction
    report is the check (MKL computes differently there)."""
    if not os.environ.get("FEATUNIV_EXERCISE_CACHE"):
        pytest.skip("checks the tables nbval has just written: run by make test-lane2, after nbval")
    manifest = json.loads((REPO / "figures" / "tiny" / "manifest.json").read_text())
    made = manifest.get("arithmetic", {})
    assert {k: made.get(k) for k in pinned_env()} == pinned_env(), "the committed notebooks were not executed pinned"
    if made.get("cpu_vendor") != cpu_vendor():
        pytest.skip(f"the committed tables come from a {made.get('cpu_vendor')} CPU, this is {cpu_vendor()}")
    out = subprocess.run(["git", "status", "--porcelain", "--", "results/tiny"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    assert out.stdout == "", f"a pinned run changed committed tables:\n{out.stdout}"
