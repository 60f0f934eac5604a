"""The benchmark runs at a small size and its fast paths agree with the references (no timing asserts)."""

from featlib.tools import bench


def test_quick_bench_is_exact(capsys):
    out = bench.main(["--quick"])
    assert out["topk"]["method"] == "sparse" and out["topk"]["planted_recovered"] == 1.0
    assert out["topk"]["max_abs_diff"] < 1e-5
    for metric in ("rsa", "svcca"):
        assert out["nulls"][metric]["max_abs_diff"] < 1e-8
    assert "speed-up" in capsys.readouterr().out
    assert out["universal"]["tokens_per_second"] > 0 and out["universal"]["n_latents"] == 2 * 768
    extraction = out["extraction"]["smollm2-135m-instruct"]
    assert extraction["max_rel_diff"] < 1e-5 and extraction["tokens"] == 4 * 127
