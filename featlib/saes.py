"""Sparse autoencoders per model and layer: trained with sae-lens on cached activations, or loaded.

* ``sae.source: train``: a TopK (``architecture: topk``, ``k`` latents active per token) or ReLU/L1
  (``architecture: standard``, ``l1_coefficient``) SAE of width ``expansion * d_model`` trained with
  sae-lens's ``SAETrainer`` on the ``train`` activations (shuffled mini-batches, ``epochs`` passes,
  activations scaled to unit mean squared norm during training, scale folded back afterwards so the
  saved SAE reads raw activations). Cached under a key of the activations and every SAE parameter.
* ``sae.source: pretrained``: ``SAE.from_pretrained(release, sae_id)`` from the sae-lens registry
  (``format: sae_lens``) or an EleutherAI ``sparsify`` repository (``format: sparsify``, e.g.
  ``EleutherAI/sae-pythia-70m-32k`` with ``sae_id: layers.{layer}``); needs the hub. A local folder
  path as ``release`` loads from disk with the same converters.

Metrics on the ``eval`` tokens: explained variance ``1 - sum|x - x_hat|^2 / sum|x - mean(x)|^2``, MSE
per element, L0 (mean active latents per token), dead fraction (latents that never fire on the eval
tokens), and next-token loss clean / with the SAE's reconstruction spliced into
``blocks.L.hook_resid_post`` / with that activation zero-ablated (non-BOS positions), giving
``ce_recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from . import parallel, sparse_rows, step
from .activations import Activations
from .cache import is_complete
from .config import Config, Sae, resolve_path
from .models import LoadedModel, hook_name, resolve_device

CODE_VERSION = 4  # 3: TopK training decodes the active latents only (featlib.topk_training); 4: and forms the
# encoder gradient from the selected latents only (featlib.universal.selected_linear)


@dataclass(frozen=True)
class TrainParams:
    """How an SAE is trained here: the training keys of a profile's ``sae`` section (what :func:`train_sae`
    reads; in a trained SAE's cache key, with its layer and seed)."""

    architecture: str  # "topk" | "standard" (ReLU + L1)
    expansion: int  # latents = expansion x d_in
    k: int  # topk: latents active per token
    l1_coefficient: float  # standard: the L1 penalty
    lr: float
    batch_size: int
    epochs: int
    b_dec_init: str  # "zeros" | "mean"

    @classmethod
    def of(cls, sae: Sae | Mapping[str, Any]) -> TrainParams:
        """The training keys of a profile's ``sae`` section, or of a mapping of some of them (the others: the
        section's defaults)."""
        if isinstance(sae, Sae):
            return cls(**{f.name: getattr(sae, f.name) for f in fields(cls)})
        return cls(**{f.name: sae.get(f.name, Sae.model_fields[f.name].default) for f in fields(cls)})


def check_width(sae: Any, lm: LoadedModel, layer: int) -> None:
    """Raise ValueError if the SAE's input width differs from the model's d_model."""
    d_in = int(sae.cfg.d_in)
    if d_in != lm.d_model:
        raise ValueError(
            f"the SAE for {lm.id} layer {layer} reads vectors of width {d_in}, but the model's d_model is "
            f"{lm.d_model}. Fix: use the SAE release trained on this model (sae.release / sae.sae_id), "
            "or check the model name."
        )


