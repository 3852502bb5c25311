"""The first `faceaudit evaluate` of a fresh install against the runs after it (issue: no compile pause).

A new virtual environment gets `pip install` of this repository (not editable: installed as a user
installs it, into site-packages), with empty cache folders (XDG, Matplotlib, faceaudit). Then
`faceaudit evaluate` runs three times, each its own process, on the same 100,000 random unit vectors
(d = 128, 3 per subject, 8 groups; given as another system's .npz, so nothing is cached by content).
The figure is the first run's wall time over the median of the second and third. Bootstrap and
permutations are off: the shorter the run, the larger a fixed first-run cost shows.

Also recorded: whether Numba's cache files exist after each run, and a first-import-and-compile of the
fold kernel alone after its cache files are removed (the compile cost the cache saves).
Usage: python benchmarks/first_run.py [N]   (default 100000)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, write_result

COMPILE = """
import time
t0 = time.perf_counter()
import numpy as np
from faceaudit.scoring.compare import compare_embeddings
t1 = time.perf_counter()
rng = np.random.default_rng(0)
e = rng.normal(size=(300, 128)).astype(np.float32)
e /= np.linalg.norm(e, axis=1, keepdims=True)
compare_embeddings(e, np.arange(300) // 3, np.arange(300) % 8, 8, top_k=100)
print(f"{t1 - t0:.3f} {time.perf_counter() - t1:.3f}")
"""


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    work = Path(tempfile.mkdtemp(prefix="faceaudit-first-run-"))
    try:
        venv = work / "venv"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)], check=True)
        install_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        v = rng.normal(size=(n, 128)).astype(np.float32)
        subj = np.arange(n) // 3
        data = work / "vectors.npz"
        np.savez(data, path=np.array([f"img{i}" for i in range(n)]), subject_id=np.array([f"s{s}" for s in subj]),
                 group=np.array([f"g{s % 8}" for s in subj]), embedding=v)
        env = {**os.environ, "XDG_CACHE_HOME": str(work / "xdg"), "MPLCONFIGDIR": str(work / "mpl"),
               "FACEAUDIT_CACHE_DIR": str(work / "cache")}
        env.pop("NUMBA_CACHE_DIR", None)
        site = next((venv / "lib").glob("python*/site-packages"))
        nb_dir = site / "faceaudit" / "scoring" / "__pycache__"
        runs, cached = [], []
        for k in range(3):
            argv = [str(venv / "bin" / "faceaudit"), "evaluate", "--embeddings", str(data), "--by", "group",
                    "--bootstrap", "0", "--permutations", "0", "--quiet", "--out", str(work / f"r{k}.json")]
            runs.append(timed(argv, env))
            cached.append(sorted(p.name for p in nb_dir.glob("*.nb*")))
            print(f"run {k + 1}: {runs[-1]:.2f} s; numba cache files: {len(cached[-1])}")
        same = (work / "r0.json").read_bytes() == (work / "r1.json").read_bytes()
        for p in nb_dir.glob("*.nb*"):
            p.unlink()
        py = str(venv / "bin" / "python")
        cold = subprocess.run([py, "-c", COMPILE], env=env, check=True, capture_output=True, text=True).stdout.split()
        warm = subprocess.run([py, "-c", COMPILE], env=env, check=True, capture_output=True, text=True).stdout.split()
        later = statistics.median(runs[1:])
        result = {
            "vectors": n, "pairs": n * (n - 1) // 2, "install_seconds": round(install_s, 1),
            "runs_seconds": [round(r, 2) for r in runs], "first_over_later": round(runs[0] / later, 3),
            "target": "first run within 1.2x of the second", "first_and_second_results_identical": same,
            "numba_cache_files_after_each_run": cached,
            "kernel_alone": {"import_s_cold_cache": float(cold[0]), "first_compare_s_cold_cache": float(cold[1]),
                             "import_s_warm_cache": float(warm[0]), "first_compare_s_warm_cache": float(warm[1])},
        }
        print(f"first run {runs[0]:.2f} s, later runs median {later:.2f} s: {runs[0] / later:.2f}x (target <= 1.2x); "
              f"kernel compile without its cache {float(cold[1]):.2f} s, with it {float(warm[1]):.2f} s")
        write_result("first_run", result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
