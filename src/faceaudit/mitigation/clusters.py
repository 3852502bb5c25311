"""k-means clusters of the calibration people for FSN and FairCal, with the refusals when they are too small.

What is clustered: one vector per person, the normalised mean of their images' unit embeddings, so that
every person weighs the same. Each image (at calibration and at decision time alike) then takes the
cluster of its nearest centre. The papers cluster image embeddings of RFW and BFW, which hold about the
same number of images per person; where that number varies as much as on LFW (one image for most
people, 530 for one), k-means on images gives the most photographed individuals clusters of their own
(measured on LFW at K = 100: 37 clusters of fewer than 10 people, one of a single person), and a
per-cluster threshold would then calibrate those individuals rather than kinds of faces. On person
means the same run gives 47 to 95 people per cluster.

With ``n_clusters=None`` the number of clusters is ``min(100, people // 50)`` (the papers' 100 when the
data allow it). A cluster too small for the method (too few people, or too few of what it needs:
impostor pairs for FSN's threshold, genuine pairs for FairCal's map) is then dissolved: its centre is
dropped and Lloyd's iterations rerun from the surviving centres, so its people join the nearest
cluster that can carry a threshold or a map; repeated until every cluster is large enough
(``tried`` records K and the count after each dissolution). Dissolving rather than lowering K and
rerunning k-means keeps the clusters the data support: k-means++ seeding gives a few people far from
everyone a centre of their own at every K. Fewer than two surviving clusters is refused (one cluster
is the global threshold: nothing to calibrate). A number given explicitly is never changed: a
too-small cluster is refused instead (:class:`faceaudit.mitigation.base.MitigationRefused`, reason
``cluster_too_small`` or ``too_few_subjects``).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from faceaudit.errors import InputError
from faceaudit.mitigation.base import MitigationRefused, PairCounts, pair_counts
from faceaudit.mitigation.kmeans import kmeans, nearest, refine

#: Clusters asked for by the papers (Terhorst et al. 2020; Salvador et al. 2022), when the data allow it.
PAPER_CLUSTERS = 100
#: With ``n_clusters=None``: about this many calibration people per cluster, so that a cluster's
#: threshold or map rests on many people rather than on a few individuals' own score habits.
SUBJECTS_PER_CLUSTER = 50


@dataclass(frozen=True)
class Clusters:
    """k-means centres of the calibration people and what each cluster holds."""

    centres: np.ndarray  # (K, D)
    labels: np.ndarray  # (N,) cluster of each calibration image
    counts: PairCounts
    requested: int | None  # n_clusters as asked (None: chosen from the data)
    tried: tuple[int, ...]  # clusters run, in order: K, then the count after each dissolution (the last is kept)


_KMEANS_LOCK = threading.Lock()
_KMEANS_RUNS: OrderedDict[tuple[bytes, int, int], np.ndarray] = OrderedDict()


def _kmeans_centres(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """:func:`kmeans`'s centres, remembered for the last few (data, k, seed): FSN is refitted per target FMR on the
    same calibration people and FairCal clusters them alike, so the cross-validation would rerun the same k-means."""
    key = (hashlib.sha256(np.ascontiguousarray(x).tobytes() + repr(x.shape).encode()).digest(), k, seed)
    with _KMEANS_LOCK:  # cross-validation folds run in threads
        if key in _KMEANS_RUNS:
            return _KMEANS_RUNS[key]
    centres, _ = kmeans(x, k, seed)
    centres.setflags(write=False)
    with _KMEANS_LOCK:
        _KMEANS_RUNS[key] = centres
        while len(_KMEANS_RUNS) > 16:
            _KMEANS_RUNS.popitem(last=False)
    return centres


def person_means(e: np.ndarray, subj: np.ndarray) -> np.ndarray:
    """(S, D) float64: each person's mean unit embedding, normalised (``subj`` coded 0..S-1, every code used)."""
    order = np.argsort(subj, kind="stable")
    s = np.asarray(subj)[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    m: np.ndarray = np.add.reduceat(np.asarray(e, np.float64)[order], starts, axis=0)
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    return m


def cluster(method: str, e: np.ndarray, subj: np.ndarray, n_clusters: int | None, seed: int, min_subjects: int,
            too_small: Callable[[PairCounts], dict[int, str]]) -> Clusters:
    """Seeded k-means, with the number of clusters fixed (refused if too small) or chosen (module docstring).

    ``too_small(counts)``: the clusters short of what the method needs, each with what it lacks.
    """
    n_people = int(subj.max()) + 1
    if n_clusters is not None:
        if n_clusters < 1:
            raise InputError(f"{method}: n_clusters must be at least 1, got {n_clusters}")
        k = n_clusters
    else:
        k = min(PAPER_CLUSTERS, max(2, n_people // SUBJECTS_PER_CLUSTER))
    if n_people < k * min_subjects or len(e) < k:
        raise MitigationRefused(method, "too_few_subjects",
                                f"{n_people} calibration people cannot fill {k} clusters of at least {min_subjects} "
                                "people" + ("" if n_clusters is None else "; ask for fewer clusters"))
    people = person_means(e, subj)
    centres = _kmeans_centres(people, k, seed)
    labels = nearest(e, centres)
    tried = [k]
    while True:
        counts = pair_counts(subj, labels, k)
        problems = {c: f"{int(counts.subjects[c])} people" for c in range(k) if counts.subjects[c] < min_subjects}
        for c, lack in too_small(counts).items():
            problems[c] = f"{problems[c]}, {lack}" if c in problems else lack
        if not problems:
            return Clusters(np.asarray(centres), np.asarray(labels), counts, n_clusters, tuple(tried))
        survivors = [c for c in range(k) if c not in problems]
        if n_clusters is not None or len(survivors) < 2:
            listed = [f"cluster {c}: {problems[c]}" for c in sorted(problems)]
            raise MitigationRefused(
                method, "cluster_too_small",
                f"with {k} clusters of {n_people} calibration people, " + "; ".join(listed[:5])
                + (f" ... ({len(listed)} clusters in all)" if len(listed) > 5 else "")
                + f" (each cluster needs at least {min_subjects} people)"
                + ("; ask for fewer clusters" if n_clusters is not None and k > 2 else "")
                + ("" if n_clusters is not None else
                   f"; fewer than 2 clusters survive dissolving the small ones (clusters run: "
                   f"{', '.join(map(str, tried))})"))
        centres, _ = refine(people, np.asarray(centres)[survivors])
        labels = nearest(e, centres)
        k = len(survivors)
        tried.append(k)
