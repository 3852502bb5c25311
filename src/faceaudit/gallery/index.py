"""The gallery's search index: FAISS, inner product on L2-normalised float32 templates (= cosine).

Two kinds, both wrapped in ``IndexIDMap2`` so that results carry the store's template ids and
templates can be removed by id:

* ``"exact"`` (the default): ``IndexFlatIP``, brute force over every template. A gallery is usually
  small enough for this (1,000,000 templates of 128-d take tens of milliseconds per query; see
  ``benchmarks/gallery_search.py``), and an exact result is explainable: a candidate that is not
  returned scored lower than every candidate that was, and no index parameter had a say in it.
* ``"hnsw"``: ``IndexHNSWFlat`` (a navigable small-world graph over the full-precision vectors), for
  large galleries where exact search is too slow. It is approximate; its recall@10 against exact is
  measured by the benchmark, and the defaults below are chosen from that measurement. FAISS cannot
  delete from an HNSW graph, so :meth:`SearchIndex.remove` rebuilds it from the remaining vectors
  (as costly as a build: removal is erasure and must be complete, not a tombstone).

The index is derived from the gallery store and can be rebuilt from it at any time; it is never the
only copy of a template, and losing it loses nothing. It does hold the templates in plaintext (FAISS
needs them to compute scores), so it is a copy of them: :meth:`SearchIndex.save` encrypts the
serialised index with the gallery's :class:`~faceaudit.gallery.crypto.TemplateCipher` (AES-256-GCM,
associated data ``faceaudit-index``) and writes it atomically (temporary file in the same folder,
fsync, rename), and removal overwrites the removed vectors in memory before FAISS lets go of them.

Normalisation is the caller's job; vectors whose norm is not within 1 ± 0.01 are refused, because
inner product is cosine similarity only on unit vectors. FAISS parallelises over queries with
OpenMP (``faiss.omp_get_max_threads()`` threads); a single query runs on one thread.
"""

from __future__ import annotations

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

KINDS = ("exact", "hnsw")
INDEX_AAD = b"faceaudit-index"
_MAGIC = b"faceaudit-index\n"
_FORMAT_VERSION = 1
_NORM_TOLERANCE = 0.01

# HNSW defaults, measured by benchmarks/gallery_search.py on 1,000,000 random 128-d unit vectors
# (the hardest case for a graph index: no cluster structure, the 10th and 11th neighbours nearly tie),
# 2-core AMD EPYC, one thread per query:
DEFAULT_M = 32
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_EF_SEARCH = 128


