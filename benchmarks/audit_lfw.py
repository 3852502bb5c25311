"""A full audit of LFW (examples/lfw.toml: all 13,233 images, all pairs, by sex and race), cold and warm.

Cold: an empty embedding cache, so every image is decoded, detected and embedded. Warm: the same
command again, the cache filled. Each run is the `faceaudit audit` command in its own process, timed
from start to exit (imports included), with peak memory summed over its worker processes. The View 2
accuracy the audit reports is compared with the pipeline benchmark's (benchmarks/results/lfw_view2.json).
Targets: cold <= 300 s, warm <= 20 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, ROOT, require_lfw, write_result
from _memory import PeakRss

CONFIG = ROOT / "examples" / "lfw.toml"


def run(out: Path, cache: Path) -> tuple[float, int]:
    env = {**os.environ, "FACEAUDIT_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "faceaudit.cli", "audit", "--config", str(CONFIG), "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    with PeakRss(children=True) as mem:
        subprocess.run(cmd, env=env, check=True)
    return time.perf_counter() - t0, mem.peak


def main() -> None:
    require_lfw()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cold, cold_mem = run(base / "cold", base / "cache")
        warm, warm_mem = run(base / "warm", base / "cache")
        doc = json.loads((base / "warm" / "results.json").read_text())
        same = (base / "cold" / "results.json").read_bytes() == (base / "warm" / "results.json").read_bytes()
    proto = doc["protocol"]
    pipeline = json.loads((RESULTS / "lfw_view2.json").read_text())
    ref = pipeline["accuracy_mean"]
    result = {
        "cold_seconds": round(cold, 1), "warm_seconds": round(warm, 1),
        "cold_peak_rss_mib": round(cold_mem / 2**20), "warm_peak_rss_mib": round(warm_mem / 2**20),
        "targets": {"cold_seconds": 300, "warm_seconds": 20},
        "images": doc["audit"]["dataset"]["images"], "enrolled": doc["audit"]["dataset"]["enrolled"],
        "impostor_pairs": doc["analyses"][0]["operating_points"][0]["impostor_pairs"],
        "view2_accuracy": proto["accuracy"], "view2_pairs_failed": proto["pairs_failed"],
        "pipeline_benchmark_view2_accuracy": ref, "cold_and_warm_results_identical": same,
        "analyses": [a["attributes"] for a in doc["analyses"]],
    }
    print(f"cold {cold:.1f} s (target 300), warm {warm:.1f} s (target 20); peak RSS {result['cold_peak_rss_mib']} / "
          f"{result['warm_peak_rss_mib']} MiB; View 2 {proto['accuracy']:.4%} vs pipeline benchmark "
          f"{ref:.4%}; cold and warm results.json identical: {same}")
    write_result("audit_lfw", result)


if __name__ == "__main__":
    main()
