"""featlib.transfer: maps, agreement and steering, checked on known answers.

The planted case: model B is model A with its residual stream carried into a wider space by a fixed
isometry R (every weight that writes the stream right-multiplied by R, every weight that reads it by
R^T; no normalisation, so B computes exactly A's function), and B's SAE is A's SAE carried the same
way. A feature's direction d in A *is* d R in B: steering must then agree perfectly, the partner and the
cross-fitted rotation must recover it, and random directions and re-paired maps must not.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from featlib import transfer


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def isometry(d_a: int, d_b: int, seed: int = 0) -> np.ndarray:
    """(d_a, d_b) with orthonormal rows."""
    Q, _ = np.linalg.qr(rng(seed).standard_normal((d_b, d_b)))
    return Q[:d_a]


# ---- maps ----------------------------------------------------------------------------------------------

def test_procrustes_recovers_a_planted_isometry():
    R = isometry(8, 12, 1)
    X = rng(2).standard_normal((40, 8))
    assert np.allclose(transfer.procrustes_map(X, X @ R), R, atol=1e-10)
    noisy = transfer.procrustes_map(X, X @ R + 0.01 * rng(3).standard_normal((40, 12)))
    assert np.allclose(noisy @ noisy.T, np.eye(8), atol=1e-10)  # still an isometry
    assert np.abs(noisy - R).max() < 0.05


def test_ridge_map_recovers_a_linear_map_and_shrinks_with_the_penalty():
    X = rng(4).standard_normal((500, 6)) * 100 + 7
    W = rng(5).standard_normal((6, 9))
    Y = X @ W + 3.0
    assert np.allclose(transfer.ridge_map(X, Y, 1e-10), W, atol=1e-6)
    assert np.linalg.norm(transfer.ridge_map(X, Y, 10.0)) < 0.5 * np.linalg.norm(W)
    # the penalty is relative to X's scale: rescaling X rescales the map, nothing else
    assert np.allclose(transfer.ridge_map(X * 1000, Y, 0.1) * 1000, transfer.ridge_map(X, Y, 0.1), atol=1e-8)


def test_cross_fitted_rotation_holds_out_the_fold_and_the_control_is_off():
    R = isometry(8, 8, 6)
    X = rng(7).standard_normal((60, 8))
    test = np.arange(0, 60, 3)
    fold = transfer.folds(len(test), 4, 0)
    got = transfer.cross_fitted_rotation(X, X @ R, test, fold)
    assert np.allclose(got, transfer.unit_rows(X[test] @ R), atol=1e-8)
    shuffled = transfer.cross_fitted_rotation(X, X @ R, test, fold, shuffle_seed=1)
    assert np.median(np.sum(shuffled * got, axis=1)) < 0.5
    # a test pair that no training pair explains is not recovered: the fit never sees it
    Y = X @ R
    Y[test[0]] = rng(8).standard_normal(8)
    again = transfer.cross_fitted_rotation(X, Y, test, fold)
    assert abs(float(again[0] @ transfer.unit_rows(Y[test[:1]])[0])) < 0.9


def test_folds_and_derangement():
    f = transfer.folds(11, 3, 0)
    assert sorted(np.bincount(f).tolist()) == [3, 4, 4]
    with pytest.raises(ValueError, match="transfer.folds"):
        transfer.folds(2, 3, 0)
    p = transfer.derangement(7, 0)
    assert sorted(p.tolist()) == list(range(7)) and not (p == np.arange(7)).any()


def test_nearest_rows_is_cosine_not_dot_product():
    rows = np.array([[10.0, 0.0], [0.6, 0.8]])
    assert transfer.nearest_rows(np.array([[0.5, 0.9]]), rows).tolist() == [1]


# ---- agreement -----------------------------------------------------------------------------------------

def test_spearman_matrix_equals_scipy_with_ties():
    A = rng(9).integers(0, 5, (4, 30)).astype(float)
    B = rng(10).standard_normal((3, 30))
    got = transfer.spearman_matrix(A, B)
    want = np.array([[scipy.stats.spearmanr(a, b).statistic for b in B] for a in A])
    assert np.allclose(got, want, atol=1e-12)
    assert transfer.spearman_matrix(np.ones((1, 30)), B).tolist() == [[0.0, 0.0, 0.0]]


def test_top_overlap():
    a = np.array([[5.0, 4, 3, 2, 1, 0]])
    assert transfer.top_overlap(a, a, 3).tolist() == [1.0]
    assert transfer.top_overlap(a, -a, 3).tolist() == [0.0]
    assert transfer.top_overlap(a, np.array([[5.0, 0, 3, 2, 1, 4]]), 2).tolist() == [0.5]


def test_success_rule_uses_the_other_pairs_of_the_pooled_methods():
    n = 20
    rho = rng(11).uniform(-0.1, 0.1, (3, n, n))
    rho[0][np.arange(n), np.arange(n)] = 0.9  # method 0 transfers every pair
    rho[1][np.arange(n), np.arange(n)] = -0.5  # method 1 never
    ok, thr = transfer.success(rho, [0, 1], 0.95)
    assert ok[0].all() and not ok[1].any()
    assert (thr < 0.1).all()
    # the diagonal never enters the threshold: a method whose own pairs are perfect but whose other pairs
    # are perfect too does not succeed
    rho[2] = 0.99
    assert not transfer.success(rho, [2], 0.95)[0][2].any()
    # the threshold is the quantile of exactly the other pairs of the pooled methods
    _, thr = transfer.success(rho, [0, 1], 0.9)
    i = 3
    others = np.concatenate([np.delete(rho[m, i], i) for m in (0, 1)])
    assert thr[i] == pytest.approx(np.quantile(others, 0.9), abs=1e-15)


def test_wilson_interval_matches_the_textbook_value():
    lo, hi = transfer.wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert all(np.isnan(transfer.wilson(0, 0)))
    for k, n in [(0, 170), (170, 170), (0, 33)]:  # the rate lies inside, float rounding included (a bar's error >= 0)
        lo, hi = transfer.wilson(k, n)
        assert lo <= k / n <= hi


def test_shared_strings():
    a = ["<s>", " the", "the", " cat", "\ufffd", ""]
    b = [" cat", " the", "dog", " the", "<bos>"]
    ids_a, ids_b, common = transfer.shared_strings(a, b, {0}, {4})
    assert common == [" cat", " the"]
    assert ids_a.tolist() == [3, 1] and ids_b.tolist() == [0, 1]


def test_unit_rows_refuses_a_zero_direction():
    with pytest.raises(ValueError, match="zero norm"):
        transfer.unit_rows(np.zeros((2, 3)))


# ---- steering on a planted pair of models --------------------------------------------------------------

def tiny_model(d_model: int, seed: int) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=3, d_model=d_model, d_head=4, n_heads=4, d_mlp=32, d_vocab=40, n_ctx=16,
                                  act_fn="relu", normalization_type=None, seed=seed)
    return HookedTransformer(cfg).eval()


def carried(model: HookedTransformer, R: np.ndarray) -> HookedTransformer:
    """The same network with its residual stream carried by the isometry R (d_a, d_b)."""
    Rt = torch.tensor(R, dtype=torch.float32)
    b = tiny_model(R.shape[1], 0)
    sa = model.state_dict()
    out = {}
    for k, v in b.state_dict().items():
        w = sa[k]
        if k in ("embed.W_E", "pos_embed.W_pos") or k.endswith(("attn.b_O", "mlp.b_out")):
            w = w @ Rt
        elif k.endswith(("attn.W_Q", "attn.W_K", "attn.W_V")):
            w = torch.einsum("ab,hbd->had", Rt.T, w)
        elif k.endswith("attn.W_O"):
            w = w @ Rt
        elif k.endswith("mlp.W_in") or k == "unembed.W_U":
            w = Rt.T @ w
        elif k.endswith("mlp.W_out"):
            w = w @ Rt
        out[k] = w
    b.load_state_dict(out)
    return b


class ToySAE:
    """A ReLU SAE: encode(x) = relu((x - b_dec) W_enc + b_enc); W_dec (d_sae, d)."""

    def __init__(self, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor):
        self.W_enc, self.b_enc, self.W_dec, self.b_dec = W_enc, b_enc, W_dec, b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)


@pytest.fixture(scope="module")
def planted():
    torch.manual_seed(0)
    A = tiny_model(16, 1)
    R = isometry(16, 24, 2)
    B = carried(A, R)
    Rt = torch.tensor(R, dtype=torch.float32)
    W_dec = torch.nn.functional.normalize(torch.randn(40, 16), dim=1)
    sae_a = ToySAE(W_dec.T.clone(), torch.zeros(40), W_dec, torch.zeros(16))
    sae_b = ToySAE(Rt.T @ W_dec.T, torch.zeros(40), W_dec @ Rt, torch.zeros(24))
    tokens = rng(12).integers(0, 40, (3, 12))
    tokens[:, 0] = 0
    ids = np.arange(1, 40)
    return A, B, R, sae_a, sae_b, tokens, ids


def test_the_planted_models_compute_the_same_function(planted):
    A, B, R, *_ , tokens, _ = planted
    t = torch.tensor(tokens)
    assert torch.allclose(A(t), B(t), atol=1e-4)
    resid_a = A(t, stop_at_layer=2)
    resid_b = B(t, stop_at_layer=2)
    assert torch.allclose(resid_a @ torch.tensor(R, dtype=torch.float32), resid_b, atol=1e-4)


def test_logits_from_resid_equals_the_forward(planted):
    A, *_, tokens, _ = planted
    t = torch.tensor(tokens)
    assert torch.allclose(transfer.logits_from_resid(A, A(t, stop_at_layer=A.cfg.n_layers)), A(t), atol=1e-5)


def test_steering_transfers_exactly_through_the_planted_isometry(planted):
    A, B, R, sae_a, sae_b, tokens, ids = planted
    sa = transfer.Steerer(A, 1, tokens, ids, sae_a)
    sb = transfer.Steerer(B, 1, tokens, ids, sae_b)
    X = sae_a.W_dec.double().numpy()
    Y = sae_b.W_dec.double().numpy()
    feats = np.arange(40)
    ea = sa.run(X, 3.0, feats)
    eb = sb.run(Y, 3.0, feats)  # the partner
    assert np.allclose(ea.lift, eb.lift, atol=1e-4) and np.allclose(ea.loss_rise, eb.loss_rise, atol=1e-4)
    assert np.allclose(ea.feature_lift, eb.feature_lift, atol=1e-4)
    assert (ea.feature_lift > 0).all()  # steering along a feature raises its own code
    rho = transfer.spearman_matrix(ea.lift, eb.lift)
    assert np.allclose(np.diag(rho), 1.0, atol=1e-4)
    # the cross-fitted rotation recovers R from the other pairs (40 pairs, 16 dimensions)
    test = np.arange(0, 40, 2)
    rot = transfer.cross_fitted_rotation(X, Y, test, transfer.folds(len(test), 5, 0))
    er = sb.run(rot, 3.0, feats[test])
    assert np.allclose(er.lift, ea.lift[test], atol=1e-4)
    # controls: random directions and a map fitted on re-paired rows do not reproduce A's steering
    rand = sb.run(rng(13).standard_normal((len(test), 24)), 3.0, feats[test])
    rep = sb.run(transfer.cross_fitted_rotation(X, Y, test, transfer.folds(len(test), 5, 0), shuffle_seed=3), 3.0, feats[test])
    names = [eb.lift[test], er.lift, rand.lift, rep.lift]
    rho_all = np.stack([transfer.spearman_matrix(ea.lift[test], L) for L in names])
    ok, _ = transfer.success(rho_all, [0, 1], 0.95)
    assert ok[0].mean() == 1.0 and ok[1].mean() == 1.0
    assert ok[2].mean() < 0.3 and ok[3].mean() < 0.3
    assert np.median(rand.feature_lift) < 0.5 * np.median(er.feature_lift)


def test_steering_equals_a_hooked_forward_pass(planted):
    """Effects computed from the kept residual equal a full forward pass with the direction added by a hook
    at blocks.L.hook_resid_post (every position but BOS): log-probability lift, loss rise, code lift."""
    A, _, _, sae_a, _, tokens, ids = planted
    layer, alpha, X = 1, 2.5, sae_a.W_dec.double().numpy()[:5]
    effects = transfer.Steerer(A, layer, tokens, ids, sae_a).run(X, alpha, np.arange(5))
    t = torch.tensor(tokens)

    def reference(v: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kept = {}

        def add(resid, hook):
            if v is not None:
                resid[:, 1:, :] += alpha * v
            kept["resid"] = resid.clone()
            return resid

        with torch.no_grad(), A.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_post", add)]):
            lp = torch.log_softmax(A(t), dim=-1)
        lift = lp[:, 1:, ids].mean(dim=(0, 1))
        loss = -lp[:, 1:-1, :].gather(-1, t[:, 2:, None]).mean()
        return lift, loss, sae_a.encode(kept["resid"][:, 1:, :].reshape(-1, 16))

    clean = reference(None)
    for i, x in enumerate(X):
        v = torch.tensor(x / np.linalg.norm(x), dtype=torch.float32)
        lift, loss, codes = reference(v)
        assert np.allclose(effects.lift[i], (lift - clean[0]).numpy(), atol=1e-5)
        assert np.isclose(effects.loss_rise[i], float(loss - clean[1]), atol=1e-5)
        assert np.isclose(effects.feature_lift[i], float((codes[:, i] - clean[2][:, i]).mean()), atol=1e-5)


def test_the_steerer_batches_do_not_change_the_numbers(planted):
    A, _, _, sae_a, _, tokens, ids = planted
    X = sae_a.W_dec.double().numpy()[:7]
    one = transfer.Steerer(A, 0, tokens, ids, sae_a, max_bytes=1)  # one direction per batch
    many = transfer.Steerer(A, 0, tokens, ids, sae_a)
    e1, e2 = one.run(X, 2.0, np.arange(7)), many.run(X, 2.0, np.arange(7))
    assert one.batch == 1 and many.batch >= 7
    assert np.allclose(e1.lift, e2.lift, atol=1e-5) and np.allclose(e1.feature_lift, e2.feature_lift, atol=1e-5)


def test_dose_finds_the_size_of_the_target_loss_rise(planted):
    A, _, _, sae_a, _, tokens, ids = planted
    s = transfer.Steerer(A, 1, tokens, ids)
    X = sae_a.W_dec.double().numpy()[:6]
    d = transfer.dose(s, X, 0.5, 1.0, 2.0 ** np.arange(-4, 8))
    assert d["median_rise"][-1] >= 0.5 > d["median_rise"][-2]
    assert abs(np.median(s.run(X, d["alpha"]).loss_rise) - 0.5) < 0.15  # log-linear interpolation
    with pytest.raises(ValueError, match="transfer.loss_rise"):
        transfer.dose(s, X, 1e6, 1.0, [1.0, 2.0])


def test_a_non_finite_loss_is_a_clear_error(planted):
    A, _, _, _, _, tokens, ids = planted
    s = transfer.Steerer(A, 1, tokens, ids)
    with pytest.raises(ValueError, match="non-finite.*transfer.loss_rise"):
        s.run(np.ones((1, 16)), float("inf"))


def test_greedy_continuations_clean_and_steered(planted):
    A, B, R, sae_a, sae_b, tokens, _ = planted
    prompt = tokens[0, :5]
    d = sae_a.W_dec.double().numpy()[:2]
    ga = transfer.greedy_continuations(A, 1, prompt, np.vstack([np.zeros((1, 16)), d]), 6.0, 5)
    gb = transfer.greedy_continuations(B, 1, prompt, np.vstack([np.zeros((1, 24)), d @ R]), 6.0, 5)
    assert (ga == gb).all()  # the same continuations through the isometry
    clean = A(torch.tensor(prompt)[None]).argmax(-1)[0, -1].item()
    assert ga[0, 0] == clean


# ---- the stage's tables on a planted experiment -----------------------------------------------------------

def planted_cell(n: int = 200):
    from featlib.study import Comparison, Side
    from featlib.study.transfer import Cell

    g = rng(20)
    names = ["partner", "rotation", "random direction", "re-paired map"]
    rho = g.uniform(-0.2, 0.2, (4, n, n))
    rho[0][np.arange(n), np.arange(n)] = 0.8  # the partner always transfers
    rho[1][np.arange(n), np.arange(n)] = np.where(np.arange(n) < n // 2, 0.8, -0.5)  # the rotation for half the pairs
    arrays = {"A>B/rho": rho, "A>B/overlap": np.zeros((4, n)), "A>B/feature_lift": np.ones((4, n)),
              "A>B/loss_rise": np.full((4, n), 0.5), "test": np.arange(n)}
    r = np.linspace(0.1, 0.9, n)
    comp = Comparison("cross", Side("A", 2), Side("B", 3))
    return Cell(comp, r, {"A": 1.0, "B": 2.0}, arrays, {"A>B": names, "methods": ["partner", "rotation"]})


def test_success_table_and_findings_on_a_planted_experiment():
    from types import SimpleNamespace

    from featlib.study import findings
    from featlib.study import transfer as stage

    t = SimpleNamespace(success_quantile=0.95, seed=0, top_n=50)
    study = SimpleNamespace(cfg=SimpleNamespace(transfer=t))
    cell = planted_cell()
    table = stage.success_table(study, [cell]).set_index("steered by")
    assert set(table.layers) == {"A2–B3"} and cell.name == "A2–B3" and (cell.la, cell.lb) == (2, 3)
    assert table.loc["partner", "success"] == 1.0 and table.loc["rotation", "success"] == 0.5
    assert table.loc["random direction", "success"] < 0.1 and table.loc["re-paired map", "success"] < 0.1
    assert table.loc["partner: random other pair", "success"] < 0.15  # other pairs' directions: about 5 %
    lo, hi = table.loc["rotation", ["95% CI low", "95% CI high"]]
    assert (lo, hi) == pytest.approx(transfer.wilson(100, 200))
    by_r = stage.success_by_r(study, cell)
    rot = by_r[by_r.method == "rotation"].success.tolist()
    assert rot[0] == 1.0 and rot[-1] == 0.0  # the planted half is the low-r half
    text = findings.transfer_findings(table.reset_index(), by_r, 0.05)
    assert "Works everywhere tested: partner, rotation" in text and "rotation 100% → 0%" in text
