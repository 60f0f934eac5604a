"""The benchmark runs at a small size and its fast paths agree with the references (no timing asserts)."""

import pytest
import torch

from featlib.tools import bench

pytestmark = pytest.mark.slow  # a quick bench run: over a minute at one thread


def test_quick_bench_is_exact(capsys):
    out = bench.main(["--quick", "--parts", "matching", "nulls", "universal", "sae", "extraction"])
    assert out["topk"]["method"] == "sparse" and out["topk"]["planted_recovered"] == 1.0
    assert out["topk"]["max_abs_diff"] < 1e-5 and out["topk"]["product_same"]
    for metric in ("rsa", "svcca", "procrustes"):  # RSA against scipy's pdist and spearmanr
        assert out["nulls"][metric]["max_abs_diff"] < 1e-9
    assert out["nulls"]["procrustes"]["svd_route_max_abs_diff"] < 1e-9
    printed = capsys.readouterr().out
    assert "speed-up" in printed and printed.startswith("featlib bench on the CPU, ")
    assert ("a CUDA GPU is visible" in printed.splitlines()[0]) == torch.cuda.is_available()
    assert out["universal"]["tokens_per_second"] > 0 and out["universal"]["n_latents"] == 2 * 768
    for key in ("small", "small, no dead latents"):
        assert out["sae"][key]["max_rel_grad_diff"] < 1e-4 and out["sae"][key]["ms_per_step"] > 0
    extraction = out["extraction"]["smollm2-135m-instruct"]
    assert extraction["max_rel_diff"] < 1e-5 and extraction["hooked_max_rel_diff"] < 1e-5 and extraction["tokens"] == 4 * 127


def test_quick_planted_part(capsys, tmp_path):
    """The planted part (featlib.planted, asserted in tests/test_planted.py) prints its table and saves its figure."""
    out = bench.main(["--quick", "--parts", "planted", "--figure-dir", str(tmp_path)])["planted"]
    assert out["shares"] == [0.0, 0.25, 0.5, 0.75, 1.0] and len(out["table"]) == 5 * len(out["tell_apart"])
    assert out["planted"][0] == 0 and out["planted"][-1] > 0.9
    assert (tmp_path / "planted_response.png").stat().st_size > 0 and out["figure"] == str(tmp_path / "planted_response.png")
    printed = capsys.readouterr().out
    assert "tell s = 0.25 from 0.5" in printed and "calibrated score" in printed
