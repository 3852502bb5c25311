"""Measuring a mitigation honestly: k-fold cross-validation by subject, pooled over folds, paired intervals.

Protocol (:func:`cross_validate`; :func:`cross_validate_analyses` for several groupings at once).

1. Folds by subject. People are dealt into ``folds`` folds (default 5) by a generator seeded with
   ``(seed, 0xF01D, 1)``: shuffled within their group (with several groupings, within their combination
   of groups), then round-robin, so every fold has a share of every group and fold sizes differ by at
   most one person per group.
2. For fold f, every method is fitted on the images of the people of the other folds only (checked in
   code: :func:`check_disjoint`), then applied to all pairs among the images of fold f's people (each
   image compared with every other; genuine = same subject). The fits of a fold share one pass over the
   calibration pairs (:mod:`faceaudit.mitigation.scan`); folds run in parallel threads and are merged in
   fold order.
3. In each fold and for each target FMR, the system measured (the unmitigated scores, or a method's
   mitigated scores) gets its global threshold for the target from the held-out fold's impostor pairs,
   as an audit of that system would set it; only the operating point comes from the held-out people,
   never a mitigation parameter. A pair matches when its score reaches its fold's threshold.
4. Pooling: false matches, false non-matches and pair counts are summed over the held-out folds (each
   held-out pair counted once, pairs across folds are never compared) and rates are computed from the
   sums: FMR_g, FNMR_g per group, the summary measures (:func:`faceaudit.metrics.summary.summarise`),
   overall TAR = 1 - FNMR over every genuine pair, and the overall FMR achieved.
5. Differences, method minus unmitigated, per group and per summary measure, and for TAR, with a paired
   subject-level bootstrap (:mod:`faceaudit.metrics.comparison`): each replicate resamples the pooled
   held-out people within their group (:func:`faceaudit.metrics.bootstrap.subject_draws`), the same
   people for both systems, and recounts both systems' decisions on the resampled people
   (:func:`faceaudit.metrics.bootstrap.counts_from_pairs`, fold by fold, summed; the summary measures of
   every replicate by :func:`faceaudit.metrics.summary.summary_rows`). A change is claimed only when its
   95% interval excludes zero (:func:`faceaudit.metrics.comparison.call`). Calibrations and thresholds
   stay fixed in the replicates: the intervals say how much the result depends on which people were
   measured, not how much the calibration itself would vary with other calibration people.

Decisions are margins m = s - t (score minus its fold's threshold), so every fold's decisions are
"m >= 0" and one exact threshold, 0, serves all folds.

A method that refuses in any fold (:class:`faceaudit.mitigation.base.MitigationRefused`) is reported as
refused at that target, with its reason (the first such fold named); the others go on. Same inputs and
seed, same ``to_dict()``, whatever the number of threads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from faceaudit.errors import InputError
from faceaudit.metrics.bootstrap import ReplicateCounts, counts_from_pairs, percentile_interval, subject_draws
from faceaudit.metrics.comparison import SUMMARY_MEASURES, PairedDifference
from faceaudit.metrics.rates import MIN_EXPECTED_FALSE_MATCHES
from faceaudit.metrics.summary import summarise, summary_rows
from faceaudit.mitigation.base import Calibration, MitigationRefused, threshold_at_fmr, unit_rows
from faceaudit.mitigation.methods import METHOD_NAMES, Finish, Method, method
from faceaudit.mitigation.result import UNMITIGATED, Fold, MethodResult, MitigationResult, SystemResult, rates
from faceaudit.mitigation.scan import CalibrationSet
from faceaudit.scoring.groups import UNKNOWN, Grouping

#: Random streams are keyed (seed, tag, ...) with 3 entries so they never meet the bootstrap's (seed, r).
_FOLD_STREAM = 0xF01D


def subject_folds(strata: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold (0..folds-1) of each subject, dealt within each stratum (step 1 of the module docstring)."""
    strata = np.asarray(strata)
    rng = np.random.default_rng([seed, _FOLD_STREAM, 1])
    out = np.empty(len(strata), np.int64)
    pos = 0
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        members = members[rng.permutation(len(members))]
        out[members] = (pos + np.arange(len(members))) % folds
        pos += len(members)
    return out


