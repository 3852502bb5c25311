"""Post-hoc mitigations of demographic differentials: group thresholds, Fair Score Normalization, FairCal.

Each method is a fit / apply pair. ``fit_*`` takes calibration images: embeddings (N, D) of unit
vectors, subject ids (N,) and, for group thresholds only, group codes (N,), and returns a fitted
calibration (:class:`faceaudit.mitigation.base.Calibration`): per-image codes and a score transform,
after which one global threshold decides. Underneath, ``plan_*`` asks a
:class:`faceaudit.mitigation.scan.CalibrationSet` for the impostor scores its thresholds need and
returns the step that finishes the fit once the set's single pass over every calibration pair has
run, so all methods and target FMRs of a cross-validation fold share that pass.

Which calibration pairs. For a cluster or group c, "the pairs of c" are:

- group thresholds: the impostor pairs with both images in group c (FMR_g is measured on those);
- FSN and FairCal: the pairs with at least one image in cluster c, as in the FairCal authors' code
  (github.com/tiagosalvador/faircal, ``approaches.py``, which also implements FSN for their comparison).

Refusals. A method that cannot be fitted on the data raises :class:`MitigationRefused` (an
:class:`faceaudit.errors.InputError`) with a machine-readable ``reason``: ``needs_labels`` (group
thresholds without every image's group), ``group_too_small`` (a group with too few impostor pairs for its
threshold at the FMR), and for the clustered methods ``too_few_subjects`` and ``cluster_too_small``
(:mod:`faceaudit.mitigation.clusters`, which also says how the number of clusters is chosen).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from faceaudit.errors import InputError
from faceaudit.mitigation.base import (
    Calibration,
    MitigationRefused,
    PairCounts,
    needed_pairs,
    pair_counts,
    rank,
    require_labels,
    threshold_from_top,
)
from faceaudit.mitigation.beta import BetaMap, expit, features, fit_beta
from faceaudit.mitigation.clusters import cluster
from faceaudit.mitigation.kmeans import nearest
from faceaudit.mitigation.scan import CalibrationSet, Ticket
from faceaudit.scoring.compare import score_pairs

#: A fit waiting for its calibration set's pass (:meth:`CalibrationSet.run`): call it to get the calibration.
Finish = Callable[[], Calibration]


def _offset_transform(offsets: np.ndarray, scores: np.ndarray, code_a: np.ndarray, code_b: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.asarray(scores, np.float64) - 0.5 * (offsets[code_a] + offsets[code_b])
    return out


@dataclass(frozen=True)
class GroupThresholds:
    """One threshold per group for the same target FMR, as a score offset.

    thr_g: the threshold at the target FMR over the calibration impostor pairs with both images in g;
    thr_G: over all calibration impostor pairs; Delta_g = thr_g - thr_G. Mitigated score
    s'_ij = s_ij - (Delta_g(i) + Delta_g(j)) / 2, so at a global threshold t a pair within group g is
    accepted when s_ij >= t + Delta_g: at t = thr_G, exactly its group's threshold. A pair across
    groups gets the mean of the two offsets (the method defines no cross-group threshold; this is the
    same rule as FSN's). It is the group-specific thresholds (GST) baseline of Salvador et al. 2022
    (``gst`` in their code), there applied to within-group pairs only.

    A what-if: it needs each person's group at decision time, which is often unlawful to collect or
    use (e.g. GDPR art. 9 special categories); reports must say so (``needs_labels``).
    """

    target_fmr: float
    global_threshold: float
    thresholds: np.ndarray  # (G,) thr_g; NaN for a group without calibration people
    impostor_pairs: np.ndarray  # (G,) within-group calibration impostor pairs
    subjects: np.ndarray  # (G,) calibration people per group
    method: ClassVar[str] = "group_thresholds"
    needs_labels: ClassVar[bool] = True

    @property
    def offsets(self) -> np.ndarray:
        out: np.ndarray = self.thresholds - self.global_threshold
        return out

    def codes(self, embeddings: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        g = require_labels(self.method, len(embeddings), groups)
        unseen = (g >= len(self.thresholds)) | ~np.isfinite(self.thresholds[np.minimum(g, len(self.thresholds) - 1)])
        if unseen.any():
            raise MitigationRefused(self.method, "group_too_small",
                                    f"{int(unseen.sum())} images are in groups that had no threshold "
                                    "(no calibration people)")
        return g

    def transform(self, scores: np.ndarray, code_a: np.ndarray, code_b: np.ndarray) -> np.ndarray:
        return _offset_transform(self.offsets, scores, code_a, code_b)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "target_fmr": self.target_fmr, "global_threshold": self.global_threshold,
                "group_thresholds": self.thresholds.tolist(), "offsets": self.offsets.tolist(),
                "impostor_pairs": self.impostor_pairs.tolist(), "subjects": self.subjects.tolist(),
                "needs_labels_at_decision": True}


def fit_group_thresholds(embeddings: np.ndarray, subjects: np.ndarray, groups: np.ndarray | None,
                         target_fmr: float, group_names: Sequence[str] = ()) -> GroupThresholds:
    """Fit :class:`GroupThresholds` on calibration people (groups coded 0..G-1; -1 = no label: refused).
    ``group_names``: what a refusal calls group g (default: its number)."""
    return plan_group_thresholds(CalibrationSet(embeddings, subjects), groups, target_fmr, group_names)()


def _global_request(cs: CalibrationSet, target_fmr: float, n_impostor: int) -> tuple[Ticket, int]:
    """Ask for the largest impostor scores over every calibration pair: the global threshold at the target."""
    k = rank(target_fmr, n_impostor)
    return cs.request(np.zeros(len(cs), np.int64), np.array([k + 1]), within=True), k


def plan_group_thresholds(cs: CalibrationSet, groups: np.ndarray | None, target_fmr: float,
                          group_names: Sequence[str] = ()) -> Callable[[], GroupThresholds]:
    """:func:`fit_group_thresholds` on a calibration set, finished after its pass (refusals raised now)."""
    method = GroupThresholds.method
    g = require_labels(method, len(cs), groups)
    n_groups = int(g.max()) + 1
    counts = pair_counts(cs.subjects, g, n_groups)
    need = needed_pairs(target_fmr)
    small = [i for i in range(n_groups) if counts.images[i] > 0 and counts.within_impostor[i] < need]
    if small:
        raise MitigationRefused(method, "group_too_small", "groups " + ", ".join(
            f"{group_names[i] if i < len(group_names) else i} ({int(counts.within_impostor[i])} impostor pairs)"
            for i in small)
            + f" have too few calibration impostor pairs for a threshold at FMR {target_fmr:g} (need {need})")
    if counts.impostor < need:
        raise MitigationRefused(method, "too_few_subjects", f"{counts.impostor} calibration impostor pairs; "
                                f"a threshold at FMR {target_fmr:g} needs {need}")
    t_all, k_all = _global_request(cs, target_fmr, counts.impostor)
    k_g = [rank(target_fmr, int(n)) if n else -1 for n in counts.within_impostor]
    t_g = cs.request(g, np.array(k_g) + 1, within=True)

    def finish() -> GroupThresholds:
        thr = np.array([threshold_from_top(cs.top(t_g, i), k_g[i]) if k_g[i] >= 0 else np.nan
                        for i in range(n_groups)])
        return GroupThresholds(target_fmr=target_fmr, global_threshold=threshold_from_top(cs.top(t_all, 0), k_all),
                               thresholds=thr, impostor_pairs=counts.within_impostor.copy(),
                               subjects=counts.subjects.copy())

    return finish


# --------------------------------------------------------------------------------------- FSN


@dataclass(frozen=True)
class FairScoreNormalization:
    """Fair Score Normalization (FSN).

    Terhorst, Kolf, Damer, Kirchbuchner & Kuijper, "Post-comparison mitigation of demographic bias in
    face recognition using fair score normalization", Pattern Recognition Letters 140 (2020) 332-338
    (arXiv:2002.03592). k-means clusters of calibration embeddings; for each cluster c, thr_c is the
    threshold at the FMR over the calibration impostor pairs with at least one image in c, thr_G the
    threshold over all calibration impostor pairs, and Delta_c = thr_c - thr_G. The normalised score is

        s'_ij = s_ij - (Delta_c(i) + Delta_c(j)) / 2,

    so a cluster whose impostors score high has its scores lowered, towards the global threshold. A
    new image takes the cluster of its nearest centre: no labels at decision time. The thresholds
    belong to one FMR (the paper fits at the operating FMR; FairCal's authors note it must be refitted
    per FMR), so the protocol fits FSN once per target FMR.
    """

    target_fmr: float
    centres: np.ndarray  # (K, D)
    global_threshold: float
    cluster_thresholds: np.ndarray  # (K,)
    cluster_images: np.ndarray
    cluster_subjects: np.ndarray
    cluster_impostor_pairs: np.ndarray
    tried: tuple[int, ...] = ()
    method: ClassVar[str] = "fsn"
    needs_labels: ClassVar[bool] = False

    @property
    def offsets(self) -> np.ndarray:
        out: np.ndarray = self.cluster_thresholds - self.global_threshold
        return out

    def codes(self, embeddings: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        return nearest(np.asarray(embeddings, np.float64), self.centres)

    def transform(self, scores: np.ndarray, code_a: np.ndarray, code_b: np.ndarray) -> np.ndarray:
        return _offset_transform(self.offsets, scores, code_a, code_b)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "target_fmr": self.target_fmr, "clusters": len(self.centres),
                "clusters_tried": list(self.tried), "global_threshold": self.global_threshold,
                "cluster_thresholds": self.cluster_thresholds.tolist(), "offsets": self.offsets.tolist(),
                "cluster_images": self.cluster_images.tolist(), "cluster_subjects": self.cluster_subjects.tolist(),
                "cluster_impostor_pairs": self.cluster_impostor_pairs.tolist(), "needs_labels_at_decision": False}


def fit_fsn(embeddings: np.ndarray, subjects: np.ndarray, target_fmr: float, *, n_clusters: int | None = None,
            seed: int = 0, min_subjects: int = 10) -> FairScoreNormalization:
    """Fit :class:`FairScoreNormalization` at ``target_fmr`` on calibration people."""
    cs = CalibrationSet(embeddings, subjects)
    return plan_fsn(cs, target_fmr, n_clusters=n_clusters, seed=seed, min_subjects=min_subjects)()


def plan_fsn(cs: CalibrationSet, target_fmr: float, *, n_clusters: int | None = None, seed: int = 0,
             min_subjects: int = 10) -> Callable[[], FairScoreNormalization]:
    """:func:`fit_fsn` on a calibration set, finished after its pass (refusals raised now)."""
    method = FairScoreNormalization.method
    need = needed_pairs(target_fmr)

    def too_small(c: PairCounts) -> dict[int, str]:
        return {i: f"{int(n)} impostor pairs (a threshold at FMR {target_fmr:g} needs {need})"
                for i, n in enumerate(c.touch_impostor) if n < need}

    cl = cluster(method, cs.embeddings, cs.subjects, n_clusters, seed, min_subjects, too_small)
    t_all, k_all = _global_request(cs, target_fmr, cl.counts.impostor)
    k_c = [rank(target_fmr, int(n)) for n in cl.counts.touch_impostor]
    t_c = cs.request(cl.labels, np.array(k_c) + 1, within=False)

    def finish() -> FairScoreNormalization:
        return FairScoreNormalization(
            target_fmr=target_fmr, centres=cl.centres, global_threshold=threshold_from_top(cs.top(t_all, 0), k_all),
            cluster_thresholds=np.array([threshold_from_top(cs.top(t_c, c), k) for c, k in enumerate(k_c)]),
            cluster_images=cl.counts.images, cluster_subjects=cl.counts.subjects,
            cluster_impostor_pairs=cl.counts.touch_impostor, tried=cl.tried)

    return finish


# --------------------------------------------------------------------------------------- FairCal


@dataclass(frozen=True)
class FairCal:
    """FairCal: fairness calibration.

    Salvador, Cairns, Voleti, Marshall & Oberman, "FairCal: Fairness calibration for face
    verification", ICLR 2022 (arXiv:2106.03761). k-means clusters of calibration embeddings; for each
    cluster k a beta calibration map mu_k (Kull et al. 2017, :mod:`faceaudit.mitigation.beta`) is
    fitted on the calibration pairs with at least one image in k. A pair whose images fall in clusters
    k1 and k2 gets the calibrated probability

        c_ij = theta mu_k1(s_ij) + (1 - theta) mu_k2(s_ij),   theta = |S_k1| / (|S_k1| + |S_k2|),

    with |S_k| the number of calibration pairs of cluster k (the paper's "relative population
    fraction"); decisions compare c_ij with one global threshold, set for the target FMR. No labels
    at decision time, and one fit serves every FMR.

    Two choices of ours, for all-pairs data. Impostor pairs outnumber genuine ones by far (the paper's
    RFW and BFW pair lists are balanced), so each cluster's fit weighs the two classes equally
    (class-balanced weights, as scikit-learn's ``class_weight="balanced"``): otherwise the calibrated
    value would carry each cluster's own genuine/impostor ratio, which depends on how many images per
    person it holds rather than on how alike faces are. And a three-parameter map needs no million
    pairs: a cluster with more than ``max_pairs`` impostor (or genuine) pairs is fitted on
    ``max_pairs`` of them drawn uniformly, with replacement, by a seeded generator (impostors: an image
    of the cluster, then any image of another person, a pair within the cluster kept with probability
    1/2 as it can be drawn from either end); otherwise on all of them. theta uses the full pair counts.
    """

    centres: np.ndarray  # (K, D)
    maps: np.ndarray  # (K, 3): a, b, c of each cluster's beta map
    pair_weights: np.ndarray  # (K,) |S_k|: calibration pairs with at least one image in k
    cluster_images: np.ndarray
    cluster_subjects: np.ndarray
    genuine_pairs: np.ndarray
    impostor_pairs: np.ndarray
    impostors_used: np.ndarray
    tried: tuple[int, ...] = ()
    method: ClassVar[str] = "faircal"
    needs_labels: ClassVar[bool] = False

    def beta_map(self, k: int) -> BetaMap:
        a, b, c = self.maps[k]
        return BetaMap(float(a), float(b), float(c))

    def codes(self, embeddings: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        return nearest(np.asarray(embeddings, np.float64), self.centres)

    def transform(self, scores: np.ndarray, code_a: np.ndarray, code_b: np.ndarray) -> np.ndarray:
        x1, x2 = features(scores)

        def mu(k: np.ndarray) -> np.ndarray:
            return expit(self.maps[k, 0] * x1 + self.maps[k, 1] * x2 + self.maps[k, 2])

        wa, wb = self.pair_weights[code_a], self.pair_weights[code_b]
        out: np.ndarray = (wa * mu(code_a) + wb * mu(code_b)) / (wa + wb)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "clusters": len(self.centres), "clusters_tried": list(self.tried),
                "beta_maps": [{"a": float(a), "b": float(b), "c": float(c)} for a, b, c in self.maps],
                "pair_weights": self.pair_weights.tolist(), "cluster_images": self.cluster_images.tolist(),
                "cluster_subjects": self.cluster_subjects.tolist(), "genuine_pairs": self.genuine_pairs.tolist(),
                "impostor_pairs": self.impostor_pairs.tolist(), "impostors_used": self.impostors_used.tolist(),
                "needs_labels_at_decision": False}


def fit_faircal(embeddings: np.ndarray, subjects: np.ndarray, *, n_clusters: int | None = None, seed: int = 0,
                min_subjects: int = 10, min_genuine: int = 10, max_pairs: int = 5_000, ridge: float = 1e-3) -> FairCal:
    """Fit :class:`FairCal` on calibration people (``min_genuine``: genuine pairs each cluster's map needs)."""
    return plan_faircal(CalibrationSet(embeddings, subjects), n_clusters=n_clusters, seed=seed,
                        min_subjects=min_subjects, min_genuine=min_genuine, max_pairs=max_pairs, ridge=ridge)()


def _genuine_pairs(subj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every genuine pair (i < j, same subject) of the calibration images."""
    order = np.argsort(subj, kind="stable")
    starts = np.flatnonzero(np.r_[True, subj[order][1:] != subj[order][:-1]])
    sizes = np.diff(np.r_[starts, len(subj)])
    ia, ib = [], []
    for m in np.unique(sizes[sizes > 1]):  # one triangle per size of subject, applied to all of that size
        i, j = np.triu_indices(int(m), k=1)
        first = starts[sizes == m]
        ia.append(order[(first[:, None] + i[None, :]).ravel()])
        ib.append(order[(first[:, None] + j[None, :]).ravel()])
    if not ia:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    a, b = np.concatenate(ia), np.concatenate(ib)
    return np.minimum(a, b), np.maximum(a, b)


def _impostors_touching(e: np.ndarray, subj: np.ndarray, labels: np.ndarray, c: int, n: int, exact: bool,
                        rng: np.random.Generator) -> np.ndarray:
    """Scores of cluster c's impostor pairs (at least one image in c): all of them, or ``n`` drawn uniformly with
    replacement (class docstring)."""
    rows = np.flatnonzero(labels == c)
    if exact:
        s = (e[rows] @ e.T).astype(np.float64)
        keep = (subj[rows][:, None] != subj[None, :]) & ((labels != c)[None, :]
                                                          | (np.arange(len(e))[None, :] > rows[:, None]))
        out: np.ndarray = s[keep]
        return out
    got: list[np.ndarray] = []
    have = 0
    while have < n:
        i = rows[rng.integers(len(rows), size=2 * n)]
        j = rng.integers(len(e), size=2 * n)
        ok = (subj[i] != subj[j]) & ((labels[j] != c) | (rng.random(2 * n) < 0.5))
        i, j = i[ok], j[ok]
        got.append(score_pairs(e, i, j)[:n - have])
        have += len(got[-1])
    return np.concatenate(got)


def plan_faircal(cs: CalibrationSet, *, n_clusters: int | None = None, seed: int = 0, min_subjects: int = 10,
                 min_genuine: int = 10, max_pairs: int = 5_000, ridge: float = 1e-3) -> Callable[[], FairCal]:
    """:func:`fit_faircal` on a calibration set (refusals raised now; it needs none of the set's pass)."""
    method = FairCal.method

    def too_small(c: PairCounts) -> dict[int, str]:
        return {i: f"{int(n)} genuine pairs (its calibration map needs {min_genuine})"
                for i, n in enumerate(c.touch_genuine) if n < min_genuine}

    e, subj = cs.embeddings, cs.subjects
    cl = cluster(method, e, subj, n_clusters, seed, min_subjects, too_small)

    def finish() -> FairCal:
        k = len(cl.centres)
        counts = cl.counts
        rng = np.random.default_rng([seed, 0xFC, 1])  # 3 entries: never a bootstrap stream
        ga, gb = _genuine_pairs(subj)
        gen_scores = score_pairs(e, ga, gb)
        maps = np.zeros((k, 3))
        used = np.zeros(k, np.int64)
        for c in range(k):
            g = gen_scores[(cl.labels[ga] == c) | (cl.labels[gb] == c)]
            if len(g) > max_pairs:
                g = g[rng.integers(len(g), size=max_pairs)]
            imp = _impostors_touching(e, subj, cl.labels, c, max_pairs, counts.touch_impostor[c] <= max_pairs, rng)
            used[c] = len(imp)
            n = len(g) + len(imp)
            w = np.concatenate([np.full(len(g), n / (2 * len(g))), np.full(len(imp), n / (2 * len(imp)))])
            bm = fit_beta(np.concatenate([g, imp]), np.r_[np.ones(len(g), bool), np.zeros(len(imp), bool)], w, ridge)
            maps[c] = (bm.a, bm.b, bm.c)
        return FairCal(centres=cl.centres, maps=maps, pair_weights=(counts.touch_genuine + counts.touch_impostor),
                       cluster_images=counts.images, cluster_subjects=counts.subjects,
                       genuine_pairs=counts.touch_genuine, impostor_pairs=counts.touch_impostor, impostors_used=used,
                       tried=cl.tried)

    return finish


# --------------------------------------------------------------------------------------- method specs


class Method(Protocol):
    """How to fit one mitigation on calibration people (what the cross-validation protocol calls)."""

    @property
    def name(self) -> str: ...

    @property
    def per_target(self) -> bool:  # fitted once per target FMR (else once, for every FMR)
        ...

    @property
    def needs_labels(self) -> bool: ...

    def plan(self, cs: CalibrationSet, groups: np.ndarray | None, target_fmr: float, seed: int,
             group_names: Sequence[str] = ()) -> Finish:
        """Ask ``cs`` for what the fit needs (raise MitigationRefused now if it cannot be fitted) and return the
        step that finishes it after ``cs.run()``; ``groups``: the calibration images' group codes (-1: none)
        and ``group_names`` their labels, given to a method that needs labels."""
        ...


@dataclass(frozen=True)
class GroupThresholdsMethod:
    name: str = "group_thresholds"
    per_target: bool = True
    needs_labels: bool = True

    def plan(self, cs: CalibrationSet, groups: np.ndarray | None, target_fmr: float, seed: int,
             group_names: Sequence[str] = ()) -> Finish:
        return plan_group_thresholds(cs, groups, target_fmr, group_names)


@dataclass(frozen=True)
class FsnMethod:
    n_clusters: int | None = None
    min_subjects: int = 10
    name: str = "fsn"
    per_target: bool = True
    needs_labels: bool = False

    def plan(self, cs: CalibrationSet, groups: np.ndarray | None, target_fmr: float, seed: int,
             group_names: Sequence[str] = ()) -> Finish:
        return plan_fsn(cs, target_fmr, n_clusters=self.n_clusters, seed=seed, min_subjects=self.min_subjects)


@dataclass(frozen=True)
class FairCalMethod:
    n_clusters: int | None = None
    min_subjects: int = 10
    min_genuine: int = 10
    max_pairs: int = 5_000
    name: str = "faircal"
    per_target: bool = False
    needs_labels: bool = False

    def plan(self, cs: CalibrationSet, groups: np.ndarray | None, target_fmr: float, seed: int,
             group_names: Sequence[str] = ()) -> Finish:
        return plan_faircal(cs, n_clusters=self.n_clusters, seed=seed, min_subjects=self.min_subjects,
                            min_genuine=self.min_genuine, max_pairs=self.max_pairs)


METHOD_NAMES = ("group_thresholds", "fsn", "faircal")


def method(name: str, n_clusters: int | None = None) -> Method:
    """The built-in method called ``name`` (one of :data:`METHOD_NAMES`)."""
    if name == "group_thresholds":
        return GroupThresholdsMethod()
    if name == "fsn":
        return FsnMethod(n_clusters=n_clusters)
    if name == "faircal":
        return FairCalMethod(n_clusters=n_clusters)
    raise InputError(f"unknown mitigation method {name!r}; choose from {', '.join(METHOD_NAMES)}")
