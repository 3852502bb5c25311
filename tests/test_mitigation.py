"""Mitigations (group thresholds, FSN, FairCal) by hand on toys, and the cross-validated protocol on synthetic people.

The synthetic population: two groups in different regions of the embedding space. An image of group g is
e = sqrt(w_g) u_g + sqrt(1 - w_g) x, with u_g the group's own direction and x a unit "identity" vector
orthogonal to both directions (a subject's centre plus image noise, drawn the same way in both groups).
Within group g, s = w_g + (1 - w_g) x.x': the scores of each group are one monotone map of the same
underlying scores, so a larger w_g shifts that group's impostor scores up (more false matches at one
global threshold) and a per-group (or per-cluster) threshold or calibration removes the differential
exactly, up to estimation noise. The groups are also separated in space (u_A orthogonal to u_B), so
k-means clusters track them. With w_A = w_B there is no shift: the mitigations should change nothing
beyond noise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from faceaudit.errors import InputError
from faceaudit.metrics.summary import summarise
from faceaudit.mitigation import (
    FairCal,
    FsnMethod,
    MitigationRefused,
    apply_all_pairs,
    apply_pairs,
    cross_validate,
    cross_validate_analyses,
    fit_faircal,
    fit_fsn,
    fit_group_thresholds,
    threshold_at_fmr,
)
from faceaudit.mitigation import base as mbase
from faceaudit.mitigation.base import Calibration, TopK, pair_counts
from faceaudit.mitigation.beta import features, fit_beta, logistic_fit
from faceaudit.mitigation.clusters import _KMEANS_RUNS, cluster, person_means
from faceaudit.mitigation.kmeans import kmeans, nearest
from faceaudit.mitigation.protocol import check_disjoint, subject_folds
from faceaudit.mitigation.scan import CalibrationSet
from faceaudit.scoring.groups import Grouping


def _grouping(codes: np.ndarray, names: tuple[str, ...] = ("A", "B")) -> Grouping:
    return Grouping(attributes=("group",), labels=tuple(f"group={n}" for n in names), index=np.asarray(codes),
                    group_values=tuple((n,) for n in names))


# ------------------------------------------------------------------------------------------------ threshold rule


def test_threshold_rule_by_hand_and_streamed() -> None:
    s = np.array([0.6, 0.9, 0.7, 0.8])
    t = threshold_at_fmr(s, 0.25)  # k = floor(0.25 * 4) = 1: just above the 2nd largest
    assert t == np.nextafter(0.8, 1.0) and (s >= t).sum() == 1
    tied = np.array([0.8, 0.8, 0.7, 0.6])
    t = threshold_at_fmr(tied, 0.25)  # a tie at the cut is rejected whole: FMR 0 <= target
    assert (tied >= t).sum() == 0
    rng = np.random.default_rng(0)
    x = rng.normal(size=10_000)
    top = TopK(37)
    for part in np.array_split(x, 13):
        top.add(part)
    assert top.threshold(37) == threshold_at_fmr(x, 37.5 / 10_000)


def test_pair_counts_equal_brute_force() -> None:
    rng = np.random.default_rng(1)
    subj = rng.integers(0, 9, 40)
    codes = rng.integers(0, 3, 40)
    c = pair_counts(np.unique(subj, return_inverse=True)[1], codes, 3)
    i, j = np.triu_indices(40, 1)
    gen = subj[i] == subj[j]
    for k in range(3):
        both = (codes[i] == k) & (codes[j] == k)
        touch = (codes[i] == k) | (codes[j] == k)
        assert c.within_impostor[k] == (both & ~gen).sum()
        assert c.touch_impostor[k] == (touch & ~gen).sum() and c.touch_genuine[k] == (touch & gen).sum()
        assert c.subjects[k] == len(np.unique(subj[codes == k]))
    assert (c.impostor, c.genuine) == ((~gen).sum(), gen.sum())


def test_one_pass_keeps_each_codes_largest_impostor_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    """The calibration set's pass (small chunks, so floors filter across many of them) against a brute-force
    sort of every pair under each rule: within (both images in the code) and touch (at least one)."""
    from faceaudit.mitigation import scan

    monkeypatch.setattr(scan, "FIRST_CHUNK", 8)
    monkeypatch.setattr(scan, "CHUNK", 32)
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    subj = rng.integers(0, 60, 300)
    codes = rng.integers(0, 5, 300)
    keep = np.array([1, 7, 40, 0, 300])
    cs = scan.CalibrationSet(emb, subj)
    within, touch = cs.request(codes, keep, within=True), cs.request(codes, keep, within=False)
    small = cs.request(codes, keep // 2, within=False)  # shares the touch tally
    glob = cs.request(np.zeros(300, np.int64), np.array([123]), within=True)
    cs.run()
    e = cs.embeddings
    i, j = np.triu_indices(300, 1)
    sc = (e @ e.T)[i, j]
    imp = subj[i] != subj[j]
    for c in range(5):
        for ticket, mask, k in ((within, (codes[i] == c) & (codes[j] == c), keep[c]),
                                (touch, (codes[i] == c) | (codes[j] == c), keep[c]),
                                (small, (codes[i] == c) | (codes[j] == c), keep[c] // 2)):
            want = np.sort(sc[imp & mask])[::-1][:k]
            np.testing.assert_allclose(cs.top(ticket, c), want, atol=1e-6)
    np.testing.assert_allclose(cs.top(glob, 0), np.sort(sc[imp])[::-1][:123], atol=1e-6)
    with pytest.raises(RuntimeError, match="request before"):
        cs.request(codes, keep, within=True)


def test_faircal_pairs_genuine_all_and_impostors_drawn_uniformly() -> None:
    """Genuine pairs: all of them (brute force). Impostor pairs touching a cluster, drawn with replacement: the
    draw matches the exact set in distribution (two-sample Kolmogorov-Smirnov)."""
    from scipy.stats import ks_2samp

    from faceaudit.mitigation.methods import _genuine_pairs, _impostors_touching

    rng = np.random.default_rng(6)
    subj = rng.integers(0, 40, 200)
    a, b = _genuine_pairs(subj)
    i, j = np.triu_indices(200, 1)
    want = {(int(x), int(y)) for x, y in zip(i, j, strict=True) if subj[x] == subj[y]}
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == want and len(a) == len(want)
    emb = rng.normal(size=(200, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = (emb[:, 0] > 0.3).astype(np.int64)  # cluster 1: a cap of the sphere, unlike the rest
    exact = _impostors_touching(emb, subj, labels, 1, 0, True, rng)
    touch = ((labels[i] == 1) | (labels[j] == 1)) & (subj[i] != subj[j])
    np.testing.assert_allclose(np.sort(exact), np.sort((emb @ emb.T)[i, j][touch]))
    drawn = _impostors_touching(emb, subj, labels, 1, 20_000, False, rng)
    assert len(drawn) == 20_000 and ks_2samp(drawn, exact).pvalue > 1e-3


# ------------------------------------------------------------------------------------------------ toy by hand

# Seven images on the unit circle (degrees): group A in the first quadrant, group B in the third.
# Person "a" has two images (one genuine pair); everyone else one.
TOY_ANGLES = np.array([0, 10, 55, 85, 180, 205, 245])
TOY_SUBJECTS = np.array(["a", "a", "b", "c", "d", "e", "f"])
TOY_GROUPS = np.array([0, 0, 0, 0, 1, 1, 1])
A0, A1, B, C, D, E, F = range(7)


def _toy() -> np.ndarray:
    rad = np.deg2rad(TOY_ANGLES)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def _s(emb: np.ndarray, p: int, q: int) -> float:
    return float(emb[p] @ emb[q])


@pytest.fixture
def few_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a toy of 20 impostor pairs set thresholds (the real rule wants 10 expected false matches)."""
    monkeypatch.setattr(mbase, "MIN_EXPECTED_FALSE_MATCHES", 0.9)


