"""Peak memory while embedding all 13,233 LFW images (cold cache, all cores), over all processes.

A sampling thread adds up the resident set size (RSS) of this process and its worker processes every
50 ms; the peak of that sum is reported, with each process's own peak (ru_maxrss) as a cross-check.
Usage: python benchmarks/memory.py [--workers N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import psutil

import faceaudit
from _common import require_lfw, write_result


class PeakRss:
    """Peak of the summed RSS, and of the summed PSS (shared pages divided among their users)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.peak = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            procs = [me, *me.children(recursive=True)]
            total = pss = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    info = p.memory_full_info()
                    total += info.rss
                    pss += info.pss
            if total > self.peak:
                self.peak, self.peak_processes = total, len(procs)
            self.peak_pss = max(self.peak_pss, pss)
            time.sleep(interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()
    lfw = require_lfw()
    with tempfile.TemporaryDirectory() as tmp, PeakRss() as mem:
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
