"""Peak memory while embedding all 13,233 LFW images (cold cache, all cores), over all processes.

A sampling thread adds up the resident set size (RSS) of this process and its worker processes every
50 ms; the peak of that sum is reported, with each process's own peak (ru_maxrss) as a cross-check.
Usage: python benchmarks/memory.py [--workers N]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import faceaudit
from _common import require_lfw, write_result
from _memory import PeakRss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()
    lfw = require_lfw()
    with tempfile.TemporaryDirectory() as tmp, PeakRss(0.1, children=True, pss=True) as mem:
        t0 = time.perf_counter()
        run = faceaudit.embed(lfw / "manifest.csv", Path(tmp) / "lfw.parquet", workers=args.workers,
                              cache=Path(tmp) / "cache.sqlite", progress=False)
        seconds = time.perf_counter() - t0
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    mib = 1024 * 1024
    print(f"{run.n_images} images ({run.n_ok} embedded) in {seconds:.0f} s with {args.workers} workers")
    print(f"peak RSS, all processes together: {mem.peak / mib:.0f} MiB ({mem.peak_processes} processes), "
          f"peak PSS {mem.peak_pss / mib:.0f} MiB; "
          f"main process peak {self_peak / mib:.0f} MiB, largest worker peak {child_peak / mib:.0f} MiB "
          "(target: below 1 GB)")
    write_result("memory", {
        "images": run.n_images, "embedded": run.n_ok, "workers": args.workers, "seconds": seconds,
        "peak_rss_all_processes_mib": mem.peak / mib, "peak_pss_all_processes_mib": mem.peak_pss / mib,
        "processes_at_peak": mem.peak_processes,
        "main_peak_rss_mib": self_peak / mib, "largest_worker_peak_rss_mib": child_peak / mib,
        "target": "< 1 GB (953.7 MiB) for all processes together",
    })


if __name__ == "__main__":
    main()
