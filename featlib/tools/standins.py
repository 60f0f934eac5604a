"""Local stand-ins, in the Hugging Face hub's own formats, for what the paper profiles download.

:func:`build` writes under ``root``:

* ``hub/``: a Hugging Face hub cache (the ``HF_HUB_CACHE`` layout: ``models--ORG--NAME/refs/main`` and
  ``snapshots/<revision>/...``) holding

  - ``EleutherAI/pythia-70m`` and ``EleutherAI/pythia-160m``: GPT-NeoX models with Pythia's
    architecture (rotary on 25 % of each head, parallel attention and MLP, untied embeddings), trained
    briefly on State of the Union text, written by ``save_pretrained`` with one shared tokenizer (the
    project's tiny BPE);
  - ``EleutherAI/sae-pythia-70m-32k`` and ``EleutherAI/sae-pythia-160m-32k``: ``layers.L/cfg.json`` and
    ``layers.L/sae.safetensors`` written by eai-sparsify's own ``SparseCoder.save_to_disk``, with TopK
    weights trained by sae-lens on the stand-in model's ``blocks.L.hook_resid_post`` activations;
  - with ``gemma_scope``: ``google/gemma-scope-2b-pt-res``, one Gemma Scope ``params.npz`` (JumpReLU, the
    real sizes 2,304 × 16,384) at the path sae-lens's registry gives for ``layer_12/width_16k/canonical``;

* ``openwebtext/plain_text/partial-train/000N.parquet``: a small text dataset with a ``text`` column
  (State of the Union addresses) in the layout of the hub's parquet conversion of OpenWebText
  (``refs/convert/parquet``), read by the paper profiles' own call (revision and data_files included).

Two sizes (:data:`SCALES`): ``small`` (the tests: 2 × 64 and 3 × 96 models, 512-latent SAEs) and
``full``, the real shapes of the ``pythia`` profile (Pythia-70m 6 × 512 and Pythia-160m 12 × 768 with
Pythia's 50,304-row embedding, 32,768-latent TopK SAEs with k = 32), for timing the paper's setting
end to end (``make pythia-standin``). The full stand-ins measure speed, not science: their models
saw a few thousand tokens, their SAEs a pass or two over 16,384.

The real loading functions (``HookedTransformer.from_pretrained_no_processing``, ``SAE.from_pretrained``,
``datasets.load_dataset``) then run on them with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE=root/hub``,
which must be set before huggingface_hub is imported.

``python -m featlib.tools.standins --scale full --out build/standins`` writes the full stand-ins and
``pythia-standin.yaml`` beside them: ``params/pythia.yaml`` with only the dataset path and the label
changed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import PARAMS_DIR, REPO

REVISION = "0123456789abcdef0123456789abcdef01234567"
SAE_REPOS = {"pythia-70m": "EleutherAI/sae-pythia-70m-32k", "pythia-160m": "EleutherAI/sae-pythia-160m-32k"}
# every stand-in SAE explains this much of 2,048 held-out tokens (notebook 02 requires sae.min_explained_variance,
# 0.6, on the profile's text), else it trains again with twice the epochs (up to four times)
MIN_EXPLAINED_VARIANCE, HELD_OUT = 0.7, 2048
# Each stand-in model trains until zeroing any one layer's output raises its loss on held-out rows by this
# much: a model that has barely learned (the first full-scale stand-ins, 20 steps) loses nothing when a layer
# is zeroed, and notebook 02's check that splicing in an SAE beats zero-ablation then fails on noise.
MIN_ABLATION_RISE, HELD_OUT_ROWS = 0.5, 64
GEMMA_RELEASE, GEMMA_SAE_ID, GEMMA_LAYER = "gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical", 12


@dataclass(frozen=True)
class Scale:
    """The sizes of one set of stand-ins.

    ``models``: per Pythia name its ``layers``, width ``d`` and attention ``heads``; ``vocab_size``: the
    embedding's rows (None: the tokenizer's 4,096); ``lm_steps``/``lm_lr``: the brief AdamW training
    (batches of 16 rows × 64 tokens); ``sae``: sae-lens training keys (:func:`featlib.saes.train_sae`);
    ``d_sae``: SAE latents (None: ``sae.expansion`` × d); ``sae_tokens``: activations each SAE trains on;
    ``max_positions``: the models' context length.
    """

    models: dict[str, dict[str, int]]
    vocab_size: int | None
    lm_steps: int
    lm_lr: float
    sae: dict[str, Any] = field(default_factory=dict)
    d_sae: int | None = None
    sae_tokens: int = 16384
    max_positions: int = 512


SCALES = {
    "small": Scale(
        models={"pythia-70m": {"layers": 2, "d": 64, "heads": 4}, "pythia-160m": {"layers": 3, "d": 96, "heads": 4}},
        vocab_size=None,
        lm_steps=150,
        lm_lr=3e-3,
        sae={
            "architecture": "topk",
            "expansion": 8,
            "k": 8,
            "l1_coefficient": 1.0,
            "lr": 3e-3,
            "batch_size": 512,
            "epochs": 6,
            "b_dec_init": "zeros",
        },
    ),
    # Pythia-70m and -160m as released (GPTNeoXConfig of EleutherAI/pythia-70m, -160m), the SAEs of
    # EleutherAI/sae-pythia-*-32k (32,768 latents, k = 32) trained just far enough to pass notebook 02's
    # explained-variance check
    "full": Scale(
        models={
            "pythia-70m": {"layers": 6, "d": 512, "heads": 8},
            "pythia-160m": {"layers": 12, "d": 768, "heads": 12},
        },
        vocab_size=50304,
        lm_steps=200,
        lm_lr=2e-3,
        sae={
            "architecture": "topk",
            "expansion": 1,
            "k": 32,
            "l1_coefficient": 1.0,
            "lr": 3e-3,
            "batch_size": 512,
            "epochs": 1,
            "b_dec_init": "mean",
        },
        d_sae=32768,
        max_positions=2048,
    ),
}


def snapshot(hub: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` at :data:`REVISION`, with ``refs/main`` pointing at it."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    path = repo / "snapshots" / REVISION
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_pythia_models(hub: Path, scale: Scale) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    from .. import corpus

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(REPO / "models/tiny/lm-a/tokenizer.json"),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    rows = corpus.token_stream(tok, corpus.sotu_documents("lm_train"), 64, 200_000, tok.bos_token_id)
    for seed, (name, size) in enumerate(scale.models.items()):
        cfg = GPTNeoXConfig(
            vocab_size=scale.vocab_size or len(tok),
            hidden_size=size["d"],
            num_hidden_layers=size["layers"],
            num_attention_heads=size["heads"],
            intermediate_size=4 * size["d"],
            rope_parameters={"partial_rotary_factor": 0.25},  # Pythia: rotary embeddings on a quarter of each head
            max_position_embeddings=scale.max_positions,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
        )
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(cfg)
        for round_ in range(4):  # until every layer matters (notebook 02 asserts that splicing an SAE beats zeroing it)
            train_briefly(model, rows[:-HELD_OUT_ROWS], steps=scale.lm_steps, lr=scale.lm_lr, seed=round_)
            if (rise := ablation_rise(model, rows[-HELD_OUT_ROWS:])) >= MIN_ABLATION_RISE:
                break
        else:
            raise RuntimeError(
                f"stand-in {name}: zeroing a layer raises the held-out loss by only {rise:.2f} nats "
                f"(< {MIN_ABLATION_RISE}) after {4 * scale.lm_steps} steps. Fix: raise lm_steps or lm_lr."
            )
        path = snapshot(hub, f"EleutherAI/{name}")
        model.save_pretrained(path)
        tok.save_pretrained(path)


def train_briefly(
    model, rows: torch.Tensor, steps: int = 150, batch: int = 16, lr: float = 3e-3, seed: int = 0
) -> None:
    """A few AdamW steps of next-token prediction, so that the stand-in's layers matter to its loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch_rows = rows[torch.randint(0, len(rows), (batch,), generator=g)]
        loss = model(batch_rows, labels=batch_rows).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def ablation_rise(model, rows: torch.Tensor) -> float:
    """The smallest rise of the next-token loss (nats) on ``rows`` when one layer's output is replaced by
    zeros, over the layers of a GPT-NeoX model (what notebook 02 calls the zero-ablated loss)."""

    def zero(module, args, out):
        return (torch.zeros_like(out[0]), *out[1:]) if isinstance(out, tuple) else torch.zeros_like(out)

    model.eval()
    with torch.no_grad():
        clean = float(model(rows, labels=rows).loss)
        rises = []
        for layer in model.gpt_neox.layers:
            handle = layer.register_forward_hook(zero)
            try:
                rises.append(float(model(rows, labels=rows).loss) - clean)
            finally:
                handle.remove()
    return min(rises)


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


