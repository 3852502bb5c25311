"""Batch embedding: bad files never stop a batch, workers agree, the cache is exact and resumable."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import faceaudit
from faceaudit.engines.base import EnrolSettings, FacePolicy
from faceaudit.engines.batch import embed_files
from faceaudit.engines.cache import EmbeddingCache
from faceaudit.io.embeddings import read_embeddings
from imagegen import make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, tiny: pd.DataFrame) -> tuple[Path, dict[str, str]]:
    """A manifest mixing 20 good faces with the whole bad-input corpus."""
    folder = tmp_path_factory.mktemp("corpus")
    expected = make_corpus(folder / "bad", Path(tiny["file"][0]), Path(tiny["file"][2]))
    rows = [{"path": f"bad/{name}", "subject_id": "x", "sex": "", "expected": why} for name, why in expected.items()]
    rows.append({"path": "bad/does_not_exist.jpg", "subject_id": "x", "sex": "", "expected": "missing_file"})
    for f, sid, sex in zip(tiny["file"][:20], tiny["subject_id"][:20], tiny["sex"][:20], strict=True):
        rows.append({"path": f, "subject_id": sid, "sex": sex, "expected": ""})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest, {r["path"]: r["expected"] for r in rows}


def test_mixed_batch_completes_with_every_good_image_embedded(corpus: tuple[Path, dict[str, str]],
                                                              tmp_path: Path) -> None:
    manifest, expected = corpus
    out = tmp_path / "out.parquet"
    run = faceaudit.embed(manifest, out, workers=2, cache=tmp_path / "c.sqlite")
    df, meta = read_embeddings(out)
    assert len(df) == len(expected) == run.n_images
    for _, row in df.iterrows():
        want = expected[row["path"]]
        assert row["reason"] == want, (row["path"], row["reason"], row["message"])
        assert row["ok"] == (want == "")
        if row["ok"]:
            assert len(row["embedding"]) == 128 and abs(np.linalg.norm(row["embedding"]) - 1) < 1e-5
        else:
            assert row["embedding"] is None and row["message"]
    assert meta["engine"]["name"] == "yunet-sface" and meta["settings"]["policy"] == "central"
    assert "sex" in df.columns and "expected" in df.columns  # passthrough columns kept
    assert run.reasons["missing_file"] == 1 and run.reasons["no_face"] == 1


def test_workers_and_batch_sizes_give_identical_results(tiny: pd.DataFrame, tmp_path: Path) -> None:
    files = list(tiny["file"][:16])
    one = embed_files(files, workers=1, batch_size=1, progress=False)
    two = embed_files(files, workers=2, batch_size=8, progress=False)
    for a, b in zip(one, two, strict=True):
        assert a.sha256 == b.sha256
        assert a.results[0].embedding is not None and b.results[0].embedding is not None
        np.testing.assert_allclose(a.results[0].embedding, b.results[0].embedding, atol=1e-5)


def test_cache_hits_are_exact_and_keyed_by_settings(tiny: pd.DataFrame, tmp_path: Path) -> None:
    files = list(tiny["file"][:10])
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        cold = embed_files(files, workers=1, cache=cache, progress=False)
        assert not any(o.cached for o in cold) and len(cache) == 10
        warm = embed_files(files, workers=1, cache=cache, progress=False)
        assert all(o.cached for o in warm)
        for a, b in zip(cold, warm, strict=True):
            assert a.results[0].face is not None and b.results[0].face is not None
            np.testing.assert_array_equal(a.results[0].embedding, b.results[0].embedding)
            np.testing.assert_array_equal(a.results[0].face.landmarks, b.results[0].face.landmarks)
        other = embed_files(files, workers=1, cache=cache, settings=EnrolSettings(policy=FacePolicy.LARGEST),
                            progress=False)
        assert not any(o.cached for o in other) and len(cache) == 20


def test_interrupted_run_resumes_from_the_cache(tiny: pd.DataFrame, tmp_path: Path) -> None:
    """SIGKILL the CLI mid-batch; the rerun reuses what was finished and completes the rest."""
    folder = tmp_path / "faces"
    for f, sid in zip(tiny["file"], tiny["subject_id"], strict=True):
        (folder / sid).mkdir(parents=True, exist_ok=True)
        (folder / sid / Path(f).name).write_bytes(Path(f).read_bytes())
    cache = tmp_path / "cache.sqlite"
    cmd = [sys.executable, "-m", "faceaudit.cli", "embed", str(folder), "--out", str(tmp_path / "o.parquet"),
           "--cache", str(cache), "--workers", "1", "--batch-size", "4", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if cache.exists():
            with EmbeddingCache(cache) as c:
                done = len(c)
            if done >= 20:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 20 <= done < len(tiny), "the run finished before it could be interrupted"
    assert not (tmp_path / "o.parquet").exists()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert f"{len(tiny)} images: {len(tiny)} embedded" in out.stdout
    reused = int(out.stdout.split(" from cache")[0].split(", ")[-1])
    assert reused >= done