def check_disjoint(calibration_subjects: np.ndarray, held_out_subjects: np.ndarray) -> None:
    """Raise if any person is both a calibration person and a held-out person of one fold."""
    both = np.intersect1d(np.asarray(calibration_subjects), np.asarray(held_out_subjects))
    if len(both):
        raise RuntimeError(f"fold leak: {len(both)} people are in both the calibration and the held-out set")


@dataclass
class _Tally:
    """One system at one target FMR, summed over folds."""

    replicates: ReplicateCounts | None = None
    observed: ReplicateCounts | None = None
    genuine_per_subject: np.ndarray | None = None  # every genuine pair (any groups), for the overall TAR
    misses_per_subject: np.ndarray | None = None
    false_matches_all: int = 0
    impostor_pairs_all: int = 0
    thresholds: list[float] = field(default_factory=list)

    def add(self, rep: ReplicateCounts | None, obs: ReplicateCounts, gen: np.ndarray, miss: np.ndarray, fm_all: int,
            imp_all: int, threshold: float) -> None:
        self.replicates = _sum_counts(self.replicates, rep)
        self.observed = _sum_counts(self.observed, obs)
        self.genuine_per_subject = gen if self.genuine_per_subject is None else self.genuine_per_subject + gen
        self.misses_per_subject = miss if self.misses_per_subject is None else self.misses_per_subject + miss
        self.false_matches_all += fm_all
        self.impostor_pairs_all += imp_all
        self.thresholds.append(threshold)


def _sum_counts(a: ReplicateCounts | None, b: ReplicateCounts | None) -> ReplicateCounts | None:
    if a is None or b is None:
        return b if a is None else a
    oa, ob = a.observed, b.observed
    return ReplicateCounts(a.false_matches + b.false_matches, a.impostor_pairs + b.impostor_pairs,
                           a.false_non_matches + b.false_non_matches, a.genuine_pairs + b.genuine_pairs,
                           (oa[0] + ob[0], oa[1] + ob[1], oa[2] + ob[2], oa[3] + ob[3]))


@dataclass(frozen=True)
class _FoldPairs:
    """All pairs among one fold's held-out images (upper triangle), and what counting needs for one analysis:
    the within-group pairs and each group's impostor pair count follow from the composition alone."""

    same: np.ndarray  # same subject
    subject_a: np.ndarray  # the fold's people, coded 0..P-1
    subject_b: np.ndarray
    within: np.ndarray  # group of the pair when both images are in it, else -1
    genuine: np.ndarray  # positions of the within-group genuine pairs
    impostor_pairs: np.ndarray  # (G,) within-group impostor pairs
    impostor_all: int  # impostor pairs, any groups
    genuine_all: np.ndarray  # (P,) genuine pairs (any groups) per person, for the overall TAR


def _fold_pairs(same: np.ndarray, sa: np.ndarray, sb: np.ndarray, ga: np.ndarray, gb: np.ndarray, n_groups: int,
                n_subjects: int) -> _FoldPairs:
    within = np.where(ga == gb, ga, -1)
    return _FoldPairs(same, sa, sb, within, np.flatnonzero(same & (within >= 0)),
                      np.bincount(within[~same & (within >= 0)], minlength=n_groups).astype(np.float64),
                      int((~same).sum()), np.bincount(sa[same], minlength=n_subjects).astype(np.float64))


#: One fold's counts for one system: replicate and observed per-group counts, per-subject genuine pairs and misses,
#: false matches and impostor pairs over all pairs.
_Counts = tuple[ReplicateCounts | None, ReplicateCounts, np.ndarray, np.ndarray, int, int]


