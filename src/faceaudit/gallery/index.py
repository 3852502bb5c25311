"""The gallery's search index: FAISS, inner product on L2-normalised float32 templates (= cosine).

Three kinds, each wrapped in ``IndexIDMap2`` so that results carry the store's template ids and
templates can be removed by id:

* ``"exact"`` (the default): ``IndexFlatIP``, brute force over every template. A gallery is usually
  small enough for this (1,000,000 templates of 128-d take 26 ms per query on one core, less than
  NumPy's matrix-vector product and top-10 on two: 36 ms), and an exact result is explainable: a
  candidate that is not returned scored lower than every candidate that was, and no index parameter
  had a say in it.
* ``"hnsw"``: ``IndexHNSWFlat`` (a navigable small-world graph over the full-precision vectors):
  sub-linear search; recall@10 0.9999 on an LFW gallery (5,749 real templates), but poor on
  unstructured data at scale (see the measurements by the defaults below). FAISS cannot delete from an
  HNSW graph, so :meth:`SearchIndex.remove` rebuilds it from the remaining vectors: as slow as a build.
* ``"pq"``: ``IndexRefineFlat`` over ``IndexPQFastScan``: every template is also held as a 4-bit
  product-quantised code (``pq_m`` sub-quantizers, default one per 2 dimensions), all codes are
  scanned with SIMD lookup tables, and the best ``k * rerank`` candidates are re-scored exactly
  against the full-precision vectors. A scan of compressed codes does not depend on the data having
  structure, so its recall does not collapse on unstructured data; this is the kind that meets
  recall@10 >= 0.99 and p50 <= 5 ms at 1,000,000 x 128-d. The codebook is trained on seeded
  synthetic unit vectors, never on templates: it holds nothing of anyone, templates can be added one
  at a time from the first, and removal (a rebuild: re-encoding, 3 s at 1M) leaves nothing of the
  removed template behind.
  On LFW embeddings the synthetic codebook ranks as well as one trained on the embeddings themselves.

The index is derived from the gallery store and can be rebuilt from it at any time; it is never the
only copy of a template, and losing it loses nothing. It does hold the templates in plaintext (FAISS
needs them to compute scores), so it is a copy of them: :meth:`SearchIndex.save` encrypts the
serialised index with the gallery's :class:`~faceaudit.gallery.crypto.TemplateCipher` (AES-256-GCM,
associated data ``faceaudit-index``) and writes it atomically (temporary file in the same folder,
fsync, rename), and removal overwrites the removed vectors in memory before FAISS lets go of them.

Normalisation is the caller's job; vectors whose norm is not within 1 ± 0.01 are refused, because
inner product is cosine similarity only on unit vectors. FAISS parallelises batches of queries with
OpenMP (``faiss.omp_get_max_threads()`` threads) and builds HNSW graphs on all of them; a single query
runs on one thread.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, cast

import faiss
import numpy as np
import numpy.typing as npt

from faceaudit.errors import InputError
from faceaudit.gallery.crypto import TemplateCipher

KINDS = ("exact", "hnsw", "pq")
INDEX_AAD = b"faceaudit-index"
_MAGIC = b"faceaudit-index\n"
_FORMAT_VERSION = 1
_NORM_TOLERANCE = 0.01

# Defaults measured with benchmarks/gallery_search.py (results/gallery_search.json) and sweeps before
# it: 1,000,000 random 128-d unit vectors (unstructured: the nearest neighbours nearly tie, the
# hardest case for a graph), 1,000 single queries, 2-core AMD EPYC (KVM), FAISS 1.15; recall@10 is
# against "exact".
#
# HNSW met recall@10 >= 0.99 and p50 <= 5 ms together on that data with no parameters tried.
# M=32, efConstruction=200 (17 min to build on 2 cores), recall@10 / p50 by efSearch:
#   64: 0.15 / 0.7 ms   128: 0.25 / 1.3 ms   256: 0.39 / 2.7 ms   512: 0.58 / 5.0 ms
#   1024: 0.78 / 11 ms  2048: 0.92 / 22 ms
# M=48 (21 min): 256: 0.53 / 3.5 ms, 512: 0.74 / 7.8 ms, 2048: 0.98 / 31 ms, 2560: 0.990 / 34 ms.
# At 100,000 vectors M=32 reaches 0.99 near efSearch 800 (about 4 ms), M=48 at 512 (3.4 ms): recall
# falls with N on unstructured data. At 1M, M=48 raises recall at equal efSearch (256: 0.53 vs 0.39) but
# nowhere near 0.99 within 5 ms, for 1.5x the graph memory (384 vs 256 MB) and build time, which is
# also what an erasure costs. Defaults: M=32, efConstruction=200, efSearch=256,
# which keeps p50 within 5 ms at 1M (2.6 ms; p99 3.8 ms); its recall on unstructured data is poor
# (0.40, and 1.5% of the noisy copies of a template did not find it first) and the benchmark reports
# it. For high recall whatever the structure of the data, use "pq" (or "exact").
DEFAULT_M = 32
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_EF_SEARCH = 256
# PQ fast-scan, pq_m=64 (2 dimensions per 4-bit sub-quantizer: 32 bytes a template), re-ranking the best
# k * rerank, recall@10 by rerank: 10: 0.87, 20: 0.94, 50: 0.987, 100: 0.998, 200: 0.9997, p50 2-3 ms
# for all of them (the scan of 1M codes dominates); default rerank 100: p50 2.5 ms, p99 4.2 ms, built in
# 3 s, every noisy copy found first. pq_m=128 (1 dimension each) reaches 0.9996 at rerank 10 but scans
# twice the bytes (3.3 ms). Default: dim / 2 sub-quantizers, rerank 100.
DEFAULT_RERANK = 100
_PQ_NBITS = 4  # fast-scan needs 4-bit codes: the 16-entry lookup tables live in SIMD registers
_PQ_TRAIN = 4096  # FAISS k-means uses at most 256 points per centroid: 16 centroids, 4096 points
_PQ_SEED = 20240917


class SearchIndex:
    """Top-k cosine search over templates keyed by int64 ids (see the module docstring).

    ``m``, ``ef_construction`` and ``ef_search`` are HNSW parameters, ``pq_m`` (default ``dim // 2``)
    and ``rerank`` PQ ones; other kinds record them but do not use them. ``ef_search`` and ``rerank``
    can be changed after building. Not safe for concurrent mutation: the gallery serialises writes.
    """

    def __init__(self, dim: int, kind: str = "exact", *, m: int = DEFAULT_M,
                 ef_construction: int = DEFAULT_EF_CONSTRUCTION, ef_search: int = DEFAULT_EF_SEARCH,
                 pq_m: int | None = None, rerank: int = DEFAULT_RERANK) -> None:
        if kind not in KINDS:
            raise InputError(f"index kind {kind!r} is not one of {', '.join(KINDS)}")
        _positive("dim", dim)
        if pq_m is None:
            pq_m = dim // 2 if dim % 2 == 0 else dim
        for name, value, low in (("m", m, 2), ("ef_construction", ef_construction, 1), ("ef_search", ef_search, 1),
                                 ("pq_m", pq_m, 1), ("rerank", rerank, 1)):
            _positive(name, value, low)
        if dim % pq_m:
            raise InputError(f"pq_m ({pq_m}) must divide the dimension ({dim})")
        self._dim = int(dim)
        self._kind = kind
        self._m = int(m)
        self._ef_construction = int(ef_construction)
        self._ef_search = int(ef_search)
        self._pq_m = int(pq_m)
        self._rerank = int(rerank)
        self._index: faiss.IndexIDMap2 = self._empty()

    # -- construction ---------------------------------------------------------------------------------

    def _empty(self) -> faiss.IndexIDMap2:
        """A new, empty FAISS index of this kind and parameters."""
        inner: faiss.Index
        if self._kind == "exact":
            inner = faiss.IndexFlatIP(self._dim)
        elif self._kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(self._dim, self._m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = self._ef_construction
            hnsw.hnsw.efSearch = self._ef_search
            inner = hnsw
        else:
            pq = faiss.clone_index(_pq_codebook(self._dim, self._pq_m))
            refine = faiss.IndexRefineFlat(pq)  # faiss' wrapper keeps ``pq`` alive with ``refine``
            refine.k_factor = float(self._rerank)
            inner = refine
        # faiss' Python wrapper keeps ``inner`` alive as long as the IDMap refers to it
        return faiss.IndexIDMap2(inner)

    @classmethod
    def build(cls, ids: npt.ArrayLike, vectors: npt.ArrayLike, kind: str = "exact", **params: int) -> SearchIndex:
        """A new index of ``kind`` holding ``vectors`` under ``ids``; ``params`` as for the constructor."""
        v = np.asarray(vectors)
        if v.ndim != 2:
            raise InputError(f"vectors must be a 2-D array (n, dim), got shape {v.shape}")
        index = cls(int(v.shape[1]), kind, **params)
        index.add(ids, v)
        return index

    # -- properties -----------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def m(self) -> int:
        return self._m

    @property
    def ef_construction(self) -> int:
        return self._ef_construction

    @property
    def pq_m(self) -> int:
        return self._pq_m

    @property
    def ef_search(self) -> int:
        """HNSW candidate-list size at search time: higher is slower and finds more of the true top-k."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        _positive("ef_search", value)
        self._ef_search = int(value)
        inner = self._inner()
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = self._ef_search

    @property
    def rerank(self) -> int:
        """PQ: how many candidates per requested result are re-scored exactly (k * rerank in all)."""
        return self._rerank

    @rerank.setter
    def rerank(self, value: int) -> None:
        _positive("rerank", value)
        self._rerank = int(value)
        inner = self._inner()
        if isinstance(inner, faiss.IndexRefine):
            inner.k_factor = float(self._rerank)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        params = {"exact": "", "hnsw": f", m={self._m}, ef_construction={self._ef_construction}, "
                                       f"ef_search={self._ef_search}",
                  "pq": f", pq_m={self._pq_m}, rerank={self._rerank}"}[self._kind]
        return f"SearchIndex(dim={self._dim}, kind={self._kind!r}{params}, n={len(self)})"

    def ids(self) -> npt.NDArray[np.int64]:
        """The ids present, in storage order (a copy)."""
        return np.asarray(faiss.vector_to_array(self._index.id_map), dtype=np.int64)

    def _inner(self) -> faiss.Index:
        return faiss.downcast_index(self._index.index)

    def _storage(self) -> npt.NDArray[np.float32]:
        """A writable (n, dim) view of the full-precision vectors, row i belonging to ``ids()[i]``.

        Only valid while the current FAISS index lives and is not modified.
        """
        inner = self._inner()
        if isinstance(inner, faiss.IndexHNSW):
            flat = faiss.downcast_index(inner.storage)
        elif isinstance(inner, faiss.IndexRefine):
            flat = faiss.downcast_index(inner.refine_index)
        else:
            flat = inner
        n = int(flat.ntotal)
        if n == 0:
            return np.zeros((0, self._dim), np.float32)
        # get_xb (IndexFlat's float pointer) is missing from faiss' type stubs
        view: npt.NDArray[np.float32] = faiss.rev_swig_ptr(cast(Any, flat).get_xb(), n * self._dim)
        return view.reshape(n, self._dim)

    def _wipe(self) -> None:
        """Overwrite every vector and code of the current index with zeros (it is about to be dropped)."""
        self._storage()[:] = 0.0
        inner = self._inner()
        if isinstance(inner, faiss.IndexRefine):
            # the 4-bit codes are a lossy copy of each template; AlignedTable is untyped in the stubs
            codes = cast(Any, faiss.downcast_index(inner.base_index)).codes
            if codes.size():
                faiss.rev_swig_ptr(codes.get(), codes.size())[:] = 0

    # -- validation -----------------------------------------------------------------------------------

    def _vectors(self, vectors: npt.ArrayLike, what: str) -> npt.NDArray[np.float32]:
        v = np.asarray(vectors)
        if v.ndim != 2 or v.shape[1] != self._dim:
            hint = " (one vector: v.reshape(1, -1))" if v.ndim == 1 else ""
            raise InputError(f"{what} must be a 2-D array (n, {self._dim}), got shape {v.shape}{hint}")
        if not np.issubdtype(v.dtype, np.floating):
            raise InputError(f"{what} must be floating point (float32), got dtype {v.dtype}")
        # FAISS reads C-contiguous float32; this is a no-op when the caller already has that
        v = np.ascontiguousarray(v, dtype=np.float32)
        finite = np.isfinite(v).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise InputError(f"{what} row {row} holds a non-finite value (NaN or infinity)")
        norms = np.sqrt(np.einsum("ij,ij->i", v, v, dtype=np.float64))
        bad = np.abs(norms - 1.0) > _NORM_TOLERANCE
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{what} must be L2-normalised (norm 1 ± {_NORM_TOLERANCE}): row {row} has norm {norms[row]:.4f} "
                f"({int(bad.sum())} row(s) off); normalise with v / np.linalg.norm(v, axis=1, keepdims=True)")
        return v

    @staticmethod
    def _ids(ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        a = np.asarray(ids)
        if a.ndim != 1:
            raise InputError(f"ids must be a 1-D array of integers, got shape {a.shape}")
        if a.size == 0:
            return np.zeros(0, np.int64)
        if not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"ids must be integers (int64), got dtype {a.dtype}")
        # -1 is FAISS' "no result", so ids are non-negative; uint64 above 2^63 - 1 would wrap
        if (a < 0).any() or (a.dtype == np.uint64 and (a > np.iinfo(np.int64).max).any()):
            raise InputError("ids must be in 0 .. 2^63 - 1 (-1 marks an empty result slot)")
        return a.astype(np.int64, copy=False)

    # -- changes --------------------------------------------------------------------------------------

    def add(self, ids: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Add ``vectors`` (n, dim), unit norm, under ``ids`` (n,), none of which may be present already."""
        i = self._ids(ids)
        v = self._vectors(vectors, "vectors")
        if len(i) != len(v):
            raise InputError(f"{len(i)} ids for {len(v)} vectors")
        if len(i) == 0:
            return
        uniq, counts = np.unique(i, return_counts=True)
        if (counts > 1).any():
            raise InputError(f"duplicate ids in one add: {_some(uniq[counts > 1])}")
        present = self._present(uniq)
        if present.size:
            raise InputError(f"ids already in the index: {_some(present)} (remove them first to replace)")
        self._index.add_with_ids(v, i)

    def _present(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Those of ``ids`` (unique, sorted) that the index holds."""
        if len(self) == 0:
            return np.zeros(0, np.int64)
        if len(ids) <= 32:
            # a few ids (one enrolment): ask IndexIDMap2's hash map rather than copying the whole id list
            found = []
            for x in ids.tolist():
                try:
                    self._index.reconstruct(x)
                except RuntimeError:  # faiss: "key ... not found"
                    continue
                found.append(x)
            return np.asarray(found, np.int64)
        return ids[np.isin(ids, self.ids())]

    def remove(self, ids: npt.ArrayLike) -> int:
        """Remove the templates with ``ids`` (absent ids are ignored); returns how many were removed.

        The removed vectors are overwritten with zeros in FAISS' memory before they are dropped, so no
        copy survives in the index object (or anything serialised from it). HNSW graphs and PQ fast-scan
        codes cannot be deleted from in FAISS, so those kinds are rebuilt from the remaining vectors
        (HNSW: as slow as building it; PQ: seconds at 1M), and the old index is wiped before it is freed.
        """
        drop = np.unique(self._ids(ids))
        present = self.ids()
        mask = np.isin(present, drop)
        positions = np.flatnonzero(mask)
        if positions.size == 0:
            return 0
        if self._kind == "exact":
            self._storage()[positions] = 0.0
            return int(self._index.remove_ids(faiss.IDSelectorBatch(present[positions])))
        keep_ids = present[~mask]
        keep = self._storage()[~mask]  # boolean indexing copies: the remaining vectors, from FAISS' storage
        self._wipe()
        self._index = self._empty()  # drops the old index (graph or codes, and its storage, now all zeros)
        if len(keep_ids):
            self._index.add_with_ids(keep, keep_ids)
        return int(positions.size)

    # -- search ---------------------------------------------------------------------------------------

    def search(self, queries: npt.ArrayLike, k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """The top ``k`` by cosine for each query (q, dim): ``(scores (q, k), ids (q, k))``, best first.

        Where fewer than ``k`` templates are found, the id is -1 and the score -inf.
        """
        _positive("k", k)
        q = self._vectors(queries, "queries")
        if len(q) == 0 or len(self) == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if len(q) == 1:
            # One query runs on one OpenMP thread. Measured at 1M x 128 on 2 idle cores: the flat scan
            # takes 23 ms with one thread allowed and 57 ms with two (FAISS 1.15 takes a slower path,
            # though it still scans on one thread); PQ fast-scan splits the scan over threads for no
            # measurable gain (2.7 vs 2.8 ms) and, when another process holds a core, waits for it at
            # OpenMP's barrier (p50 2.7 -> 12 ms). HNSW searches a query on one thread either way.
            # omp_set_num_threads changes the calling OS thread's setting only; it is restored at once.
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                scores, labels = self._index.search(q, int(k))
            finally:
                faiss.omp_set_num_threads(threads)
        else:
            scores, labels = self._index.search(q, int(k))
        scores = np.asarray(scores, np.float32)
        labels = np.asarray(labels, np.int64)
        scores[labels < 0] = -np.inf  # FAISS fills empty slots with -FLT_MAX
        return scores, labels

    # -- serialisation --------------------------------------------------------------------------------

    def _header(self) -> dict[str, Any]:
        return {"format": _FORMAT_VERSION, "kind": self._kind, "dim": self._dim, "m": self._m,
                "ef_construction": self._ef_construction, "ef_search": self._ef_search, "pq_m": self._pq_m,
                "rerank": self._rerank, "n": len(self)}

    def to_bytes(self) -> bytes:
        """``magic || uint32 header length || JSON header || faiss.serialize_index`` (plaintext)."""
        header = json.dumps(self._header(), sort_keys=True).encode()
        body = faiss.serialize_index(self._index)  # uint8 array
        # one join: the body is as big as the templates (512 MB for 1M x 128), so no intermediate copies
        return b"".join((_MAGIC, struct.pack("<I", len(header)), header, body.data))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> SearchIndex:
        """The index that :meth:`to_bytes` wrote; InputError if ``data`` is not one."""
        buf = memoryview(data)
        start = len(_MAGIC) + 4
        if len(buf) < start or bytes(buf[:len(_MAGIC)]) != _MAGIC:
            raise InputError("not a faceaudit search index (bad magic)")
        (hlen,) = struct.unpack("<I", buf[len(_MAGIC):start])
        try:
            header = json.loads(bytes(buf[start:start + hlen]))
            if header.get("format") != _FORMAT_VERSION:
                raise InputError(f"search index format {header.get('format')!r} is not {_FORMAT_VERSION}")
            index = cls(int(header["dim"]), str(header["kind"]), m=int(header["m"]),
                        ef_construction=int(header["ef_construction"]), ef_search=int(header["ef_search"]),
                        pq_m=int(header["pq_m"]), rerank=int(header["rerank"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"search index header is not valid ({exc})") from None
        try:
            loaded = faiss.deserialize_index(np.frombuffer(buf, dtype=np.uint8, offset=start + hlen))
        except RuntimeError as exc:
            raise InputError(f"search index body is not a readable FAISS index ({exc})") from None
        if not isinstance(loaded, faiss.IndexIDMap2) or not index._matches(faiss.downcast_index(loaded.index)) \
                or int(loaded.d) != index._dim or int(loaded.ntotal) != int(header.get("n", -1)):
            raise InputError(f"search index body does not match its header ({header})")
        index._index = loaded
        # FAISS stores efSearch but not k_factor; the header is authoritative for both
        index.ef_search = index._ef_search
        index.rerank = index._rerank
        return index

    def _matches(self, inner: faiss.Index) -> bool:
        """Whether a deserialised inner index is of this kind, metric and parameters."""
        if inner.metric_type != faiss.METRIC_INNER_PRODUCT:
            return False
        if self._kind == "exact":
            return isinstance(inner, faiss.IndexFlat)
        if self._kind == "hnsw":
            return isinstance(inner, faiss.IndexHNSWFlat)
        if not isinstance(inner, faiss.IndexRefineFlat):
            return False
        base = faiss.downcast_index(inner.base_index)
        return isinstance(base, faiss.IndexPQFastScan) and int(base.pq.M) == self._pq_m

    def save(self, path: str | Path, cipher: TemplateCipher) -> Path:
        """Write the index encrypted with ``cipher`` to ``path``, atomically (all of it or the old file)."""
        p = Path(path)
        blob = cipher.encrypt(self.to_bytes(), aad=INDEX_AAD)
        p.parent.mkdir(parents=True, exist_ok=True)
        # temporary file in the same folder: os.replace is atomic only within one filesystem
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # make the rename itself durable
        dir_fd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return p

    @classmethod
    def load(cls, path: str | Path, cipher: TemplateCipher) -> SearchIndex:
        """Read an index written by :meth:`save`; DecryptionError if the key is wrong or the file altered."""
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such index file; rebuild the index from the gallery store")
        return cls.from_bytes(cipher.decrypt(p.read_bytes(), aad=INDEX_AAD))


@functools.lru_cache(maxsize=8)
def _pq_codebook(dim: int, pq_m: int) -> faiss.Index:
    """An empty, trained IndexPQFastScan for ``dim`` and ``pq_m``: clone it, never add to it.

    Data-independent codebook: trained on seeded random unit vectors (FAISS' k-means is seeded too), so
    the same parameters always give the same codebook and it holds nothing of any template. Cached
    because training takes about a second at 128-d (several at 512-d) and every rebuild needs one.
    """
    pq = faiss.IndexPQFastScan(dim, pq_m, _PQ_NBITS, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(_PQ_SEED)
    synthetic = rng.standard_normal((_PQ_TRAIN, dim), dtype=np.float32)
    synthetic /= np.linalg.norm(synthetic, axis=1, keepdims=True)
    pq.train(synthetic)
    return pq


def _positive(name: str, value: object, low: int = 1) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")


def _some(ids: npt.NDArray[np.int64], limit: int = 5) -> str:
    shown = ", ".join(str(x) for x in ids[:limit].tolist())
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
