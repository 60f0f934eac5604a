"""Universal sparse autoencoders (USAE; Thasarathan et al., arXiv 2502.03714) for M >= 2 language models.

One dictionary of K concepts shared by all models. Model i has an encoder ``W_enc[i]`` (d_i, K) with
bias ``b_enc[i]`` (K,) and a decoder ``W_dec[i]`` (K, d_i) with unit-norm rows and no bias, on
activations standardised per model: ``x~ = (x - mean_i) / scale_i`` with the mean vector and one
scalar ``scale_i = sqrt(E||x - mean_i||^2 / d_i)`` of the training activations (elements then have
unit variance on average). The shared code of a token seen by model i is

    z = TopK_k(ReLU(x~ W_enc[i] + b_enc[i]))          (K,), k non-zeros at most

and it is decoded into *every* model j as ``z W_dec[j]``. The published training step: pick one
model i at random, encode its activations, decode into every model, sum the M reconstruction losses
(mean squared error of the standardised activations), and step model i's optimiser (its encoder and
decoder) — ``update: own`` — or also every decoder — ``update: all_decoders``. AdamW, linear warm-up
then cosine decay to ``lr_end``, gradient clipping, decoder rows renormalised after each step, and
an auxiliary loss against dead latents (AuxK, Gao et al. 2024): latents that fired on no token in the
last ``dead_steps`` steps reconstruct model i's residual with their ``aux_k`` largest
pre-activations, weighted by ``aux_coef``. The published encoder has a BatchNorm before the ReLU;
here it has none (a per-model standardisation replaces it), which keeps encoding per token.

Metrics (:func:`measure`), on tokens none of the training steps saw:

* ``r2[i, j]`` = 1 - sum||x_j - x^_j||^2 / sum||x_j - mean(x_j)||^2 when encoding with i and decoding
  with j (the same in raw and standardised units);
* a concept *fires* on a token for model i when its code exceeds ``fire_threshold`` (0.1, as
  published); ``firing_entropy[k]`` = normalised entropy of the M firing shares (1 = fires equally in
  every model, 0 = in one model only); ``cofire[k]`` = tokens where it fires in every model;
  ``cofire_proportion[k]`` = cofire / tokens where it fires in any model;
* ``energy[k]`` = sum_i ||E_t[z_k(x_i)] W_dec[i][k]|| (importance; decoder rows have unit norm).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


@dataclass(frozen=True)
class USAEParams:
    """Training hyper-parameters of a universal SAE (the ``universal`` section of a profile, minus ``layers``
    and the measurement settings ``fire_threshold`` and ``concept``, which are not part of its key)."""

    expansion: int = 8  # dictionary size = expansion x the largest d_model
    k: int = 32
    lr: float = 3e-4
    lr_end: float = 1e-6
    warmup_steps: int = 100
    weight_decay: float = 1e-5
    grad_clip: float = 1.0
    batch_size: int = 1024
    steps: int = 3000
    update: str = "own"  # "own": the chosen model's encoder and decoder; "all_decoders": and every decoder
    aux_k: int = 64
    aux_coef: float = 1 / 32
    dead_steps: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.update not in ("own", "all_decoders"):
            raise ValueError(f"universal.update must be 'own' or 'all_decoders', got {self.update!r}")
        if self.k < 1 or self.expansion < 1 or self.steps < 1:
            raise ValueError("universal.k, expansion and steps must be >= 1")


class UniversalSAE(nn.Module):
    """Per-model encoders and decoders around one shared TopK code (see module docstring)."""

    def __init__(self, d_models: dict[str, int], n_latents: int, k: int, seed: int = 0) -> None:
        super().__init__()
        if len(d_models) < 2:
            raise ValueError(f"a universal SAE needs at least two models, got {list(d_models)}")
        self.ids = list(d_models)
        self.d_models = dict(d_models)
        self.n_latents, self.k = int(n_latents), int(k)
        g = torch.Generator().manual_seed(seed)
        self.W_enc, self.b_enc, self.W_dec = nn.ParameterDict(), nn.ParameterDict(), nn.ParameterDict()
        for mid, d in d_models.items():
            dec = torch.randn(n_latents, d, generator=g)
            dec /= dec.norm(dim=1, keepdim=True)
            self.W_dec[mid] = nn.Parameter(dec)
            self.W_enc[mid] = nn.Parameter(dec.T.clone())  # tied initialisation
            self.b_enc[mid] = nn.Parameter(torch.zeros(n_latents))
        for mid, d in d_models.items():
            self.register_buffer(f"mean_{mid}", torch.zeros(d))
            self.register_buffer(f"scale_{mid}", torch.ones(()))

    def mean(self, mid: str) -> torch.Tensor:
        return getattr(self, f"mean_{mid}")

    def scale(self, mid: str) -> torch.Tensor:
        return getattr(self, f"scale_{mid}")

    def set_standardisation(self, mid: str, x: torch.Tensor) -> None:
        """Fit model ``mid``'s mean vector and scalar scale on (n, d) activations."""
        mean = x.double().mean(0)
        self.mean(mid).copy_(mean.float())
        self.scale(mid).copy_(((x.double() - mean) ** 2).sum(1).mean().div(x.shape[1]).sqrt().float())

    def standardise(self, mid: str, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean(mid)) / self.scale(mid)

    def pre_acts(self, mid: str, x: torch.Tensor) -> torch.Tensor:
        """(n, K) ReLU pre-activations of standardised (n, d_mid) activations."""
        return torch.relu(x @ self.W_enc[mid] + self.b_enc[mid])

    def encode(self, mid: str, x: torch.Tensor, standardised: bool = False) -> torch.Tensor:
        """(n, K) shared codes of model ``mid``'s (n, d_mid) activations (raw unless ``standardised``)."""
        pre = self.pre_acts(mid, x if standardised else self.standardise(mid, x))
        vals, idx = pre.topk(self.k, dim=1)
        return torch.zeros_like(pre).scatter_(1, idx, vals)

    def decode(self, mid: str, z: torch.Tensor, standardised: bool = False) -> torch.Tensor:
        """(n, d_mid) reconstruction in model ``mid`` of (n, K) codes (raw units unless ``standardised``)."""
        x = z @ self.W_dec[mid]
        return x if standardised else x * self.scale(mid) + self.mean(mid)

    @torch.no_grad()
    def normalise_decoders(self) -> None:
        for w in self.W_dec.values():
            w /= w.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def save(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        """``usae.safetensors`` and ``usae.json`` (architecture and ``extra``, e.g. parameters and seed)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, folder / "usae.safetensors")
        meta = {"d_models": self.d_models, "n_latents": self.n_latents, "k": self.k, **(extra or {})}
        (folder / "usae.json").write_text(json.dumps(meta, indent=1, sort_keys=True))

    @classmethod
    def load(cls, folder: Path) -> UniversalSAE:
        from safetensors.torch import load_file

        meta = json.loads((folder / "usae.json").read_text())
        usae = cls(meta["d_models"], meta["n_latents"], meta["k"])
        usae.load_state_dict(load_file(folder / "usae.safetensors"))
        return usae.eval()


def aligned_batches(arrays: dict[str, np.ndarray], batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches of the *same* tokens in every model: {model: (batch_size, d_model) float32}.

    ``arrays`` are (n_tokens, d) arrays (memory maps) of one token stream; one permutation per epoch.
    """
    n = {len(a) for a in arrays.values()}
    if len(n) != 1:
        raise ValueError(
            f"the models' activations cover different numbers of tokens {sorted(n)}: they must read one token stream"
        )
    n_tokens = n.pop()
    if n_tokens < batch_size:
        raise ValueError(f"{n_tokens} training tokens but universal.batch_size is {batch_size}. Fix: lower batch_size.")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n_tokens)
        for i in range(0, n_tokens - batch_size + 1, batch_size):
            rows = np.sort(perm[i : i + batch_size])
            yield {mid: torch.from_numpy(np.ascontiguousarray(a[rows], dtype=np.float32)) for mid, a in arrays.items()}


