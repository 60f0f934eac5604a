"""The paper profiles' loading code (hub models, EleutherAI sparsify SAEs, Gemma Scope SAEs, hub
datasets), run offline on local stand-ins in the hub's own formats (featlib.tools.standins)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from featlib import activations, config, corpus, models, saes


def sparsify_cfg(release, sae_id="layers.{layer}"):
    return config.build("pythia", {"sae": {"source": "pretrained", "format": "sparsify", "release": {"A": str(release), "B": str(release)},
                                           "sae_id": {"A": sae_id, "B": sae_id}}})


def test_sparsify_folder_reads_like_eai_sparsify(tmp_path):
    """Our sparsify converter against eai-sparsify's own SparseCoder (random weights, non-zero b_dec)."""
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    coder = SparseCoder(24, SparseCoderConfig(num_latents=96, k=5))
    with torch.no_grad():
        coder.b_dec.normal_()
        coder.encoder.bias.normal_(0, 0.1)
        coder.W_dec.normal_()
    coder.save_to_disk(tmp_path / "layers.3")
    sae = saes.load_pretrained(sparsify_cfg(tmp_path), "A", 3)
    x = torch.randn(50, 24)
    with torch.no_grad():
        enc = coder.encode(x)
        z = sae.encode(x)
        torch.testing.assert_close(z, torch.zeros(50, 96).scatter_(1, enc.top_indices, enc.top_acts))
        torch.testing.assert_close(sae.decode(z), coder(x).sae_out, atol=1e-5, rtol=1e-5)
    assert sae.W_dec.dtype == torch.float32 and sae.cfg.metadata.hook_name == "blocks.3.hook_resid_post"


def test_pythia_models_load_through_the_hub_and_read_block_outputs(standins):
    from transformers import AutoModelForCausalLM

    cfg = config.build("pythia")
    lm = models.load_model("A", cfg.models["A"], device="cpu")  # HookedTransformer.from_pretrained_no_processing
    hf = AutoModelForCausalLM.from_pretrained("EleutherAI/pythia-70m")
    tokens = torch.tensor([[lm.bos_id, 11, 500, 1200, 37, 4000, 9]])
    with torch.no_grad():
        out = hf(tokens, output_hidden_states=True)
        logits, cache = lm.model.run_with_cache(tokens)
    torch.testing.assert_close(logits, out.logits, atol=1e-4, rtol=1e-4)
    for layer in range(lm.n_layers):
        # our layer L = blocks.L.hook_resid_post = Hugging Face hidden_states[L + 1] (the last one is after the final LayerNorm)
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_pre"], out.hidden_states[layer], atol=1e-5, rtol=1e-5)
        if layer + 1 < lm.n_layers:
            torch.testing.assert_close(cache[models.hook_name(layer)], out.hidden_states[layer + 1], atol=1e-5, rtol=1e-5)
    assert lm.model.cfg.parallel_attn_mlp and lm.model.cfg.positional_embedding_type == "rotary"
    other = models.load_model("B", cfg.models["B"], device="cpu")
    assert activations.shares_tokenizer([lm, other])


