"""SAE training with sae-lens, saving/loading, and the width check."""

import itertools
import math
import numpy as np
import pytest
import torch

from featlib import config, models, saes
from featlib.config import REPO

PARAMS = {"architecture": "topk", "expansion": 4, "k": 4, "l1_coefficient": 1.0, "lr": 3e-3, "batch_size": 256, "epochs": 8,
          "b_dec_init": "zeros"}


def sparse_data(n=4096, d=32, atoms=64, active=3, seed=0):
    """Activations that are sparse combinations of a known dictionary."""
    rng = np.random.default_rng(seed)
    D = rng.normal(size=(atoms, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    codes = np.zeros((n, atoms))
    for row in codes:
        row[rng.choice(atoms, active, replace=False)] = rng.uniform(1, 3, active)
    return (codes @ D).astype(np.float32)


@pytest.fixture(scope="module")
def trained():
    return saes.train_sae(sparse_data(), PARAMS, seed=0)


def test_training_learns_a_sparse_code(trained):
    x = torch.from_numpy(sparse_data(n=5120)[4096:])  # same dictionary, unseen samples
    with torch.no_grad():
        z = trained.encode(x)
        ev = 1 - ((x - trained.decode(z)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert float(ev) > 0.7
    assert int((z > 0).sum(1).max()) <= PARAMS["k"]


def explained_variance(sae, x):
    with torch.no_grad():
        return float(1 - ((x - sae.decode(sae.encode(x))) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_decoder_bias_starts_at_the_data_mean():
    """b_dec_init: mean puts the decoder bias at the data mean (folded back into raw units after
    training); on data that is mostly a constant offset (like Gemma-3's residual stream) the code
    then learns the sparse part, where a zero start learns far less in the same steps."""
    offset = np.random.default_rng(1).normal(size=32).astype(np.float32) * 20
    x = sparse_data() + offset
    frozen = saes.train_sae(x, dict(PARAMS, lr=1e-12, epochs=1, b_dec_init="mean"), seed=0)
    np.testing.assert_allclose(frozen.b_dec.detach().numpy(), x[: 64 * 256].mean(0), rtol=1e-4, atol=1e-3)
    assert float(saes.train_sae(x, dict(PARAMS, lr=1e-12, epochs=1), seed=0).b_dec.detach().abs().max()) < 1e-6
    test = torch.from_numpy(sparse_data(n=5120)[4096:] + offset)
    short = dict(PARAMS, epochs=2)
    ev_mean = explained_variance(saes.train_sae(x, dict(short, b_dec_init="mean"), seed=0), test)
    ev_zeros = explained_variance(saes.train_sae(x, short, seed=0), test)
    assert ev_mean > 0.4 and ev_mean > ev_zeros + 0.1, (ev_mean, ev_zeros)
    with pytest.raises(ValueError, match="b_dec_init must be 'zeros' or 'mean'"):
        saes.train_sae(x, dict(PARAMS, b_dec_init="median"), seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (notebook 02 trains there when one is visible)")
@pytest.mark.parametrize("b_dec_init", ["zeros", "mean"])
def test_training_on_a_gpu_learns_the_same_code(b_dec_init):
    """Where a GPU is visible, 02 trains its SAEs there (device auto): the SAE comes back on the GPU and
    explains unseen data as well as the CPU's (same seed; only float rounding differs)."""
    x, test = sparse_data() + 5.0, torch.from_numpy(sparse_data(n=5120)[4096:] + 5.0)
    params = dict(PARAMS, b_dec_init=b_dec_init)
    gpu = saes.train_sae(x, params, seed=0, device=models.resolve_device("auto"))
    cpu = saes.train_sae(x, params, seed=0)
    assert gpu.W_dec.device.type == "cuda" and cpu.W_dec.device.type == "cpu"
    ev_gpu = explained_variance(gpu.to("cpu"), test)
    assert ev_gpu > 0.7 and abs(ev_gpu - explained_variance(cpu, test)) < 0.05


def test_same_seed_same_sae():
    a = saes.train_sae(sparse_data(n=1024), dict(PARAMS, epochs=1), seed=3)
    b = saes.train_sae(sparse_data(n=1024), dict(PARAMS, epochs=1), seed=3)
    assert torch.equal(a.W_dec, b.W_dec)


def test_worker_count_respects_threads_cpus_quota_and_memory(monkeypatch):
    from featlib import parallel

    monkeypatch.setattr(parallel, "available_memory", lambda: 10e9)
    monkeypatch.setattr(parallel, "cpu_quota", lambda: math.inf)
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert parallel.worker_count(26, 1e9) == 4  # torch's thread count
    assert parallel.worker_count(3, 1e9) == 3  # the jobs
    assert parallel.worker_count(26, 4e9) == 2  # the memory
    monkeypatch.setattr(parallel, "cpu_quota", lambda: 1.5)  # a container's CPU quota (Binder)
    assert parallel.worker_count(26, 1e9) == 1
    monkeypatch.setattr(parallel, "available_memory", lambda: 0.5e9)
    monkeypatch.setattr(parallel, "cpu_quota", lambda: math.inf)
    assert parallel.worker_count(26, 1e9) == 1  # never none


def test_featuniv_cpus_replaces_the_thread_count_and_refuses_junk(monkeypatch):
    """The pinned arithmetic runs one thread per process; FEATUNIV_CPUS still lets it keep every core busy."""
    from featlib import parallel

    monkeypatch.setattr(parallel, "available_memory", lambda: math.inf)
    monkeypatch.setattr(parallel, "cpu_quota", lambda: math.inf)
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.delenv("FEATUNIV_CPUS", raising=False)
    assert parallel.worker_count(26, 1e9) == 1
    monkeypatch.setenv("FEATUNIV_CPUS", "3")
    assert parallel.worker_count(26, 1e9) == 3
    monkeypatch.setenv("FEATUNIV_CPUS", "64")
    assert parallel.worker_count(26, 1e9) == 8  # still no more than the affinity set
    for junk in ("0", "two", "-1"):
        monkeypatch.setenv("FEATUNIV_CPUS", junk)
        with pytest.raises(ValueError, match=f"FEATUNIV_CPUS='{junk}' is not a positive whole number. Fix:"):
            parallel.usable_cpus()


@pytest.mark.slow
def test_sae_trainings_in_worker_processes_equal_single_threaded_ones(tmp_path, monkeypatch):
    """saes.train_all: two SAEs trained by two single-threaded worker processes land in the cache under
    the keys this process gives them, equal bit for bit to what this process trains with one thread."""
    from featlib import parallel
    from featlib.activations import Activations

    folder = tmp_path / "activations" / "00000000000000aa"
    folder.mkdir(parents=True)
    for layer in (0, 1):
        np.save(folder / f"layer_{layer}.npy", sparse_data(n=2048, seed=layer))
    train = Activations(folder, [0, 1])
    jobs = [saes.SaeTraining(saes.TrainParams.of(dict(PARAMS, epochs=2)), "m", layer, train, seed=5) for layer in (0, 1)]
    monkeypatch.setattr(parallel, "available_memory", lambda: math.inf)
    monkeypatch.setattr(parallel, "cpu_quota", lambda: math.inf)
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    threads = torch.get_num_threads()
    try:
        monkeypatch.setenv("FEATUNIV_CACHE", str(tmp_path / "workers"))
        torch.set_num_threads(2)
        assert saes.train_all(jobs) == 2
        assert saes.train_all(jobs) == 1  # all cached: nothing to do
        monkeypatch.setattr(saes, "train_sae", None)  # the workers' SAEs are found, not retrained
        in_workers = [job.artifact() for job in jobs]
        monkeypatch.undo()
        monkeypatch.setenv("FEATUNIV_CACHE", str(tmp_path / "here"))
        torch.set_num_threads(1)
        here = [job.artifact() for job in jobs]
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(in_workers, here):
        assert a.key == b.key and a.path != b.path
        sa, sb = saes.load_trained(a), saes.load_trained(b)
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            assert torch.equal(getattr(sa, name), getattr(sb, name)), name


def test_save_and_load_as_pretrained(trained, tmp_path):
    trained.save_inference_model(tmp_path / "layers.1")
    cfg = config.build("smoke", {"sae": {"source": "pretrained", "release": {"A": str(tmp_path), "B": str(tmp_path)},
                                         "sae_id": {"A": "layers.{layer}", "B": "layers.{layer}"}}, "references.run": []})
    loaded = saes.load_pretrained(cfg, "A", 1)
    x = torch.from_numpy(sparse_data(n=256, seed=2))
    with torch.no_grad():
        assert torch.allclose(loaded.decode(loaded.encode(x)), trained.decode(trained.encode(x)), atol=1e-5)
    assert torch.allclose(loaded.W_dec.norm(dim=1), torch.ones(loaded.cfg.d_sae)), "decoder rows folded to unit norm"


def test_width_mismatch_is_a_clear_error(trained):
    lm_a = models.load_local("A", REPO / "models/tiny/lm-a")
    with pytest.raises(ValueError, match=r"width 32, but the model's d_model is 128.*Fix"):
        saes.check_width(trained, lm_a, layer=1)


@pytest.mark.parametrize("dead_share", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("b_dec_init", ["zeros", "mean"])
@pytest.mark.parametrize("rescale", [False, True], ids=["", "rescaled"])
def test_sparse_decode_equals_sae_lens_training_step(dead_share, b_dec_init, rescale):
    """Our TopK training forward pass (decoding only the active latents, the encoder's gradient from the
    selected entries only) gives sae-lens's own losses, outputs, codes and gradients of every parameter,
    with and without dead latents (the aux loss), with and without activations rescaled by decoder norms."""
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    from featlib.topk_training import SparseDecodeTopKTrainingSAE

    torch.manual_seed(0)
    d, K, n = 48, 384, 256
    cfg = TopKTrainingSAEConfig(k=8, d_in=d, d_sae=K, normalize_activations="expected_average_only_in",
                                rescale_acts_by_decoder_norm=rescale)
    ref, ours = TopKTrainingSAE(cfg), SparseDecodeTopKTrainingSAE(cfg)
    with torch.no_grad():  # decoder rows of unequal norms, non-zero biases: every term of the step counts
        ref.W_dec.mul_(torch.rand(K, 1) + 0.5)
        ref.b_enc.normal_(-0.2, 0.05)  # about half the rows' k-th largest pre-activation is negative
        if b_dec_init == "mean":
            ref.b_dec.normal_(0, 3)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(n, d) + ref.b_dec.detach()
    step_input = TrainStepInput(sae_in=x, dead_neuron_mask=torch.rand(K) < dead_share, coefficients={},
                                n_training_steps=0, is_logging_step=False)
    outs, grads = [], []
    for sae in (ref, ours):
        out = sae.training_forward_pass(step_input)
        out.loss.backward()
        outs.append(out)
        grads.append({name: p.grad for name, p in sae.named_parameters()})
    selected = outs[0].hidden_pre.detach().topk(8).values
    assert (selected <= 0).any() and (selected > 0).any(), "the test needs latents cut by the ReLU"
    assert set(outs[0].losses) == set(outs[1].losses)
    for key in outs[0].losses:
        torch.testing.assert_close(outs[1].losses[key], outs[0].losses[key], rtol=1e-5, atol=1e-6)
    assert (float(outs[0].losses["auxiliary_reconstruction_loss"].detach()) > 0) == (dead_share > 0)
    for field in ("sae_out", "feature_acts", "hidden_pre"):
        torch.testing.assert_close(getattr(outs[1], field), getattr(outs[0], field), rtol=1e-5, atol=1e-5)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()))


def eval_rows(lm, n_rows=16, seq=33):
    """Eval-activation stand-in for the loss passes: ``n_rows`` rows of ``seq`` tokens, every third one
    right-padded after 20 real tokens (its padding must not count)."""
    from types import SimpleNamespace

    from featlib import corpus

    tokens = corpus.token_stream(lm.tokenizer, corpus.sotu_documents("analysis"), seq, n_rows * seq, lm.bos_id)[:n_rows]
    lengths = np.where(np.arange(n_rows) % 3 == 1, 20, seq)
    return SimpleNamespace(tokens=tokens.numpy(), lengths=lengths)


def full_pass_losses(lm, acts, layer, ce_batches, edit):
    """The plain definition: mean next-token loss over real positions, full forward passes with ``edit``
    hooked on block ``layer``'s output (None: clean)."""
    tokens = torch.from_numpy(acts.tokens[: ce_batches * 8])
    real = torch.arange(tokens.shape[1] - 1)[None, :] + 1 < torch.from_numpy(acts.lengths[: len(tokens)])[:, None]
    hooks = [] if edit is None else [(models.hook_name(layer), lambda value, hook: edit(value))]
    with torch.inference_mode():
        per_token = lm.model.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=hooks)
    return float(per_token[real].sum() / real.sum())


@pytest.mark.parametrize("which", ["tiny", pytest.param("pythia stand-in", marks=pytest.mark.slow)])
def test_losses_from_a_layer_equal_full_passes_with_a_hook(which, request):
    """next_token_losses (passes started at block L + 1 from the kept residual stream, layers in any order,
    one shared dict) equals full forward passes with a hook at block L: on a tiny model (learned positional
    embedding) and a Pythia stand-in (rotary, parallel attention), rows right-padded."""
    if which == "tiny":
        lm = models.load_local("A", REPO / "models/tiny/lm-a")
    else:
        request.getfixturevalue("standins")
        lm = models.load_model("B", config.build("pythia").models["B"], device="cpu")
    acts = eval_rows(lm)

    def splice(value):  # any edit of the non-BOS positions
        return torch.cat([value[:, :1], 0.5 * value[:, 1:].flip(-1) + 0.1], dim=1)

    known = saes.LossBaselines()
    for layer in [1, 0, lm.n_layers - 1, 2]:
        got = saes.next_token_losses(lm, acts, layer, 2, splice, known)
        want = [full_pass_losses(lm, acts, layer, 2, edit) for edit in (None, splice, saes._zero)]
        assert got == pytest.approx(want, rel=1e-6), f"layer {layer}"
        assert want[0] < want[2] and want[1] != want[0]


def test_every_sae_of_a_model_shares_its_clean_and_zero_ablated_losses():
    """evaluate with shared ``baselines``: the same metrics, and each further SAE costs one pass from
    its layer on (counted per block: clean, the kept residual stream, then zero-ablated and spliced passes
    of the layers below it)."""
    lm = models.load_local("A", REPO / "models/tiny/lm-a")
    acts = eval_rows(lm)
    tokens = torch.from_numpy(acts.tokens)
    _, cache = lm.model.run_with_cache(tokens, names_filter=[models.hook_name(L) for L in range(lm.n_layers)])
    xs = [cache[models.hook_name(L)][:, 1:].reshape(-1, lm.d_model).numpy() for L in range(lm.n_layers)]
    acts.layer = lambda L: xs[L]
    acts.chunks = lambda L, c: (torch.from_numpy(xs[L][i:i + c]) for i in range(0, len(xs[L]), c))
    two = [saes.train_sae(xs[1], dict(PARAMS, epochs=1, batch_size=64), seed=s) for s in (0, 1)]
    runs = [0] * lm.n_layers
    handles = [block.register_forward_hook(lambda *a, i=i: runs.__setitem__(i, runs[i] + 1))
               for i, block in enumerate(lm.model.blocks)]
    alone = {L: [saes.evaluate(sae, lm, acts, L, ce_batches=2) for sae in two] for L in range(lm.n_layers)}
    # alone, per SAE and batch, block i runs in the clean pass, then once up to layer L or twice after it
    assert runs == [2 * 2 * (2 * lm.n_layers + i) for i in range(lm.n_layers)]
    runs[:] = [0] * lm.n_layers
    baselines = saes.LossBaselines()
    shared = {L: [saes.evaluate(sae, lm, acts, L, ce_batches=2, baselines=baselines) for sae in two]
              for L in range(lm.n_layers)}
    for handle in handles:
        handle.remove()
    assert runs == [2 * (2 + 3 * i) for i in range(lm.n_layers)]  # block i: clean, prefix, 3 passes per layer < i
    assert shared == alone
    assert alone[1][0]["ce_sae"] != alone[1][1]["ce_sae"] and alone[1][0]["ce_clean"] == alone[1][1]["ce_clean"]


RECONSTRUCTION = ("explained_variance", "mse", "l0", "dead_fraction", "d_sae", "n_tokens")


def random_saes(d_in=24, d_sae=96):
    """One SAE of each sae-lens architecture featlib reads, with random weights (TopK also with its
    activations rescaled by the decoder norms)."""
    from sae_lens import (JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE,
                          TopKSAEConfig)

    made = [StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae)),
            JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae)),
            TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=6)),
            TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=6, rescale_acts_by_decoder_norm=True))]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for sae in made:
            for p in sae.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            if hasattr(sae, "threshold"):
                sae.threshold.copy_(torch.rand(sae.threshold.shape, generator=gen) * 0.3)
    return made