def _near(x: float) -> Any:
    """A threshold just above score x: x's own float32 rounding may differ by an ulp inside a matrix product."""
    return pytest.approx(x, abs=1e-6)


@pytest.mark.usefixtures("few_pairs")
def test_group_thresholds_by_hand() -> None:
    """FMR 0.3. Group A's 5 impostor scores, descending: cos30 (b,c), cos45 (a1,b), ...: k = 1, so thr_A is just
    above cos45 (a1,b). Group B's 3: cos25 (d,e), ...: k = 0, thr_B just above cos25. All 20 impostors: k = 6,
    the 7th largest is cos75 (a1,c)."""
    emb = _toy()
    gt = fit_group_thresholds(emb, TOY_SUBJECTS, TOY_GROUPS, 0.3)
    assert gt.thresholds[0] == _near(_s(emb, A1, B))
    assert gt.thresholds[1] == _near(_s(emb, D, E))
    assert gt.global_threshold == _near(_s(emb, A1, C))
    d_a, d_b = gt.thresholds - gt.global_threshold
    m = apply_all_pairs(gt, emb, TOY_GROUPS)
    assert m[B, C] == pytest.approx(_s(emb, B, C) - d_a, abs=1e-6)  # within A: the whole offset of A
    assert m[B, E] == pytest.approx(_s(emb, B, E) - (d_a + d_b) / 2, abs=1e-6)  # across: the mean offset
    assert apply_pairs(gt, emb[[B]], emb[[E]], TOY_GROUPS[[B]], TOY_GROUPS[[E]])[0] == pytest.approx(m[B, E])
    with pytest.raises(MitigationRefused) as err:
        gt.codes(emb, None)
    assert err.value.reason == "needs_labels" and isinstance(err.value, InputError)
    with pytest.raises(MitigationRefused, match="1 of 7 images have no label"):
        fit_group_thresholds(emb, TOY_SUBJECTS, np.where(np.arange(7) == 3, -1, TOY_GROUPS), 0.3)


