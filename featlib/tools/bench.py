"""``make bench``: featlib's fast paths against plain reference runs, measured in one process.

Prints, for this machine:

* the plain float32 matrix-product throughput (GFLOP/s) — the yardstick of the dense path;
* matching on TopK codes (d_sae 16,384 × 16,384, k = 32, 200,000 tokens, planted correlated
  structure): :func:`featlib.correlation.correlate` on the whole stream vs the dense reference (z-score
  everything, then chunked dense products, as the original code does) on a token sub-sample,
  extrapolated linearly in tokens; wall time, peak memory, ratio, and the largest difference of
  their correlations on the sub-sample; and :func:`featlib.sparse_rows.correlate` (one sparse
  product of the cached code rows, what notebook 03 runs) against the streamed engine: ratio and
  whether both give the same partners and r;
* matching on dense ReLU codes: the dense path's achieved GFLOP/s and its share of the plain
  product's throughput;
* nulls for 5,000 pairs (widths 512 and 768) × 1,000 shuffles: RSA, SVCCA and Procrustes with
  invariant work done once vs naive recomputation per shuffle (RSA: scipy's ``pdist`` and
  ``spearmanr``; a sub-sample of shuffles, extrapolated), and whether both give the same values;
* universal SAE training (:mod:`featlib.universal`) at Pythia's widths: tokens per second and peak
  memory, beside a plain one-model TopK SAE step of the same dictionary size;
* one TopK SAE training step (forward, losses with the AuxK term, backward) of
  :class:`featlib.topk_training.SparseDecodeTopKTrainingSAE` against sae-lens's own
  ``TopKTrainingSAE`` with the same weights, at the ``tiny`` profile's widths (lm-b: 256 → 2,048,
  k = 16) and Pythia-160m's (768 → 32,768, k = 32): milliseconds per step, ratio, and the largest
  relative difference of the gradients;
* activation extraction (:func:`featlib.activations.extract`) of the ``smollm-gemma`` profile's layers
  of SmolLM2-135M and Gemma-3-270M (real GGUF models, float32): tokens per second, written to disk,
  through transformers' forward (what extract runs for GGUF models) and through the hooked
  transformer-lens model (what it runs for the others), against a bare transformers forward pass
  through the same blocks (the model cut after the deepest layer, hidden states kept in memory) on the
  same rows, and the largest difference of each from it.

``python -m featlib.tools.bench --quick`` runs every part at a small size (used by the tests).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import torch

from .. import similarity, sparse_rows
from ..correlation import SparseCodes, correlate, dense_reference

if TYPE_CHECKING:
    import scipy.sparse as sp  # imported where used (scipy loads slowly); here for the annotation only


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@dataclass
class Measured:
    seconds: float
    peak_bytes: int
    value: Any


def measure(fn: Callable[[], Any]) -> Measured:
    """Run ``fn`` once; wall time and peak resident memory above the level before the call."""
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    return Measured(seconds, max(peak[0], _rss()) - base, value)


def cpu_name() -> str:
    """The CPU's model name (every part of the bench runs on the CPU), from /proc/cpuinfo where there is one."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def device_line() -> str:
    """Where the bench runs, in words: the CPU (every part runs there), and whether a CUDA GPU is visible
    (the study's heavy paths would run on it with ``device: auto``; the bench does not time them there)."""
    gpu = (
        f"a CUDA GPU is visible ({torch.cuda.get_device_name(0)}) but not used by the bench"
        if torch.cuda.is_available()
        else "no CUDA GPU visible"
    )
    return f"the CPU, {cpu_name()} ({gpu})"