def _count_fold(margin: np.ndarray, fp: _FoldPairs, n_sg_fold: np.ndarray, draws: np.ndarray | None) -> _Counts:
    """Counts of one fold for one system, from its decisions (margin >= 0 is a match): replicate and observed
    per-group counts, per-subject genuine pairs and misses, false matches and impostor pairs over all pairs."""
    acc = ~fp.same & (margin >= 0)
    fm = np.flatnonzero(acc & (fp.within >= 0))
    gen = fp.genuine
    parts = (fp.subject_a[gen], fp.within[gen], margin[gen] < 0, fp.within[fm], fp.subject_a[fm], fp.subject_b[fm],
             fp.impostor_pairs)
    n_s = n_sg_fold.shape[0]
    obs = counts_from_pairs(n_sg_fold, np.ones((1, n_s)), *parts)
    rep = None if draws is None else counts_from_pairs(n_sg_fold, draws, *parts)
    miss = np.bincount(fp.subject_a[fp.same & (margin < 0)], minlength=n_s).astype(np.float64)
    return rep, obs, fp.genuine_all, miss, int(acc.sum()), fp.impostor_all


def _summaries(rc: ReplicateCounts, alpha: float) -> np.ndarray:
    return summary_rows(rc.false_matches, rc.impostor_pairs, rc.false_non_matches, rc.genuine_pairs, alpha,
                        SUMMARY_MEASURES)


def _resolve(methods: Sequence[str | Method], n_clusters: int | None) -> list[Method]:
    out = [method(m, n_clusters) if isinstance(m, str) else m for m in methods]
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise InputError(f"a mitigation method is named twice: {names}")
    return out


@dataclass(frozen=True)
class _Replicates:
    """A system's statistics in each bootstrap replicate (rows): what paired differences subtract."""

    fmr: np.ndarray  # (R, G)
    fnmr: np.ndarray  # (R, G)
    tar: np.ndarray  # (R,)
    summary: np.ndarray  # (R, len(SUMMARY_MEASURES))


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = percentile_interval(values[:, None], confidence)[0]
    return float(lo), float(hi)


def _system(name: str, target: float, t: _Tally, labels: list[str], alpha: float, draws: np.ndarray | None,
            confidence: float) -> tuple[SystemResult, _Replicates | None]:
    """A system's pooled result, and its replicates (None without the bootstrap)."""
    assert t.observed is not None and t.genuine_per_subject is not None and t.misses_per_subject is not None
    fm, imp, fnm, gen = (x[0] for x in (t.observed.false_matches, t.observed.impostor_pairs,
                                         t.observed.false_non_matches, t.observed.genuine_pairs))
    g = len(labels)
    fmr_ci, fnmr_ci = np.full((g, 2), np.nan), np.full((g, 2), np.nan)
    summary_ci = {m: (np.nan, np.nan) for m in SUMMARY_MEASURES}
    tar_ci = (np.nan, np.nan)
    reps = None
    n_gen = t.genuine_per_subject.sum()
    tar = 1.0 - t.misses_per_subject.sum() / n_gen if n_gen else np.nan
    if draws is not None and t.replicates is not None:
        rc = t.replicates
        reps = _Replicates(fmr=rates(rc.false_matches, rc.impostor_pairs),
                           fnmr=rates(rc.false_non_matches, rc.genuine_pairs),
                           tar=1.0 - rates(draws @ t.misses_per_subject, draws @ t.genuine_per_subject),
                           summary=_summaries(rc, alpha))
        fmr_ci, fnmr_ci = percentile_interval(reps.fmr, confidence), percentile_interval(reps.fnmr, confidence)
        for k in range(g):  # zero observed errors: the rule-of-3 interval (resampling zeros gives only zeros)
            if fm[k] == 0 and imp[k] > 0:
                fmr_ci[k] = (0.0, min(1.0, 3.0 / imp[k]))
            if fnm[k] == 0 and gen[k] > 0:
                fnmr_ci[k] = (0.0, min(1.0, 3.0 / gen[k]))
        sci = percentile_interval(reps.summary, confidence)
        summary_ci = {m: (float(sci[i, 0]), float(sci[i, 1])) for i, m in enumerate(SUMMARY_MEASURES)}
        tar_ci = _interval(reps.tar, confidence)
    res = SystemResult(
        name=name, target_fmr=target, thresholds=tuple(t.thresholds), false_matches=fm, impostor_pairs=imp,
        false_non_matches=fnm, genuine_pairs=gen, fmr_ci=fmr_ci, fnmr_ci=fnmr_ci,
        summary=summarise(labels, fm, imp, fnm, gen, alpha), summary_ci=summary_ci, tar=float(tar), tar_ci=tar_ci,
        fmr=t.false_matches_all / t.impostor_pairs_all if t.impostor_pairs_all else float("nan"))
    return res, reps