@pytest.mark.usefixtures("few_pairs")
def test_fsn_by_hand() -> None:
    """Two clusters (the quadrants). FMR 0.3; the pairs with at least one image in a cluster:
    cluster A has 17 impostor pairs (5 within, 12 across), k = 5: the 6th largest is (c, d) = cos95;
    cluster B has 15 (3 within, 12 across), k = 4: the 5th largest is (a0, f) = cos245; all 20: (a1, c) = cos75.
    Normalised score s - (Delta_c(i) + Delta_c(j)) / 2 with Delta_c = thr_c - thr_G."""
    emb = _toy()
    fsn = fit_fsn(emb, TOY_SUBJECTS, 0.3, n_clusters=2, seed=0, min_subjects=1)
    code = fsn.codes(emb)
    assert len(set(code[:4])) == 1 and len(set(code[4:])) == 1 and code[0] != code[4]  # clusters = quadrants
    ca, cb = code[0], code[4]
    assert fsn.cluster_impostor_pairs[ca] == 17 and fsn.cluster_impostor_pairs[cb] == 15
    assert fsn.global_threshold == _near(_s(emb, A1, C))
    assert fsn.cluster_thresholds[ca] == _near(_s(emb, C, D))
    assert fsn.cluster_thresholds[cb] == _near(_s(emb, A0, F))
    d = fsn.cluster_thresholds - fsn.global_threshold
    m = apply_all_pairs(fsn, emb)
    assert m[A0, B] == pytest.approx(_s(emb, A0, B) - d[ca], abs=1e-6)
    assert m[B, E] == pytest.approx(_s(emb, B, E) - (d[ca] + d[cb]) / 2, abs=1e-6)
    assert fsn.to_dict()["clusters"] == 2 and not fsn.needs_labels


def test_faircal_transform_by_hand() -> None:
    """c = (w1 mu1(s) + w2 mu2(s)) / (w1 + w2). At s = 0.2, s' = 0.6; the map (a, b, c) = (1, 1, 0) is the
    identity on s' (logit mu = ln s' - ln(1 - s')), so mu1 = 0.6; mu2 has (2, 0.5, -1)."""
    fc = FairCal(centres=np.array([[1.0, 0.0], [-1.0, 0.0]]), maps=np.array([[1.0, 1.0, 0.0], [2.0, 0.5, -1.0]]),
                 pair_weights=np.array([3, 1]), cluster_images=np.array([1, 1]), cluster_subjects=np.array([1, 1]),
                 genuine_pairs=np.array([0, 0]), impostor_pairs=np.array([0, 0]), impostors_used=np.array([0, 0]))
    mu2 = 1 / (1 + math.exp(-(2 * math.log(0.6) - 0.5 * math.log(0.4) - 1)))
    got = fc.transform(np.array([0.2]), np.array([0]), np.array([1]))[0]
    assert got == pytest.approx((3 * 0.6 + 1 * mu2) / 4, abs=1e-9)
    assert fc.transform(np.array([0.2]), np.array([0]), np.array([0]))[0] == pytest.approx(0.6, abs=1e-9)
    emb = np.array([[0.8, 0.6], [-0.6, -0.8]], np.float32)  # nearest centres 0 and 1
    assert apply_pairs(fc, emb[:1], emb[1:])[0] == pytest.approx(
        fc.transform(np.array([float(emb[0] @ emb[1])]), np.array([0]), np.array([1]))[0])


