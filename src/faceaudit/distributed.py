"""Embed and evaluate on a Dask cluster (dask.distributed), with the numbers one machine gets.

Only imported when a cluster is asked for (``--cluster``, ``[run] cluster``, ``$FACEAUDIT_CLUSTER``),
so the single-machine path never loads Dask.

- ``local:N`` starts a local cluster of N single-threaded worker processes; anything else is the
  address of a running scheduler (``tcp://host:8786``), whose workers must see the same data paths
  and run the same faceaudit version.
- evaluate: the comparison plan's blocks are cut into tasks of about equal pairs; the ordered
  embeddings are scattered to every worker once; each task folds its blocks into sufficient
  statistics, and the partial statistics are merged by a fixed binary tree on the workers. Counts,
  histograms and tails merge exactly in any order, so counts, thresholds and rates are the same bits
  as on one machine; the fixed tree also makes float sums (score means) the same from run to run.
- embed: images are cut into chunks; a worker reads each image from its path, hashes and enrols it,
  with one engine loaded per worker process. Failures per image are the same results as on one
  machine. The client collects the results (and fills its embedding cache).
- A task lost with a worker is rerun by Dask on another worker; tasks are pure, so the result is
  the same.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from tqdm import tqdm

from faceaudit.engines.base import EnrolSettings, FaceResult
from faceaudit.errors import FaceauditError
from faceaudit.scoring.compare import Block, ComparisonPlan, fold_blocks
from faceaudit.scoring.stats import PairStatistics

ENV = "FACEAUDIT_CLUSTER"
#: Tasks per worker in an evaluation. Each task keeps its own exact tail of the top_k largest
#: impostor scores, and admits every score until that tail is full, so a task pays a start-up cost
#: that grows with top_k; on 100,000 vectors (top_k 5 million), 4 tasks per worker ran at 1.58x the
#: single-process time, 1 task per worker at 1.04x (benchmarks/distributed_scale.py). A lost worker
#: therefore reruns its whole share.
TASKS_PER_WORKER = 1
IMAGES_PER_TASK = 64


def cluster_address(given: str | None) -> str | None:
    """The cluster asked for: the flag or config value, else ``$FACEAUDIT_CLUSTER``, else none."""
    return given or os.environ.get(ENV) or None


def connect(address: str, echo: Any = print) -> Any:
    """A ``distributed.Client`` for ``local:N`` or a scheduler address; prints the dashboard address."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - dask is a dependency; kept for a clear message if removed
        raise FaceauditError("Dask is not installed: pip install 'dask[distributed]'") from None
    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
        except ValueError:
            raise FaceauditError(f"--cluster {address!r}: write local:N with N the number of workers") from None
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=40)
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout="20s")
        except OSError as exc:
            raise FaceauditError(f"cannot reach the Dask scheduler at {address} ({exc}); start it with "
                                 "`dask scheduler` and workers with `dask worker ADDRESS`") from exc
    echo(f"Dask cluster: {len(client.scheduler_info()['workers'])} workers; dashboard {client.dashboard_link}")
    return client


def close(client: Any) -> None:
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


@contextmanager
def cluster_client(address: str | None, echo: Any = print) -> Iterator[Any | None]:
    """A connected client for the cluster asked for (see :func:`cluster_address`), or None for none."""
    addr = cluster_address(address)
    if addr is None:
        yield None
        return
    client = connect(addr, echo)
    try:
        yield client
    finally:
        close(client)


# --- evaluate ---

def split_blocks(blocks: Sequence[Block], n_tasks: int) -> list[list[tuple[int, Block]]]:
    """Consecutive runs of numbered blocks with about equal pairs each (at most ``n_tasks`` runs)."""
    total = sum(b.pairs for b in blocks) or 1
    per = total / max(1, n_tasks)
    tasks: list[list[tuple[int, Block]]] = [[]]
    acc = 0
    for i, b in enumerate(blocks):
        if acc >= per * len(tasks) and tasks[-1]:
            tasks.append([])
        tasks[-1].append((i, b))
        acc += b.pairs
    return tasks


_TUNED: list[bool] = []


def _tune_allocator() -> None:
    """Let glibc serve the 2 MB score blocks from its heap again, once per worker process.

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's
    adaptive mmap threshold: every block was then a fresh mmap, zeroed page by page, and a worker
    folded at half the speed of a thread of one process (measured: 1.78 s against 0.88 s for the same
    blocks). M_MMAP_THRESHOLD = 64 MiB restores heap allocation; trimming still returns memory.
    """
    if _TUNED:
        return
    _TUNED.append(True)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
            ctypes.CDLL("libc.so.6").mallopt(-3, 64 << 20)  # -3: M_MMAP_THRESHOLD


