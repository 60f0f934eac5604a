"""Streaming correlation: exact against the dense reference, on every path."""

import numpy as np
import pytest
import torch

from featlib.correlation import SparseCodes, correlate, dense_reference


def topk_codes(n: int, d: int, k: int, seed: int) -> torch.Tensor:
    """(n, d) non-negative codes with exactly k non-zeros per token."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, d, generator=g).argsort(1)[:, :k]
    return torch.zeros(n, d).scatter_(1, idx, torch.rand(n, k, generator=g) + 0.1)


def stream(a: torch.Tensor, b: torch.Tensor, chunk: int, sparse: bool = False):
    def chunks():
        for i in range(0, len(a), chunk):
            ca, cb = a[i : i + chunk], b[i : i + chunk]
            yield (SparseCodes.from_dense(ca), SparseCodes.from_dense(cb)) if sparse else (ca, cb)
    return chunks


@pytest.fixture(scope="module")
def codes():
    a = topk_codes(3000, 96, 6, seed=0)
    mix = torch.randint(0, 96, (80,), generator=torch.Generator().manual_seed(1))
    b = torch.relu(a[:, mix] * 0.8 + 0.3 * topk_codes(3000, 80, 6, seed=2) - 0.05)
    a[:, [3, 50]] = 0  # never fire
    b[:, 11] = 0
    b[:, 12] = 1.5  # fires on every token with the same value: constant
    return a, b


@pytest.mark.parametrize("method", ["dense", "sparse", "auto"])
@pytest.mark.parametrize("max_bytes", [1 << 30, 96 * 12 * 17])  # one block, or blocks of 17 B features
@pytest.mark.parametrize("sparse_input", [False, True])
def test_equals_dense_reference(codes, method, max_bytes, sparse_input):
    a, b = codes
    res = correlate(stream(a, b, 700, sparse_input), 96, 80, method=method, max_bytes=max_bytes, keep_matrix=True, top_m=4)
    ref = dense_reference(a.double(), b.double())
    assert not torch.isnan(res.matrix).any()
    torch.testing.assert_close(res.matrix, ref.float(), atol=1e-5, rtol=0)
    assert res.passes == (1 if max_bytes > 1 << 20 else 5)
    np.testing.assert_array_equal(res.active_a, (a.std(0) > 0).numpy())
    np.testing.assert_array_equal(res.active_b, (b.std(0) > 0).numpy())
    assert not res.active_b[[11, 12]].any() and not res.active_a[[3, 50]].any()
    np.testing.assert_allclose(res.std_a, a.double().std(0, unbiased=False).numpy(), rtol=1e-6, atol=1e-9)
    assert (res.matrix[[3, 50]] == 0).all() and (res.matrix[:, [11, 12]] == 0).all()
    # best and top-m partners equal those of the reference (inactive A features excluded)
    masked = ref.clone()
    masked[~torch.from_numpy(res.active_a)] = -np.inf
    top = torch.topk(masked, 4, dim=0)
    active_b = res.active_b
    np.testing.assert_array_equal(res.best_a[active_b], masked.argmax(0).numpy()[active_b])
    np.testing.assert_allclose(res.top_r[active_b], top.values.T.numpy()[active_b], atol=1e-5)
    assert (res.best_a[~active_b] == -1).all() and (res.best_r[~active_b] == 0).all()


def test_auto_picks_sparse_for_topk_and_dense_for_dense_codes(codes):
    a, b = codes
    assert correlate(stream(a, b, 1000), 96, 80).method == "sparse"
    dense_a, dense_b = torch.randn(500, 30), torch.randn(500, 20)
    assert correlate(stream(dense_a, dense_b, 100), 30, 20).method == "dense"


def test_dense_path_is_exact_with_large_means():
    """Shifting by the first chunk's mean avoids cancellation in E[ab] - E[a]E[b]."""
    g = torch.Generator().manual_seed(3)
    a = 1000 + torch.randn(4000, 8, generator=g, dtype=torch.float64)
    b = a[:, [2, 5, 0]] * 0.5 + 0.5 * torch.randn(4000, 3, generator=g, dtype=torch.float64) - 500
    res = correlate(stream(a.float(), b.float(), 512), 8, 3, method="dense", keep_matrix=True)
    ref = np.corrcoef(a.float().double().numpy().T, b.float().double().numpy().T)[:8, 8:]
    np.testing.assert_allclose(res.matrix.numpy(), ref, atol=1e-5)
    np.testing.assert_array_equal(res.best_a, [2, 5, 0])