def _difference(a: SystemResult, b: SystemResult, reps_a: _Replicates | None, reps_b: _Replicates | None,
                labels: list[str], replicates: int,
                confidence: float) -> tuple[PairedDifference, float, tuple[float, float]]:
    """b - a per group, per summary measure and for TAR, with paired intervals (NaN without replicates)."""
    g = len(labels)
    fci, nci = np.full((g, 2), np.nan), np.full((g, 2), np.nan)
    summary_ci = {m: (np.nan, np.nan) for m in SUMMARY_MEASURES}
    tar_ci = (np.nan, np.nan)
    if reps_a is not None and reps_b is not None:
        fci = percentile_interval(reps_b.fmr - reps_a.fmr, confidence)
        nci = percentile_interval(reps_b.fnmr - reps_a.fnmr, confidence)
        sci = percentile_interval(reps_b.summary - reps_a.summary, confidence)
        summary_ci = {m: (float(sci[i, 0]), float(sci[i, 1])) for i, m in enumerate(SUMMARY_MEASURES)}
        tar_ci = _interval(reps_b.tar - reps_a.tar, confidence)
    diff = PairedDifference(
        labels=labels, fmr_diff=b.group_fmr - a.group_fmr, fmr_diff_ci=fci, fnmr_diff=b.group_fnmr - a.group_fnmr,
        fnmr_diff_ci=nci, summary_diff={m: float(getattr(b.summary, m) - getattr(a.summary, m))
                                        for m in SUMMARY_MEASURES},
        summary_diff_ci=summary_ci, replicates=replicates, confidence=confidence)
    return diff, b.tar - a.tar, tar_ci


def cross_validate(
    embeddings: np.ndarray,
    subjects: np.ndarray,
    grouping: Grouping,
    methods: Sequence[str | Method] = METHOD_NAMES,
    target_fmrs: Sequence[float] = (1e-3, 1e-4),
    *,
    folds: int = 5,
    seed: int = 0,
    replicates: int = 1000,
    confidence: float = 0.95,
    alpha: float = 0.5,
    n_clusters: int | None = None,
) -> MitigationResult:
    """Fit each mitigation on other people and measure it on held-out people (module docstring).

    ``embeddings`` (N, D) (L2-normalised here), ``subjects`` (N,) ids, ``grouping`` the demographic groups
    of the same rows (an ``unknown`` label is a group for measuring, but group thresholds refuse it: they
    need each person's group). ``methods``: built-in names (:data:`METHOD_NAMES`) or :class:`Method`
    objects; ``n_clusters`` applies to the built-in FSN and FairCal (None: chosen from the data).
    ``replicates`` = 0 switches the bootstrap off (no intervals, no calls). A method's ``plan`` receives
    the fold's :class:`faceaudit.mitigation.scan.CalibrationSet` (the calibration rows' embeddings and
    subject codes), their group codes (-1 for an unknown label; None for a method that needs no labels),
    the target FMR and ``seed``.
    """
    return cross_validate_analyses(embeddings, subjects, [grouping], methods, target_fmrs, folds=folds, seed=seed,
                                   replicates=replicates, confidence=confidence, alpha=alpha,
                                   n_clusters=n_clusters)[0]


@dataclass
class _Analysis:
    """One grouping's share of the cross-validation: its groups, bootstrap draws and tallies."""

    labels: list[str]
    gidx: np.ndarray  # (N,) group of each image
    n_sg: np.ndarray  # (S, G) images of each subject in each group
    method_groups: np.ndarray  # gidx with -1 for an unknown label
    draws: np.ndarray | None
    tallies: dict[tuple[str, float], _Tally] = field(default_factory=dict)
    refused: dict[tuple[str, float], dict[str, Any]] = field(default_factory=dict)
    fitted: dict[tuple[str, float], list[dict[str, Any]]] = field(default_factory=dict)


