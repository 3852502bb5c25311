"""Embed and evaluate on a local Dask cluster of 2 worker processes: the same numbers as one machine."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from faceaudit.api import embed
from faceaudit.cli import main
from faceaudit.distributed import close, connect, run_plan_on_cluster, split_blocks
from faceaudit.evaluate import evaluate_frame
from faceaudit.io.embeddings import write_embeddings
from faceaudit.scoring.compare import plan_comparison, run_plan

#: float sums are merged in another order on the cluster: score means may differ in the last bits
ORDER_SENSITIVE = {"genuine_mean", "genuine_std", "impostor_mean", "impostor_std", "d_prime"}


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    c = connect("local:2", echo=lambda m: None)
    yield c
    close(c)


def _population(n_subjects: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        centre = rng.normal(size=64)
        for k in range(int(rng.integers(1, 5))):
            v = centre + rng.normal(scale=0.9, size=64)
            rows.append({"path": f"{s}/{k}.jpg", "subject_id": f"s{s:04d}", "sex": "FM"[s % 2],
                         "race": ["A", "B", "C", ""][s % 4], "ok": True,
                         "embedding": (v / np.linalg.norm(v)).astype(np.float32)})
    return pd.DataFrame(rows)


def _strip(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in ORDER_SENSITIVE}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def test_evaluate_on_the_cluster_equals_one_machine(client: Any) -> None:
    frame = _population(700)
    kw: dict[str, Any] = {"groupings": [["sex"], ["race"], ["sex", "race"]], "target_fmrs": [1e-2, 1e-3],
                          "bootstrap": 50, "permutations": 20, "seed": 5}
    one = evaluate_frame(frame, {}, **kw).to_dict()
    many = evaluate_frame(frame, {}, cluster=client, **kw).to_dict()
    assert _strip(many) == _strip(one)  # counts, thresholds, rates, intervals, p-values: the same bits
    again = evaluate_frame(frame, {}, cluster=client, **kw).to_dict()
    assert again == many  # the fixed merge tree makes even float sums repeat exactly


def test_blocks_split_into_tasks_cover_every_block_once() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3000, 16)).astype(np.float32)
    plan = plan_comparison(emb, np.arange(3000) // 3, np.arange(3000) % 3, 3)
    for n in (1, 3, 8, 1000):
        tasks = split_blocks(plan.blocks, n)
        assert [i for t in tasks for i, _ in t] == list(range(len(plan.blocks))) and len(tasks) <= max(n, 1)


def test_a_killed_worker_changes_nothing(client: Any) -> None:
    """SIGKILL one worker process in the middle of an evaluation: its tasks rerun, the result is identical."""
    rng = np.random.default_rng(1)
    n = 24_000
    emb = rng.normal(size=(n, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    subj = (np.arange(n) // 3).astype(np.int32)
    plan = plan_comparison(emb, subj, subj % 4, 4, top_k=50_000)
    expected = run_plan(plan)
    pids = list(client.run(os.getpid).values())
    out: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: out.update(stats=run_plan_on_cluster(client, plan)))
    worker.start()
    deadline = time.time() + 60
    while time.time() < deadline and not any(client.processing().values()):
        time.sleep(0.01)
    time.sleep(0.3)  # well into the tasks
    killed = worker.is_alive()
    os.kill(pids[0], signal.SIGKILL)
    worker.join(timeout=300)
    assert killed, "the evaluation ended before a worker could be killed"
    got = out["stats"]
    assert (got.impostor_hist == expected.impostor_hist).all()
    assert np.array_equal(np.sort(got.tail_score), np.sort(expected.tail_score))
    assert np.array_equal(np.sort(got.genuine()[0]), np.sort(expected.genuine()[0]))
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it


def test_embed_on_the_cluster_equals_one_machine(client: Any, tiny_manifest: Path, tmp_path: Path) -> None:
    table = pd.read_csv(tiny_manifest, dtype=str, keep_default_na=False).head(40)
    table["path"] = [str(tiny_manifest.parent / p) for p in table["path"]]
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    extra = pd.DataFrame([{"path": str(tmp_path / "bad.jpg"), "subject_id": "x"},
                          {"path": str(tmp_path / "missing.jpg"), "subject_id": "y"}])
    pd.concat([table, extra]).to_csv(tmp_path / "m.csv", index=False)
    one = embed(tmp_path / "m.csv", cache=False, workers=1).frame
    many = embed(tmp_path / "m.csv", cache=tmp_path / "c.sqlite", cluster=client).frame
    assert list(many["reason"].fillna("")) == list(one["reason"].fillna(""))
    assert list(many["reason"].iloc[-2:]) == ["not_an_image", "missing_file"]
    for a, b in zip(one["embedding"], many["embedding"], strict=True):
        assert (a is None and b is None) or np.array_equal(a, b)
    rerun = embed(tmp_path / "m.csv", cache=tmp_path / "c.sqlite", workers=1)
    # the cluster filled the local cache (the undecodable file too; the missing one has no content)
    assert rerun.n_cached == 41


def test_cli_evaluate_with_a_local_cluster(tmp_path: Path) -> None:
    frame = _population(200)
    write_embeddings(frame, tmp_path / "e.parquet", {"engine": {"embedding_dim": 64}})
    args = ["evaluate", "--embeddings", str(tmp_path / "e.parquet"), "--by", "sex", "--fmr", "1e-2",
            "--bootstrap", "20", "--permutations", "0", "--quiet"]
    one = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "one.json")])
    many = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "many.json"), "--cluster", "local:2"])
    assert one.exit_code == 0 and many.exit_code == 0, many.output
    assert "Dask cluster: 2 workers; dashboard" in many.output
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "many.json"))
    assert _strip(a["analyses"]) == _strip(b["analyses"])
