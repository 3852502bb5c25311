"""A fairness calibration you can deploy: FSN or FairCal fitted on an embeddings file, saved as a checked JSON artefact.

``faceaudit calibrate --method faircal|fsn --embeddings E.parquet --out cal.json`` fits the method on every
enrolled image of the file (all of its people: the cross-validated figures of an audit say how it does on other
people) and writes:

- ``format`` / ``format_version``;
- ``method`` and ``parameters``: the cluster centres and per-cluster offsets (FSN) or beta maps (FairCal), with
  the counts they rest on (everything :func:`load_calibration` needs to rebuild the fitted object exactly: floats
  are written with ``repr`` precision, so the rebuilt calibration gives bit-identical scores);
- ``thresholds``: the global threshold on calibrated scores at each target FMR, over all impostor pairs of the
  calibration images (rule of :func:`faceaudit.mitigation.base.threshold_at_fmr`), with the FMR and FNMR achieved
  there; and ``table``: thresholds on a grid of FMRs (20 per decade from 2e-2 down to the smallest FMR the data
  support, 10 false matches), for operating points in between (a gallery search's FMR follows from its FPIR);
- ``engine``: the identity of the engine whose embeddings it was fitted on (vectors of any other engine are
  refused: a calibration is meaningless for another model's scores);
- ``dataset``: the embeddings file it came from (path, name, SHA-256, counts);
- ``sha256``: SHA-256 of the canonical JSON (sorted keys, no whitespace) of everything else. Loading recomputes it
  and refuses a file whose content does not match (edited by hand, or damaged).

Its identity (:class:`CalibrationIdentity`: method + SHA-256) is recorded with every decision that used it.

Scores. A calibrated score is computed from the raw embeddings of both images (their clusters) and their raw
cosine: :func:`score_calibrated`. FSN's scores live on the cosine scale, shifted; FairCal's are probabilities in
(0, 1). Either way, a pair matches when its calibrated score reaches the calibrated threshold, never a raw one.

FSN is fitted at one target FMR (its offsets belong to that FMR, Terhorst et al. 2020); at other FMRs its
thresholds still hold for its scores, but its offsets were not chosen for them. FairCal serves every FMR.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceaudit.engines.base import EngineIdentity
from faceaudit.engines.calibration import MIN_FALSE_MATCHES
from faceaudit.engines.calibration import Calibration as ThresholdTable
from faceaudit.errors import CalibrationError, InputError
from faceaudit.mitigation.base import TopK, blocks, prepare, rank, unit_rows
from faceaudit.mitigation.methods import FairCal, FairScoreNormalization, fit_faircal, fit_fsn
from faceaudit.scoring.compare import ScoreMap

FORMAT = "faceaudit-fairness-calibration"
FORMAT_VERSION = 1
#: Methods that can be deployed: no labels at decision time (group thresholds would need each person's group).
DEPLOYABLE = ("fsn", "faircal")
_MAX_FMR = 2e-2
_STEPS_PER_DECADE = 20

Fitted = FairScoreNormalization | FairCal


@dataclass(frozen=True)
class CalibrationIdentity:
    """What names a deployed calibration in results: its method and the artefact's SHA-256."""

    method: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"method": self.method, "sha256": self.sha256}