def test_faircal_fit_is_beta_calibration_of_each_clusters_pairs() -> None:
    """Each cluster's map is the beta fit of the pairs with at least one image in it (brute force), classes weighted
    equally; theta's weights are those pairs' counts."""
    rng = np.random.default_rng(3)
    centres = np.array([[3.0, 0, 0, 0], [-3.0, 0, 0, 0]])
    subj = np.repeat(np.arange(30), 3)
    x = centres[subj % 2] + rng.normal(size=(30, 4))[subj] + 0.7 * rng.normal(size=(90, 4))
    emb = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    fc = fit_faircal(emb, subj, n_clusters=2, seed=1, min_subjects=5)
    code = fc.codes(emb)
    i, j = np.triu_indices(90, 1)
    s = (emb @ emb.T)[i, j].astype(np.float64)
    gen = subj[i] == subj[j]
    for k in range(2):
        touch = (code[i] == k) | (code[j] == k)
        n_gen, n_imp = (touch & gen).sum(), (touch & ~gen).sum()
        w = np.where(gen[touch], (n_gen + n_imp) / (2 * n_gen), (n_gen + n_imp) / (2 * n_imp))
        want = fit_beta(s[touch], gen[touch], w)
        # the fit's scores come from other matrix products than these: equal up to float32 rounding
        np.testing.assert_allclose(fc.maps[k], [want.a, want.b, want.c], rtol=1e-4, atol=1e-6)
        assert fc.pair_weights[k] == touch.sum() and fc.impostors_used[k] == n_imp  # all used: below the cap


# ------------------------------------------------------------------------------------------------ building blocks


def test_beta_fit_matches_scikit_learn_and_is_monotone() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    s = np.clip(np.r_[rng.normal(0.55, 0.15, 300), rng.normal(0.05, 0.12, 3000)], -0.99, 0.99)
    y = np.r_[np.ones(300, bool), np.zeros(3000, bool)]
    w = np.where(y, 3300 / 600, 3300 / 6000)
    x = np.stack(features(s), axis=1)

    def sk(cols: list[int]) -> np.ndarray:
        lr = LogisticRegression(C=1e3, tol=1e-12, max_iter=10_000).fit(x[:, cols], y, sample_weight=w)
        return np.r_[lr.coef_[0], lr.intercept_[0]]

    free = logistic_fit(np.c_[x, np.ones(len(s))], y, w, ridge=1e-3)
    np.testing.assert_allclose(free, sk([0, 1]), rtol=1e-4, atol=1e-6)
    assert free[0] < 0  # these classes (unequal spreads) give a < 0: Kull et al. drop ln s' and refit
    bm = fit_beta(s, y, w, ridge=1e-3)
    np.testing.assert_allclose([bm.a, bm.b, bm.c], np.r_[0.0, sk([1])], rtol=1e-4, atol=1e-6)
    grid = np.linspace(-1, 1, 401)
    assert bm.a >= 0 and bm.b >= 0 and np.all(np.diff(bm(grid)) >= 0)
    flipped = fit_beta(s, ~y, None)  # the label falls with the score: no monotone increasing map but a constant
    assert flipped.a == 0 or flipped.b == 0
    assert np.all(np.diff(flipped(grid)) >= -1e-15)