def _fold_task(emb: np.ndarray, subjects: np.ndarray, blocks: list[tuple[int, Block]], empty: PairStatistics,
               sample: Any, score_map: Any = None) -> PairStatistics:
    from threadpoolctl import threadpool_limits

    _tune_allocator()
    with threadpool_limits(limits=1, user_api="blas"):  # one core per worker process
        stats = fold_blocks(emb, subjects, blocks, empty, sample, score_map=score_map)
    stats.tail_score  # noqa: B018  - compact the tail before it is sent
    return stats


def _merge(a: PairStatistics, b: PairStatistics) -> PairStatistics:
    # into a new object: a task's inputs may still be held by Dask (e.g. to rerun after a failure)
    return PairStatistics(n_groups=a.n_groups, bins=a.bins, top_k=a.top_k).merge(a).merge(b)


def run_plan_on_cluster(client: Any, plan: ComparisonPlan, *, progress: bool = False) -> PairStatistics:
    """Run a comparison plan as Dask tasks and merge the partial statistics by a fixed binary tree."""
    from distributed import as_completed

    workers = max(1, len(client.scheduler_info()["workers"]))
    tasks = split_blocks(plan.blocks, TASKS_PER_WORKER * workers)
    emb, subj = client.scatter([plan.emb, plan.subjects], broadcast=True)  # once per worker, not per task
    smap = None if plan.score_map is None else client.scatter(plan.score_map, broadcast=True)
    futures = [client.submit(_fold_task, emb, subj, t, plan.empty(), plan.sample, smap, pure=False) for t in tasks]
    sizes = {f.key: sum(b.pairs for _, b in t) for f, t in zip(futures, tasks, strict=True)}
    level = list(futures)
    while len(level) > 1:  # a fixed tree: the merge order never depends on which task ends first
        nxt = [client.submit(_merge, level[i], level[i + 1], pure=False) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    root = level[0]
    del level
    # hold no other references, so Dask frees each partial result once it is merged
    done = as_completed(futures)
    del futures
    with tqdm(total=plan.pairs, desc="compare (cluster)", unit="pair", unit_scale=True, disable=not progress,
              leave=False) as bar:
        for fut in done:
            bar.update(sizes[fut.key])
    result: PairStatistics = root.result()
    return result


# --- embed ---

_ENGINES: dict[tuple[str, str, int], Any] = {}


def _enrol_task(items: list[tuple[int, str]], engine_name: str, settings: dict[str, Any], max_pixels: int,
                batch_size: int) -> list[tuple[int, str, list[FaceResult]]]:
    """Read, hash and enrol images on a worker; one engine per worker process, loaded on first use."""
    from faceaudit.engines.registry import engine_spec
    from faceaudit.engines.worker import enrol_chunk
    from faceaudit.errors import ImageError
    from faceaudit.io.images import read_bytes, sha256_bytes

    key = (engine_name, repr(sorted(settings.items())), max_pixels)
    if key not in _ENGINES:
        _ENGINES[key] = engine_spec(engine_name).load(1)
    engine = _ENGINES[key]
    enrol = EnrolSettings.from_dict(settings)
    out: list[tuple[int, str, list[FaceResult]]] = []
    chunk: list[tuple[int, str, bytes]] = []
    hashes: dict[int, str] = {}

    def flush() -> None:
        for idx, results in enrol_chunk(engine, chunk, enrol, max_pixels):
            out.append((idx, hashes[idx], results))
        chunk.clear()

    for idx, path in items:
        try:
            data = read_bytes(path)
        except ImageError as exc:
            out.append((idx, "", [FaceResult(ok=False, reason=exc.reason, message=str(exc))]))
            continue
        hashes[idx] = sha256_bytes(data)
        chunk.append((idx, path, data))
        if len(chunk) >= batch_size:
            flush()
    if chunk:
        flush()
    return out


def enrol_on_cluster(client: Any, files: Sequence[str], indices: Sequence[int], *, engine: str,
                     settings: EnrolSettings, max_pixels: int, batch_size: int = 4,
                     progress: bool = False) -> list[tuple[int, str, list[FaceResult]]]:
    """Enrol ``files`` (numbered by ``indices``) on the cluster; results in any order, with their index."""
    from distributed import as_completed

    items = list(zip(indices, files, strict=True))
    chunks = [items[i:i + IMAGES_PER_TASK] for i in range(0, len(items), IMAGES_PER_TASK)]
    futures = [client.submit(_enrol_task, c, engine, settings.to_dict(), max_pixels, batch_size, pure=False)
               for c in chunks]
    out: list[tuple[int, str, list[FaceResult]]] = []
    with tqdm(total=len(items), desc="embed (cluster)", unit="img", disable=not progress, leave=False) as bar:
        for fut in as_completed(futures):
            part = fut.result()
            out.extend(part)
            bar.update(len(part))
    return out