def write_pythia_saes(hub: Path, scale: Scale) -> None:
    from sae_lens import SAE

    from .. import corpus, models, saes

    docs = corpus.sotu_documents("lm_train")
    train_params = saes.TrainParams.of(scale.sae)
    for seed, name in enumerate(scale.models):
        lm = models.load_hub(name, name)  # the real loading function, on the stand-in just written
        rows = corpus.token_stream(lm.tokenizer, docs, 128, scale.sae_tokens + HELD_OUT, lm.bos_id)
        layers = range(lm.n_layers)
        with torch.inference_mode():
            _, cache = lm.model.run_with_cache(rows, names_filter=[models.hook_name(L) for L in layers])
        for layer in layers:
            acts = cache[models.hook_name(layer)][:, 1:].reshape(-1, lm.d_model).numpy()
            train, held_out = np.ascontiguousarray(acts[:-HELD_OUT]), torch.from_numpy(acts[-HELD_OUT:])
            for epochs in (train_params.epochs, 2 * train_params.epochs, 4 * train_params.epochs):
                trained = saes.train_sae(
                    train, replace(train_params, epochs=epochs), seed=100 * seed + layer, d_sae=scale.d_sae
                )
                if (ev := explained_variance(trained, held_out)) >= MIN_EXPLAINED_VARIANCE:
                    break
            else:
                raise RuntimeError(
                    f"stand-in SAE {name} layer {layer}: explained variance {ev:.2f} < {MIN_EXPLAINED_VARIANCE} "
                    f"after {epochs} epochs. Fix: raise the sae_tokens or sae epochs of this scale."
                )
            with tempfile.TemporaryDirectory() as tmp:
                trained.save_inference_model(tmp)
                to_sparsify(SAE.load_from_disk(tmp), snapshot(hub, SAE_REPOS[name]) / f"layers.{layer}")


