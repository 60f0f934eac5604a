"""Local stand-ins, in the Hugging Face hub's own formats, for what the paper profiles download.

:func:`build` writes under ``root``:

* ``hub/``: a Hugging Face hub cache (the ``HF_HUB_CACHE`` layout: ``models--ORG--NAME/refs/main`` and
  ``snapshots/<revision>/...``) holding

  - ``EleutherAI/pythia-70m`` and ``EleutherAI/pythia-160m``: GPT-NeoX models with Pythia's
    architecture (rotary on 25 % of each head, parallel attention and MLP, untied embeddings), small
    widths, trained for 150 steps on State of the Union text, written by ``save_pretrained`` with
    one shared tokenizer (the project's tiny BPE);
  - ``EleutherAI/sae-pythia-70m-32k`` and ``EleutherAI/sae-pythia-160m-32k``: ``layers.L/cfg.json`` and
    ``layers.L/sae.safetensors`` written by eai-sparsify's own ``SparseCoder.save_to_disk``, with TopK
    weights trained by sae-lens on the stand-in model's ``blocks.L.hook_resid_post`` activations;
  - ``google/gemma-scope-2b-pt-res``: one Gemma Scope ``params.npz`` (JumpReLU, the real sizes
    2,304 × 16,384) at the path sae-lens's registry gives for ``layer_12/width_16k/canonical``;

* ``openwebtext/plain_text/partial-train/000N.parquet``: a small text dataset with a ``text`` column
  (State of the Union addresses) in the layout of the hub's parquet conversion of OpenWebText
  (``refs/convert/parquet``), read by the paper profiles' own call (revision and data_files included).

The real loading functions (``HookedTransformer.from_pretrained_no_processing``, ``SAE.from_pretrained``,
``datasets.load_dataset``) then run on them with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE=root/hub``,
which must be set before huggingface_hub is imported (``tests/conftest.py`` does).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from featlib.config import REPO

REVISION = "0123456789abcdef0123456789abcdef01234567"
PYTHIA = {"pythia-70m": {"layers": 2, "d": 64}, "pythia-160m": {"layers": 3, "d": 96}}
SAE_REPOS = {"pythia-70m": "EleutherAI/sae-pythia-70m-32k", "pythia-160m": "EleutherAI/sae-pythia-160m-32k"}
GEMMA_RELEASE, GEMMA_SAE_ID, GEMMA_LAYER = "gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical", 12
SAE_TRAINING = {"architecture": "topk", "expansion": 8, "k": 8, "l1_coefficient": 1.0, "lr": 3e-3, "batch_size": 512, "epochs": 6, "b_dec_init": "zeros"}


def snapshot(hub: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` at :data:`REVISION`, with ``refs/main`` pointing at it."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    path = repo / "snapshots" / REVISION
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_pythia_models(hub: Path) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(REPO / "models/tiny/lm-a/tokenizer.json"), bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    from featlib import corpus

    rows = corpus.token_stream(tok, corpus.sotu_documents("lm_train"), 64, 200_000, tok.bos_token_id)
    for seed, (name, size) in enumerate(PYTHIA.items()):
        cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=size["d"], num_hidden_layers=size["layers"], num_attention_heads=4,
                            intermediate_size=4 * size["d"], rotary_pct=0.25, max_position_embeddings=512,
                            use_parallel_residual=True, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(cfg)
        train_briefly(model, rows)
        path = snapshot(hub, f"EleutherAI/{name}")
        model.save_pretrained(path)
        tok.save_pretrained(path)


def train_briefly(model, rows: torch.Tensor, steps: int = 150, batch: int = 16, lr: float = 3e-3) -> None:
    """A few AdamW steps of next-token prediction, so that the stand-in's layers matter to its loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch_rows = rows[torch.randint(0, len(rows), (batch,), generator=g)]
        loss = model(batch_rows, labels=batch_rows).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def to_sparsify(sae, path: Path) -> None:
    """Write a sae-lens TopK SAE as an eai-sparsify ``SparseCoder`` folder (same encoder and decoder)."""
    from sparsify import SparseCoder, SparseCoderConfig

    d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
    coder = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=int(sae.cfg.k)))
    with torch.no_grad():
        b_enc = sae.b_enc if sae.cfg.apply_b_dec_to_input else sae.b_enc + sae.b_dec @ sae.W_enc
        coder.encoder.weight.copy_(sae.W_enc.T)
        coder.encoder.bias.copy_(b_enc)
        coder.W_dec.copy_(sae.W_dec)
        coder.b_dec.copy_(sae.b_dec)
    coder.save_to_disk(path)


def write_pythia_saes(hub: Path) -> None:
    from sae_lens import SAE

    from featlib import corpus, models, saes

    docs = corpus.sotu_documents("lm_train")
    for seed, name in enumerate(PYTHIA):
        lm = models.load_hub(name, name)  # the real loading function, on the stand-in just written
        rows = corpus.token_stream(lm.tokenizer, docs, 128, 16384, lm.bos_id)
        layers = range(lm.n_layers)
        with torch.inference_mode():
            _, cache = lm.model.run_with_cache(rows, names_filter=[models.hook_name(L) for L in layers])
        for layer in layers:
            acts = cache[models.hook_name(layer)][:, 1:].reshape(-1, lm.d_model).numpy()
            trained = saes.train_sae(np.ascontiguousarray(acts), SAE_TRAINING, seed=100 * seed + layer)
            with tempfile.TemporaryDirectory() as tmp:
                trained.save_inference_model(tmp)
                to_sparsify(SAE.load_from_disk(tmp), snapshot(hub, SAE_REPOS[name]) / f"layers.{layer}")


def write_gemma_scope(hub: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A Gemma Scope ``params.npz`` (JumpReLU) where the sae-lens registry looks for it; returns its arrays."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    info = get_pretrained_saes_directory()[GEMMA_RELEASE]
    folder = snapshot(hub, info.repo_id) / info.saes_map[GEMMA_SAE_ID]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    d_in, d_sae = 2304, 16384
    arrays = {
        "w_enc": (rng.standard_normal((d_in, d_sae), dtype=np.float32) / np.sqrt(d_in)),
        "w_dec": (rng.standard_normal((d_sae, d_in), dtype=np.float32) / np.sqrt(d_in)),
        "b_enc": rng.standard_normal(d_sae, dtype=np.float32) * 0.1,
        "b_dec": rng.standard_normal(d_in, dtype=np.float32) * 0.1,
        "threshold": rng.uniform(0.5, 1.5, d_sae).astype(np.float32),
    }
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    np.savez(folder / "params.npz", **arrays)
    return arrays


def write_text_dataset(root: Path) -> Path:
    import pandas as pd

    from featlib import corpus

    out = root / "openwebtext"
    (out / "plain_text" / "partial-train").mkdir(parents=True, exist_ok=True)
    docs = [p for doc in corpus.sotu_documents("analysis") for p in doc.split("\n\n") if len(p) > 200]
    half = len(docs) // 2  # two shards, as the hub's conversion writes 0000.parquet, 0001.parquet, ...
    for i, part in enumerate((docs[:half], docs[half:])):
        pd.DataFrame({"text": part}).to_parquet(out / "plain_text" / "partial-train" / f"{i:04d}.parquet")
    return out


def build(root: Path) -> Path:
    """Write every stand-in under ``root`` (see module docstring); returns the hub cache folder."""
    hub = root / "hub"
    write_pythia_models(hub)
    write_pythia_saes(hub)
    write_gemma_scope(hub)
    write_text_dataset(root)
    return hub
