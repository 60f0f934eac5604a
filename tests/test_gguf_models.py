"""The real pretrained models of the ``smollm-gemma`` profile, from their PyPI GGUF packages, offline.

The hooked (transformer-lens) model must compute what transformers computes from the same GGUF:
equal logits, and our layer L (``blocks.L.hook_resid_post``) equal to ``hidden_states[L + 1]``. The
first run converts the GGUF files (about a minute and a half) into the model cache; later runs load
the converted copies.
"""

import numpy as np
import pytest
import torch

from featlib import alignment, cache, corpus, models

pytestmark = pytest.mark.slow  # the real GGUF models: converted and run (about 2 minutes)

TEXT = "In 1863, President Lincoln told Congress that the economy of the United States was strong."


@pytest.fixture(scope="module", params=sorted(models.GGUF_MODELS))
def pair(request):
    from transformers import AutoModelForCausalLM

    lm = models.load_gguf(request.param, request.param, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(str(models.converted_gguf(request.param)), dtype=torch.float32).eval()
    return request.param, lm, hf


def test_hooked_model_computes_what_transformers_computes(pair):
    _, lm, hf = pair
    ids = torch.tensor([[lm.bos_id] + lm.tokenizer.encode(TEXT, add_special_tokens=False)])
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        logits, acts = lm.model.run_with_cache(ids)
    torch.testing.assert_close(logits, out.logits, atol=1e-3, rtol=1e-4)
    for layer in range(lm.n_layers - 1):  # hidden_states[-1] is after the final norm
        want = out.hidden_states[layer + 1]
        torch.testing.assert_close(acts[models.hook_name(layer)], want, atol=1e-5 * float(want.abs().max()), rtol=1e-4)
    # a real language model: the next token after "the United" is " States", and loss is low on English
    pos = ids[0].tolist().index(lm.tokenizer.encode(" United", add_special_tokens=False)[-1], 10)
    assert lm.tokenizer.decode(int(logits[0, pos].argmax())).strip() == "States"
    with torch.no_grad():
        assert float(lm.model(ids, return_type="loss")) < 5.0


def test_extraction_through_transformers_writes_the_hooked_models_residuals(pair, tmp_path):
    """extract() runs transformers' forward for GGUF models: the same layer-L residuals as the hooked model's
    run_with_cache, the deepest layer included (its block output, not hidden_states[-1] after the final
    norm), on rows padded at the end; a random re-initialisation keeps no transformers form."""
    import dataclasses

    from featlib.activations import Activations, extract

    _, lm, _ = pair
    assert lm.forward_impl == "transformers" and models.random_init(lm, 0).forward_impl == "transformer-lens"
    docs = corpus.sotu_documents("analysis")[:1]
    rows = corpus.token_stream(lm.tokenizer, docs, 24, 4 * 23, lm.bos_id).numpy()
    rowset = alignment.token_rowset(rows)
    rowset.lengths[2:] = 17  # the second batch's rows end early: its padding is not run, as in the hooked path
    rowset.unit_index[2:, 17:] = -1
    layers = [1, lm.n_layers - 1]
    for impl, model in (("hf", lm), ("tl", dataclasses.replace(lm, build_hf=None))):
        (tmp_path / impl).mkdir()
        extract(model, layers, rowset, 2, tmp_path / impl)
    for layer in layers:
        got, want = (np.asarray(Activations(tmp_path / impl, layers).layer(layer)) for impl in ("hf", "tl"))
        np.testing.assert_allclose(got, want, atol=1e-5 * float(np.abs(want).max()), rtol=1e-4)


def test_conversion_is_cached_outside_git(pair):
    name, _, _ = pair
    folder = models.converted_gguf(name)
    assert cache.is_complete(folder) and (folder / "model.safetensors").exists()
    assert folder.is_relative_to(cache.model_cache_root())


def test_real_tokenizers_align_on_character_offsets():
    """SmolLM2's byte-level BPE and Gemma 3's SentencePiece on State of the Union text."""
    from transformers import AutoTokenizer

    toks = {n: AutoTokenizer.from_pretrained(str(models.converted_gguf(n))) for n in sorted(models.GGUF_MODELS)}
    docs = corpus.sotu_documents("analysis")[:1]
    split = alignment.aligned_rowsets(docs, toks, {n: 0 for n in toks}, {n: 0 for n in toks}, 128, [2000], "token_end")[0]
    n_tokens = {n: int((rs.lengths - 1).sum()) for n, rs in split.items()}
    units = next(iter(split.values())).n_units
    assert units >= 0.8 * min(n_tokens.values()), f"{units} aligned of {n_tokens}"
    for n, rs in split.items():
        seq_len = rs.tokens.shape[1]
        for u in range(0, rs.n_units, 53):
            row, col = divmod(int(rs.positions[u]), seq_len)
            assert toks[n].decode(rs.tokens[row, 1 : col + 1].tolist()) == rs.texts[row][: rs.spans[u, 2]]
    assert np.array_equal(*(rs.spans for rs in split.values()))


def test_unknown_gguf_model_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown gguf model 'llama-7b'.*gemma-3-270m.*Fix"):
        models.gguf_file("llama-7b")
