"""The exercise checks (featlib.coursework) on the usual wrong implementations: each must fail, naming the
convention broken (or the first wrong value or shape), on fresh random data alone (no study)."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr, spearmanr

from featlib import coursework as cw


def hooked(name):
    def record(model, tokens, layer):
        store = {}
        model.run_with_hooks(tokens, fwd_hooks=[(name.format(layer), lambda x, hook: store.setdefault("x", x.clone()))])
        return store["x"]
    return record


def blocks_short(model, tokens, layer):
    x = model.embed(tokens) + model.pos_embed(tokens)
    for block in model.blocks[:layer]:
        x = block(x)
    return x


def pearson(unbiased_std=False, guard=True):
    def fn(chunk_pairs, d_a, d_b):
        a, b = (torch.cat(x).double() for x in zip(*chunk_pairs))
        cov = (a - a.mean(0)).T @ (b - b.mean(0)) / len(a)
        den = torch.outer(a.std(0, unbiased=unbiased_std), b.std(0, unbiased=unbiased_std))
        return torch.where(den > 0, cov / den, 0.0) if guard else cov / den
    return fn


def partners(absolute=False, all_b=False):
    def fn(r, active_a, active_b):
        score = np.where(active_a[:, None], np.abs(r) if absolute else r, -np.inf)
        idx_b = np.arange(r.shape[1]) if all_b else np.flatnonzero(active_b)
        idx_a = score[:, idx_b].argmax(0)
        return idx_a, idx_b, r[idx_a, idx_b]
    return fn


def first_pair(idx_a, idx_b, r):
    keep = np.unique(idx_a, return_index=True)[1]
    return idx_a[keep], idx_b[keep], r[keep]


def svcca(first_only=False, singular=False):
    def fn(X, Y, variance=0.99):
        def basis(A):
            U, s, _ = np.linalg.svd(A - A.mean(0), full_matrices=False)
            p = s if singular else s**2
            return U[:, : int(np.searchsorted(np.cumsum(p) / p.sum(), variance) + 1)]
        rho = np.linalg.svd(basis(X).T @ basis(Y), compute_uv=False)
        return rho[0] if first_only else rho.mean()
    return fn


def steer(first=1, unit=True, log_probs=True, hook="blocks.{}.hook_resid_post"):
    def fn(model, layer, tokens, direction, alpha, vocab_ids):
        v = direction / direction.norm() if unit else direction

        def add(resid, hook):
            resid[:, first:, :] += alpha * v.float()
            return resid
        clean = model(tokens)
        steered = model.run_with_hooks(tokens, fwd_hooks=[(hook.format(layer), add)])
        if log_probs:
            clean, steered = clean.log_softmax(-1), steered.log_softmax(-1)
        return (steered - clean)[:, 1:, :].mean(dim=(0, 1))[vocab_ids].detach()
    return fn


WRONG = [
    ("record_resid", hooked("blocks.{}.hook_resid_pre"), "yours is its input (hook_resid_pre"),
    ("record_resid", hooked("blocks.{}.hook_resid_mid"), "hook_resid_mid"),
    ("resid_by_blocks", blocks_short, "yours is its input"),
    ("resid_by_blocks", lambda m, t, L: torch.zeros(2, 12, 16), "shape: got (2, 12, 16), expected (2, 12, 32)"),
    ("streamed_pearson", pearson(guard=False), "NaN at"),
    ("streamed_pearson", pearson(unbiased_std=True), "yours mixes them"),
    ("best_partners", partners(all_b=True), "an inactive B feature"),
    ("best_partners", partners(absolute=True), "not the highest |r|"),
    ("one_to_one", first_pair, "keeps its first pair (the original code's defect)"),
    ("svcca", svcca(first_only=True), "keeps only the first (the original code's defect)"),
    ("svcca", svcca(singular=True), "yours counts the singular values"),
    ("svcca", lambda X, Y, v=0.99: 0.5, "value: got 0.5 at the output"),
    ("rsa", lambda X, Y: pearsonr(pdist(X, "correlation"), pdist(Y, "correlation"))[0], "not Pearson's r"),
    ("rsa", lambda X, Y: spearmanr(pdist(X), pdist(Y))[0], "not the Euclidean distance"),
    ("null_scores", lambda score, X, Y, perms: np.array([score(X[p], Y[p]) for p in perms]), "permuting the rows of one side only"),
    ("p_value", lambda obs, null: np.mean(null >= obs), "never 0"),
    ("p_value", lambda obs, null: (1 + np.sum(null > obs)) / (1 + len(null)), "not >"),
    ("joins_group", lambda top, kw: np.array([any(t.strip() in kw for t in ts) for ts in top]), "lower-cased"),
    ("joins_group", lambda top, kw: np.array([any(t.lower() in kw for t in ts) for ts in top]), "leading space"),
    ("group_members", lambda ia, ib, a, b: np.flatnonzero(a[ia] | b[ib]), "*both* of its features"),
    ("svcca_scorable", lambda n, kx, ky: n >= 3 and min(kx, ky) <= n / 2, "the *larger* of k_x and k_y"),
    ("svcca_scorable", lambda n, kx, ky: n >= 3 and max(kx, ky) < n / 2, "k = n/2 exactly"),
    ("steering_lift", steer(first=0), "every position but BOS"),
    ("steering_lift", steer(unit=False), "unit norm"),
    ("steering_lift", steer(log_probs=False), "not of raw logits"),
    ("steering_lift", steer(hook="blocks.{}.hook_resid_pre"), "yours steers its input"),
    ("lift_agreement", lambda x, y: pearsonr(x, y)[0], "not Pearson's r"),
]


@pytest.mark.parametrize("name, fn, hint", WRONG, ids=[f"{w[0]}-{i}" for i, w in enumerate(WRONG)])
def test_a_check_names_the_mistake(name, fn, hint):
    result = cw.CHECKS[name](fn)
    assert not result and hint in result.message, repr(result)


def test_every_check_has_a_wrong_implementation_here():
    assert {w[0] for w in WRONG} == set(cw.CHECKS)


def test_an_exception_is_reported_in_one_line_with_the_case():
    def broken(X, Y, variance=0.99):
        raise ValueError("bad shapes\nsecond line")
    result = cw.check_svcca(broken)
    assert not result and result.message == "planted linear pair, 200 x 20 and 200 x 30: raised ValueError: bad shapes"
    assert repr(result).startswith("✗ svcca: ")


def test_a_tuple_output_is_checked_part_by_part():
    result = cw.check_one_to_one(lambda a, b, r: (a, b))
    assert not result and "type: expected a tuple (idx_a, idx_b, r)" in result.message
    result = cw.check_one_to_one(lambda a, b, r: (a[:3], b[:3], r[:3]))
    assert not result and result.message.endswith("idx_a: shape: got (3,), expected (15,)")