def matmul_gflops(n: int = 4096, reps: int = 3) -> float:
    """Best-of-``reps`` float32 GFLOP/s of an n × n × n product (the machine's plain throughput)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(measure(lambda: a @ b).seconds for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _shift(k: int) -> torch.Tensor:
    return torch.arange(k) * 7 + 1  # the planted relabelling: a cyclic shift inside each stratum


def planted_partner(d: int, k: int) -> np.ndarray:
    """(d,) the A feature planted as the partner of every B feature by :func:`planted_topk`."""
    width = d // k
    stratum, offset = np.divmod(np.arange(d), width)
    return stratum * width + (offset - _shift(k).numpy()[stratum]) % width


def planted_topk(n: int, d: int, k: int, seed: int, keep: float = 0.75) -> tuple[SparseCodes, SparseCodes]:
    """TopK codes of two 'models': B's active features are a fixed relabelling of A's for a share
    ``keep`` of the entries (values with 10% noise), random otherwise. Indices in a row are distinct
    (one per stratum of d / k features)."""
    g = torch.Generator().manual_seed(seed)
    width = d // k
    base = torch.arange(k) * width
    idx_a = base + torch.randint(0, width, (n, k), generator=g)
    idx_b = base + (idx_a - base + _shift(k)) % width
    replace = torch.rand(n, k, generator=g) > keep
    idx_b = torch.where(replace, base + torch.randint(0, width, (n, k), generator=g), idx_b)
    val_a = torch.rand(n, k, generator=g) + 0.1
    val_b = val_a * (1 + 0.1 * torch.randn(n, k, generator=g)).abs()
    return SparseCodes(idx_a, val_a, d), SparseCodes(idx_b, val_b, d)


def _rows(chunks: list[SparseCodes]) -> sp.csr_array:
    """Planted chunks (distinct, sorted indices per row) as the (n, d) CSR rows 02 caches."""
    import scipy.sparse as sp

    idx, val = torch.cat([c.idx for c in chunks]).numpy(), torch.cat([c.val for c in chunks]).numpy()
    n, k = idx.shape
    return sp.csr_array((val.ravel(), idx.ravel().astype(np.int32), np.arange(0, n * k + 1, k)), shape=(n, chunks[0].d))


def bench_topk(d: int, k: int, n_tokens: int, ref_tokens: int, chunk: int = 8192) -> dict[str, Any]:
    def chunks():
        for i, start in enumerate(range(0, n_tokens, chunk)):
            yield planted_topk(min(chunk, n_tokens - start), d, k, seed=i)

    fast = measure(lambda: correlate(chunks, d, d))
    rows_a, rows_b = (_rows([c[side] for c in chunks()]) for side in (0, 1))
    product = measure(partial(sparse_rows.correlate, rows_a, rows_b))
    del rows_a, rows_b  # the rows are freed before the dense reference's matrices are made
    sub_a, sub_b = planted_topk(ref_tokens, d, k, seed=0)
    dense_a, dense_b = sub_a.to_dense(), sub_b.to_dense()
    ref = measure(lambda: dense_reference(dense_a, dense_b))
    same = correlate(lambda: iter([(sub_a, sub_b)]), d, d, keep_matrix=True)
    err = float((same.matrix - ref.value).abs().max())
    del same, ref.value
    scale = n_tokens / ref_tokens
    # the reference holds both dense (n, d) float32 matrices and their z-scores
    ref_peak_full = 4 * (2 * 2 * n_tokens * d) + 4 * d * d
    recovered = float(np.mean(fast.value.best_a == planted_partner(d, k)))
    return {
        "featlib_s": fast.seconds,
        "featlib_peak_gb": fast.peak_bytes / 1e9,
        "method": fast.value.method,
        "product_s": product.seconds,
        "product_peak_gb": product.peak_bytes / 1e9,
        "product_passes": product.value.passes,
        "product_same": bool(
            np.array_equal(product.value.best_a, fast.value.best_a)
            and np.array_equal(product.value.best_r, fast.value.best_r)
        ),
        "reference_s_measured": ref.seconds,
        "reference_tokens": ref_tokens,
        "reference_s": ref.seconds * scale,
        "reference_peak_gb_measured": ref.peak_bytes / 1e9,
        "reference_peak_gb": ref_peak_full / 1e9,
        "speedup": ref.seconds * scale / fast.seconds,
        "max_abs_diff": err,
        "planted_recovered": recovered,
    }


def bench_dense(d: int, n_tokens: int, peak: float, chunk: int = 4096) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(64, d, generator=g) / 8
    latent = torch.randn(n_tokens, 64, generator=g)
    a = torch.relu(latent @ mix + 0.1 * torch.randn(n_tokens, d, generator=g))
    b = torch.relu(latent @ mix.roll(5, 1) + 0.1 * torch.randn(n_tokens, d, generator=g))
    chunks = lambda: ((a[i : i + chunk], b[i : i + chunk]) for i in range(0, n_tokens, chunk))  # noqa: E731
    fast = measure(lambda: correlate(chunks, d, d, method="dense"))
    gflops = 2 * n_tokens * d * d / fast.seconds / 1e9
    return {
        "featlib_s": fast.seconds,
        "gflops": gflops,
        "share_of_peak": gflops / peak,
        "peak_gflops": peak,
        "featlib_peak_gb": fast.peak_bytes / 1e9,
    }


def bench_nulls(n: int, shuffles: int, naive_shuffles: int) -> dict[str, Any]:
    g = np.random.default_rng(0)
    latent = g.normal(size=(n, 64))
    X = latent @ g.normal(size=(64, 512)) + g.normal(size=(n, 512))
    Y = latent @ g.normal(size=(64, 768)) + g.normal(size=(n, 768))
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    perms = similarity.permutations(n, naive_shuffles, seed=0)
    unit = lambda A: (A - A.mean(0)) / np.linalg.norm(A - A.mean(0))  # noqa: E731
    out: dict[str, Any] = {}
    values: dict[str, np.ndarray] = {}
    for metric, fast_fn, naive_fn in (
        # the plain reference: scipy's distances and Spearman's rho for every re-pairing
        (
            "rsa",
            lambda: similarity.rsa_null(X, Y, shuffles, seed=0),
            lambda p: spearmanr(pdist(X, "correlation"), pdist(Y[p], "correlation"))[0],
        ),
        ("svcca", lambda: similarity.svcca_null(X, Y, shuffles, seed=0), lambda p: similarity.svcca(X, Y[p]).score),
        # centre, scale and numpy's SVD of the cross product for every re-pairing (no code of featlib's)
        (
            "procrustes",
            lambda: similarity.procrustes_null(X, Y, shuffles, seed=0),
            lambda p: np.linalg.svd(unit(X).T @ unit(Y[p]), compute_uv=False).sum(),
        ),
    ):
        fast = measure(fast_fn)
        values[metric] = fast.value
        naive = measure(partial(_naive_null, naive_fn, perms))
        naive_s = naive.seconds * shuffles / naive_shuffles
        out[metric] = {
            "featlib_s": fast.seconds,
            "naive_s": naive_s,
            "naive_shuffles": naive_shuffles,
            "speedup": naive_s / fast.seconds,
            "max_abs_diff": float(np.abs(fast.value[:naive_shuffles] - naive.value).max()),
        }
    # the route before the Gram one: svdvals of every re-paired product
    svd = measure(lambda: similarity.procrustes_null(X, Y, shuffles, seed=0, route="svd"))
    out["procrustes"] |= {
        "svd_route_s": svd.seconds,
        "speedup_over_svd_route": svd.seconds / out["procrustes"]["featlib_s"],
        "svd_route_max_abs_diff": float(np.abs(svd.value - values["procrustes"]).max()),
    }
    return out


def _naive_null(score: Callable[[np.ndarray], float], perms: np.ndarray) -> np.ndarray:
    """The naive null: ``score`` recomputed from scratch for every re-pairing."""
    return np.array([score(p) for p in perms])


def bench_universal(d_models: dict[str, int], expansion: int, k: int, batch_size: int, steps: int) -> dict[str, Any]:
    """Training throughput and peak memory of a universal SAE on synthetic activations, beside one
    plain TopK SAE step of the same dictionary on the largest model (encode, decode, backward, AdamW)."""
    from ..universal import USAEParams, train

    g = np.random.default_rng(0)
    n = batch_size * 8
    latent = g.standard_normal((n, 64)).astype(np.float32)
    arrays = {m: latent @ g.standard_normal((64, d)).astype(np.float32) for m, d in d_models.items()}
    p = USAEParams(expansion=expansion, k=k, batch_size=batch_size, steps=steps, warmup_steps=1)
    run = measure(lambda: train(arrays, p, progress=False))
    usae_tps = batch_size * steps / sum(run.value[1]["seconds"])

    d, K = max(d_models.values()), expansion * max(d_models.values())
    W_enc = torch.randn(d, K, requires_grad=True)
    W_dec = torch.randn(K, d, requires_grad=True)
    opt = torch.optim.AdamW([W_enc, W_dec], lr=1e-4)
    x = torch.from_numpy(arrays[max(d_models, key=d_models.__getitem__)][:batch_size])

    def plain() -> None:
        for _ in range(steps):
            vals, idx = torch.relu(x @ W_enc).topk(k, dim=1)
            loss = ((torch.zeros(batch_size, K).scatter(1, idx, vals) @ W_dec - x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    ref = measure(plain)
    ref_tps = batch_size * steps / ref.seconds
    return {
        "tokens_per_second": usae_tps,
        "peak_gb": run.peak_bytes / 1e9,
        "plain_tokens_per_second": ref_tps,
        "ratio": usae_tps / ref_tps,
        "n_latents": K,
    }


def bench_sae_step(d: int, d_sae: int, k: int, batch_size: int, steps: int, dead_share: float = 0.6) -> dict[str, Any]:
    """Milliseconds per TopK SAE training step (forward, MSE + AuxK loss, backward), ours vs sae-lens's
    on the same weights, input and dead-latent mask, and the largest relative gradient difference."""
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    from ..topk_training import SparseDecodeTopKTrainingSAE

    cfg = TopKTrainingSAEConfig(k=k, d_in=d, d_sae=d_sae, normalize_activations="expected_average_only_in")
    ref, ours = TopKTrainingSAE(cfg), SparseDecodeTopKTrainingSAE(cfg)
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(0)
    step_input = TrainStepInput(
        sae_in=torch.randn(batch_size, d, generator=g),
        coefficients={},
        n_training_steps=0,
        dead_neuron_mask=torch.rand(d_sae, generator=g) < dead_share,
        is_logging_step=False,
    )

    def run(sae: Any) -> dict[str, torch.Tensor]:
        for _ in range(steps):
            sae.zero_grad()
            sae.training_forward_pass(step_input).loss.backward()
        return {n: p.grad.clone() for n, p in sae.named_parameters()}

    run(ref), run(ours)  # warm-up
    fast, plain = measure(lambda: run(ours)), measure(lambda: run(ref))
    diff = max(float((fast.value[n] - g_ref).abs().max() / g_ref.abs().max()) for n, g_ref in plain.value.items())
    return {
        "ms_per_step": 1e3 * fast.seconds / steps,
        "sae_lens_ms_per_step": 1e3 * plain.seconds / steps,
        "speedup": plain.seconds / fast.seconds,
        "max_rel_grad_diff": diff,
    }


def bench_extraction(name: str, layers: list[int], n_rows: int, seq_len: int, batch_size: int) -> dict[str, Any]:
    """featlib's disk-writing extraction, through transformers' forward and through the hooked model, vs a
    bare transformers forward of the same blocks."""
    import dataclasses
    import tempfile
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from ..activations import Activations, extract
    from ..alignment import token_rowset
    from ..corpus import sotu_documents, token_stream
    from ..models import converted_gguf, load_gguf

    lm = load_gguf("A", name, device="cpu")
    rows = token_stream(lm.tokenizer, sotu_documents("analysis"), seq_len, n_rows * (seq_len - 1), lm.bos_id)
    hf = AutoModelForCausalLM.from_pretrained(str(converted_gguf(name)), dtype=torch.float32).eval()
    hf.model.layers = hf.model.layers[: max(layers) + 1]  # what stop_at_layer does in the hooked model

    @torch.inference_mode()
    def bare() -> dict[int, list[torch.Tensor]]:
        out: dict[int, list[torch.Tensor]] = {L: [] for L in layers}
        for batch in rows.split(batch_size):
            hidden = hf.model(batch, output_hidden_states=True).hidden_states
            for L in layers:
                out[L].append(hidden[L + 1][:, 1:].reshape(-1, lm.d_model))
        return out

    with tempfile.TemporaryDirectory() as tmp:
        rowset = token_rowset(rows.numpy())

        hooked = dataclasses.replace(lm, build_hf=None)  # the transformer-lens path

        def once(model: Any, name: str) -> Measured:
            (Path(tmp) / name).mkdir()
            return measure(lambda: extract(model, layers, rowset, batch_size, Path(tmp) / name))

        # each path once untimed (the first forward of a process pays for allocations and kernel
        # selection: it ran 4x slower than the next ones), then twice each in alternating order, best kept
        once(lm, "hf0")
        once(hooked, "tl0")
        bare()
        runs = [(once(lm, f"hf{i}"), once(hooked, f"tl{i}"), measure(bare)) for i in (1, 2)]
        ours, tl, ref = (min((r[j] for r in runs), key=lambda m: m.seconds) for j in range(3))

        def diff(name: str) -> float:
            # the deepest layer's hidden state comes after the final norm in transformers: compare the others
            acts = Activations(Path(tmp) / name, layers)
            return max(
                float(
                    (torch.from_numpy(np.array(acts.layer(L))) - torch.cat(ref.value[L])).abs().max()
                    / torch.cat(ref.value[L]).abs().max()
                )
                for L in layers[:-1]
            )

        diffs = diff("hf1"), diff("tl1")
    n = rows.shape[0] * (seq_len - 1)
    return {
        "tokens": n,
        "featlib_tps": n / ours.seconds,
        "hooked_tps": n / tl.seconds,
        "bare_tps": n / ref.seconds,
        "ratio": ref.seconds / ours.seconds,
        "hooked_ratio": ref.seconds / tl.seconds,
        "max_rel_diff": diffs[0],
        "hooked_max_rel_diff": diffs[1],
        "n_layers": lm.n_layers,
    }


class Sizes(TypedDict):
    """The sizes of one bench run (``--quick`` or full), as :func:`main` passes them to the parts."""

    d: int
    k: int
    n_tokens: int
    ref_tokens: int
    dense_d: int
    dense_tokens: int
    n: int
    shuffles: int
    naive: int
    usae_steps: int
    usae_expansion: int
    extract_rows: int
    extract_models: list[str]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds), for tests")
    parts = ["matching", "nulls", "universal", "sae", "extraction", "planted"]
    ap.add_argument("--parts", nargs="+", choices=parts, default=parts)
    ap.add_argument(
        "--figure-dir", default=None, help="where the planted part saves its figure (default figures/bench)"
    )
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.quick:
        sizes = Sizes(
            d=1024,
            k=8,
            n_tokens=20000,
            ref_tokens=2000,
            dense_d=512,
            dense_tokens=4096,
            n=500,
            shuffles=50,
            naive=5,
            usae_steps=5,
            usae_expansion=2,
            extract_rows=4,
            extract_models=["smollm2-135m-instruct"],
        )
    else:
        sizes = Sizes(
            d=16384,
            k=32,
            n_tokens=200_000,
            ref_tokens=4096,
            dense_d=8192,
            dense_tokens=65536,
            n=5000,
            shuffles=1000,
            naive=10,
            usae_steps=50,
            usae_expansion=8,
            extract_rows=64,
            extract_models=["smollm2-135m-instruct", "gemma-3-270m"],
        )
    print(
        f"featlib bench on {device_line()}, {torch.get_num_threads()} threads "
        f"({'quick' if args.quick else 'full'} sizes)\n"
    )
    out: dict[str, Any] = {}
    if "matching" in args.parts:
        out |= _matching(sizes, args.quick)
    if "nulls" in args.parts:
        out["nulls"] = _nulls(sizes)
    if "universal" in args.parts:
        out["universal"] = _universal(sizes)
    if "sae" in args.parts:
        out["sae"] = _sae(args.quick)
    if "extraction" in args.parts:
        out["extraction"] = _extraction(sizes)
    if "planted" in args.parts:
        out["planted"] = _planted(args.quick, args.figure_dir)
    return out


def _planted(quick: bool, figure_dir: str | None) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import planted
    from ..plots import FIGURES

    # quick: a smoke run (half the test size's tokens, few draws); full: 4x the test size's tokens, 200 draws
    params = (
        planted.PlantedParams(n_tokens=4096, draws=10) if quick else planted.PlantedParams(n_tokens=32768, draws=200)
    )
    run = measure(lambda: planted.run(params))
    r = run.value
    table = planted.response_table(r)
    apart = planted.can_tell_apart(r, 0.25, 0.5)
    print(
        f"planted-truth benchmark: {params.n_tokens} units, widths {params.d_a} and {params.d_b}, {params.n_features} true"
        f" features per model, SAEs of {params.sae['expansion']}x width (k = {params.sae['k']}), matching r > {params.min_r},"
        f" {params.draws} draws: {run.seconds:.0f} s"
    )
    print("  s:            " + "".join(f"{x.share:>20g}" for x in r.shares))
    print(
        "  final pairs n:" + "".join(f"{x.n:>20d}" for x in r.shares) + f"   (ceiling {r.ceiling.n}, floor {r.floor.n})"
    )
    print(
        "  planted share:"
        + "".join(f"{x.planted:>20.2f}" for x in r.shares)
        + f"   (ceiling {r.ceiling.planted:.2f}, floor {r.floor.planted:.2f})"
    )
    print("  pairs/draw m: " + "".join(f"{x.calibration[r.metrics[0]].m:>20d}" for x in r.shares))
    print("  calibrated score [2.5 %, 97.5 %] (0 = random-model floor, 1 = seed ceiling; * = above the floor):")
    for k in r.metrics:
        cells = []
        for x in r.shares:
            c = x.calibration[k]
            band = f"{c.calibrated.mean:5.2f} [{c.calibrated.lo:5.2f},{c.calibrated.hi:5.2f}]"
            cells.append(band + ("*" if c.above_floor else " ") if c.scorable else "not scorable")
        print(f"  {k:14s}" + "".join(f"{cell:>20s}" for cell in cells))
    print("  raw score of all final pairs (n differs between columns):")
    print(
        f"  {'':14s}"
        + "".join(f"{'s = ' + format(x.share, 'g'):>20s}" for x in r.shares)
        + f"{'floor':>10s}{'ceiling':>10s}"
    )
    for k in r.metrics:
        print(
            f"  {k:14s}"
            + "".join(f"{x.raw[k]:20.3f}" for x in r.shares)
            + f"{r.floor.raw[k]:10.3f}{r.ceiling.raw[k]:10.3f}"
        )
    told = [k for k, v in apart.items() if v]
    print(f"  tell s = 0.25 from 0.5 (calibrated intervals apart): {', '.join(told) if told else 'none'}")
    fig = planted.response_figure(r)
    folder = Path(figure_dir) if figure_dir else FIGURES / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "planted_response.png"
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    print(f"  figure: {path}\n")
    return {
        "seconds": run.seconds,
        "shares": [x.share for x in r.shares],
        "n": [x.n for x in r.shares],
        "planted": [x.planted for x in r.shares],
        "ceiling_n": r.ceiling.n,
        "floor_n": r.floor.n,
        "ceiling_planted": r.ceiling.planted,
        "explained_variance": r.explained_variance,
        "table": table.to_dict("records"),
        "tell_apart": apart,
        "figure": str(path),
    }


def _extraction(sizes: Sizes) -> dict[str, Any]:
    from ..config import build

    cfg = build("smollm-gemma")
    layers = {spec.name: cfg.layers[mid] for mid, spec in cfg.models.items()}
    out = {}
    print(f"activation extraction: {sizes['extract_rows']} rows of 128 tokens, batches of 16, the smollm-gemma layers")
    for name in sizes["extract_models"]:
        r = out[name] = bench_extraction(name, layers[name], sizes["extract_rows"], 128, 16)
        print(
            f"  {name:22s} layers {layers[name]} of {r['n_layers']}: bare transformers forward {r['bare_tps']:6.0f} "
            f"tokens/s;   featlib {r['featlib_tps']:6.0f} tokens/s, ratio {r['ratio']:.2f}, max relative difference "
            f"{r['max_rel_diff']:.1e};   through transformer-lens {r['hooked_tps']:6.0f} tokens/s, ratio "
            f"{r['hooked_ratio']:.2f}, max relative difference {r['hooked_max_rel_diff']:.1e}"
        )
    return out


def _universal(sizes: Sizes) -> dict[str, Any]:
    d_models = {"A": 512, "B": 768}  # Pythia-70m and -160m widths
    r = bench_universal(d_models, sizes["usae_expansion"], 32, 1024, sizes["usae_steps"])
    print(f"universal SAE training: d_model 512 and 768, {r['n_latents']} concepts, k = 32, batches of 1,024 tokens")
    print(
        f"  featlib {r['tokens_per_second']:8.0f} tokens/s   peak {r['peak_gb']:.2f} GB   plain one-model TopK SAE step"
        f" {r['plain_tokens_per_second']:.0f} tokens/s   ratio {r['ratio']:.2f}"
    )
    return r


def _sae(quick: bool) -> dict[str, Any]:
    shapes = (
        {"small": (64, 512, 8, 256, 2)}
        if quick
        else {"tiny lm-b": (256, 2048, 16, 1024, 20), "pythia-160m": (768, 32768, 32, 1024, 2)}
    )
    out = {}
    print("TopK SAE training step (forward, MSE + AuxK, backward), with 60 % of the latents dead (AuxK on) and none")
    for name, (d, d_sae, k, batch, steps) in shapes.items():
        for dead, key in ((0.6, name), (0.0, f"{name}, no dead latents")):
            r = out[key] = bench_sae_step(d, d_sae, k, batch, steps, dead_share=dead)
            print(
                f"  {name:12s} {d} -> {d_sae}, k = {k}, batch {batch}, {dead:4.0%} dead: featlib {r['ms_per_step']:8.1f} ms"
                f"   sae-lens {r['sae_lens_ms_per_step']:8.1f} ms   speed-up {r['speedup']:.2f}x"
                f"   max rel. grad diff {r['max_rel_grad_diff']:.1e}"
            )
    return out


def _matching(sizes: Sizes, quick: bool) -> dict[str, Any]:
    peak = matmul_gflops(1024 if quick else 4096)
    print(f"plain float32 matmul: {peak:.1f} GFLOP/s\n")
    topk = bench_topk(sizes["d"], sizes["k"], sizes["n_tokens"], sizes["ref_tokens"])
    print(f"matching, TopK codes: d_sae {sizes['d']} x {sizes['d']}, k = {sizes['k']}, {sizes['n_tokens']} tokens")
    print(
        f"  featlib ({topk['method']} path)   {topk['featlib_s']:8.1f} s   peak {topk['featlib_peak_gb']:.2f} GB"
        f"   planted partners recovered {topk['planted_recovered']:.1%}"
    )
    print(
        f"  featlib (one sparse product of the cached rows, as 03 runs) {topk['product_s']:8.1f} s"
        f"   peak {topk['product_peak_gb']:.2f} GB   {topk['product_passes']} block(s)"
        f"   {topk['featlib_s'] / topk['product_s']:.1f}x the streamed engine"
        f"   same partners and r: {'yes' if topk['product_same'] else 'NO'}"
    )
    print(
        f"  dense reference      {topk['reference_s']:8.1f} s   peak {topk['reference_peak_gb']:.1f} GB"
        f"   (measured on {topk['reference_tokens']} tokens: {topk['reference_s_measured']:.1f} s,"
        f" {topk['reference_peak_gb_measured']:.2f} GB; time extrapolated linearly, memory computed)"
    )
    print(f"  speed-up {topk['speedup']:.0f}x; largest |r difference| on the sub-sample {topk['max_abs_diff']:.1e}\n")
    dense = bench_dense(sizes["dense_d"], sizes["dense_tokens"], peak)
    print(f"matching, dense ReLU codes: d_sae {sizes['dense_d']} x {sizes['dense_d']}, {sizes['dense_tokens']} tokens")
    print(
        f"  featlib (dense path) {dense['featlib_s']:8.1f} s   {dense['gflops']:.1f} GFLOP/s ="
        f" {dense['share_of_peak']:.0%} of the plain matmul   peak {dense['featlib_peak_gb']:.2f} GB\n"
    )
    return {"peak_gflops": peak, "topk": topk, "dense": dense}


def _nulls(sizes: Sizes) -> dict[str, Any]:
    nulls = bench_nulls(sizes["n"], sizes["shuffles"], sizes["naive"])
    print(f"nulls: {sizes['n']} pairs (widths 512 and 768) x {sizes['shuffles']} shuffles")
    for metric, r in nulls.items():
        print(
            f"  {metric.upper():5s} featlib {r['featlib_s']:7.1f} s   naive {r['naive_s']:8.1f} s"
            f" (measured on {r['naive_shuffles']} shuffles, extrapolated)   speed-up {r['speedup']:.0f}x"
            f"   max |difference| {r['max_abs_diff']:.1e}"
        )
    r = nulls["procrustes"]
    print(
        f"  PROCRUSTES through svdvals of every product (the route before eigvalsh): {r['svd_route_s']:.1f} s, "
        f"{r['speedup_over_svd_route']:.1f}x slower   max |difference| {r['svd_route_max_abs_diff']:.1e}"
    )
    return nulls


if __name__ == "__main__":
    main()