def _analysis(grouping: Grouping, subj: np.ndarray, n_subjects: int, replicates: int, seed: int) -> _Analysis:
    gidx = np.asarray(grouping.index, np.int64)
    n_groups = len(grouping.labels)
    n_sg = np.zeros((n_subjects, n_groups))
    np.add.at(n_sg, (subj, gidx), 1)
    unknown = np.array([UNKNOWN in grouping.values(g).values() for g in range(n_groups)], bool)
    draws = subject_draws(np.argmax(n_sg, axis=1), replicates, seed) if replicates > 0 else None
    return _Analysis(list(grouping.labels), gidx, n_sg, np.where(unknown[gidx], -1, gidx), draws)


def cross_validate_analyses(
    embeddings: np.ndarray,
    subjects: np.ndarray,
    groupings: Sequence[Grouping],
    methods: Sequence[str | Method] = METHOD_NAMES,
    target_fmrs: Sequence[float] = (1e-3, 1e-4),
    *,
    folds: int = 5,
    seed: int = 0,
    replicates: int = 1000,
    confidence: float = 0.95,
    alpha: float = 0.5,
    n_clusters: int | None = None,
    threads: int | None = None,
) -> list[MitigationResult]:
    """:func:`cross_validate` for several groupings of the same images (an audit's analyses), sharing the work.

    The folds are dealt once, within the strata of every grouping at once (each person's group in each),
    so each fold has a share of every group of every analysis (with one grouping: exactly
    :func:`cross_validate`'s folds). A method that needs no labels (FSN, FairCal) is fitted once per fold
    and serves every analysis; group thresholds are fitted per analysis. One result per grouping, in order.
    ``threads``: folds run at once (default: the machine's cores); the result does not depend on it.
    A method refused in any fold is refused (the first such fold is named).
    """
    if not groupings:
        raise InputError("cross-validation needs at least one grouping")
    emb = unit_rows(embeddings)
    n = len(emb)
    if len(subjects) != n or any(np.asarray(g.index).shape != (n,) for g in groupings):
        raise InputError(f"{n} embeddings, {len(subjects)} subject ids and group codes of "
                         f"{[np.asarray(g.index).shape for g in groupings]} do not describe the same images")
    if folds < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {folds}")
    subject_ids, subj = np.unique(np.asarray(subjects), return_inverse=True)
    subj = subj.ravel().astype(np.int64)
    n_subjects = int(subj.max()) + 1
    if n_subjects < 2 * folds:
        raise MitigationRefused("mitigation", "too_few_subjects",
                                f"{n_subjects} people cannot make {folds} folds of at least 2 people each")
    analyses = [_analysis(g, subj, n_subjects, replicates, seed) for g in groupings]
    majority = np.stack([np.argmax(a.n_sg, axis=1) for a in analyses], axis=1)
    fold_of = subject_folds(np.unique(majority, axis=0, return_inverse=True)[1].ravel(), folds, seed)
    mlist = _resolve(methods, n_clusters)
    targets = sorted({float(t) for t in target_fmrs}, reverse=True)

    # the held-out folds' pairs, and which targets every fold supports
    fold_info: list[Fold] = []
    held_sets = []
    for f in range(folds):
        held = np.flatnonzero(fold_of[subj] == f)
        cal = np.flatnonzero(fold_of[subj] != f)
        check_disjoint(np.unique(subj[cal]), np.unique(subj[held]))
        held_sets.append((held, cal))
        m_u = np.bincount(subj[held], minlength=n_subjects)
        gen = int((m_u * (m_u - 1) // 2).sum())
        fold_info.append(Fold(f, int((m_u > 0).sum()), len(held), len(np.unique(subj[cal])), len(cal),
                              len(held) * (len(held) - 1) // 2 - gen, gen))
    min_imp = min(fi.impostor_pairs for fi in fold_info)
    skipped = tuple({"target_fmr": t, "reason": f"a held-out fold has {min_imp:,} impostor pairs: fewer than "
                     f"{MIN_EXPECTED_FALSE_MATCHES} expected false matches"} for t in targets
                    if t * min_imp < MIN_EXPECTED_FALSE_MATCHES)
    targets = [t for t in targets if t * min_imp >= MIN_EXPECTED_FALSE_MATCHES]
    if not targets:
        raise MitigationRefused("mitigation", "too_few_subjects", f"no target FMR is supported: {skipped[0]['reason']}")

    # folds in parallel threads (NumPy releases the GIL in the heavy parts), merged in fold order; BLAS runs one
    # thread per product whatever ``threads`` is, since OpenBLAS rounds a product differently when it splits it
    workers = max(1, min(folds, threads or os.cpu_count() or 1))
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(lambda f: _run_fold(f, *held_sets[f], emb, subj, n_subjects, fold_of, analyses,
                                                     mlist, targets, seed), range(folds)))
    for f, outcome in enumerate(outcomes):
        outcome.merge_into(analyses, f)

    settings = {"folds": folds, "seed": seed, "target_fmrs": targets, "alpha": alpha, "n_clusters": n_clusters,
                "methods": [m.name for m in mlist], "bootstrap": None if replicates <= 0 else {
                    "replicates": replicates, "confidence": confidence, "resampling": "subjects within groups, "
                    "the same people for both systems"}}
    notes = _notes(folds, seed, mlist, replicates > 0)
    return [_result(a, mlist, targets, alpha, replicates, confidence, settings, tuple(fold_info), skipped, notes,
                    subject_ids, fold_of) for a in analyses]


@dataclass
class _FoldOutcome:
    """What one fold found, merged into the analyses in fold order (so threads never change a result)."""

    measured: list[tuple[int, str, float, _Counts, float]] = field(default_factory=list)
    refusals: list[tuple[list[int], str, list[float], MitigationRefused]] = field(default_factory=list)
    fits: list[tuple[list[int], str, list[float], dict[str, Any]]] = field(default_factory=list)

    def merge_into(self, analyses: list[_Analysis], fold: int) -> None:
        for serve, name, served, err in self.refusals:  # the first fold (in order) that refused is named
            for a in serve:
                for t in served:
                    analyses[a].refused.setdefault((name, t), {"reason": err.reason, "message": str(err),
                                                               "fold": fold})
        for serve, name, served, doc in self.fits:
            for a in serve:
                for t in served:
                    analyses[a].fitted.setdefault((name, t), []).append(doc)
        for a, name, target, counts, threshold in self.measured:
            analyses[a].tallies.setdefault((name, target), _Tally()).add(*counts, threshold=threshold)


def _run_fold(f: int, held: np.ndarray, cal: np.ndarray, emb: np.ndarray, subj: np.ndarray, n_subjects: int,
              fold_of: np.ndarray, analyses: list[_Analysis], mlist: list[Method], targets: list[float],
              seed: int) -> _FoldOutcome:
    """Fold f: fit every method on the other folds' people (one calibration set, one pass), measure all systems on
    the held-out people's pairs, for every analysis. Reads ``analyses``, never writes them."""
    out = _FoldOutcome()
    i, j = np.triu_indices(len(held), k=1)
    e = emb[held]
    s = (e @ e.T)[i, j].astype(np.float64)
    # the fold's people, coded 0..P-1 while counting: the bootstrap's products then run over them only
    people = np.flatnonzero(fold_of == f)
    local = np.full(n_subjects, -1, np.int64)
    local[people] = np.arange(len(people))
    sa, sb = local[subj[held][i]], local[subj[held][j]]
    same = sa == sb
    pairs = [_fold_pairs(same, sa, sb, a.gidx[held][i], a.gidx[held][j], len(a.labels), len(people))
             for a in analyses]
    n_sg = [a.n_sg[people] for a in analyses]
    draws = [None if a.draws is None else np.ascontiguousarray(a.draws[:, people], np.float64) for a in analyses]

    def measure(a: int, name: str, target: float, scores: np.ndarray) -> None:
        t = threshold_at_fmr(scores[~same], target)
        rep, obs, gen_local, miss_local, fm_all, imp_all = _count_fold(scores - t, pairs[a], n_sg[a], draws[a])
        gen, miss = np.zeros(n_subjects), np.zeros(n_subjects)
        gen[people], miss[people] = gen_local, miss_local
        out.measured.append((a, name, target, (rep, obs, gen, miss, fm_all, imp_all), t))

    for target in targets:
        for a in range(len(analyses)):
            measure(a, UNMITIGATED, target, s)
    # every method, target and analysis asks one calibration set; its single pass over the pairs serves them all
    cs = CalibrationSet(emb[cal], subj[cal])
    pending: list[tuple[Method, list[int], list[float], Finish]] = []  # method, its analyses, targets, fit
    for m in mlist:
        for serve in ([[a] for a in range(len(analyses))] if m.needs_labels else [list(range(len(analyses)))]):
            groups = analyses[serve[0]].method_groups[cal] if m.needs_labels else None
            for fit_target in (targets if m.per_target else targets[:1]):
                served = [fit_target] if m.per_target else targets
                try:
                    names = analyses[serve[0]].labels if m.needs_labels else []
                    pending.append((m, serve, served, m.plan(cs, groups, fit_target, seed, group_names=names)))
                except MitigationRefused as err:
                    out.refusals.append((serve, m.name, served, err))
    cs.run()
    for m, serve, served, finish in pending:
        try:
            c: Calibration = finish()
            code = c.codes(e, analyses[serve[0]].method_groups[held] if m.needs_labels else None)
            mitigated = c.transform(s, code[i], code[j])
        except MitigationRefused as err:
            out.refusals.append((serve, m.name, served, err))
            continue
        out.fits.append((serve, m.name, served, {"fold": f, **c.to_dict()}))
        for a in serve:
            for t in served:
                measure(a, m.name, t, mitigated)
    return out


def _result(a: _Analysis, mlist: list[Method], targets: list[float], alpha: float, replicates: int,
            confidence: float, settings: dict[str, Any], folds: tuple[Fold, ...], skipped: tuple[dict[str, Any], ...],
            notes: tuple[str, ...], subject_ids: np.ndarray, fold_of: np.ndarray) -> MitigationResult:
    base: dict[float, SystemResult] = {}
    results: list[MethodResult] = []
    for target in targets:
        b, reps_b = _system(UNMITIGATED, target, a.tallies[(UNMITIGATED, target)], a.labels, alpha, a.draws,
                            confidence)
        base[target] = b
        for m in mlist:
            key = (m.name, target)
            if key in a.refused:
                results.append(MethodResult(m.name, target, m.needs_labels, None, None, refused=a.refused[key],
                                            calibrations=tuple(a.fitted.get(key, []))))
                continue
            sys_m, reps_m = _system(m.name, target, a.tallies[key], a.labels, alpha, a.draws, confidence)
            diff, tar_diff, tar_ci = _difference(b, sys_m, reps_b, reps_m, a.labels, replicates, confidence)
            results.append(MethodResult(m.name, target, m.needs_labels, sys_m, diff, tar_diff, tar_ci,
                                        calibrations=tuple(a.fitted[key])))
    return MitigationResult(tuple(a.labels), settings, folds, base, tuple(results), skipped, notes, subject_ids,
                            fold_of)


def _notes(folds: int, seed: int, mlist: Sequence[Method], bootstrap: bool) -> tuple[str, ...]:
    notes = [
        f"Cross-validated by subject: {folds} folds (seed {seed}); each fold's mitigation was fitted on the other "
        "folds' people only and measured on all pairs among the held-out fold's people; no person is in both.",
        "Pooled over folds: error and pair counts are summed over the held-out folds (each held-out pair counted "
        "once; pairs across folds are not compared) and rates are computed from the sums.",
        "Operating point: in each fold, each system's global threshold for the target FMR is set on the held-out "
        "fold's impostor pairs of that system, as an audit of it would; mitigation parameters never see held-out "
        "people.",
    ]
    if bootstrap:
        notes.append("Intervals: paired subject-level bootstrap of the held-out people (the same people for both "
                     "systems in each replicate), with each fold's calibration and thresholds held fixed; a change is "
                     "claimed only when its interval excludes zero. They do not include the variability of the "
                     "calibration itself.")
    if any(m.needs_labels for m in mlist):
        notes.append("Group thresholds need each person's demographic group at decision time, which is often "
                     "unlawful to collect or use: a what-if, not a deployable mitigation.")
    return tuple(notes)