@dataclass(frozen=True)
class DeployedCalibration:
    """A loaded (or just fitted) fairness calibration: the fitted object, its thresholds, engine and identity."""

    calibration: Fitted
    thresholds: dict[float, tuple[float, float, float]]  # target FMR -> (threshold, FMR achieved, FNMR)
    table: ThresholdTable  # thresholds of calibrated scores on a grid of FMRs (module docstring)
    engine: dict[str, Any]  # EngineIdentity.to_dict() of the engine it was fitted for
    dataset: dict[str, Any]
    identity: CalibrationIdentity
    document: dict[str, Any]  # the artefact as written (with its sha256)

    @property
    def method(self) -> str:
        return self.calibration.method

    @property
    def engine_name(self) -> str:
        return str(self.engine["name"])

    def check_engine(self, identity: EngineIdentity | dict[str, Any]) -> None:
        """Refuse (CalibrationError) an engine other than the one this calibration was fitted for."""
        ident = identity if isinstance(identity, EngineIdentity) else EngineIdentity.from_dict(identity)
        if not self.table.matches(ident) or int(self.engine["embedding_dim"]) != ident.embedding_dim:
            raise CalibrationError(
                f"the {self.method} calibration {self.identity.sha256[:12]} was fitted for engine "
                f"{self.engine['name']} v{self.engine['version']}, not for {ident.name} v{ident.version} with these "
                "model files: fit one on this engine's embeddings with `faceaudit calibrate --method`")

    def threshold_for(self, fmr: float) -> float:
        """The calibrated-score threshold for ``fmr``: exact at a fitted target FMR, else from the grid."""
        if fmr in self.thresholds:
            return self.thresholds[fmr][0]
        return self.table.threshold_for(fmr)

    def fmr_at(self, score: float) -> float:
        """FMR of the calibration data's impostor pairs at threshold ``score`` (exact at the fitted targets)."""
        for t, f, _ in self.thresholds.values():
            if t == score:
                return f
        return self.table.fmr_at(score)

    def fnmr_at(self, score: float) -> float:
        """FNMR of the calibration data's genuine pairs at threshold ``score`` (exact at the fitted targets)."""
        for t, _, n in self.thresholds.values():
            if t == score:
                return n
        return self.table.fnmr_at(score)

    def score(self, emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
        """Calibrated scores of pairs (rows of ``emb_a`` against rows of ``emb_b``): :func:`score_calibrated`."""
        return score_calibrated(self, emb_a, emb_b)

    def score_map(self, embeddings: np.ndarray) -> ScoreMap:
        """The calibrated scores of every pair of these images, for an audit's blocked comparison: each row's
        cluster and the method's transform (the scores :func:`score_calibrated` gives, pair by pair).

        Range of the histogram bins: FairCal's probabilities lie in [0, 1]; FSN's shifted cosines in
        [-1 - m, 1 + m], m the largest offset's size."""
        fitted = self.calibration
        e = _unit_rows_for(fitted, embeddings)
        if isinstance(fitted, FairScoreNormalization):
            spread = float(np.abs(fitted.offsets).max())
            lo, hi = -1.0 - spread, 1.0 + spread
        else:
            lo, hi = 0.0, 1.0
        return ScoreMap(fitted.codes(e), fitted.transform, lo, hi,
                        f"{self.method} calibrated score (calibration sha256 {self.identity.sha256})")

    def provenance(self) -> dict[str, Any]:
        """What a result records about the calibration it used."""
        return {**self.identity.to_dict(), "engine": self.engine_name, "dataset": str(self.dataset.get("name", "")),
                "dataset_sha256": str(self.dataset.get("sha256", ""))}


def _unit_rows_for(fitted: Fitted, embeddings: np.ndarray) -> np.ndarray:
    """L2-normalised rows (a single (D,) row becomes (1, D)), refused unless D is the calibration's dimension."""
    e = unit_rows(np.atleast_2d(np.asarray(embeddings, np.float32)))
    if e.shape[1] != fitted.centres.shape[1]:
        raise InputError(f"embeddings of {e.shape[1]} dimensions, but the calibration's clusters have "
                         f"{fitted.centres.shape[1]}")
    return e


def score_calibrated(cal: DeployedCalibration | Fitted, emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Calibrated scores of the pairs (emb_a[i], emb_b[i]); a single (D,) row on either side is broadcast.

    From raw embeddings only: rows are L2-normalised, each takes its nearest cluster centre, and the raw cosine
    goes through the method's transform (:meth:`FairScoreNormalization.transform`, :meth:`FairCal.transform`).
    """
    fitted = cal.calibration if isinstance(cal, DeployedCalibration) else cal
    a, b = _unit_rows_for(fitted, emb_a), _unit_rows_for(fitted, emb_b)
    if len(a) == 1 and len(b) > 1:
        a = np.repeat(a, len(b), axis=0)
    elif len(b) == 1 and len(a) > 1:
        b = np.repeat(b, len(a), axis=0)
    if len(a) != len(b):
        raise InputError(f"{len(a)} and {len(b)} embeddings: give pairs, or one row against many")
    raw = np.einsum("ij,ij->i", a, b).astype(np.float64)
    out: np.ndarray = fitted.transform(raw, fitted.codes(a), fitted.codes(b))
    return out


# --------------------------------------------------------------------------------------- fitting


def _calibrated_pairs(fitted: Fitted, e: np.ndarray, subj: np.ndarray, top: int
                      ) -> tuple[np.ndarray, np.ndarray, int]:
    """Top ``top`` calibrated impostor scores (descending), all genuine calibrated scores, number of impostor pairs:
    every unordered pair of calibration images, in row chunks (memory: one chunk of scores)."""
    codes = fitted.codes(e)
    n_codes = len(fitted.centres)
    keep = TopK(max(top - 1, 0))
    genuine: list[np.ndarray] = []
    n_imp = 0
    for blk in blocks(e, subj, codes, n_codes):
        s = fitted.transform(blk.scores, codes[blk.rows][:, None], codes[None, :])
        imp = blk.once & ~blk.same
        n_imp += int(imp.sum())
        keep.add(s[imp])
        genuine.append(s[blk.once & blk.same])
    return np.sort(keep.values)[::-1], np.concatenate(genuine) if genuine else np.empty(0), n_imp


def _operating_point(top_desc: np.ndarray, genuine: np.ndarray, n_imp: int, fmr: float) -> tuple[float, float, float]:
    """(threshold, FMR achieved, FNMR) at target ``fmr`` (threshold rule of faceaudit.mitigation.base)."""
    k = rank(fmr, n_imp)
    t = float(np.nextafter(top_desc[k], np.inf))
    false_matches = int((top_desc >= t).sum())
    fnmr = float((genuine < t).mean()) if len(genuine) else float("nan")
    return t, false_matches / n_imp, fnmr


def fit_artefact(embeddings_file: str | Path, method: str, *, target_fmrs: Sequence[float] = (1e-3,),
                 n_clusters: int | None = None, seed: int = 0, dataset_name: str | None = None) -> DeployedCalibration:
    """Fit ``method`` (fsn or faircal) on every enrolled image of ``embeddings_file`` (module docstring)."""
    from faceaudit.io.embeddings import embedding_matrix, read_embeddings

    if method not in DEPLOYABLE:
        raise InputError(f"--method {method!r}: a deployable calibration is one of {', '.join(DEPLOYABLE)} "
                         "(group thresholds need each person's group at decision time)")
    targets = sorted({float(f) for f in target_fmrs}, reverse=True)
    if not targets:
        raise InputError("give at least one target FMR")
    if method == "fsn" and len(targets) != 1:
        raise InputError("FSN is fitted at one target FMR (its offsets belong to it): give one --target-fmr")
    path = Path(embeddings_file)
    df, meta = read_embeddings(path)
    if meta.get("foreign") or "engine" not in meta:
        raise InputError(f"{path}: a deployable calibration belongs to a faceaudit engine, and these vectors were "
                         "not made by one; embed the images with `faceaudit embed --engine NAME|onnx:PATH` first")
    engine = EngineIdentity.from_dict(meta["engine"])
    ok = df[df["ok"]]
    e, subj = prepare(embedding_matrix(df), ok["subject_id"].astype(str).to_numpy())
    fitted: Fitted
    if method == "fsn":
        fitted = fit_fsn(e, subj, targets[0], n_clusters=n_clusters, seed=seed)
    else:
        fitted = fit_faircal(e, subj, n_clusters=n_clusters, seed=seed)
    n = len(e)
    n_pairs = n * (n - 1) // 2
    top_desc, genuine, n_imp = _calibrated_pairs(fitted, e, subj, math.ceil(_MAX_FMR * n_pairs) + 2)
    if n_imp == 0 or len(genuine) == 0:
        raise InputError(f"{path}: need impostor and genuine pairs (two subjects, one with two images) to set "
                         "thresholds")
    lowest = MIN_FALSE_MATCHES / n_imp
    too_low = [f for f in targets if f < lowest]
    if too_low:
        raise InputError(f"target FMR {too_low[0]:g} is below what {n_imp:,} calibration impostor pairs support "
                         f"({lowest:.2g}: at least {MIN_FALSE_MATCHES} false matches)")
    thresholds = {f: _operating_point(top_desc, genuine, n_imp, f) for f in targets}
    n_steps = max(0, math.floor(_STEPS_PER_DECADE * math.log10(_MAX_FMR / lowest)))
    grid: dict[float, tuple[float, float]] = {}
    for f in _MAX_FMR * 10.0 ** (-np.arange(n_steps + 1) / _STEPS_PER_DECADE):
        t, achieved, fnmr = _operating_point(top_desc, genuine, n_imp, float(f))
        if achieved > 0:
            grid.setdefault(t, (achieved, fnmr))
    table = [{"threshold": t, "fmr": grid[t][0], "fnmr": grid[t][1]} for t in sorted(grid)]
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": method,
        "parameters": _parameters(fitted),
        "fit": {"seed": seed, "n_clusters": n_clusters, "target_fmrs": targets},
        "thresholds": [{"target_fmr": f, "threshold": t, "fmr": a, "fnmr": fn}
                       for f, (t, a, fn) in thresholds.items()],
        "table": table,
        "pairs": {"impostor": n_imp, "genuine": len(genuine),
                  "rule": "every unordered pair of enrolled images; impostor = different subject_id; threshold = "
                          "next float above the (k+1)-th largest calibrated impostor score, k = floor(target * "
                          "#impostor)"},
        "engine": engine.to_dict(),
        "dataset": {"name": dataset_name or path.stem, "path": str(path.resolve()), "file": path.name,
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "images": len(df), "enrolled": n,
                    "subjects": int(ok["subject_id"].nunique())},
    }
    doc["sha256"] = content_sha256(doc)
    return from_document(doc)


def _parameters(fitted: Fitted) -> dict[str, Any]:
    common = {"centres": fitted.centres.tolist(), "clusters_tried": list(fitted.tried),
              "cluster_images": fitted.cluster_images.tolist(), "cluster_subjects": fitted.cluster_subjects.tolist()}
    if isinstance(fitted, FairScoreNormalization):
        return {**common, "target_fmr": fitted.target_fmr, "global_threshold": fitted.global_threshold,
                "cluster_thresholds": fitted.cluster_thresholds.tolist(), "offsets": fitted.offsets.tolist(),
                "cluster_impostor_pairs": fitted.cluster_impostor_pairs.tolist()}
    return {**common, "beta_maps": fitted.maps.tolist(), "pair_weights": fitted.pair_weights.tolist(),
            "genuine_pairs": fitted.genuine_pairs.tolist(), "impostor_pairs": fitted.impostor_pairs.tolist(),
            "impostors_used": fitted.impostors_used.tolist()}


def _fitted(method: str, p: dict[str, Any]) -> Fitted:
    centres = np.asarray(p["centres"], np.float64)
    if centres.ndim != 2 or len(centres) == 0:
        raise CalibrationError("the calibration's cluster centres are not a (K, D) table")
    images = np.asarray(p["cluster_images"], np.int64)
    subjects = np.asarray(p["cluster_subjects"], np.int64)
    tried = tuple(int(k) for k in p["clusters_tried"])
    if method == "fsn":
        return FairScoreNormalization(target_fmr=float(p["target_fmr"]), centres=centres,
                                      global_threshold=float(p["global_threshold"]),
                                      cluster_thresholds=np.asarray(p["cluster_thresholds"], np.float64),
                                      cluster_images=images, cluster_subjects=subjects,
                                      cluster_impostor_pairs=np.asarray(p["cluster_impostor_pairs"], np.int64),
                                      tried=tried)
    if method == "faircal":
        maps = np.asarray(p["beta_maps"], np.float64)
        if maps.shape != (len(centres), 3):
            raise CalibrationError(f"{len(centres)} clusters but beta maps of shape {maps.shape}")
        return FairCal(centres=centres, maps=maps, pair_weights=np.asarray(p["pair_weights"], np.int64),
                       cluster_images=images, cluster_subjects=subjects,
                       genuine_pairs=np.asarray(p["genuine_pairs"], np.int64),
                       impostor_pairs=np.asarray(p["impostor_pairs"], np.int64),
                       impostors_used=np.asarray(p["impostors_used"], np.int64), tried=tried)
    raise CalibrationError(f"unknown calibration method {method!r} (known: {', '.join(DEPLOYABLE)})")


# --------------------------------------------------------------------------------------- the file


def content_sha256(doc: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, compact, no NaN) of ``doc`` without its ``sha256`` field."""
    body = {k: v for k, v in doc.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def from_document(doc: dict[str, Any], source: str = "the calibration") -> DeployedCalibration:
    """The calibration a checked artefact document describes (CalibrationError when it is not one)."""
    if doc.get("format") != FORMAT:
        raise CalibrationError(f"{source} is not a fairness calibration (format {doc.get('format')!r}, expected "
                               f"{FORMAT!r}); verification thresholds come from `faceaudit calibrate` without "
                               "--method and are not given with --calibration")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CalibrationError(f"{source}: format version {doc.get('format_version')!r}; this faceaudit reads "
                               f"version {FORMAT_VERSION}")
    recorded = doc.get("sha256")
    try:
        actual = content_sha256(doc)
    except ValueError as exc:  # NaN or infinity: never written by save_calibration
        raise CalibrationError(f"{source} holds values no calibration writes ({exc})") from None
    if recorded != actual:
        raise CalibrationError(f"{source} has been altered: its content's SHA-256 is {actual[:16]}..., not the "
                               f"{str(recorded)[:16]}... it records; refit it with `faceaudit calibrate --method`")
    try:
        method = str(doc["method"])
        fitted = _fitted(method, doc["parameters"])
        engine = EngineIdentity.from_dict(doc["engine"])
        thresholds = {float(r["target_fmr"]): (float(r["threshold"]), float(r["fmr"]), float(r["fnmr"]))
                      for r in doc["thresholds"]}
        rows = doc["table"]
        table = ThresholdTable(
            engine=engine.name, engine_version=engine.version,
            model_sha256=tuple(str(m["sha256"]) for m in engine.models),
            fmr=np.array([r["fmr"] for r in rows], np.float64),  # rows by threshold ascending: fmr descending
            threshold=np.array([r["threshold"] for r in rows], np.float64),
            fnmr=np.array([r["fnmr"] for r in rows], np.float64),
            n_impostor=int(doc["pairs"]["impostor"]), n_genuine=int(doc["pairs"]["genuine"]),
            source={"dataset": doc["dataset"].get("name", "")})
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"{source} is incomplete or malformed ({type(exc).__name__}: {exc})") from None
    if len(table.threshold) == 0:
        raise CalibrationError(f"{source} has no thresholds")
    return DeployedCalibration(calibration=fitted, thresholds=thresholds, table=table, engine=engine.to_dict(),
                               dataset=dict(doc["dataset"]), identity=CalibrationIdentity(method, str(recorded)),
                               document=doc)


def save_calibration(cal: DeployedCalibration, path: str | Path) -> Path:
    """Write the artefact (indented JSON, sorted keys); its ``sha256`` covers the canonical content."""
    p = Path(path)
    p.write_text(json.dumps(cal.document, indent=1, sort_keys=True, allow_nan=False) + "\n")
    return p


def load_calibration(path: str | Path, engine: EngineIdentity | dict[str, Any] | None = None) -> DeployedCalibration:
    """Read and check an artefact: its SHA-256 (an edited file is refused) and, given ``engine``, that it was
    fitted for that engine. Returns the fitted calibration with its identity (``.calibration``, ``.identity``)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"no calibration file at {p}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{p} is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CalibrationError(f"{p} is not a fairness calibration")
    cal = from_document(doc, str(p))
    if engine is not None:
        cal.check_engine(engine)
    return cal
