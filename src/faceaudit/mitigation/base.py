"""What every mitigation shares: the threshold rule, calibration pairs, refusals, and the fitted-calibration API.

A fitted calibration maps a raw score s_ij and the two images to a mitigated score, and a pair is
accepted when its mitigated score reaches one global threshold:

- ``codes(embeddings, groups)`` gives each image its code (its group, or its nearest cluster centre);
- ``transform(scores, code_a, code_b)`` gives the mitigated scores (arrays broadcast, so it serves a
  list of pairs and an all-pairs matrix alike); :func:`apply_pairs` and :func:`apply_all_pairs` wrap both.

Thresholds (:func:`threshold_at_fmr`) follow :mod:`faceaudit.metrics.rates`: for a target FMR over n
impostor scores, the next float above the (k+1)-th largest, k = floor(target * n), so ties never push
the FMR over the target.

Calibration pairs are every pair of the calibration images (cosine of unit vectors; genuine when
both images have the same subject), compared code by code in row chunks (:func:`blocks`) so memory
stays at one chunk of scores; the number of pairs of each kind per code follows from the composition
alone (:func:`pair_counts`), which fixes each threshold's rank before any score is seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from faceaudit.errors import InputError
from faceaudit.metrics.rates import MIN_EXPECTED_FALSE_MATCHES


class MitigationRefused(InputError):
    """A mitigation cannot be fitted or applied on this data; ``reason`` is a short machine-readable code."""

    def __init__(self, method: str, reason: str, message: str) -> None:
        self.method = method
        self.reason = reason
        super().__init__(f"{method}: {message}")


def threshold_at_fmr(impostor_scores: np.ndarray, target_fmr: float) -> float:
    """The smallest threshold t with #(impostor >= t) / n <= target (rule of the module docstring)."""
    s = np.asarray(impostor_scores, np.float64).ravel()
    k = rank(target_fmr, len(s))
    top = np.sort(np.partition(s, len(s) - k - 1)[len(s) - k - 1:])[::-1]
    return threshold_from_top(top, k)


def rank(target_fmr: float, n: int) -> int:
    """k = floor(target * n): how many impostor scores may lie at or above the threshold."""
    if not 0.0 < target_fmr < 1.0:
        raise ValueError(f"target FMR must be in (0, 1), got {target_fmr}")
    if n == 0:
        raise ValueError("no impostor scores: a threshold at a target FMR cannot be set")
    return int(np.floor(target_fmr * n))  # < n, since target < 1


def threshold_from_top(top_desc: np.ndarray, k: int) -> float:
    """Next float above the (k+1)-th largest score; ``top_desc`` holds at least the k + 1 largest, descending."""
    return float(np.nextafter(top_desc[k], np.inf))


class TopK:
    """The k + 1 largest of a stream of scores (what a threshold at rank k needs), merged chunk by chunk."""

    def __init__(self, k: int) -> None:
        self.keep = k + 1
        self.values = np.empty(0)

    def add(self, s: np.ndarray) -> None:
        s = np.asarray(s, np.float64).ravel()
        if len(self.values) == self.keep:
            # only scores above the current (k+1)-th largest can change it (an equal one leaves its value as is)
            s = s[s > self.values.min()]
        v = np.concatenate([self.values, s])
        if len(v) > self.keep:
            v = np.partition(v, len(v) - self.keep)[len(v) - self.keep:]
        self.values = v

    def threshold(self, k: int) -> float:
        return threshold_from_top(np.sort(self.values)[::-1], k)


# --------------------------------------------------------------------------------------- calibration pairs


def _choose2(n: np.ndarray) -> np.ndarray:
    n = np.asarray(n, np.int64)
    out: np.ndarray = n * (n - 1) // 2
    return out


@dataclass(frozen=True)
class PairCounts:
    """Calibration pair counts per code c (a group or a cluster), from the composition alone (no scores)."""

    images: np.ndarray  # (K,)
    subjects: np.ndarray  # (K,) distinct people with an image in c
    within_impostor: np.ndarray  # impostor pairs with both images in c
    touch_impostor: np.ndarray  # impostor pairs with at least one image in c
    touch_genuine: np.ndarray  # genuine pairs with at least one image in c
    impostor: int  # all impostor pairs
    genuine: int


def pair_counts(subjects: np.ndarray, codes: np.ndarray, n_codes: int) -> PairCounts:
    """Counts of :class:`PairCounts`; ``subjects`` coded 0..S-1.

    With m_uc images of subject u in c and m_u = sum_c m_uc: within-c genuine pairs sum_u C(m_uc, 2);
    genuine pairs touching c sum_u C(m_u, 2) - C(m_u - m_uc, 2); all pairs touching c
    C(n_c, 2) + n_c (N - n_c).
    """
    subjects = np.asarray(subjects, np.int64)
    codes = np.asarray(codes, np.int64)
    n = len(codes)
    n_s = int(subjects.max()) + 1 if n else 0
    m = np.zeros((n_s, n_codes), np.int64)
    np.add.at(m, (subjects, codes), 1)
    m_u = m.sum(axis=1)
    n_c = m.sum(axis=0)
    within_gen = _choose2(m).sum(axis=0)
    touch_gen = (_choose2(m_u)[:, None] - _choose2(m_u[:, None] - m)).sum(axis=0)
    gen = int(_choose2(m_u).sum())
    return PairCounts(images=n_c, subjects=(m > 0).sum(axis=0), within_impostor=_choose2(n_c) - within_gen,
                      touch_impostor=_choose2(n_c) + n_c * (n - n_c) - touch_gen, touch_genuine=touch_gen,
                      impostor=int(_choose2(np.array(n))) - gen, genuine=gen)


