"""Peak memory sampled by a thread: RSS (BLAS buffers included, unlike tracemalloc), optionally summed
over child processes and with PSS (shared pages divided among the processes that map them)."""

from __future__ import annotations

import contextlib
import threading
import time

import psutil


class PeakRss:
    def __init__(self, interval: float = 0.05, children: bool = False, pss: bool = False) -> None:
        self.peak = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self._children = children
        self._pss = pss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            procs = [me, *me.children(recursive=True)] if self._children else [me]
            rss = pss = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    info = p.memory_full_info() if self._pss else p.memory_info()
                    rss += info.rss
                    pss += getattr(info, "pss", 0)
            if rss > self.peak:
                self.peak, self.peak_processes = rss, len(procs)
            self.peak_pss = max(self.peak_pss, pss)
            time.sleep(interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