def selected_rows(W: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """(n, d) sum over j of vals[:, j] * W[idx[:, j]]: a code that is zero outside the (n, m) latents
    ``idx`` decoded by (K, d) ``W`` without the dense (n, K) product (backward passes touch those rows only)."""
    return torch.nn.functional.embedding_bag(idx, W, per_sample_weights=vals, mode="sum")


class _SelectedLinear(torch.autograd.Function):
    """``pre.gather(1, idx)`` where ``pre`` = x @ W + b (or its ReLU) was computed without gradient, with W's
    and b's gradients formed from the selected entries only (see :func:`selected_linear`)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, idx: torch.Tensor, pre: torch.Tensor, relu: bool
    ) -> torch.Tensor:
        out = pre.gather(1, idx)
        ctx.save_for_backward(x, idx, out)
        ctx.n_latents, ctx.relu = W.shape[1], relu
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.needs_input_grad[0]:
            raise NotImplementedError("selected_linear gives no gradient to its input x: pass it detached")
        x, idx, out = ctx.saved_tensors
        if ctx.relu:
            grad = torch.where(out > 0, grad, 0.0)
        d_W = d_b = None
        if ctx.needs_input_grad[1]:
            # column j of dW sums grad[r, s] * x[r] over the (r, s) with idx[r, s] = j: the weight gradient
            # of a weighted embedding_bag whose output's gradient is x
            with torch.enable_grad():
                rows = torch.zeros(ctx.n_latents, x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
                (d_rows,) = torch.autograd.grad(selected_rows(rows, idx, grad), rows, x)
            d_W = d_rows.T.contiguous()
        if ctx.needs_input_grad[2]:
            d_b = grad.new_zeros(ctx.n_latents).index_add_(0, idx.flatten(), grad.flatten())
        return None, d_W, d_b, None, None, None


def selected_linear(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, idx: torch.Tensor, pre: torch.Tensor, relu: bool = False
) -> torch.Tensor:
    """(n, m) entries at the columns ``idx`` (n, m) of each row of ``pre`` (n, K), which is x @ W + b
    (``relu``: its ReLU) computed without gradient, to select ``idx``; x (n, d) takes no gradient. W's
    gradient then costs n m d multiply-adds, where the dense backward pass (``x.T @ d_pre``) costs n K d
    (190 times more for 6,144 latents and k = 32), and equals it up to float rounding; b's touches the
    selected entries only."""
    return _SelectedLinear.apply(x, W, b, idx, pre, relu)


def lr_at(step: int, p: USAEParams) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``lr_end`` at ``steps``."""
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    t = (step - p.warmup_steps) / max(1, p.steps - p.warmup_steps)
    return p.lr_end + 0.5 * (p.lr - p.lr_end) * (1 + math.cos(math.pi * min(1.0, t)))


def train(
    arrays: dict[str, np.ndarray], p: USAEParams, progress: bool = True, device: str = "cpu"
) -> tuple[UniversalSAE, dict[str, list[float]]]:
    """Train a universal SAE on aligned (n_tokens, d_i) training activations of every model.

    Returns the model (on the CPU) and its log: per step the chosen model, the summed reconstruction
    loss and the aux loss, the share of dead latents, and the wall time per step.
    """
    import time

    torch.manual_seed(p.seed)
    d_models = {mid: int(a.shape[1]) for mid, a in arrays.items()}
    usae = UniversalSAE(d_models, p.expansion * max(d_models.values()), p.k, seed=p.seed)
    sample_rows = np.sort(np.random.default_rng(p.seed).permutation(len(next(iter(arrays.values()))))[:65536])
    for mid, a in arrays.items():
        usae.set_standardisation(mid, torch.from_numpy(np.asarray(a[sample_rows], dtype=np.float32)))
    usae.to(device)
    opts = {
        mid: torch.optim.AdamW(
            [usae.W_enc[mid], usae.b_enc[mid], usae.W_dec[mid]], lr=p.lr, weight_decay=p.weight_decay
        )
        for mid in usae.ids
    }
    rng = np.random.default_rng(p.seed + 1)
    last_fired = torch.zeros(usae.n_latents, dtype=torch.long, device=device)
    log: dict[str, list[float]] = {"model": [], "loss": [], "aux_loss": [], "dead": [], "seconds": []}
    batches = aligned_batches(arrays, p.batch_size, p.seed)
    bar = tqdm(range(p.steps), desc="training universal SAE", disable=not progress)
    for step in bar:
        t0 = time.perf_counter()
        batch = next(batches)
        x = {mid: usae.standardise(mid, v.to(device)) for mid, v in batch.items()}
        i = usae.ids[int(rng.integers(len(usae.ids)))]
        W_enc, b_enc = usae.W_enc[i], usae.b_enc[i]
        with torch.no_grad():  # the dense encoder selects; gradients flow through the selected entries only
            pre = torch.addmm(b_enc, x[i], W_enc).relu_()
            idx = pre.topk(usae.k, dim=1).indices
        vals = selected_linear(x[i], W_enc, b_enc, idx, pre, relu=True)
        # decoding the k active latents only (the code z is zero elsewhere): the same sums as z @ W_dec
        recon = {j: selected_rows(usae.W_dec[j], idx, vals) for j in usae.ids}
        loss = cast(torch.Tensor, sum(((recon[j] - x[j]) ** 2).mean() for j in usae.ids))
        with torch.no_grad():
            last_fired[torch.unique(idx[vals > 0])] = step
        dead = (step - last_fired) >= p.dead_steps
        aux = torch.zeros((), device=device)
        if dead.any() and p.aux_coef > 0:
            resid = (x[i] - recon[i]).detach()
            k_aux = min(p.aux_k, int(dead.sum()))
            cols = dead.nonzero().squeeze(1)  # the top among the dead columns only
            a_idx = cols[pre.index_select(1, cols).topk(k_aux, dim=1).indices]
            a_vals = selected_linear(x[i], W_enc, b_enc, a_idx, pre, relu=True)
            resid_hat = selected_rows(usae.W_dec[i], a_idx, a_vals)
            aux = ((resid_hat - resid) ** 2).sum() / (resid**2).sum().clamp_min(1e-8)
        total = loss + p.aux_coef * aux
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        total.backward()
        stepping = [opts[i]] if p.update == "own" else list(opts.values())
        for opt in stepping:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, p)
                torch.nn.utils.clip_grad_norm_([q for q in group["params"] if q.grad is not None], p.grad_clip)
            opt.step()
        usae.normalise_decoders()
        log["model"].append(usae.ids.index(i))
        log["loss"].append(float(loss.detach()))
        log["aux_loss"].append(float(aux.detach()))
        log["dead"].append(float(dead.float().mean()))
        log["seconds"].append(time.perf_counter() - t0)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", dead=f"{float(dead.float().mean()):.2f}")
    return usae.cpu().eval(), log


