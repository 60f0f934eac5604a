"""Train the ``tiny`` profile's own language models (``make models``).

Causal transformers of two sizes share one byte-level BPE tokenizer trained with the ``tokenizers``
library on the ``lm_train`` split of the State of the Union corpus: ``lm-a`` and ``lm-b`` (seed 0), and
``lm-a-seed1``, a second training run of ``lm-a`` that differs only in its seed (initialisation and batch
order): a model-seed twin. Training is seeded and single-process, so the same seed gives the same loss
curve on the same machine. Weights
are stored in float16 (``model.safetensors``); the reported held-out loss is measured on those
stored weights, against a unigram baseline (add-one-smoothed token frequencies of the training
split).

Run: ``python -m featlib.tools.lm --out models/tiny`` (``--models lm-a-seed1`` retrains only the models
named, with the folder's tokenizer).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..corpus import sotu_documents, token_stream
from ..step import write_json as write_json_atomic

BOS = "<|endoftext|>"
VOCAB_SIZE = 4096
N_CTX = 128
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "lm-a": dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512),
    "lm-b": dict(n_layers=6, d_model=256, n_heads=8, d_head=32, d_mlp=1024),
}
TRAINING = {"steps": 1200, "batch_size": 16, "lr": 2e-3, "warmup": 30, "weight_decay": 0.05, "seed": 0}
MODELS: dict[str, tuple[str, int]] = {
    "lm-a": ("lm-a", 0),
    "lm-b": ("lm-b", 0),
    "lm-a-seed1": ("lm-a", 1),
}  # (architecture, seed)


def train_tokenizer(docs: list[str], vocab_size: int = VOCAB_SIZE) -> Any:
    """A byte-level BPE tokenizer (``tokenizers.Tokenizer``) with ``<|endoftext|>`` as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def model_config(name: str, seed: int) -> dict[str, Any]:
    """HookedTransformerConfig fields of one of the tiny architectures."""
    return dict(
        ARCHITECTURES[name],
        n_ctx=N_CTX,
        d_vocab=VOCAB_SIZE,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        seed=seed,
    )


def _lr(step: int, steps: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def heldout_loss(model: Any, rows: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over (n, n_ctx) rows."""
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = rows[i : i + batch_size]
        loss = model(batch, return_type="loss", loss_per_token=True)
        total += float(loss.sum())
        count += loss.numel()
    return total / count


def unigram_loss(train_ids: torch.Tensor, rows: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats) of the held-out next tokens under add-one-smoothed training frequencies."""
    counts = torch.bincount(train_ids.flatten(), minlength=vocab_size).double() + 1
    logp = (counts / counts.sum()).log()
    return float(-logp[rows[:, 1:].flatten()].mean())


def train_lm(
    name: str,
    train_rows: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    weight_decay: float,
    seed: int,
    log_every: int = 20,
) -> tuple[Any, list[dict[str, float]]]:
    """Train one tiny model on random rows of ``train_rows`` (n, n_ctx). Returns (model, loss log)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    model = HookedTransformer(HookedTransformerConfig(**model_config(name, seed)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    log, running = [], 0.0
    for step in tqdm(range(steps), desc=f"training {name}"):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, warmup, lr)
        batch = train_rows[torch.randint(0, len(train_rows), (batch_size,), generator=gen)]
        loss = model(batch, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += float(loss.detach())
        if (step + 1) % log_every == 0:
            log.append({"step": step + 1, "train_loss": running / log_every})
            running = 0.0
    return model.eval(), log


def save_model(model: Any, name: str, seed: int, folder: Path, tokenizer_json: str) -> None:
    """Write config.json, float16 model.safetensors and tokenizer.json into ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    params = {k: v.detach().to(torch.float16).contiguous() for k, v in model.named_parameters()}
    save_file(params, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(model_config(name, seed), indent=2) + "\n")
    (folder / "tokenizer.json").write_text(tokenizer_json)


def main(argv: list[str] | None = None) -> None:
    from transformers import PreTrainedTokenizerFast

    from ..models import load_local

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/tiny")
    ap.add_argument("--steps", type=int, default=TRAINING["steps"])
    ap.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        default=list(MODELS),
        help="the models to (re)train; a subset keeps the folder's tokenizer and the others' report",
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    train_docs = sotu_documents("lm_train")
    subset = set(args.models) != set(MODELS)
    if subset and not (out / "tokenizer.json").is_file():
        raise SystemExit(
            f"{out}/tokenizer.json is missing: --models {' '.join(args.models)} retrains some models with "
            "the folder's tokenizer. Fix: train every model first (leave out --models)."
        )
    tok_json = (out / "tokenizer.json").read_text() if subset else train_tokenizer(train_docs).to_str()
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(tok_json)
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), bos_token=BOS, eos_token=BOS)
    bos = hf_tok.bos_token_id
    n_train = sum(len(hf_tok.encode(d, add_special_tokens=False)) + 1 for d in train_docs)
    train_rows = token_stream(hf_tok, train_docs, N_CTX, n_train - N_CTX, bos)
    held_docs = sotu_documents("lm_heldout")
    n_held = sum(len(hf_tok.encode(d, add_special_tokens=False)) + 1 for d in held_docs)
    held_rows = token_stream(hf_tok, held_docs, N_CTX, n_held - N_CTX, bos)
    report: dict[str, Any] = {
        "tokenizer": {"vocab_size": VOCAB_SIZE, "train_docs": len(train_docs)},
        "train_tokens": int(train_rows[:, 1:].numel()),
        "heldout_tokens": int(held_rows[:, 1:].numel()),
        "unigram_heldout_loss": unigram_loss(train_rows[:, 1:], held_rows, VOCAB_SIZE),
        "models": {},
    }
    if subset:
        before = json.loads((out / "training.json").read_text())
        report["models"], report["seconds"] = before["models"], before["seconds"]
    for name in args.models:
        t_model = time.time()
        arch, seed = MODELS[name]
        settings = dict(TRAINING, steps=args.steps, seed=seed)
        model, log = train_lm(arch, train_rows, **settings)
        save_model(model, arch, seed, out / name, tok_json)
        stored = load_local(name, out / name).model  # evaluate the float16 weights we ship
        report["models"][name] = {
            "architecture": ARCHITECTURES[arch],
            "n_params": sum(p.numel() for p in model.parameters()),
            "training": settings,
            "heldout_loss": heldout_loss(stored, held_rows),
            "loss_curve": log,
            "seconds": round(time.time() - t_model, 1),
        }
        print(
            f"{name}: held-out loss {report['models'][name]['heldout_loss']:.3f} nats "
            f"(unigram baseline {report['unigram_heldout_loss']:.3f})"
        )
    if not subset:
        report["seconds"] = round(time.time() - t0, 1)  # the whole run, tokenizer included
    write_json_atomic(out / "training.json", report)


if __name__ == "__main__":
    main()