def test_eleuther_saes_load_through_the_hub_and_reconstruct(standins):
    cfg = config.build("pythia")
    lm = models.load_model("B", cfg.models["B"], device="cpu")
    rows = corpus.token_stream(lm.tokenizer, corpus.sotu_documents("analysis")[:20], 64, 2048, lm.bos_id)
    _, cache = lm.model.run_with_cache(rows)
    for layer in range(lm.n_layers):
        sae = saes.load_pretrained(cfg, "B", layer)  # SAE.from_pretrained("EleutherAI/sae-pythia-160m-32k", "layers.L")
        saes.check_width(sae, lm, layer)
        x = cache[models.hook_name(layer)][:, 1:].reshape(-1, lm.d_model)
        with torch.no_grad():
            z = sae.encode(x)
            ev = 1 - ((x - sae.decode(z)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert float(ev) > 0.6, f"layer {layer}: explained variance {float(ev):.2f}"
        assert int((z > 0).sum(1).max()) <= 8


def test_sae_of_another_layer_is_a_clear_error(standins):
    cfg = config.build("pythia", {"sae.sae_id": {"A": "layers.1", "B": "layers.1"}})  # pythia's releases, another layer
    with pytest.raises(ValueError, match=r"reads 'blocks\.1\.hook_resid_post', but featlib extracts 'blocks\.0\.hook_resid_post'.*Fix"):
        saes.load_pretrained(cfg, "A", 0)


def test_gemma_scope_sae_loads_from_the_registry(standins):
    import standins as builder

    cfg = config.build("gemma")
    sae = saes.load_pretrained(cfg, "A", builder.GEMMA_LAYER)  # SAE.from_pretrained("gemma-scope-2b-pt-res-canonical", ...)
    with np.load(next((standins / "hub").rglob("params.npz"))) as f:
        p = {k: torch.from_numpy(f[k]) for k in f}
    x = torch.randn(20, 2304) * 3
    with torch.no_grad():
        pre = x @ p["w_enc"] + p["b_enc"]
        torch.testing.assert_close(sae.encode(x), torch.where(pre > p["threshold"], pre, 0), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(sae.decode(sae.encode(x)), torch.where(pre > p["threshold"], pre, 0) @ p["w_dec"] + p["b_dec"], atol=1e-3, rtol=1e-4)
    assert sae.cfg.metadata.hook_name == models.hook_name(builder.GEMMA_LAYER)
    saes.check_width(sae, SimpleNamespace(id="A", d_model=2304), builder.GEMMA_LAYER)
    with pytest.raises(ValueError, match="reads vectors of width 2304, but the model's d_model is 3584.*Fix"):
        saes.check_width(sae, SimpleNamespace(id="B", d_model=3584), builder.GEMMA_LAYER)


def test_hub_dataset_streams_from_a_local_folder(standins):
    cfg = config.build("pythia")
    data = cfg.data.model_copy(update={"path": str(standins / "openwebtext"), "n_docs": 5})
    docs = list(corpus.documents(data))
    assert len(docs) == 5 and all(isinstance(d, str) and len(d) > 200 for d in docs)


def test_auto_device_and_dtype(monkeypatch):
    monkeypatch.delenv("FEATUNIV_DEVICE", raising=False)
    assert models.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("FEATUNIV_DEVICE", "cpu")
    assert models.resolve_device("auto") == "cpu" and models.resolve_device("cuda:1") == "cuda:1"
    assert models.resolve_dtype("auto", "cpu") == "float32" and models.resolve_dtype("bfloat16", "cpu") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert models.resolve_dtype("auto", "cuda") == "float16"


def test_full_standin_profile_is_the_pythia_profile_at_its_sizes(tmp_path):
    """``make pythia-standin`` times the paper's setting: only the label and the dataset folder differ."""
    import yaml

    from featlib.tools import standins

    p = standins.standin_profile(tmp_path)
    pythia = yaml.safe_load((config.PARAMS_DIR / "pythia.yaml").read_text())
    assert p["profile"] == "pythia-standin" and p["data"]["path"] == str(tmp_path.resolve() / "openwebtext")
    for profile in (p, pythia):
        del profile["profile"], profile["data"]["path"]
    assert p == pythia
    full = standins.SCALES["full"]
    assert {n: (m["layers"], m["d"]) for n, m in full.models.items()} == {"pythia-70m": (6, 512), "pythia-160m": (12, 768)}
    assert (full.d_sae, full.sae["k"], full.vocab_size) == (32768, 32, 50304)


def test_standins_refuse_another_hub_cache(tmp_path, capsys, monkeypatch):
    from featlib.tools import standins

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert standins.main(["--out", str(tmp_path / "s")]) == 2
    assert "HF_HUB_CACHE must be" in capsys.readouterr().err and not (tmp_path / "s").exists()
