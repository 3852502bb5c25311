"""Evaluate on Dask against one process: N = 100,000 random unit vectors (d = 128, 8 groups), all pairs.

Side by side in one run, with medians of 3 repeats each: the single-process path (this machine's 2
threads) and a local Dask cluster of 2 single-threaded worker processes (the cluster is started
before timing; scatter, tasks and the merge tree are timed). Target: time ratio <= 1.15. Also the
per-task rate (pairs per second per worker, from Dask's task stream) and, from it and the task graph,
an estimate of the wall time of 10^12 comparisons on 100 workers.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

from _common import write_result
from faceaudit.distributed import TASKS_PER_WORKER, close, connect, run_plan_on_cluster
from faceaudit.scoring.compare import plan_comparison, run_plan

N, D, GROUPS, REPEATS = 100_000, 128, 8, 3


def main() -> None:
    from distributed import get_task_stream

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(N, D)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    subjects = (np.arange(N) // 4).astype(np.int32)
    groups = (subjects % GROUPS).astype(np.int32)
    pairs = N * (N - 1) // 2
    plan = plan_comparison(emb, subjects, groups, GROUPS, top_k=int(1e-3 * pairs) + 2)
    client = connect("local:2")
    try:
        run_plan_on_cluster(client, plan_comparison(emb[:5000], subjects[:5000], groups[:5000], GROUPS))  # warm-up
        local, cluster, stream = [], [], []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            a = run_plan(plan, threads=2)
            local.append(time.perf_counter() - t0)
            with get_task_stream(client) as ts:
                t0 = time.perf_counter()
                b = run_plan_on_cluster(client, plan)
                cluster.append(time.perf_counter() - t0)
            stream = ts.data
            assert (a.impostor_hist == b.impostor_hist).all()
            assert np.array_equal(np.sort(a.tail_score), np.sort(b.tail_score))
    finally:
        close(client)
    folds = [t for t in stream if t["key"].startswith("_fold_task")]
    merges = [t for t in stream if t["key"].startswith("_merge")]

    def seconds(t: dict) -> float:
        return sum(s["stop"] - s["start"] for s in t["startstops"] if s["action"] == "compute")

    fold_s = [seconds(t) for t in folds]
    merge_s = [seconds(t) for t in merges]
    rate = pairs / sum(fold_s)  # pairs per second per single-threaded worker
    ratio = statistics.median(cluster) / statistics.median(local)
    # 10^12 comparisons on 100 workers: N = sqrt(2e12) vectors; tasks of the same size as measured here
    big, workers = 1e12, 100
    tasks = max(TASKS_PER_WORKER * workers, math.ceil(big / (pairs / len(folds))))
    compute = big / (rate * workers)
    merge_levels = math.ceil(math.log2(tasks))
    n_big = math.sqrt(2 * big)
    scatter = n_big * D * 4 * workers / 1e9  # the client sends the embeddings to each worker at 1 GB/s
    estimate = compute + merge_levels * statistics.median(merge_s) + scatter
    result = {
        "n": N, "pairs": pairs, "groups": GROUPS, "repeats": REPEATS,
        "single_process_seconds": [round(x, 2) for x in local], "cluster_seconds": [round(x, 2) for x in cluster],
        "ratio_cluster_to_single": round(ratio, 3), "target_ratio": 1.15,
        "tasks": len(folds), "merges": len(merges), "task_seconds_median": round(statistics.median(fold_s), 2),
        "merge_seconds_median": round(statistics.median(merge_s), 3),
        "pairs_per_second_per_worker": round(rate), "estimate_1e12_on_100_workers_seconds": round(estimate),
        "estimate_seconds": {"compute": round(compute), "merge_tree": round(merge_levels * statistics.median(merge_s)),
                             "scatter": round(scatter)},
        "estimate_model": "10^12 / (per-worker rate x 100 workers) + ceil(log2(tasks)) x median merge time + "
                          "scatter of N = 1.41 million 128-d float32 embeddings (724 MB) from the client to each "
                          "of the 100 workers at 1 GB/s; merges of the same size as measured here (the tail grows "
                          "with top_k, so larger runs merge more slowly)",
    }
    print(f"N = {N:,}: single process {statistics.median(local):.1f} s, cluster of 2 workers "
          f"{statistics.median(cluster):.1f} s: ratio {ratio:.3f} (target <= 1.15); {len(folds)} tasks at "
          f"{rate:.3g} pairs/s per worker; 10^12 pairs on 100 workers: about {estimate / 60:.0f} min")
    write_result("distributed_scale", result)


if __name__ == "__main__":
    main()
