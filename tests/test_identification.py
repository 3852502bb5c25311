"""Identification metrics against a brute-force search, hand-checked rates and the split rule."""

from __future__ import annotations

import numpy as np
import pytest

from faceaudit.metrics.identification import fpir_threshold, identification_table, search, split_gallery_probes


def test_split_rule() -> None:
    subjects = np.array([5, 5, 5, 7, 8, 9, 10, 11, 11])
    s = split_gallery_probes(subjects, seed=0)
    assert sorted(s.gallery.tolist() + s.mated.tolist() + s.non_mated.tolist()) == list(range(9))
    assert set(subjects[s.mated]) == {5, 11} and len(s.mated) == 3
    singles_in_gallery = set(subjects[s.gallery]) - {5, 11}
    assert len(singles_in_gallery) == 2 and not singles_in_gallery & set(subjects[s.non_mated])


def test_search_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(40, 8)).astype(np.float32)
    gsub = np.repeat(np.arange(20), 2)  # two images per gallery subject: best one counts
    probes = rng.normal(size=(15, 8)).astype(np.float32)
    psub = np.array([0, 3, 5, 99, 98, 7, 7, 1, 2, 97, 4, 6, 8, 9, 96])
    res = search(probes, psub, gallery, gsub, candidates=5, block=4)
    raw = probes @ gallery.T
    best = np.stack([raw[:, gsub == s].max(axis=1) for s in range(20)], axis=1)
    for p in range(15):
        order = np.argsort(-best[p], kind="stable")[:5]
        np.testing.assert_array_equal(res.top_subjects[p], order)
        np.testing.assert_allclose(res.top_scores[p], best[p, order], rtol=1e-6)
        if psub[p] < 20:
            assert res.mate_rank[p] == 1 + int((best[p] > best[p, psub[p]]).sum())
        else:
            assert res.mate_rank[p] == 0 and np.isnan(res.mate_score[p])


def test_rates_by_hand() -> None:
    from faceaudit.metrics.identification import Searches

    # 4 mated probes (mate ranks 1, 1, 2, 0-absent-from-list is impossible here), 4 non-mated
    res = Searches(
        top_subjects=np.array([[1, 2], [2, 1], [3, 1], [1, 3], [1, 2], [2, 3], [3, 1], [1, 2]]),
        top_scores=np.array([[0.9, 0.2], [0.4, 0.3], [0.8, 0.7], [0.6, 0.5],
                             [0.5, 0.1], [0.3, 0.2], [0.2, 0.1], [0.7, 0.1]], np.float32),
        mate_rank=np.array([1, 1, 2, 2, 0, 0, 0, 0]),
        mate_score=np.array([0.9, 0.4, 0.7, 0.5, np.nan, np.nan, np.nan, np.nan], np.float32),
    )
    mated = np.array([True] * 4 + [False] * 4)
    groups = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    out = identification_table(res, mated, groups, ["a", "b"], {1: "a", 2: "b", 3: "a"}, [0.25], [1, 2])
    assert out["rank_accuracy"][0]["accuracy"] == 0.5 and out["rank_accuracy"][1]["accuracy"] == 1.0
    op = out["operating_points"][0]
    # non-mated top scores 0.5, 0.3, 0.2, 0.7: k = floor(0.25 * 4) = 1 -> threshold just above 0.5
    assert op["threshold"] == pytest.approx(0.5, abs=1e-6) and op["threshold"] > 0.5
    assert op["fpir"] == 0.25  # only 0.7
    # FNIR at rank 1: mates at rank 1 with score >= T: 0.9 only -> 3 of 4 missed
    assert op["fnir_rank1"] == 0.75
    # at rank 2 the mate with 0.7 (rank 2) also counts: 0.9 and 0.7 found -> 2 of 4 missed
    assert op["fnir_by_rank"] == {"1": 0.75, "2": 0.5}
    assert op["false_positive_candidates"] == {"a": {}, "b": {"a": 1}}  # probe 7 (group b) hit subject 1 (a)


def test_fpir_threshold_rule() -> None:
    s = np.array([0.9, 0.5, 0.5, 0.1], np.float32)
    t = fpir_threshold(s, 0.5)  # two allowed; the 3rd largest is 0.5, tied with the 2nd: both excluded
    assert 0.5 < t <= 0.9
