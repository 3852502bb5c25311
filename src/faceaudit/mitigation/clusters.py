"""k-means clusters of calibration embeddings for FSN and FairCal, with the refusals when they are too small.

With ``n_clusters=None`` the number of clusters is ``min(100, people // 50)`` (the papers' 100 when the
data allow it), lowered and k-means rerun while a cluster is too small (too few people, or what the
method needs: impostor pairs for FSN's threshold, genuine pairs for FairCal's map); a number given
explicitly is never changed: it is refused instead (:class:`faceaudit.mitigation.base.MitigationRefused`,
reason ``cluster_too_small`` or ``too_few_subjects``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from faceaudit.errors import InputError
from faceaudit.mitigation.base import MitigationRefused, PairCounts, pair_counts
from faceaudit.mitigation.kmeans import kmeans

#: Clusters asked for by the papers (Terhorst et al. 2020; Salvador et al. 2022), when the data allow it.
PAPER_CLUSTERS = 100
#: With ``n_clusters=None``: about this many calibration people per cluster, so that a cluster's
#: threshold or map rests on many people rather than on a few individuals' own score habits.
SUBJECTS_PER_CLUSTER = 50


@dataclass(frozen=True)
class Clusters:
    """k-means centres of calibration embeddings and what each cluster holds."""

    centres: np.ndarray  # (K, D)
    labels: np.ndarray  # (N,) cluster of each calibration image
    counts: PairCounts
    requested: int | None  # n_clusters as asked (None: chosen from the data)
    tried: tuple[int, ...]  # K values run, in order (the last is kept)


_KMEANS_RUNS: OrderedDict[tuple[bytes, int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()


def _kmeans_memo(e: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`kmeans`, remembered for the last few (data, k, seed): FSN is refitted per target FMR on the same
    calibration people and FairCal clusters them alike, so the cross-validation would rerun the same k-means."""
    key = (hashlib.sha256(np.ascontiguousarray(e).tobytes() + repr(e.shape).encode()).digest(), k, seed)
    if key not in _KMEANS_RUNS:
        centres, labels = kmeans(e, k, seed)
        centres.setflags(write=False)
        labels.setflags(write=False)
        _KMEANS_RUNS[key] = (centres, labels)
        while len(_KMEANS_RUNS) > 16:
            _KMEANS_RUNS.popitem(last=False)
    return _KMEANS_RUNS[key]


def cluster(method: str, e: np.ndarray, subj: np.ndarray, n_clusters: int | None, seed: int, min_subjects: int,
             too_small: Callable[[PairCounts], list[str]]) -> Clusters:
    """Seeded k-means, with the number of clusters fixed (refused if too small) or chosen (module docstring)."""
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
    tried = []
    while True:
        tried.append(k)
        centres, labels = _kmeans_memo(e, k, seed)
        counts = pair_counts(subj, labels, k)
        problems = [f"cluster {c}: {int(counts.subjects[c])} people" for c in range(k)
                    if counts.subjects[c] < min_subjects] + too_small(counts)
        if not problems:
            return Clusters(centres, labels, counts, n_clusters, tuple(tried))
        if n_clusters is not None or k <= 2:
            raise MitigationRefused(method, "cluster_too_small",
                                    f"with {k} clusters of {n_people} calibration people, "
                                    + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
                                    + f" (each cluster needs at least {min_subjects} people)"
                                    + ("; ask for fewer clusters" if k > 2 else ""))
        k = max(2, k - len({p.split(":")[0] for p in problems}))
