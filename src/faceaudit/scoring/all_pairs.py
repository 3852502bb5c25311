"""All-pairs comparison of embeddings, blocked, keeping every genuine score and the exact impostor tail.

Scores are cosine similarities of L2-normalised embeddings (dot products). Pairs are unordered
(i < j); a pair is genuine when both images have the same subject, impostor otherwise. Memory is one
block of ``block x N`` scores plus the ``top_k`` largest impostor scores, whatever the number of pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairScores:
    """Every genuine score, the ``top_k`` largest impostor scores (descending), and the pair counts."""

    genuine: np.ndarray
    impostor_top: np.ndarray
    n_genuine: int
    n_impostor: int


def score_all_pairs(embeddings: np.ndarray, subjects: np.ndarray, top_k: int, block: int = 1024) -> PairScores:
    """Compare every unordered pair of rows of ``embeddings`` (N, D), labelled by ``subjects`` (N,)."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    labels = np.unique(np.asarray(subjects), return_inverse=True)[1]
    n = len(emb)
    if labels.shape != (n,):
        raise ValueError(f"{n} embeddings but {labels.shape[0]} subject labels")
    genuine_parts: list[np.ndarray] = []
    top = np.empty(0, np.float32)
    floor = -np.inf  # only scores above the current k-th largest can enter the top
    n_impostor = 0
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        scores = emb[i0:i1] @ emb[i0:].T  # (b, n - i0)
        rows = np.arange(i0, i1)[:, None]
        cols = np.arange(i0, n)[None, :]
        upper = cols > rows
        same = labels[i0:i1, None] == labels[None, i0:]
        genuine_parts.append(scores[upper & same])
        imp = upper & ~same
        n_impostor += int(imp.sum())
        cand = scores[imp & (scores > floor)] if len(top) >= top_k else scores[imp]
        if len(cand):
            merged = np.concatenate([top, cand])
            if len(merged) > top_k:
                merged = np.partition(merged, len(merged) - top_k)[len(merged) - top_k:]
            top = merged
            if len(top) >= top_k:
                floor = float(top.min())
    genuine = np.concatenate(genuine_parts) if genuine_parts else np.empty(0, np.float32)
    return PairScores(genuine=genuine, impostor_top=np.sort(top)[::-1].copy(), n_genuine=len(genuine),
                      n_impostor=n_impostor)


def threshold_at_fmr(impostor_top_desc: np.ndarray, n_impostor: int, target_fmr: float) -> tuple[float, int]:
    """Smallest threshold t with FMR(t) = #(impostor >= t) / n_impostor <= target_fmr.

    With k = floor(target_fmr * n_impostor) false matches allowed, t is the next float above the
    (k+1)-th largest impostor score, so ties at that score all count as non-matches and the achieved
    FMR never exceeds the target. Returns (t, number of impostor scores >= t).
    """
    k = int(np.floor(target_fmr * n_impostor))
    if k >= len(impostor_top_desc):
        kept = len(impostor_top_desc)
        raise ValueError(f"target FMR {target_fmr:g} needs the top {k + 1} impostor scores; only {kept} kept")
    s = impostor_top_desc[k]
    t = float(np.nextafter(np.float32(s), np.float32(np.inf)))
    count = int(np.count_nonzero(impostor_top_desc >= t))
    return t, count