def test_kmeans_finds_separated_blobs_like_scikit_learn_and_is_seeded() -> None:
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(c, 0.3, size=(60, 3)) for c in ([0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 4])])
    centres, labels = kmeans(x, 4, seed=7)
    ref = KMeans(4, n_init=4, random_state=0).fit(x).labels_
    pairs = {(int(a), int(b)) for a, b in zip(labels, ref, strict=True)}
    assert len(pairs) == 4  # the same partition, up to the clusters' names
    again = kmeans(x, 4, seed=7)
    np.testing.assert_array_equal(again[1], labels)
    np.testing.assert_array_equal(nearest(x, centres), labels)


# ------------------------------------------------------------------------------------------------ refusals


def test_refusals_name_their_reason() -> None:
    emb, subj, g = _population(n_per_group=12, images=2, w=(0.2, 0.2), seed=8)
    with pytest.raises(MitigationRefused) as err:
        fit_fsn(emb, subj, 1e-2, n_clusters=5)  # 24 people cannot fill 5 clusters of 10
    assert err.value.reason == "too_few_subjects" and "ask for fewer clusters" in str(err.value)
    with pytest.raises(MitigationRefused) as err:
        fit_group_thresholds(emb, subj, g, 1e-4)  # a group of 12 people has 264 impostor pairs, not 100,000
    assert err.value.reason == "group_too_small" and "groups 0 (264 impostor pairs)" in str(err.value)
    e2, s2, g2 = _population(n_per_group=100, images=2, w=(0.2, 0.2), seed=8)
    res = cross_validate(e2, s2, _grouping(g2, ("women", "men")), methods=["group_thresholds"], folds=2,
                         target_fmrs=[1e-3], replicates=0)  # 4,900 impostor pairs per group, not 10,000
    refusal = res.outcome("group_thresholds", 1e-3).refused
    assert refusal is not None and "groups group=women (4900 impostor pairs), group=men (" in refusal["message"]
    lonely = np.r_[np.zeros(len(subj) - 2, int), [1, 1]]  # a group of one person: no impostor pair in it
    with pytest.raises(MitigationRefused, match="too few calibration impostor pairs") as err:
        fit_group_thresholds(emb, subj, lonely, 1e-1)
    assert err.value.reason == "group_too_small"
    with pytest.raises(MitigationRefused) as err:
        cross_validate(emb[:12], subj[:12], _grouping(g[:12]), folds=5, replicates=0)
    assert err.value.reason == "too_few_subjects"
    with pytest.raises(InputError, match="unknown mitigation method"):
        cross_validate(emb, subj, _grouping(g), methods=["nope"], replicates=0)


def _with_outliers(n_per_group: int) -> tuple[np.ndarray, np.ndarray]:
    """The population (groups tight around their directions) plus two people, three images each, opposite to both
    groups: far from everyone, as two people of LFW are."""
    emb, subj, _ = _population(n_per_group=n_per_group, images=3, w=(0.6, 0.7), seed=12)
    far = np.zeros((6, emb.shape[1]), np.float32)
    far[:, :2] = -0.7
    far[:, -2] = np.linspace(0.0, 0.1, 6)
    return (np.r_[emb, far / np.linalg.norm(far, axis=1, keepdims=True)],
            np.r_[subj, ["zz1"] * 3, ["zz2"] * 3])


def test_person_means_weigh_each_person_once() -> None:
    """Person 0: images at 0 and 90 degrees, mean at 45; person 1: one image at 180, three times over."""
    e = np.array([[1, 0], [0, 1], [-1, 0], [-1, 0], [-1, 0]], np.float32)
    m = person_means(e, np.array([0, 0, 1, 1, 1]))
    np.testing.assert_allclose(m, [[np.sqrt(0.5), np.sqrt(0.5)], [-1, 0]], atol=1e-12)
    np.testing.assert_allclose(person_means(e[::-1], np.array([1, 1, 1, 0, 0])), m, atol=1e-12)  # order-free