@dataclass
class USAEMetrics:
    """What :func:`measure` computes (see module docstring); arrays are indexed by concept k."""

    ids: list[str]
    r2: np.ndarray  # (M, M): encode with row model, decode with column model
    fires: np.ndarray  # (M, K) tokens where concept k fires for model i
    cofire: np.ndarray  # (K,) tokens where it fires for every model
    anyfire: np.ndarray  # (K,)
    mean_code: np.ndarray  # (M, K) E_t[z_k(x_i)]
    n_tokens: int

    @property
    def firing_entropy(self) -> np.ndarray:
        """(K,) normalised entropy of the firing shares; NaN for concepts that never fire."""
        total = self.fires.sum(0)
        share = self.fires / np.where(total > 0, total, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(share > 0, share * np.log(share), 0).sum(0) / np.log(len(self.ids))
        return np.where(total > 0, h, np.nan)

    @property
    def cofire_proportion(self) -> np.ndarray:
        return np.where(self.anyfire > 0, self.cofire / np.maximum(self.anyfire, 1), np.nan)

    @property
    def energy(self) -> np.ndarray:
        """(K,) sum over models of ||E[z_k] W_dec[i][k]|| (unit-norm decoder rows: sum of mean codes)."""
        return self.mean_code.sum(0)

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}