def _batches(acts: np.ndarray, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled (batch_size, d) float32 batches of a (n, d) array, one permutation per epoch."""
    if not 1 <= batch_size <= len(acts):
        raise ValueError(
            f"{len(acts)} training activations cannot fill one batch of sae.batch_size = {batch_size}. "
            "Fix: raise data.n_train_tokens or lower sae.batch_size."
        )
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(len(acts))
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            yield torch.from_numpy(np.ascontiguousarray(acts[np.sort(perm[i : i + batch_size])]))


def train_sae(
    acts: np.ndarray,
    params: TrainParams | Mapping[str, Any],
    seed: int,
    d_sae: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Any:
    """Train one SAE with sae-lens on (n_tokens, d_in) activations; returns the inference SAE, on ``device``.
    ``params``: :class:`TrainParams` (or a mapping of its keys, :meth:`TrainParams.of`); ``d_sae``: its latents
    (default ``params.expansion`` × d_in). The activations stay in host memory;
    each batch is copied to ``device`` (a GPU trains the same SAE up to float rounding, and is not in the
    cache key, like the thread count)."""
    from sae_lens import SAETrainer
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    from .topk_training import SparseDecodeTopKTrainingSAE

    p = params if isinstance(params, TrainParams) else TrainParams.of(params)
    d_in = acts.shape[1]
    d_sae = d_sae or p.expansion * d_in
    if p.k > d_sae:
        raise ValueError(
            f"sae.k = {p.k} exceeds the SAE width sae.expansion x d_model = "
            f"{p.expansion} x {d_in}. Fix: lower sae.k or raise sae.expansion."
        )
    common = dict(d_in=d_in, d_sae=d_sae, normalize_activations="expected_average_only_in", device=device)
    torch.manual_seed(seed)
    if p.architecture == "topk":
        sae = SparseDecodeTopKTrainingSAE(TopKTrainingSAEConfig(k=p.k, **common))
    elif p.architecture == "standard":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=p.l1_coefficient, **common))
    else:
        raise ValueError(f"sae.architecture must be 'topk' or 'standard', got {p.architecture!r}")
    bs = p.batch_size
    steps = p.epochs * (len(acts) // bs)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * bs,
        train_batch_size_samples=bs,
        lr=p.lr,
        lr_warm_up_steps=max(1, steps // 20),
        lr_decay_steps=steps // 5,
        lr_end=p.lr / 10,
        dead_feature_window=max(1, steps // 4),
        feature_sampling_window=max(1, steps // 2),
        n_batches_for_norm_estimate=min(50, max(1, len(acts) // bs)),
        device=device,
    )
    import sae_lens.training.activation_scaler as scaler_module
    import sae_lens.training.sae_trainer as trainer_module
    from tqdm.auto import tqdm as auto_tqdm

    # a plain text bar (the same in notebooks, terminals and logs) that shares the line of an outer bar;
    # without progress, neither it nor the norm estimate's bar (sae-lens's own) prints
    trainer_module.tqdm = partial(tqdm, position=0, leave=False, disable=not progress)
    scaler_module.tqdm = partial(auto_tqdm, disable=not progress)
    trainer = SAETrainer(trainer_cfg, sae, _batches(acts, bs, seed))
    if p.b_dec_init == "mean":
        # start the decoder bias at the data mean (in sae-lens's scaled units, with its scale
        # sqrt(d_in) / mean norm computed here on the same rows), so that the code first explains
        # the variation around the mean: Gemma-3's residual stream is ~90 % constant offset
        sample = np.asarray(acts[: 64 * bs], dtype=np.float64)
        scale = d_in**0.5 / float(np.linalg.norm(sample, axis=1).mean())
        trainer.activation_scaler.scaling_factor = scale
        with torch.no_grad():
            sae.b_dec.copy_(torch.from_numpy(sample.mean(axis=0) * scale).to(sae.b_dec))
    elif p.b_dec_init != "zeros":
        raise ValueError(f"sae.b_dec_init must be 'zeros' or 'mean', got {p.b_dec_init!r}")
    return trainer.fit()


def sae_seed(seed: int, model_id: str, layer: int) -> int:
    """The torch seed of one trained SAE: derived from its ``seed`` (``sae.seed``, or a side's own),
    the model id and the layer, so that no two SAEs of a study start alike."""
    return int(step.stable_hash([seed, model_id, layer], 8), 16)


@dataclass(frozen=True)
class SaeParams:
    """The parameters of one trained SAE's cached step (what it trains with, and its key): the layer, the
    training keys and the torch seed (:func:`sae_seed`)."""

    layer: int
    sae: TrainParams
    seed: int


@dataclass(frozen=True)
class SaeTraining:
    """One SAE to train and cache: ``model_id``'s at ``layer``, on its ``train`` activations, with
    ``seed`` (the torch seed derives from it, the model and the layer) and the profile's training keys
    ``sae`` (:class:`TrainParams` of its ``sae`` section). Picklable, so that a worker process can run it."""

    sae: TrainParams
    model_id: str
    layer: int
    train: Activations
    seed: int

    @classmethod
    def of(cls, cfg: Config, model_id: str, layer: int, train: Activations, seed: int) -> SaeTraining:
        return cls(TrainParams.of(cfg.sae), model_id, layer, train, seed)

    @property
    def params(self) -> SaeParams:
        return SaeParams(self.layer, self.sae, sae_seed(self.seed, self.model_id, self.layer))

    def artifact(self, device: str = "auto", progress: bool = True) -> step.Artifact:
        """The cached step (inputs the activations; parameters :class:`SaeParams`: the training keys, the layer
        and the torch seed; inside :func:`featlib.step.planning` only located, not trained)."""
        p = self.params

        def produce(tmp: Path) -> None:
            sae = train_sae(self.train.layer(p.layer), p.sae, p.seed, device=resolve_device(device), progress=progress)
            sae.save_inference_model(tmp)

        meta = {"model": self.model_id, "layer": self.layer, "seed": self.seed, "torch_seed": p.seed}
        return step.run("sae", asdict(p), {"activations": self.train.key}, produce, version=CODE_VERSION, meta=meta)

    def worker_bytes(self) -> float:
        """Memory one worker process training this SAE needs, about: the imported libraries (~0.75 GB
        measured on tiny), parameters, gradients and Adam's two moments of both matrices, and a batch's
        dense pre-activations and their top-k work space."""
        d_in = int(self.train.layer(self.layer).shape[1])
        d_sae = self.sae.expansion * d_in
        return 1e9 + 4 * 4 * 2 * d_in * d_sae + 4 * 4 * self.sae.batch_size * d_sae


def _train_in_worker(job: SaeTraining) -> None:
    job.artifact(device="cpu", progress=False)


def train_all(jobs: list[SaeTraining]) -> int:
    """Train and cache the SAEs of ``jobs`` that are not cached yet, in parallel single-threaded worker
    processes when more than one fits (:func:`featlib.parallel.worker_count`; on the CPU only: a GPU
    trains them one by one). Returns the number of workers used; with one, nothing is done here and each
    SAE trains in this process when first asked for, as before. Each worker trains the same SAE as a
    single-threaded run of this process (the cache key does not depend on threads or workers)."""
    with step.planning():
        todo = [job for job in jobs if not is_complete(job.artifact().path, verify=False)]
    if not todo or resolve_device("auto") != "cpu":
        return 1
    workers = parallel.worker_count(len(todo), max(job.worker_bytes() for job in todo))
    if workers == 1:
        return 1
    fresh = [replace(job, train=Activations(job.train.path, job.train.layers)) for job in todo]  # no cached arrays
    with parallel.pool(workers) as pool:
        futures = [pool.submit(_train_in_worker, job) for job in fresh]
        try:
            for done in tqdm(
                as_completed(futures), total=len(futures), desc=f"training SAEs ({workers} processes)", leave=False
            ):
                done.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return workers


def load_trained(artifact: step.Artifact, device: str = "cpu") -> Any:
    """A trained SAE (:meth:`SaeTraining.artifact`) from its artifact folder."""
    from sae_lens import SAE

    return SAE.load_from_disk(artifact.path, device=device)


def published_identity(cfg: Config, model_id: str, layer: int) -> str:
    """The key of a published SAE: its release, id, format and layer; for a local folder also the SHA-256
    of every file in it (another SAE saved in its place is another input). A hub release is keyed by its
    name: the key is computed before the SAE is downloaded, so it cannot hold the commit."""
    release, sae_id = cfg.sae.release.get(model_id, ""), cfg.sae.sae_id.get(model_id, "")
    folder = resolve_path(release) / sae_id.format(layer=layer)
    content = (
        {str(f.relative_to(folder)): step.content_sha256(f) for f in sorted(folder.rglob("*")) if f.is_file()}
        if folder.is_dir()
        else {}
    )
    return step.identity(
        {"release": release, "sae_id": sae_id, "format": cfg.sae.format, "layer": layer, "content": content}
    )


def sparsify_disk_loader(
    path: str | Path, device: str = "cpu", cfg_overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """sae-lens disk converter for an EleutherAI ``sparsify`` folder (``cfg.json`` + ``sae.safetensors``).

    sparsify's ``SparseCoder`` encodes ``topk(relu(W (x - b_dec) + b))`` and decodes ``z W_dec + b_dec``,
    storing ``encoder.weight`` (d_sae, d_in), ``encoder.bias``, ``W_dec`` (d_sae, d_in) and ``b_dec``.
    sae-lens 6.54's own sparsify converter transposes ``W_dec`` (so real sparsify files fail to load)
    and does not subtract ``b_dec`` when ``normalize_decoder`` is set; this one follows sparsify and is
    tested against eai-sparsify's own ``SparseCoder``. Hook: ``layers.L`` -> ``blocks.L.hook_resid_post``.
    """
    from sae_lens.loading.pretrained_sae_loaders import get_sparsify_config_from_disk
    from safetensors.torch import load_file

    path = Path(path)
    raw = json.loads((path / "cfg.json").read_text())
    if raw.get("transcode") or raw.get("activation", "topk") != "topk" or raw.get("skip_connection"):
        raise ValueError(
            f"{path} holds a sparsify transcoder / non-TopK / skip-connection coder; featlib reads "
            "residual-stream TopK SAEs only. Fix: point sae.release at an SAE release."
        )
    cfg = get_sparsify_config_from_disk(path, device, cfg_overrides)
    cfg["apply_b_dec_to_input"] = True
    w = load_file(path / "sae.safetensors", device=device)
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    W_dec = w["W_dec"] if tuple(w["W_dec"].shape) == (d_sae, d_in) else w["W_dec"].T
    dtype = getattr(torch, str(cfg["dtype"]).removeprefix("torch."))
    state = {"W_enc": w["encoder.weight"].T, "b_enc": w["encoder.bias"], "W_dec": W_dec, "b_dec": w["b_dec"]}
    return cfg, {k: v.to(dtype).contiguous() for k, v in state.items()}


def sparsify_hub_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], None]:
    """The same as :func:`sparsify_disk_loader` for a folder of a hub repository (``SAE.from_pretrained``)."""
    from huggingface_hub import hf_hub_download

    for name in ("cfg.json", "sae.safetensors"):
        local = hf_hub_download(repo_id, filename=f"{folder_name}/{name}", force_download=force_download)
    cfg, state = sparsify_disk_loader(Path(local).parent, device, cfg_overrides)
    return cfg, state, None


def check_hook(sae: Any, model_id: str, layer: int) -> None:
    """Raise ValueError if a published SAE was trained on another hook than ``blocks.L.hook_resid_post``."""
    meta = getattr(sae.cfg, "metadata", None)
    read = getattr(meta, "hook_name", None)
    if read is not None and read != hook_name(layer):
        raise ValueError(
            f"the SAE for {model_id} layer {layer} reads {read!r}, but featlib extracts {hook_name(layer)!r} (the output "
            f"of block {layer}). Fix: pick the SAE of that hook (sae.sae_id), or the layer whose output it reads."
        )


def load_pretrained(cfg: Config, model_id: str, layer: int, device: str = "cpu") -> Any:
    """A published SAE in float32: from the sae-lens registry (``format: sae_lens``, e.g. Gemma Scope),
    a sparsify hub repository (``format: sparsify``), or a local folder of either."""
    from sae_lens import SAE

    try:
        release = cfg.sae.release[model_id]
        sae_id = cfg.sae.sae_id[model_id].format(layer=layer)
    except KeyError as e:
        raise ValueError(f"sae.release and sae.sae_id need an entry for model {model_id}") from e
    if cfg.sae.format not in ("sae_lens", "sparsify"):
        raise ValueError(f"sae.format must be 'sae_lens' or 'sparsify', got {cfg.sae.format!r}")
    sparsify = cfg.sae.format == "sparsify"
    local = resolve_path(release)
    if local.exists():
        converter = {"converter": sparsify_disk_loader} if sparsify else {}
        sae = SAE.load_from_disk(local / sae_id, device=device, dtype="float32", **converter)
    else:
        sae = SAE.from_pretrained(
            release, sae_id, device=device, dtype="float32", converter=sparsify_hub_loader if sparsify else None
        )
    check_hook(sae, model_id, layer)
    return sae


@torch.inference_mode()
def encode_chunks(sae: Any, acts: Activations, layer: int, chunk_tokens: int) -> Iterator[torch.Tensor]:
    """Yield SAE codes (<= chunk_tokens, d_sae) float32 of one layer's eval activations, in token order."""
    for x in acts.chunks(layer, chunk_tokens):
        yield sae.encode(x.to(sae.device, sae.dtype)).float().cpu()


def decode_sparse(sae: Any, z: torch.Tensor | sp.csr_array) -> torch.Tensor:
    """(n, d_in) float32 reconstruction of (n, d_sae) codes, dense or CSR, through ``sae.decode`` given a sparse
    COO tensor: the product touches only the non-zero codes (k per row for TopK) instead of all d_sae."""
    if isinstance(z, torch.Tensor):
        z = z.to_sparse()
    else:
        coo = z.tocoo()
        idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))  # what torch would convert them to
        z = torch.sparse_coo_tensor(idx, coo.data, coo.shape, check_invariants=False)
    return sae.decode(z.to(sae.device, sae.dtype)).float().cpu()