def test_a_small_outlier_cluster_is_dissolved_not_refused() -> None:
    """The outliers get a k-means++ centre of their own; with K chosen from the data (202 people: K = 4) that
    cluster is dissolved and its images join the nearest surviving cluster; a K given explicitly is refused."""
    emb, subj = _with_outliers(100)
    _KMEANS_RUNS.clear()
    unit = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    codes = np.unique(subj, return_inverse=True)[1].ravel()
    _, labels = kmeans(person_means(unit, codes), 4, 0)  # what cluster() runs: one vector per person
    assert labels[-1] == labels[-2] and (labels[:-2] != labels[-1]).all(), "premise: the two outliers alone"
    fsn = fit_fsn(emb, subj, 1e-2, seed=0)
    assert fsn.tried[0] == 4 and len(fsn.tried) >= 2 and len(fsn.centres) == fsn.tried[-1] >= 2
    assert fsn.cluster_subjects.min() >= 10 and fsn.cluster_images.sum() == len(emb)
    code = fsn.codes(unit)
    assert np.isin(code[-6:], code[:-6]).all()  # the outliers now share a cluster with ordinary people
    fc = fit_faircal(emb, subj, seed=0, min_subjects=10)
    assert fc.cluster_subjects.min() >= 10 and len(fc.centres) == fc.tried[-1] >= 2
    with pytest.raises(MitigationRefused) as err:
        fit_fsn(emb, subj, 1e-2, n_clusters=4, seed=0)
    assert err.value.reason == "cluster_too_small" and "2 people" in str(err.value)
    # every cluster but one short of what the method needs: nothing left to calibrate with
    with pytest.raises(MitigationRefused, match="fewer than 2 clusters survive") as err:
        cluster("fsn", unit, codes, None, 0, 1, lambda c: {i: "short" for i in range(1, len(c.subjects))})
    assert err.value.reason == "cluster_too_small" and "clusters run: 4" in str(err.value)


def test_analyses_share_folds_and_label_free_fits() -> None:
    """Several groupings at once: a grouping given twice gives cross_validate's result twice (same folds, same
    fits); a second grouping shares the folds and the FSN and FairCal fits, and gets its own group thresholds."""
    emb, subj, g = _population(n_per_group=60, images=3, w=(0.1, 0.3), seed=13)
    kw: dict[str, Any] = {"target_fmrs": (1e-2,), "replicates": 30, "seed": 1, "n_clusters": 2}
    one = cross_validate(emb, subj, _grouping(g), **kw)
    text = json.dumps(one.to_dict(), sort_keys=True, allow_nan=False)
    twice = cross_validate_analyses(emb, subj, [_grouping(g), _grouping(g)], **kw)
    assert [json.dumps(r.to_dict(), sort_keys=True, allow_nan=False) for r in twice] == [text, text]
    (serial,) = cross_validate_analyses(emb, subj, [_grouping(g)], **kw, threads=1)  # folds one after another
    assert json.dumps(serial.to_dict(), sort_keys=True, allow_nan=False) == text
    other = np.asarray([int(u[1:]) % 3 for u in subj])  # a second grouping, across the first
    a, b = cross_validate_analyses(emb, subj, [_grouping(g), _grouping(other, ("X", "Y", "Z"))], **kw)
    np.testing.assert_array_equal(a.fold_of_subject, b.fold_of_subject)
    for m in ("fsn", "faircal"):
        assert a.outcome(m, 1e-2).calibrations == b.outcome(m, 1e-2).calibrations
    ga, gb = a.outcome("group_thresholds", 1e-2).calibrations, b.outcome("group_thresholds", 1e-2).calibrations
    assert len(ga[0]["group_thresholds"]) == 2 and len(gb[0]["group_thresholds"]) == 3


def test_a_group_labelled_unknown_refuses_group_thresholds_only() -> None:
    emb, subj, g = _population(n_per_group=60, images=3, w=(0.1, 0.3), seed=9)
    grouping = _grouping(g, ("A", "unknown"))
    res = cross_validate(emb, subj, grouping, methods=["group_thresholds", "fsn"], target_fmrs=[1e-2], replicates=0,
                         n_clusters=2)
    gt, fsn = res.outcome("group_thresholds", 1e-2), res.outcome("fsn", 1e-2)
    assert gt.refused is not None and gt.refused["reason"] == "needs_labels" and gt.system is None
    assert fsn.refused is None and fsn.system is not None
    doc = res.to_dict()["operating_points"][0]["methods"]
    assert doc[0]["refused"]["reason"] == "needs_labels" and doc[1]["difference"]["summary"]["fpd"]["call"] == \
        "not computed"  # no bootstrap: no claim


# ------------------------------------------------------------------------------------------------ synthetic people


