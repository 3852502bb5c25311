"""Throughput over the 7,701 images of LFW pairs.txt: faceaudit (cold and warm cache) against a plain loop.

The plain loop is what a user would write with OpenCV alone: one process, cv2.imread, YuNet
(cv2.FaceDetectorYN, int8 file, score >= 0.9) and SFace (cv2.FaceRecognizerSF, int8 file), the face
nearest the image centre, alignCrop + feature. It runs first, then faceaudit with all cores and an
empty cache (cold), then again over the same images (warm). Both pipelines' embeddings are scored on
the View 2 protocol as a check that they do the same job.
Usage: python benchmarks/throughput.py [--limit N] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from _common import require_lfw, write_result
from faceaudit.engines.batch import embed_files
from faceaudit.engines.cache import EmbeddingCache
from faceaudit.engines.models import SFACE_2021DEC_INT8BQ, YUNET_2023MAR_INT8BQ
from faceaudit.io.lfw import read_pairs
from faceaudit.metrics.verification import kfold_accuracy


def plain_loop(files: list[str]) -> tuple[float, dict[str, np.ndarray]]:
    det = cv2.FaceDetectorYN.create(str(YUNET_2023MAR_INT8BQ.path), "", (320, 320), 0.9, 0.3, 5000)
    rec = cv2.FaceRecognizerSF.create(str(SFACE_2021DEC_INT8BQ.path), "")
    out: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for f in files:
        img = cv2.imread(f)
        h, w = img.shape[:2]
        det.setInputSize((w, h))
        _, faces = det.detect(img)
        if faces is None:
            continue
        centre = np.array([w / 2, h / 2])
        face = faces[int(np.argmin(np.linalg.norm(faces[:, 0:2] + faces[:, 2:4] / 2 - centre, axis=1)))]
        v = rec.feature(rec.alignCrop(img, face)).ravel()
        out[f] = v / np.linalg.norm(v)
    return time.perf_counter() - t0, out


def view2(lfw: Path, emb: dict[str, np.ndarray]) -> float:
    pairs = read_pairs(lfw / "pairs.txt")
    scores = np.array([float(emb[str(lfw / p.a)] @ emb[str(lfw / p.b)])
                       if str(lfw / p.a) in emb and str(lfw / p.b) in emb else -np.inf for p in pairs])
    return kfold_accuracy(scores, np.array([p.same for p in pairs]), np.array([p.fold for p in pairs])).mean


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images (quick check)")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()
    lfw = require_lfw()
    pairs = read_pairs(lfw / "pairs.txt")
    files = sorted({str(lfw / p.a) for p in pairs} | {str(lfw / p.b) for p in pairs})[: args.limit]
    n = len(files)
    print(f"{n} images, {args.workers} workers, OpenCV {cv2.__version__} using {cv2.getNumThreads()} threads")

    plain_s, plain_emb = plain_loop(files)
    print(f"plain OpenCV loop: {plain_s:.1f} s, {plain_s / n * 1e3:.1f} ms/image, {n / plain_s:.1f} images/s")

    with tempfile.TemporaryDirectory() as tmp, EmbeddingCache(Path(tmp) / "cache.sqlite") as cache:
        t0 = time.perf_counter()
        cold = embed_files(files, workers=args.workers, cache=cache, progress=False)
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = embed_files(files, workers=args.workers, cache=cache, progress=False)
        warm_s = time.perf_counter() - t0
    assert all(o.cached for o in warm) and not any(o.cached for o in cold)
    ours = {f: o.results[0].embedding for f, o in zip(files, cold, strict=True) if o.results[0].ok}
    print(f"faceaudit cold:    {cold_s:.1f} s, {cold_s / n * 1e3:.1f} ms/image, {n / cold_s:.1f} images/s")
    print(f"faceaudit warm:    {warm_s:.2f} s, {warm_s / n * 1e3:.2f} ms/image")
    speedup, cache_ratio = plain_s / cold_s, cold_s / warm_s
    print(f"speed-up over the plain loop: {speedup:.2f}x (target >= 1.5x); warm vs cold: {cache_ratio:.0f}x "
          "(target >= 50x)")
    result = {
        "images": n, "workers": args.workers, "opencv": cv2.__version__,
        "plain_seconds": plain_s, "plain_ms_per_image": plain_s / n * 1e3, "plain_enrolled": len(plain_emb),
        "cold_seconds": cold_s, "cold_ms_per_image": cold_s / n * 1e3, "enrolled": len(ours),
        "warm_seconds": warm_s, "warm_ms_per_image": warm_s / n * 1e3,
        "speedup_vs_plain": speedup, "warm_vs_cold": cache_ratio,
        "targets": {"speedup_vs_plain": ">= 1.5", "warm_vs_cold": ">= 50"},
    }
    if args.limit is None:
        result["view2_accuracy_plain"] = view2(lfw, plain_emb)
        result["view2_accuracy_faceaudit"] = view2(lfw, ours)
        print(f"View 2 accuracy: plain loop {result['view2_accuracy_plain']:.4%}, "
              f"faceaudit {result['view2_accuracy_faceaudit']:.4%}")
    write_result("throughput" if args.limit is None else "throughput_quick", result)


if __name__ == "__main__":
    main()