class SearchIndex:
    """Top-k cosine search over templates keyed by int64 ids (see the module docstring).

    ``m``, ``ef_construction`` and ``ef_search`` are HNSW parameters; an exact index records them
    but does not use them. ``ef_search`` can be changed after building (:attr:`ef_search`).
    Not safe for concurrent mutation: the gallery serialises writes.
    """

    def __init__(self, dim: int, kind: str = "exact", *, m: int = DEFAULT_M,
                 ef_construction: int = DEFAULT_EF_CONSTRUCTION, ef_search: int = DEFAULT_EF_SEARCH) -> None:
        if kind not in KINDS:
            raise InputError(f"index kind {kind!r} is not one of {', '.join(KINDS)}")
        for name, value, low in (("dim", dim, 1), ("m", m, 2), ("ef_construction", ef_construction, 1),
                                 ("ef_search", ef_search, 1)):
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
        self._dim = int(dim)
        self._kind = kind
        self._m = int(m)
        self._ef_construction = int(ef_construction)
        self._ef_search = int(ef_search)
        self._index: faiss.IndexIDMap2 = self._empty()

    # -- construction ---------------------------------------------------------------------------------

    def _empty(self) -> faiss.IndexIDMap2:
        """A new, empty FAISS index of this kind and parameters."""
        inner: faiss.Index
        if self._kind == "exact":
            inner = faiss.IndexFlatIP(self._dim)
        else:
            hnsw = faiss.IndexHNSWFlat(self._dim, self._m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = self._ef_construction
            hnsw.hnsw.efSearch = self._ef_search
            inner = hnsw
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
    def ef_search(self) -> int:
        """HNSW candidate-list size at search time: higher is slower and finds more of the true top-k."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise InputError(f"ef_search must be an integer >= 1, got {value!r}")
        self._ef_search = int(value)
        inner = self._inner()
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = self._ef_search

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        params = f", m={self._m}, ef_construction={self._ef_construction}, ef_search={self._ef_search}"
        params = params if self._kind == "hnsw" else ""
        return f"SearchIndex(dim={self._dim}, kind={self._kind!r}{params}, n={len(self)})"

    def ids(self) -> npt.NDArray[np.int64]:
        """The ids present, in storage order (a copy)."""
        return np.asarray(faiss.vector_to_array(self._index.id_map), dtype=np.int64)

    def _inner(self) -> faiss.Index:
        return faiss.downcast_index(self._index.index)

    def _storage(self) -> npt.NDArray[np.float32]:
        """A writable (n, dim) view of the vectors FAISS holds, row i belonging to ``ids()[i]``.

        Only valid while the current FAISS index lives and is not modified.
        """
        inner = self._inner()
        flat = faiss.downcast_index(inner.storage) if isinstance(inner, faiss.IndexHNSW) else inner
        n = int(flat.ntotal)
        if n == 0:
            return np.zeros((0, self._dim), np.float32)
        # get_xb (IndexFlat's float pointer) is missing from faiss' type stubs
        xb = cast(Any, flat).get_xb()
        view: npt.NDArray[np.float32] = faiss.rev_swig_ptr(xb, n * self._dim)
        return view.reshape(n, self._dim)

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
            dup = uniq[counts > 1]
            raise InputError(f"duplicate ids in one add: {_some(dup)}")
        present = self._present(i)
        if present.size:
            raise InputError(f"ids already in the index: {_some(present)} (remove them first to replace)")
        self._index.add_with_ids(v, i)

    def _present(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Those of ``ids`` (unique) that the index holds."""
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
        copy survives in the index object (or anything serialised from it). An HNSW graph cannot
        delete nodes in FAISS, so it is rebuilt from the remaining vectors: as slow as building it.
        """
        drop = np.unique(self._ids(ids))
        present = self.ids()
        mask = np.isin(present, drop)
        positions = np.flatnonzero(mask)
        if positions.size == 0:
            return 0
        storage = self._storage()
        if self._kind == "exact":
            storage[positions] = 0.0
            del storage
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(present[positions])))
        else:
            keep_ids = present[~mask]
            keep = storage[~mask]  # boolean indexing copies: the remaining vectors, read from FAISS' storage
            storage[positions] = 0.0
            del storage
            self._index = self._empty()  # frees the old graph and storage (now without the removed vectors)
            if len(keep_ids):
                self._index.add_with_ids(keep, keep_ids)
            removed = int(positions.size)
        return removed

    # -- search ---------------------------------------------------------------------------------------

    def search(self, queries: npt.ArrayLike, k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """The top ``k`` by cosine for each query (q, dim): ``(scores (q, k), ids (q, k))``, best first.

        Where fewer than ``k`` templates are found, the id is -1 and the score -inf.
        """
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be an integer >= 1, got {k!r}")
        q = self._vectors(queries, "queries")
        if len(q) == 0 or len(self) == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        scores, labels = self._index.search(q, int(k))
        scores = np.asarray(scores, np.float32)
        labels = np.asarray(labels, np.int64)
        scores[labels < 0] = -np.inf  # FAISS fills empty slots with -FLT_MAX
        return scores, labels

    # -- serialisation --------------------------------------------------------------------------------

    def _header(self) -> dict[str, Any]:
        return {"format": _FORMAT_VERSION, "kind": self._kind, "dim": self._dim, "m": self._m,
                "ef_construction": self._ef_construction, "ef_search": self._ef_search, "n": len(self)}

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
                        ef_construction=int(header["ef_construction"]), ef_search=int(header["ef_search"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"search index header is not valid ({exc})") from None
        try:
            loaded = faiss.deserialize_index(np.frombuffer(buf, dtype=np.uint8, offset=start + hlen))
        except RuntimeError as exc:
            raise InputError(f"search index body is not a readable FAISS index ({exc})") from None
        expected = faiss.IndexFlat if index._kind == "exact" else faiss.IndexHNSWFlat
        inner = faiss.downcast_index(loaded.index) if isinstance(loaded, faiss.IndexIDMap2) else None
        if (not isinstance(loaded, faiss.IndexIDMap2) or not isinstance(inner, expected)
                or inner.metric_type != faiss.METRIC_INNER_PRODUCT
                or int(loaded.d) != index._dim or int(loaded.ntotal) != int(header.get("n", -1))):
            raise InputError(f"search index body does not match its header ({header})")
        index._index = loaded
        index.ef_search = index._ef_search  # FAISS stores efSearch too; the header is authoritative
        return index

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


def _some(ids: npt.NDArray[np.int64], limit: int = 5) -> str:
    shown = ", ".join(str(x) for x in ids[:limit].tolist())
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