def explained_variance(sae, x: torch.Tensor) -> float:
    """1 - sum|x - x_hat|^2 / sum|x - mean(x)|^2 of ``sae`` on (n, d_in) activations ``x``."""
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    return float(1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


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

    from .. import corpus

    out = root / "openwebtext"
    (out / "plain_text" / "partial-train").mkdir(parents=True, exist_ok=True)
    docs = [p for doc in corpus.sotu_documents("analysis") for p in doc.split("\n\n") if len(p) > 200]
    half = len(docs) // 2  # two shards, as the hub's conversion writes 0000.parquet, 0001.parquet, ...
    for i, part in enumerate((docs[:half], docs[half:])):
        pd.DataFrame({"text": part}).to_parquet(out / "plain_text" / "partial-train" / f"{i:04d}.parquet")
    return out


def build(root: Path, scale: str = "small", gemma_scope: bool = True) -> Path:
    """Write every stand-in of ``scale`` under ``root`` (see module docstring); returns the hub cache folder."""
    hub = root / "hub"
    write_pythia_models(hub, SCALES[scale])
    write_pythia_saes(hub, SCALES[scale])
    if gemma_scope:
        write_gemma_scope(hub)
    write_text_dataset(root)
    return hub


def standin_profile(root: Path, label: str = "pythia-standin") -> dict[str, Any]:
    """``params/pythia.yaml`` reading the stand-in dataset under ``root``: only ``profile`` (the label)
    and ``data.path`` differ, so the models, SAE releases, sizes and settings are the paper profile's."""
    import yaml

    p = yaml.safe_load((PARAMS_DIR / "pythia.yaml").read_text())
    p["profile"] = label
    p["data"]["path"] = str(Path(root).resolve() / "openwebtext")
    return p


def main(argv: list[str] | None = None) -> int:
    import os

    import yaml

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder to write (its hub/ is the HF_HUB_CACHE to use)")
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    args = ap.parse_args(argv)
    hub = (args.out / "hub").resolve()
    if os.environ.get("HF_HUB_CACHE") != str(hub):
        print(
            f"HF_HUB_CACHE must be {hub} (the stand-ins are read back through the hub's loaders while they are "
            f"written), got {os.environ.get('HF_HUB_CACHE')!r}. Fix: HF_HUB_CACHE={hub} HF_HUB_OFFLINE=1 python -m "
            f"featlib.tools.standins --out {args.out}",
            file=sys.stderr,
        )
        return 2
    t0 = time.time()
    build(args.out, args.scale, gemma_scope=args.scale == "small")
    (args.out / "pythia-standin.yaml").write_text(yaml.safe_dump(standin_profile(args.out), sort_keys=False))
    print(
        f"stand-ins ({args.scale}) in {args.out} after {time.time() - t0:.0f} s; profile {args.out / 'pythia-standin.yaml'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
