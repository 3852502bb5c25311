"""All-pairs evaluation at scale: pairs per second against the raw matrix-product rate, and peak memory.

N random unit vectors (d = 128), 8 groups, two vectors per subject (so N/2 genuine pairs), targets
FMR 1e-3 .. 1e-6. The raw rate is NumPy's own all-cores matrix product over the same vectors in
blocks of 2,048 rows (no folding, nothing kept), measured in the same run just before.
Usage: python benchmarks/evaluate_scale.py [N ...]   (default: 20000 100000 300000)
"""

from __future__ import annotations

import sys
import time

import numpy as np

from _common import write_result
from _memory import PeakRss
from faceaudit.metrics.rates import counts_at, global_threshold
from faceaudit.scoring.compare import compare_embeddings
from faceaudit.scoring.stats import ScoreBins


def raw_rate(emb: np.ndarray, rows: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, rows, 2048):
        emb[i:i + 2048] @ emb.T
    return rows * len(emb) / (time.perf_counter() - t0)


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [20_000, 100_000, 300_000]
    results = []
    for n in sizes:
        rng = np.random.default_rng(n)
        emb = rng.normal(size=(n, 128)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        subjects = np.arange(n) // 2
        groups = rng.integers(0, 8, n)
        compare_embeddings(emb[:3000], subjects[:3000], groups[:3000], 8, top_k=1000)  # load the kernel
        raw = raw_rate(emb, min(n, 20_000))
        pairs = n * (n - 1) // 2
        top_k = int(min(5_000_000, np.ceil(1e-3 * pairs) + 2))
        with PeakRss() as mem:
            t0 = time.perf_counter()
            stats = compare_embeddings(emb, subjects, groups, 8, bins=ScoreBins(), top_k=top_k)
            seconds = time.perf_counter() - t0
            thresholds = {}
            for target in (1e-3, 1e-4, 1e-5, 1e-6):
                t = global_threshold(stats, target)
                c = counts_at(stats, t)
                thresholds[str(target)] = {"threshold": t.value, "exact": t.exact, "fmr": t.fmr,
                                           "false_non_matches": int(c.false_non_matches.sum())}
        rate = pairs / seconds
        row = {"n": n, "pairs": pairs, "seconds": seconds, "pairs_per_second": rate,
               "raw_matmul_pairs_per_second": raw, "ratio_to_raw": rate / raw,
               "peak_rss_mib": mem.peak / 2**20, "tail_size": top_k, "thresholds": thresholds}
        print(f"N={n:,}: {pairs:.3g} pairs in {seconds:.1f} s = {rate:.3g} pairs/s; raw matmul {raw:.3g} pairs/s; "
              f"ratio {rate / raw:.2f} (target >= 0.5); peak RSS {mem.peak / 2**20:.0f} MiB (target <= 2048)",
              flush=True)
        results.append(row)
        del emb, stats
    write_result("evaluate_scale", {"d": 128, "groups": 8, "runs": results})


if __name__ == "__main__":
    main()