@dataclass(frozen=True)
class Block:
    """Rows ``rows`` (images of code ``code``) against every calibration image, with the pair masks."""

    code: int
    rows: np.ndarray
    scores: np.ndarray  # (r, N) float64
    same: np.ndarray  # same subject
    touch: np.ndarray  # the pair is counted once among the pairs touching ``code``
    within: np.ndarray  # both images in ``code``, counted once
    once: np.ndarray  # counted once over all codes (each unordered pair exactly once)


def blocks(emb: np.ndarray, subjects: np.ndarray, codes: np.ndarray, n_codes: int,
           chunk: int = 512) -> Iterator[Block]:
    """Every image against every other, code by code, in row chunks (memory: ``chunk`` x N scores).

    A pair (i, j) with i in c is listed from row i; it counts for c's "touching" pairs unless j is also
    in c and j < i (then row j lists it), and for the global set once, from the image of lower code
    (or lower index within one code).
    """
    cols = np.arange(len(emb))
    for c in range(n_codes):
        idx = np.flatnonzero(codes == c)
        for s in range(0, len(idx), chunk):
            rows = idx[s:s + chunk]
            scores = (emb[rows] @ emb.T).astype(np.float64)
            later = cols[None, :] > rows[:, None]
            same_code = (codes == c)[None, :]
            within = same_code & later
            yield Block(c, rows, scores, subjects[rows][:, None] == subjects[None, :],
                        touch=(~same_code) | later, within=within, once=(codes > c)[None, :] | within)


# --------------------------------------------------------------------------------------- calibrations


class Calibration(Protocol):
    """A fitted mitigation: per-image codes, and mitigated scores of pairs from raw scores and codes."""

    method: ClassVar[str]
    needs_labels: ClassVar[bool]

    def codes(self, embeddings: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray: ...

    def transform(self, scores: np.ndarray, code_a: np.ndarray, code_b: np.ndarray) -> np.ndarray: ...

    def to_dict(self) -> dict[str, Any]: ...


def apply_pairs(cal: Calibration, emb_a: np.ndarray, emb_b: np.ndarray, groups_a: np.ndarray | None = None,
                groups_b: np.ndarray | None = None) -> np.ndarray:
    """Mitigated scores of the pairs (emb_a[i], emb_b[i]) (rows L2-normalised first, as in the fit)."""
    a, b = unit_rows(emb_a), unit_rows(emb_b)
    raw = np.einsum("ij,ij->i", a, b).astype(np.float64)
    return cal.transform(raw, cal.codes(a, groups_a), cal.codes(b, groups_b))


def apply_all_pairs(cal: Calibration, embeddings: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """(N, N) mitigated scores of every pair of rows (the diagonal is meaningless)."""
    e = unit_rows(embeddings)
    code = cal.codes(e, groups)
    return cal.transform((e @ e.T).astype(np.float64), code[:, None], code[None, :])


def require_labels(method: str, n: int, groups: np.ndarray | None) -> np.ndarray:
    """Group codes (N,) for a method that needs them; refused when absent or when an image has none (-1)."""
    if groups is None:
        raise MitigationRefused(method, "needs_labels", "needs each image's group at decision time; none given")
    g = np.asarray(groups, np.int64)
    if g.shape != (n,):
        raise InputError(f"{method}: {n} embeddings but {g.shape} group codes")
    if (g < 0).any():
        raise MitigationRefused(method, "needs_labels", f"needs each image's group at decision time; "
                                f"{int((g < 0).sum())} of {n} images have no label")
    return g


def prepare(embeddings: np.ndarray, subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit float32 rows and subject codes 0..S-1 (sorted ids, so the coding is deterministic)."""
    e = unit_rows(embeddings)
    if len(e) != len(subjects):
        raise InputError(f"{len(e)} embeddings but {len(subjects)} subject ids")
    _, codes = np.unique(np.asarray(subjects), return_inverse=True)
    return e, codes.ravel().astype(np.int64)


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """float32 rows divided by their L2 norms (the one normalisation every mitigation path uses)."""
    e = np.asarray(embeddings, np.float32)
    if e.ndim != 2:
        raise InputError(f"embeddings must be (N, D), got shape {e.shape}")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    if not (np.isfinite(e).all() and (norms > 0).all()):
        raise InputError("embeddings must be finite and non-zero")
    out: np.ndarray = (e / norms).astype(np.float32)
    return out


def needed_pairs(fmr: float) -> int:
    """Impostor pairs a threshold at ``fmr`` needs: MIN_EXPECTED_FALSE_MATCHES expected above it."""
    return int(np.ceil(MIN_EXPECTED_FALSE_MATCHES / fmr))
