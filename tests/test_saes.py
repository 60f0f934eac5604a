"""SAE training with sae-lens, saving/loading, and the width check."""

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
    assert float(saes.train_sae(x, dict(PARAMS, lr=1e-12, epochs=1), seed=0).b_dec.abs().max()) < 1e-6
    test = torch.from_numpy(sparse_data(n=5120)[4096:] + offset)
    short = dict(PARAMS, epochs=2)
    ev_mean = explained_variance(saes.train_sae(x, dict(short, b_dec_init="mean"), seed=0), test)
    ev_zeros = explained_variance(saes.train_sae(x, short, seed=0), test)
    assert ev_mean > 0.4 and ev_mean > ev_zeros + 0.1, (ev_mean, ev_zeros)
    with pytest.raises(ValueError, match="b_dec_init must be 'zeros' or 'mean'"):
        saes.train_sae(x, dict(PARAMS, b_dec_init="median"), seed=0)


def test_same_seed_same_sae():
    a = saes.train_sae(sparse_data(n=1024), dict(PARAMS, epochs=1), seed=3)
    b = saes.train_sae(sparse_data(n=1024), dict(PARAMS, epochs=1), seed=3)
    assert torch.equal(a.W_dec, b.W_dec)


def test_save_and_load_as_pretrained(trained, tmp_path):
    trained.save_inference_model(tmp_path / "layers.1")
    cfg = config.build("smoke", {"sae": {"source": "pretrained", "release": {"A": str(tmp_path), "B": str(tmp_path)},
                                         "sae_id": {"A": "layers.{layer}", "B": "layers.{layer}"}}, "comparisons.run": ["cross"]})
    loaded = saes.load_pretrained(cfg, "A", 1)
    x = torch.from_numpy(sparse_data(n=256, seed=2))
    with torch.no_grad():
        assert torch.allclose(loaded.decode(loaded.encode(x)), trained.decode(trained.encode(x)), atol=1e-5)
    assert torch.allclose(loaded.W_dec.norm(dim=1), torch.ones(loaded.cfg.d_sae)), "decoder rows folded to unit norm"


def test_width_mismatch_is_a_clear_error(trained):
    lm_a = models.load_local("A", REPO / "models/tiny/lm-a")
    with pytest.raises(ValueError, match=r"width 32, but the model's d_model is 128.*Fix"):
        saes.check_width(trained, lm_a, layer=1)