@torch.inference_mode()
def evaluate(
    sae: Any,
    lm: LoadedModel,
    acts: Activations,
    layer: int,
    ce_batches: int,
    codes: sp.csr_array | None = None,
    chunk_tokens: int = 4096,
    baselines: LossBaselines | None = None,
) -> dict[str, float]:
    """Reconstruction and downstream-loss metrics of one SAE on the eval activations (see module doc).

    ``codes``: the SAE's (n_units, d_sae) CSR codes of these activations if already computed (the cached ones
    of :mod:`featlib.study.codes`), else they are encoded here. ``baselines``: what :func:`next_token_losses`
    keeps between calls for the same model and eval tokens (the clean loss, each layer's residual stream and
    zero-ablated loss: none depends on the SAE), so that every SAE of a model costs one forward pass from its
    layer on, with its reconstruction spliced in."""
    if codes is None:
        codes = sparse_rows.pack(encode_chunks(sae, acts, layer, chunk_tokens), int(sae.cfg.d_sae))
    sse = sst = 0.0
    x_all = acts.layer(layer)
    n = len(x_all)
    if codes.shape != (n, int(sae.cfg.d_sae)):
        raise ValueError(
            f"codes of shape {codes.shape} for {n} eval units of an SAE of width {sae.cfg.d_sae}: "
            "pass the codes of this SAE on these activations"
        )
    mean = torch.from_numpy(np.asarray(x_all.mean(axis=0, dtype=np.float64))).float()
    for start, x in zip(range(0, n, chunk_tokens), acts.chunks(layer, chunk_tokens)):
        x_hat = decode_sparse(sae, codes[start : start + len(x)])
        sse += float(((x - x_hat) ** 2).sum())
        sst += float(((x - mean) ** 2).sum())
    active = codes.indices[codes.data > 0]
    known = LossBaselines() if baselines is None else baselines

    def splice(value: torch.Tensor) -> torch.Tensor:
        rest = value[:, 1:].reshape(-1, value.shape[-1])
        rec = decode_sparse(sae, sae.encode(rest.to(sae.dtype))).to(value.device, value.dtype)
        return torch.cat([value[:, :1], rec.reshape(value[:, 1:].shape)], dim=1)

    ce_clean, ce_sae, ce_zero = next_token_losses(lm, acts, layer, ce_batches, splice, known)
    return {
        "explained_variance": 1 - sse / sst,
        "mse": sse / (n * x_all.shape[1]),
        "l0": len(active) / n,
        "dead_fraction": 1 - len(np.unique(active)) / int(sae.cfg.d_sae),
        "ce_clean": ce_clean,
        "ce_sae": ce_sae,
        "ce_zero": ce_zero,
        "ce_recovered": (ce_zero - ce_sae) / (ce_zero - ce_clean),
        "d_sae": int(sae.cfg.d_sae),
        "n_tokens": n,
    }