@torch.no_grad()
def measure(usae: UniversalSAE, chunks: Iterator[dict[str, torch.Tensor]], fire_threshold: float = 0.1) -> USAEMetrics:
    """Cross-reconstruction R², firing, co-firing and mean codes over aligned chunks {model: (n, d)}."""
    ids, K, M = usae.ids, usae.n_latents, len(usae.ids)
    sse = np.zeros((M, M))
    s1 = {j: torch.zeros(usae.d_models[j], dtype=torch.float64) for j in ids}
    s2 = np.zeros(M)
    fires = np.zeros((M, K))
    cofire, anyfire, code_sum = np.zeros(K), np.zeros(K), np.zeros((M, K))
    n = 0
    for chunk in chunks:
        x = {j: usae.standardise(j, chunk[j].float()) for j in ids}
        fired = []
        for a, i in enumerate(ids):
            z = usae.encode(i, x[i], standardised=True)
            for b, j in enumerate(ids):
                sse[a, b] += float(((usae.decode(j, z, standardised=True) - x[j]) ** 2).double().sum())
            f = z > fire_threshold
            fires[a] += f.sum(0).numpy()
            code_sum[a] += z.double().sum(0).numpy()
            fired.append(f)
        stack = torch.stack(fired)
        cofire += stack.all(0).sum(0).numpy()
        anyfire += stack.any(0).sum(0).numpy()
        for b, j in enumerate(ids):
            s1[j] += x[j].double().sum(0)
            s2[b] += float((x[j].double() ** 2).sum())
        n += len(x[ids[0]])
    sst = np.array([s2[b] - float((s1[j] ** 2).sum()) / n for b, j in enumerate(ids)])
    return USAEMetrics(
        ids=list(ids),
        r2=1 - sse / sst[None, :],
        fires=fires,
        cofire=cofire,
        anyfire=anyfire,
        mean_code=code_sum / n,
        n_tokens=n,
    )


