"""The gallery end to end with 1,000,000 synthetic 128-d templates: enrol rate and search latency.

Enrols 1,000,000 people (one template each, seeded random unit vectors) through
``Gallery.enrol_many`` into a SQLite gallery (each person with a consent record, an AES-GCM
encrypted template and a hash-chained log entry; 1,000 people per transaction), then times 1:N
searches through ``Gallery.search`` (policy check, index search, owner lookup, log entry) for the
top 10: p50 and p99 over 300 probes, for the exact index, at FPIR 0.2 (at 10^6 templates, FPIR 0.01
needs a per-comparison FMR of 1e-8, below what the LFW calibration can state). The index-only latencies, the HNSW
index and recall are in benchmarks/gallery_search.py.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import write_result
from faceaudit.gallery.crypto import generate_key_file
from faceaudit.gallery.gallery import Consent, Gallery
from faceaudit.gallery.policy import Policy

N, DIM, PROBES = 1_000_000, 128, 300
POLICY = Policy.from_dict({"roles": {"*": ["enrol", "verify", "search"]},
                           "search": {"enabled": True, "purpose": "benchmark", "legal_basis": "test", "max_k": 10,
                                      "max_fpir": 0.25}})


def main() -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        key = generate_key_file(Path(tmp) / "k")
        g = Gallery.init(Path(tmp) / "g", key_file=key, policy=POLICY, actor="bench", role="bench")
        consent = Consent("synthetic", "2026-01-01", "benchmark")
        t0 = time.perf_counter()
        done = 0
        for start in range(0, N, 50_000):
            v = rng.normal(size=(50_000, DIM)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            done += g.enrol_many([(f"s{start + i}", consent, v[i:i + 1]) for i in range(len(v))])
            print(f"  {done:,} enrolled, {done / (time.perf_counter() - t0):,.0f}/s", flush=True)
        enrol_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in g.store.files())
        lat = []
        for _ in range(PROBES):
            q = rng.normal(size=DIM).astype(np.float32)
            t = time.perf_counter()
            g.search(embedding=q / np.linalg.norm(q), k=10, fpir=0.2, purpose="benchmark", legal_basis="test")
            lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        check = g.verify_log()
        log_s = time.perf_counter() - t
        g.close()
    lat_ms = sorted(x * 1000 for x in lat)
    result = {"templates": N, "enrol_seconds": round(enrol_s, 1), "enrol_per_second": round(N / enrol_s),
              "database_mib": round(size / 2**20), "search_exact_p50_ms": round(statistics.median(lat_ms), 2),
              "search_exact_p99_ms": round(lat_ms[int(0.99 * len(lat_ms)) - 1], 2),
              "log_entries_verified": check.entries, "log_verify_seconds": round(log_s, 1), "log_ok": check.ok}
    print(f"enrolled {N:,} in {enrol_s:.0f} s ({N / enrol_s:,.0f}/s); gallery search (exact, top 10, with policy "
          f"and log): p50 {result['search_exact_p50_ms']} ms, p99 {result['search_exact_p99_ms']} ms; log of "
          f"{check.entries:,} entries verified in {log_s:.1f} s: {check.ok}")
    write_result("gallery_enrol", result)


if __name__ == "__main__":
    main()