def _zero(value: torch.Tensor) -> torch.Tensor:
    """The residual with every position but the first (BOS) zeroed: the zero-ablation of notebook 02."""
    return torch.cat([value[:, :1], torch.zeros_like(value[:, 1:])], dim=1)


@dataclass
class LossBaselines:
    """What :func:`next_token_losses` keeps between calls for one model and its eval rows (none of it
    depends on the SAE): per batch of 8 rows what transformer-lens's ``input_to_embed`` returns (residual,
    tokens, shortformer positions, attention mask); the clean loss; per layer the residual stream after
    that block (one (rows, pos, d_model) tensor per batch) and the zero-ablated loss."""

    embed: list[tuple[Any, ...]] = field(default_factory=list)
    clean: float = float("nan")
    resid: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    zero: dict[int, float] = field(default_factory=dict)


@torch.inference_mode()
def next_token_losses(
    lm: LoadedModel,
    acts: Activations,
    layer: int,
    ce_batches: int,
    splice: Callable[[torch.Tensor], torch.Tensor],
    known: LossBaselines,
) -> tuple[float, float, float]:
    """Mean next-token loss (nats) on the first ``ce_batches`` × 8 eval rows: clean, with ``blocks.L.hook_resid_post``
    replaced by ``splice`` of it ((rows, pos, d_model) -> same), and zero-ablated (all but the BOS position).

    Only what depends on the layer is recomputed: the residual stream after block L is kept in ``known``
    (computed on from the deepest layer kept below L), and the spliced and zero-ablated passes start at
    block L + 1 from it (transformer-lens's ``start_at_layer``): the same arithmetic as a full pass with a
    hook at block L. ``known`` also keeps the clean loss and each layer's zero-ablated one. With one dict
    for every SAE of a model and eval rows, the model's blocks up to its deepest layer run once, and each
    SAE costs one pass from its layer on (memory: one (rows, pos, d_model) residual per layer)."""
    model = lm.model
    tokens = torch.from_numpy(acts.tokens[: max(1, ce_batches) * 8])
    # position j predicts token j + 1: count it only where that token is real (rows may be right-padded)
    real = torch.arange(tokens.shape[1] - 1)[None, :] + 1 < torch.from_numpy(acts.lengths[: len(tokens)])[:, None]

    def mean_loss(per_batch: Iterator[torch.Tensor]) -> float:
        total = sum(float(per_token.float().cpu()[mask].sum()) for per_token, mask in zip(per_batch, real.split(8)))
        return total / int(real.sum())

    if not known.embed:  # the embedding, and what transformer-lens's forward derives from the tokens
        batches = [b.to(model.cfg.device) for b in tokens.split(8)]
        known.embed = [model.input_to_embed(b) for b in batches]
        known.clean = mean_loss(model(b, return_type="loss", loss_per_token=True) for b in batches)
    resid = known.resid
    if layer not in resid:
        below = max((L for L in resid if L < layer), default=-1)
        start = resid[below] if below >= 0 else [embed[0] for embed in known.embed]
        resid[layer] = [
            model(
                x,
                start_at_layer=below + 1,
                stop_at_layer=layer + 1,
                tokens=tok,
                attention_mask=mask,
                shortformer_pos_embed=pos,
            )
            for x, (_, tok, pos, mask) in zip(start, known.embed)
        ]

    def from_layer(edit: Callable[[torch.Tensor], torch.Tensor]) -> float:
        return mean_loss(
            model(
                edit(x),
                start_at_layer=layer + 1,
                tokens=tok,
                attention_mask=mask,
                shortformer_pos_embed=pos,
                return_type="loss",
                loss_per_token=True,
            )
            for x, (_, tok, pos, mask) in zip(resid[layer], known.embed)
        )

    if layer not in known.zero:
        known.zero[layer] = from_layer(_zero)
    return known.clean, from_layer(splice), known.zero[layer]