def max_cosines(
    D: torch.Tensor | np.ndarray, W: torch.Tensor | np.ndarray, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """For every row of D (n, d): its largest cosine with any row of W (m, d), and that row's index."""
    D = torch.as_tensor(np.asarray(D), dtype=torch.float32)
    W = torch.as_tensor(np.asarray(W), dtype=torch.float32)
    D = D / D.norm(dim=1, keepdim=True).clamp_min(1e-12)
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best, arg = [], []
    for i in range(0, len(D), chunk):
        v, j = (D[i : i + chunk] @ W.T).max(1)
        best.append(v)
        arg.append(j)
    return torch.cat(best).numpy(), torch.cat(arg).numpy()


def random_directions(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) random unit vectors (the chance baseline of a counterpart search)."""
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pair_overlap(
    concept_a: np.ndarray,
    concept_b: np.ndarray,
    pairs_a: Sequence[int] | np.ndarray,
    pairs_b: Sequence[int] | np.ndarray,
) -> float:
    """Share of the (a, b) feature pairs that some universal concept maps onto (its best-cosine SAE
    feature in A is a and in B is b; -1 = no counterpart)."""
    mapped = {(int(a), int(b)) for a, b in zip(concept_a, concept_b) if a >= 0 and b >= 0}
    pairs = list(zip(map(int, pairs_a), map(int, pairs_b)))
    return float(np.mean([p in mapped for p in pairs])) if pairs else float("nan")
