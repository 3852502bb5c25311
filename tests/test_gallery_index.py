"""The gallery search index: exact search against NumPy brute force, HNSW and PQ recall against exact,
erasure by removal, encrypted save/load, and input validation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from faceaudit.errors import InputError
from faceaudit.gallery.crypto import DecryptionError, TemplateCipher
from faceaudit.gallery.index import SearchIndex

KINDS = ("exact", "hnsw", "pq")
# small graph parameters: the tests check behaviour, the benchmark checks the 1M operating point
HNSW = {"m": 16, "ef_construction": 64, "ef_search": 256}


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make(kind: str, ids: np.ndarray, x: np.ndarray) -> SearchIndex:
    return SearchIndex.build(ids, x, kind, **(HNSW if kind == "hnsw" else {}))


def test_exact_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = unit(rng, 300, 16)
    ids = rng.permutation(10_000)[:300].astype(np.int64)  # ids unrelated to positions
    q = unit(rng, 25, 16)
    index = SearchIndex.build(ids, x)
    scores, got = index.search(q, 10)
    assert scores.dtype == np.float32 and got.dtype == np.int64 and got.shape == (25, 10)
    ref = q @ x.T
    order = np.argsort(-ref, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(got, ids[order])  # continuous random data: no ties
    np.testing.assert_allclose(scores, np.take_along_axis(ref, order, axis=1), atol=1e-5)


def test_exact_with_ties() -> None:
    rng = np.random.default_rng(1)
    base = unit(rng, 40, 8)
    x = np.concatenate([base, base, base[:10]])  # every vector two or three times: tied scores
    ids = np.arange(len(x), dtype=np.int64) * 7 + 3
    q = np.concatenate([unit(rng, 10, 8), base[:5]])
    scores, got = SearchIndex.build(ids, x).search(q, 7)
    ref = q @ x.T
    by_id = dict(zip(ids.tolist(), range(len(ids)), strict=True))
    for i in range(len(q)):
        # which of the tied ids comes first is FAISS' choice; the scores and their multiset are not
        expected = np.sort(ref[i])[::-1][:7]
        np.testing.assert_allclose(scores[i], expected, atol=1e-5)
        assert len(set(got[i].tolist())) == 7
        true_scores = ref[i, [by_id[g] for g in got[i].tolist()]]
        np.testing.assert_allclose(true_scores, scores[i], atol=1e-5)


def test_fewer_than_k_and_empty() -> None:
    rng = np.random.default_rng(2)
    x = unit(rng, 3, 8)
    for kind in KINDS:
        scores, got = make(kind, np.array([5, 6, 7]), x).search(x[:2], 5)
        assert (got[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
        assert set(got[0, :3].tolist()) == {5, 6, 7}
        empty = SearchIndex(8, kind)
        scores, got = empty.search(x, 4)
        assert len(empty) == 0 and (got == -1).all() and np.isneginf(scores).all()


def recall(truth: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(truth.tolist(), got.tolist(), strict=True)]))


def test_approximate_recall_against_exact() -> None:
    rng = np.random.default_rng(3)
    x = unit(rng, 20_000, 32)
    ids = np.arange(20_000, dtype=np.int64) + 1_000_000
    q = unit(rng, 200, 32)
    _, truth = SearchIndex.build(ids, x).search(q, 10)
    hnsw = SearchIndex.build(ids, x, "hnsw", **HNSW)
    full = recall(truth, hnsw.search(q, 10)[1])
    assert full >= 0.95
    hnsw.ef_search = 10  # a smaller candidate list finds fewer of the true neighbours
    assert recall(truth, hnsw.search(q, 10)[1]) < full
    pq = SearchIndex.build(ids, x, "pq")
    full = recall(truth, pq.search(q, 10)[1])
    assert full >= 0.95
    pq.rerank = 1  # ranked by the 4-bit codes alone
    assert recall(truth, pq.search(q, 10)[1]) < full


def test_pq_codebook_is_data_independent() -> None:
    rng = np.random.default_rng(8)
    x = unit(rng, 50, 16)
    one_by_one = SearchIndex(16, "pq")
    for i in range(50):  # no training data needed: the first template can be added alone
        one_by_one.add(np.array([i]), x[i:i + 1])
    at_once = SearchIndex.build(np.arange(50), x, "pq")
    assert one_by_one.to_bytes() == at_once.to_bytes()  # rebuildable bit for bit from the same templates
    _, got = at_once.search(x, 1)
    np.testing.assert_array_equal(got[:, 0], np.arange(50))


@pytest.mark.parametrize("kind", KINDS)
def test_remove(kind: str) -> None:
    rng = np.random.default_rng(4)
    x = unit(rng, 500, 16)
    ids = np.arange(500, dtype=np.int64) * 2
    index = make(kind, ids, x)
    gone = np.array([0, 2, 250, 998])  # first, second, middle, last positions
    assert index.remove(np.concatenate([gone, [1, 10_001]])) == 4  # absent ids are ignored
    assert len(index) == 496 and not np.isin(gone, index.ids()).any()
    assert index.remove(gone) == 0
    _, got = index.search(x, 50)  # including the removed vectors themselves as queries
    assert not np.isin(got, gone).any()
    keep = ~np.isin(ids, gone)
    _, top = index.search(x[keep], 1)
    np.testing.assert_array_equal(top[:, 0], ids[keep])  # the rest is still found
    data = index.to_bytes()
    for i in gone // 2:
        assert x[i].tobytes() not in data
    assert x[keep][7].tobytes() in data  # the check itself can see a template when there is one
    if kind == "hnsw":
        assert index.m == HNSW["m"] and index.ef_search == HNSW["ef_search"]  # rebuilt with the same parameters
    if kind != "exact":
        assert index.to_bytes() == make(kind, ids[keep], x[keep]).to_bytes()  # as if never added
    assert index.remove(index.ids()) == 496 and len(index) == 0
    index.add(gone, x[gone // 2])  # removed ids can be enrolled again
    assert len(index) == 4


@pytest.mark.parametrize("kind", KINDS)
def test_bytes_round_trip(kind: str) -> None:
    rng = np.random.default_rng(5)
    x = unit(rng, 200, 16)
    index = make(kind, np.arange(200) + 50, x)
    index.ef_search = 77
    index.rerank = 33
    back = SearchIndex.from_bytes(index.to_bytes())
    assert (back.kind, back.dim, len(back), back.ef_search, back.rerank) == (kind, 16, 200, 77, 33)
    np.testing.assert_array_equal(back.ids(), index.ids())
    np.testing.assert_array_equal(back.search(x, 5)[1], index.search(x, 5)[1])
    with pytest.raises(InputError, match="magic"):
        SearchIndex.from_bytes(b"not an index at all")
    data = bytearray(index.to_bytes())
    with pytest.raises(InputError):
        SearchIndex.from_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_encrypted(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    x = unit(rng, 300, 16)
    index = make(kind, np.arange(300), x)
    cipher = TemplateCipher(os.urandom(32))
    path = tmp_path / "gallery.index"
    index.save(path, cipher)
    assert os.listdir(tmp_path) == ["gallery.index"]  # no temporary file left behind
    blob = path.read_bytes()
    assert not any(v.tobytes() in blob for v in x)
    assert index.to_bytes()[:16] not in blob  # not even the header is in the clear
    back = SearchIndex.load(path, cipher)
    np.testing.assert_array_equal(back.search(x, 3)[1], index.search(x, 3)[1])
    index.remove([0, 1])
    index.save(path, cipher)  # replaces the old file
    assert len(SearchIndex.load(path, cipher)) == 298
    with pytest.raises(DecryptionError):
        SearchIndex.load(path, TemplateCipher(os.urandom(32)))
    tampered = bytearray(path.read_bytes())
    tampered[-100] ^= 1
    path.write_bytes(bytes(tampered))
    with pytest.raises(DecryptionError):
        SearchIndex.load(path, cipher)
    with pytest.raises(InputError, match="no such index file"):
        SearchIndex.load(tmp_path / "missing.index", cipher)


def test_validation() -> None:
    rng = np.random.default_rng(7)
    x = unit(rng, 10, 8)
    index = SearchIndex.build(np.arange(10), x)
    with pytest.raises(InputError, match=r"\(n, 8\)"):
        index.add(np.array([20]), unit(rng, 1, 9))
    with pytest.raises(InputError, match="reshape"):
        index.search(x[0], 3)
    with pytest.raises(InputError, match=r"\(n, 8\)"):
        index.search(unit(rng, 2, 4), 3)
    bad = unit(rng, 3, 8)
    bad[1, 2] = np.nan
    with pytest.raises(InputError, match="row 1 holds a non-finite"):
        index.add(np.array([20, 21, 22]), bad)
    bad[1, 2] = np.inf
    with pytest.raises(InputError, match="non-finite"):
        index.search(bad, 3)
    with pytest.raises(InputError, match=r"L2-normalised.*row 0 has norm 2\.0000"):
        index.add(np.array([20]), 2 * x[:1])
    with pytest.raises(InputError, match="L2-normalised"):
        index.search(0.9 * x[:1], 3)
    index.add(np.array([20]), 1.005 * unit(rng, 1, 8))  # within tolerance
    with pytest.raises(InputError, match="duplicate ids in one add: 30"):
        index.add(np.array([30, 30]), unit(rng, 2, 8))
    with pytest.raises(InputError, match="already in the index: 3, 4"):
        index.add(np.array([3, 4, 31]), unit(rng, 3, 8))
    many = np.arange(100) + 5  # the bulk path of the presence check
    with pytest.raises(InputError, match="already in the index: 5, 6, 7, 8, 9 and 1 more"):
        index.add(many, unit(rng, 100, 8))
    assert len(index) == 11  # nothing added by the refused calls
    with pytest.raises(InputError, match="2 ids for 3 vectors"):
        index.add(np.array([40, 41]), unit(rng, 3, 8))
    with pytest.raises(InputError, match=r"0 \.\. 2"):
        index.add(np.array([-1]), unit(rng, 1, 8))
    with pytest.raises(InputError, match="integers"):
        index.add(np.array([1.5]), unit(rng, 1, 8))
    with pytest.raises(InputError, match="floating point"):
        index.add(np.array([50]), np.eye(8, dtype=np.int64)[:1])
    with pytest.raises(InputError, match="k must be"):
        index.search(x, 0)
    with pytest.raises(InputError, match="kind 'ivf'"):
        SearchIndex(8, "ivf")
    with pytest.raises(InputError, match="dim"):
        SearchIndex(0)
    with pytest.raises(InputError, match="ef_search"):
        SearchIndex(8, "hnsw").ef_search = 0
    with pytest.raises(InputError, match="rerank"):
        SearchIndex(8, "pq", rerank=0)
    with pytest.raises(InputError, match=r"pq_m \(3\) must divide the dimension \(8\)"):
        SearchIndex(8, "pq", pq_m=3)