def test_dense_statistics_exact_on_large_drifting_chunks():
    """Per-chunk float32 sums (cascade summation) keep std within 1e-6 of float64 and r within 1e-5,
    also when a chunk holds 65,536 tokens and the mean drifts away from the first chunk's."""
    g = torch.Generator().manual_seed(4)
    n = 65536
    a = torch.relu(torch.randn(n, 16, generator=g) * 3 + 1)
    a[n // 2 :] += 5
    b = torch.relu(a[:, :8] + torch.randn(n, 8, generator=g))
    for chunk in (4096, n):
        res = correlate(stream(a, b, chunk), 16, 8, method="dense", keep_matrix=True)
        ref = np.corrcoef(a.double().numpy().T, b.double().numpy().T)[:16, 16:]
        np.testing.assert_allclose(res.matrix.numpy(), ref, atol=1e-5)
        np.testing.assert_allclose(res.std_a, a.double().std(0, unbiased=False).numpy(), rtol=1e-6)


def stream_sizes(a: torch.Tensor, b: torch.Tensor, sizes: list[int]):
    """Chunks of ``sizes[0]``, ``sizes[1]``, ... tokens, the last size repeated to the end."""
    def chunks():
        i = s = 0
        while i < len(a):
            c = sizes[min(s, len(sizes) - 1)]
            yield a[i : i + c], b[i : i + c]
            i, s = i + c, s + 1
    return chunks


@pytest.mark.parametrize("first_off", [0.0, 30.0])
@pytest.mark.parametrize("sizes", [[1, 4096], [1], [2], [7], [1, 2, 7]])
def test_dense_path_exact_whatever_the_chunk_sizes(sizes, first_off):
    """A first chunk of one token, chunks of 1, 2 or 7 tokens, activations about 1e3 with unit noise and,
    for ``first_off``, a first token 30 standard deviations from the mean: r within 1e-5 and std within
    1e-7 of float64 numpy (a shift taken from the first chunk erred by up to 1.1e-3 in r here)."""
    g = torch.Generator().manual_seed(8)
    a = 1000 + torch.randn(3000, 8, generator=g, dtype=torch.float64)
    b = a[:, [2, 5, 0]] * 0.5 + 0.5 * torch.randn(3000, 3, generator=g, dtype=torch.float64) - 500
    a[0] += first_off
    b[0] -= first_off
    a, b = a.float(), b.float()
    res = correlate(stream_sizes(a, b, sizes), 8, 3, method="dense", keep_matrix=True)
    ref = np.corrcoef(a.double().numpy().T, b.double().numpy().T)[:8, 8:]
    np.testing.assert_allclose(res.matrix.numpy(), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(res.std_a, a.double().std(0, unbiased=False).numpy(), rtol=1e-7)
    np.testing.assert_allclose(res.std_b, b.double().std(0, unbiased=False).numpy(), rtol=1e-7)
    np.testing.assert_array_equal(res.best_a, [2, 5, 0])
    assert res.n_tokens == 3000


def test_planted_permutation_recovered():
    a = topk_codes(5000, 64, 4, seed=5)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(6))
    b = a[:, perm] * (1 + 0.01 * torch.rand(5000, 64))
    m = correlate(stream(a, b, 777), 64, 64).matches()
    np.testing.assert_array_equal(m.idx_b, np.arange(64))
    np.testing.assert_array_equal(m.idx_a, perm.numpy())
    assert (m.r > 0.9).all() and m.idx_a.dtype == np.int64 and m.r.dtype == np.float32


def test_signed_by_default_absolute_on_request():
    g = torch.Generator().manual_seed(7)
    a = torch.randn(2000, 3, generator=g)
    b = torch.stack([-a[:, 0] + 0.01 * torch.randn(2000, generator=g), 0.3 * a[:, 1] + torch.randn(2000, generator=g)], 1)
    signed = correlate(stream(a, b, 500), 3, 2)
    assert signed.best_a[0] != 0  # r = -1 with A0 is not the best signed partner
    absolute = correlate(stream(a, b, 500), 3, 2, absolute=True)
    assert absolute.best_a[0] == 0 and absolute.best_r[0] < -0.99  # reported r keeps its sign


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(5, 4\) and \(6, 3\).*same token stream"):
        correlate(lambda: [(torch.zeros(5, 4), torch.zeros(6, 3))], 4, 3)
    with pytest.raises(ValueError, match="no tokens"):
        correlate(lambda: [], 4, 3)


def test_sparse_codes_round_trip(codes):
    a, _ = codes
    s = SparseCodes.from_dense(a[:100])
    assert s.idx.shape == (100, 6)
    torch.testing.assert_close(s.to_dense(), a[:100])


def test_cached_code_rows_round_trip_into_sparse_chunks():
    from featlib import sparse_rows

    z = topk_codes(1000, 50, 4, seed=9)
    z[[3, 500]] = 0  # tokens where nothing fires
    z[7, :20] = 1.0  # one token with many active features
    packed = sparse_rows.pack(z.split(300), 50)
    assert packed.shape == (1000, 50) and packed.nnz == int((z != 0).sum()) and packed.data.dtype == np.float32
    chunks = list(sparse_rows.chunks(packed, 128))
    assert [len(c) for c in chunks] == [128] * 7 + [104]
    torch.testing.assert_close(torch.cat([c.to_dense() for c in chunks]), z)
    res = correlate(lambda: zip(sparse_rows.chunks(packed, 128), sparse_rows.chunks(packed, 128)), 50, 50, keep_matrix=True)
    torch.testing.assert_close(res.matrix, dense_reference(z, z), atol=1e-5, rtol=0)


def test_restricted_chunks_are_the_codes_of_a_feature_subset():
    from featlib import sparse_rows

    z = topk_codes(600, 40, 5, seed=3)
    keep = np.array([3, 17, 18, 39])
    lookup = sparse_rows.lookup(keep, 40)
    sub = [sparse_rows.restrict(c, lookup, len(keep)).to_dense() for c in sparse_rows.chunks(sparse_rows.pack([z], 40), 256)]
    torch.testing.assert_close(torch.cat(sub), z[:, keep])


def csr(z: torch.Tensor):
    from featlib import sparse_rows

    return sparse_rows.pack([z], z.shape[1])


def assert_same_partners(got, want):
    np.testing.assert_array_equal(got.best_a, want.best_a)
    np.testing.assert_array_equal(got.best_r, want.best_r)
    np.testing.assert_array_equal(got.active_a, want.active_a)
    np.testing.assert_array_equal(got.active_b, want.active_b)
    np.testing.assert_allclose(got.std_b, want.std_b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("max_bytes", [1 << 30, 64 * 5000])  # one product, or blocks of B features
def test_product_of_cached_rows_equals_the_streamed_engine(codes, max_bytes):
    from featlib import sparse_rows

    a, b = codes
    got = sparse_rows.correlate(csr(a), csr(b), max_bytes=max_bytes)
    want = correlate(stream(a, b, 700, sparse=True), a.shape[1], b.shape[1])
    assert got.method == "csr" and want.method == "sparse" and (got.passes > 1) == (max_bytes < 1 << 30)
    assert_same_partners(got, want)
    assert got.best_a[11] == -1 and got.best_a[12] == -1 and not np.isin([3, 50], got.best_a).any()


def test_product_finds_a_best_partner_that_never_co_fires():
    """Every co-active A feature of b0 anti-correlates with it; its best partner fires only where b0 does not."""
    from featlib import sparse_rows

    t = torch.arange(400)
    a = torch.stack([t % 2 == 1, t % 4 == 1, t % 40 == 1, (t % 2 == 1) | (t == 0)], 1).float()
    b = torch.stack([t % 2 == 0, t % 4 == 1], 1).float()
    got = sparse_rows.correlate(csr(a), csr(b))
    assert list(got.best_a) == [2, 1] and got.best_r[0] < 0 and got.best_r[1] == pytest.approx(1)
    assert_same_partners(got, correlate(stream(a, b, 128, sparse=True), 4, 2))


def test_product_takes_the_streamed_engine_for_negative_codes_and_refuses_other_units(codes):
    from featlib import sparse_rows

    a, b = codes
    signed = a - 0.5 * (a > 0).float() * torch.rand(a.shape, generator=torch.Generator().manual_seed(4))
    got = sparse_rows.correlate(csr(signed), csr(b))
    assert got.method == "sparse"
    assert_same_partners(got, correlate(stream(signed, b, 1000, sparse=True), a.shape[1], b.shape[1]))
    with pytest.raises(ValueError, match="codes of 3000 and 2999 units"):
        sparse_rows.correlate(csr(a), csr(b[1:]))