@pytest.mark.parametrize("index", range(4), ids=["standard", "jumprelu", "topk", "topk-rescaled"])
def test_sparse_decode_equals_dense_decode(index):
    """decode_sparse (a sparse COO code into sae.decode) gives sae.decode of the dense code, from a dense
    tensor or a CSR matrix, for every architecture."""
    import scipy.sparse as sp

    sae = random_saes()[index]
    x = torch.randn(50, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = sae.encode(x)
        dense = sae.decode(z)
    assert 0 < int((z > 0).sum()) < z.numel() / 2
    torch.testing.assert_close(saes.decode_sparse(sae, z), dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(saes.decode_sparse(sae, sp.csr_array(z.numpy())), dense, rtol=1e-5, atol=1e-5)


def test_evaluate_on_given_codes_equals_a_direct_computation(monkeypatch):
    """evaluate's reconstruction metrics from cached CSR codes (several chunks) equal a dense computation;
    codes of another SAE's shape are refused."""
    from types import SimpleNamespace

    import scipy.sparse as sp

    sae = random_saes()[2]
    x = torch.randn(70, 24, generator=torch.Generator().manual_seed(2))
    acts = SimpleNamespace(layer=lambda L: x.numpy(), chunks=lambda L, c: (x[i:i + c] for i in range(0, len(x), c)),
                           tokens=np.ones((8, 4), dtype=np.int64), lengths=np.full(8, 4))
    with torch.no_grad():
        z = sae.encode(x)
        ev = 1 - float(((x - sae.decode(z)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    losses = itertools.count(1.0)  # the next-token losses are another test's: here each call gives new ones
    monkeypatch.setattr(saes, "next_token_losses", lambda *a: (next(losses), next(losses), next(losses)))
    lm = SimpleNamespace()
    got = saes.evaluate(sae, lm, acts, 0, ce_batches=1, codes=sp.csr_array(z.numpy()), chunk_tokens=16)
    assert got["explained_variance"] == pytest.approx(ev, rel=1e-5)
    assert got["l0"] == pytest.approx(float((z > 0).sum()) / 70)
    assert got["dead_fraction"] == pytest.approx(1 - float((z > 0).any(0).float().mean()))
    again = saes.evaluate(sae, lm, acts, 0, ce_batches=1, chunk_tokens=16)  # encoded here: the same
    assert {k: again[k] for k in RECONSTRUCTION} == {k: got[k] for k in RECONSTRUCTION}
    with pytest.raises(ValueError, match="codes of shape"):
        saes.evaluate(sae, lm, acts, 0, ce_batches=1, codes=sp.csr_array(z.numpy()[:60]))
