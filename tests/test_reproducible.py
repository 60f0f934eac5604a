"""The committed notebooks reproduce bitwise on another machine only if the CPU arithmetic is pinned
(the Makefile's PINNED_CPU, used by `make notebooks` and `make test-nbval`). Here: a tiny language
model's forward pass and a short SAE training under that environment give the hashes they gave where
the notebooks were executed. Unpinned, an AVX-512 Intel machine trains another SAE (its own MKL path),
and so does two threads instead of one there; MKL's other code paths (MKL_CBWR=COMPATIBLE) do too."""

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from featlib.config import REPO

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


def cpu_vendor() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("vendor_id")), "unknown")


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