def _population(n_per_group: int = 250, images: int = 4, d: int = 64, w: tuple[float, ...] = (0.1, 0.3),
                sigma: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings, subject ids and group codes of the module docstring's population."""
    rng = np.random.default_rng(seed)
    n_groups = len(w)
    n_subj = n_per_group * n_groups
    group_of = np.repeat(np.arange(n_groups), n_per_group)
    subj = np.repeat(np.arange(n_subj), images)
    x = rng.normal(size=(n_subj, d - n_groups))[subj] + sigma * rng.normal(size=(len(subj), d - n_groups))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    g = group_of[subj]
    wg = np.asarray(w)[g]
    emb = np.zeros((len(subj), d))
    emb[np.arange(len(subj)), g] = np.sqrt(wg)
    emb[:, n_groups:] = np.sqrt(1 - wg)[:, None] * x
    return emb.astype(np.float32), np.array([f"p{u:04d}" for u in subj]), g


TARGETS = (1e-2, 1e-3)


@pytest.fixture(scope="module")
def shifted() -> Any:
    emb, subj, g = _population(w=(0.1, 0.3), seed=0)
    return emb, subj, g, cross_validate(emb, subj, _grouping(g), target_fmrs=TARGETS, replicates=200, seed=0)


@pytest.fixture(scope="module")
def unshifted() -> Any:
    emb, subj, g = _population(w=(0.2, 0.2), seed=1)
    return cross_validate(emb, subj, _grouping(g), target_fmrs=TARGETS, replicates=200, seed=0)


def _fpd(res: Any, method: str, target: float) -> tuple[float, float]:
    return res.unmitigated[target].summary.fpd, res.outcome(method, target).system.summary.fpd


def test_fsn_and_faircal_remove_a_removable_shift_on_held_out_people(shifted: Any) -> None:
    res = shifted[3]
    for target in TARGETS:
        for m in ("group_thresholds", "fsn", "faircal"):
            before, after = _fpd(res, m, target)
            out = res.outcome(m, target)
            print(f"FMR {target:g} {m}: FPD {before:.2f} -> {after:.2f}, FMR by group "
                  f"{res.unmitigated[target].group_fmr} -> {out.system.group_fmr}, TAR "
                  f"{res.unmitigated[target].tar:.4f} -> {out.system.tar:.4f}")
    for m in ("group_thresholds", "fsn", "faircal"):
        before, after = _fpd(res, m, 1e-2)
        assert before > 10 and after <= 1.2, (m, before, after)
        diff = res.outcome(m, 1e-2).to_dict(res.labels)["difference"]
        assert diff["summary"]["fpd"]["call"] == "lower" and diff["summary"]["fpd"]["fairer"] == m
        calls = {gr["group"]: gr["fmr_call"] for gr in diff["groups"]}
        assert calls == {"group=A": "higher", "group=B": "lower"}  # B's excess false matches move to A
    for target in TARGETS:  # every system keeps the promised overall FMR on the held-out people
        assert res.unmitigated[target].fmr <= target
        assert all(m.system.fmr <= target for m in res.methods if m.target_fmr == target)


def test_without_a_shift_they_change_nothing_beyond_noise(unshifted: Any) -> None:
    res = unshifted
    base = res.unmitigated[1e-2]
    for m in ("group_thresholds", "fsn", "faircal"):
        out = res.outcome(m, 1e-2)
        ratio = out.system.group_fmr / base.group_fmr
        print(f"no shift, {m}: FPD {base.summary.fpd:.3f} -> {out.system.summary.fpd:.3f}, FMR ratio {ratio}, "
              f"TAR {base.tar:.4f} -> {out.system.tar:.4f}")
        assert np.all(np.abs(np.log(ratio)) < np.log(1.25)), (m, ratio)
        assert out.system.summary.fpd <= 1.25 and abs(out.system.tar - base.tar) < 0.01
        assert out.difference is not None
        assert all(lo <= 0 <= hi for lo, hi in [out.difference.summary_diff_ci["fpd"]]), m


def test_pooled_counts_equal_brute_force_over_the_folds(shifted: Any) -> None:
    """The unmitigated rates: each fold's threshold from its own impostor pairs, errors summed over folds."""
    emb, subj, g, res = shifted
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)  # as cross_validate does, to the bit
    fold = res.fold_of_subject[np.searchsorted(res.subject_ids, subj)]
    fm, imp, fnm, gen = (np.zeros(2) for _ in range(4))
    misses = genuine = 0
    for f in range(5):
        rows = np.flatnonzero(fold == f)
        i, j = np.triu_indices(len(rows), 1)
        s = (emb[rows] @ emb[rows].T)[i, j].astype(np.float64)
        same, gi, gj = subj[rows][i] == subj[rows][j], g[rows][i], g[rows][j]
        t = threshold_at_fmr(s[~same], 1e-2)
        assert res.unmitigated[1e-2].thresholds[f] == t
        for k in range(2):
            within = (gi == k) & (gj == k)
            fm[k] += (within & ~same & (s >= t)).sum()
            imp[k] += (within & ~same).sum()
            fnm[k] += (within & same & (s < t)).sum()
            gen[k] += (within & same).sum()
        misses += (same & (s < t)).sum()
        genuine += same.sum()
    base = res.unmitigated[1e-2]
    for got, want in zip((base.false_matches, base.impostor_pairs, base.false_non_matches, base.genuine_pairs),
                         (fm, imp, fnm, gen), strict=True):
        np.testing.assert_array_equal(got, want)
    assert base.tar == pytest.approx(1 - misses / genuine)
    assert base.summary == summarise(list(res.labels), fm, imp, fnm, gen)


