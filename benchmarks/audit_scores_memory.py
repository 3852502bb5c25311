"""An audit from an external score file of 10^8 pairs: wall time and peak memory (target: under 2 GB).

A synthetic "vendor" score file is written first (Parquet, 10^8 rows of id_a, id_b, score, in row
groups of 2 million): 20,000 images of 4,000 people in 8 groups (sex x 4 regions), pairs drawn at
random with 1% genuine; genuine scores ~ N(0.70, 0.10), impostor ~ N(0.10 + 0.02 * group, 0.10),
so groups differ. Then `faceaudit audit ids.csv --scores pairs.parquet --by sex --by region` runs in
its own process, and its peak RSS is sampled.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from _common import write_result
from _memory import PeakRss

N_PAIRS = 100_000_000
N_IMAGES, N_SUBJECTS = 20_000, 4_000
CHUNK = 2_000_000


def write_data(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    subject = np.arange(N_IMAGES) % N_SUBJECTS
    sex = np.where(np.arange(N_SUBJECTS) % 2 == 0, "F", "M")[subject]
    region = np.array(["A", "B", "C", "D"])[(np.arange(N_SUBJECTS) // 2) % 4][subject]
    ids = pd.DataFrame({"id": [f"img{i:05d}" for i in range(N_IMAGES)], "subject_id": subject.astype(str),
                        "sex": sex, "region": region})
    ids.to_csv(folder / "ids.csv", index=False)
    group = (np.arange(N_SUBJECTS) % 8)[subject]
    schema = pa.schema([("id_a", pa.string()), ("id_b", pa.string()), ("score", pa.float32())])
    names = ids["id"].to_numpy()
    with pq.ParquetWriter(folder / "pairs.parquet", schema) as writer:
        for _ in range(N_PAIRS // CHUNK):
            a = rng.integers(0, N_IMAGES, CHUNK)
            genuine = rng.random(CHUNK) < 0.01
            b = np.where(genuine, (a + N_SUBJECTS * rng.integers(1, 5, CHUNK)) % N_IMAGES,
                         rng.integers(0, N_IMAGES, CHUNK))
            same = subject[a] == subject[b]
            score = np.where(same, rng.normal(0.70, 0.10, CHUNK), rng.normal(0.10 + 0.02 * group[a], 0.10, CHUNK))
            writer.write_table(pa.table({"id_a": names[a], "id_b": names[b], "score": score.astype(np.float32)},
                                        schema=schema))
    return folder / "ids.csv", folder / "pairs.parquet"


def main() -> None:
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        ids, pairs = write_data(base)
        made = time.perf_counter() - t0
        print(f"wrote {N_PAIRS:,} pairs in {made:.0f} s ({pairs.stat().st_size / 2**30:.2f} GiB)")
        cmd = [sys.executable, "-m", "faceaudit.cli", "audit", str(ids), "--scores", str(pairs), "--by", "sex",
               "--by", "region", "--intersect", "sex,region", "--labels", "synthetic", "--system-name",
               "synthetic vendor", "--out", str(base / "report"), "--quiet"]
        t0 = time.perf_counter()
        with PeakRss(children=True) as mem:
            subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t0
        doc = json.loads((base / "report" / "results.json").read_text())
    op = doc["analyses"][0]["operating_points"][0]
    result = {"pairs": N_PAIRS, "images": N_IMAGES, "subjects": N_SUBJECTS, "seconds": round(seconds, 1),
              "peak_rss_mib": round(mem.peak / 2**20), "target_peak_mib": 2048,
              "pairs_read": doc["inputs"]["pairs_read"], "excluded": doc["excluded"],
              "impostor_pairs": op["impostor_pairs"], "genuine_pairs": sum(g["genuine_pairs"] for g in op["groups"])}
    print(f"audit of {N_PAIRS:,} scores: {seconds:.0f} s, peak RSS {result['peak_rss_mib']} MiB (target < 2048)")
    write_result("audit_scores_memory", result)


if __name__ == "__main__":
    main()