def test_same_seed_same_json_and_folds_never_leak() -> None:
    emb, subj, g = _population(n_per_group=80, images=3, w=(0.1, 0.3), seed=2)
    seen: list[set[int]] = []

    class Spy:
        """FSN, recording which people each fit is shown."""

        name, per_target, needs_labels = "spy", True, False

        def plan(self, cs: CalibrationSet, groups: np.ndarray | None, target_fmr: float, seed: int,
                 group_names: Sequence[str] = ()) -> Callable[[], Calibration]:
            seen.append({int(u) for u in cs.subject_ids})
            return FsnMethod(n_clusters=2).plan(cs, groups, target_fmr, seed)

    kw: dict[str, Any] = {"target_fmrs": (1e-2,), "replicates": 50, "seed": 3}
    a = cross_validate(emb, subj, _grouping(g), methods=["group_thresholds", "fsn", "faircal", Spy()], **kw)
    b = cross_validate(emb, subj, _grouping(g), methods=["group_thresholds", "fsn", "faircal"], **kw)
    c = cross_validate(emb, subj, _grouping(g), methods=["group_thresholds", "fsn", "faircal"],
                       **{**kw, "seed": 4})
    text = json.dumps(a.to_dict(), sort_keys=True, allow_nan=False)
    _KMEANS_RUNS.clear()  # recompute the clusters too, rather than reuse the remembered k-means runs
    a2 = cross_validate(emb, subj, _grouping(g), methods=["group_thresholds", "fsn", "faircal", Spy()], **kw)
    assert json.dumps(a2.to_dict(), sort_keys=True, allow_nan=False) == text
    doc_b = b.to_dict()
    assert json.dumps(doc_b["operating_points"][0]["unmitigated"]) == json.dumps(
        a.to_dict()["operating_points"][0]["unmitigated"])
    assert not np.array_equal(c.fold_of_subject, a.fold_of_subject)
    # folds: every person held out exactly once; each fit saw exactly the people of the other folds
    everyone = set(range(len(a.subject_ids)))
    assert len(seen) == 2 * 5 and all(f.subjects_in_both == 0 for f in a.folds)
    held = [{int(u) for u in np.flatnonzero(a.fold_of_subject == k)} for k in range(5)]
    assert all(held) and set().union(*held) == everyone
    for fitted_on in seen[:5]:  # folds run in threads: match each fit to the one fold whose people it lacks
        (k,) = [k for k in range(5) if not (fitted_on & held[k])]
        assert fitted_on | held[k] == everyone
    assert sum(f.held_out_subjects for f in a.folds) == len(everyone)
    sizes = np.bincount(subject_folds(np.repeat([0, 1], 80), 5, 3))
    assert sizes.max() - sizes.min() <= 1
    with pytest.raises(RuntimeError, match="fold leak"):
        check_disjoint(np.array([1, 2, 3]), np.array([3, 4]))
