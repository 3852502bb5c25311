"""Run an audit: read the data, embed (or take embeddings or scores), evaluate, and write the report.

The report folder is built in a temporary sibling folder and moved into place only when complete,
so an interrupted audit never leaves a half-written report; the embedding cache keeps every image
already embedded, so a rerun resumes. What could not be used (unreadable images, faces not found,
pairs naming unknown images, attributes not in the data, target FMRs the data cannot support) is
left out, counted with its reason, and stated in the report.

With ``[mitigation] methods``, each analysis of an all-pairs audit from images or embeddings also gets
the cross-validated measurement of those mitigations (:func:`faceaudit.mitigation.cross_validate_analyses`,
the analyses sharing folds and label-free fits), seeded by ``[uncertainty] seed``; audits that cannot
run them (score files, pair lists, sampled impostor pairs) record the refusal and its reason in
``results.json``'s ``mitigation`` section instead.

With ``[system] calibration`` (a deployed fairness calibration, ``faceaudit calibrate --method``), every
score of the audit is the calibrated score (all pairs, listed pairs and the protocol's pairs alike): an
audit of the calibrated system, with the calibration's identity in results.json, provenance.json and
the report. It is refused for another engine's embeddings.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from faceaudit import __version__
from faceaudit.audit.config import AuditConfig
from faceaudit.errors import InputError
from faceaudit.evaluate import evaluate_frame, evaluate_listed_pairs, evaluate_scores
from faceaudit.io.datasets import Dataset, join_attributes, load_dataset
from faceaudit.io.embeddings import CORE_COLUMNS, embedding_matrix, read_embeddings
from faceaudit.io.images import sha256_file
from faceaudit.io.scores import read_score_manifest
from faceaudit.metrics.result import EvaluationResult
from faceaudit.metrics.verification import kfold_accuracy
from faceaudit.report.provenance import machine, merkle_root
from faceaudit.scoring.compare import score_pairs

if TYPE_CHECKING:
    from faceaudit.mitigation.artefact import DeployedCalibration

EXAMPLES = 5


@dataclass
class AuditOutcome:
    out: Path
    results: dict[str, Any]
    provenance: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass
class AuditInputs:
    """What the evaluation step produced, with everything the report states about the data."""

    result: EvaluationResult
    images: pd.DataFrame  # per image: path, subject_id, ok, reason, message (empty for score files)
    image_hashes: list[tuple[str, str]]
    files: dict[str, dict[str, str]]
    listing_sha256: str | None
    engine: dict[str, Any] | None
    protocol: dict[str, Any] | None = None
    left_out: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    from_cache: int | None = None  # images whose embeddings came from the cache (a rerun resumes)
    mitigation: dict[str, Any] | None = None  # results.json's "mitigation" section; None when not asked for
    calibration: dict[str, Any] | None = None  # the fairness calibration audited (its provenance), if any


def usable_groupings(cfg: AuditConfig, columns: list[str], left_out: list[dict[str, Any]],
                      warn: Callable[[str], None]) -> list[list[str]]:
    """The analyses whose attributes are all columns of the data; the others are left out and stated."""
    usable = []
    for g in cfg.groupings():
        missing = [a for a in g if a not in columns]
        if missing:
            reason = (f"attribute(s) {', '.join(missing)} not in the data (label columns: "
                      f"{', '.join(columns) or 'none'})")
            left_out.append({"what": "analysis", "item": " x ".join(g), "count": 1, "reason": reason, "examples": []})
            warn(f"analysis by {' x '.join(g)} left out: {reason}")
        else:
            usable.append(g)
    if not usable:
        raise InputError("none of the groups asked for can be formed: "
                         + "; ".join(x["reason"] for x in left_out if x["what"] == "analysis"))
    return usable


def enrolment_failures(frame: pd.DataFrame) -> list[dict[str, Any]]:
    bad = frame[~frame["ok"]]
    out = []
    for reason, rows in bad.groupby("reason", sort=True):
        out.append({"what": "images", "item": "failed to enrol", "count": len(rows), "reason": str(reason),
                    "examples": [f"{p}: {m}" for p, m in zip(rows["path"][:EXAMPLES], rows["message"][:EXAMPLES],
                                                              strict=True)]})
    return out


def protocol_accuracy(ds: Dataset, frame: pd.DataFrame, fair: DeployedCalibration | None = None
                      ) -> dict[str, Any] | None:
    """Accuracy on the dataset's protocol pairs; a pair with an image that failed to enrol counts as a non-match.
    ``fair``: decide on its calibrated scores."""
    if ds.protocol is None:
        return None
    pr = ds.protocol
    ok = frame["ok"].to_numpy(bool)
    emb = np.zeros((len(frame), embedding_matrix(frame).shape[1]), np.float32)
    emb[ok] = embedding_matrix(frame)
    found = (pr.index_a >= 0) & (pr.index_b >= 0)
    ia, ib = np.where(found, pr.index_a, 0), np.where(found, pr.index_b, 0)
    failed = ~(found & ok[ia] & ok[ib])
    scores = np.full(len(ia), -np.inf)
    if fair is None:
        scores[~failed] = score_pairs(emb, ia[~failed], ib[~failed])
    elif (~failed).any():
        scores[~failed] = fair.score(emb[ia[~failed]], emb[ib[~failed]])
    acc = kfold_accuracy(scores, pr.same, pr.fold)
    return {"name": pr.name, "accuracy": acc.mean, "standard_error": acc.standard_error,
            "fold_accuracy": list(acc.fold_accuracy), "pairs": len(scores), "pairs_failed": int(failed.sum()),
            "rule": "a pair with an image that failed to enrol is decided as a non-match"}


def load_fairness_calibration(cfg: AuditConfig, meta: dict[str, Any],
                              files: dict[str, dict[str, str]]) -> DeployedCalibration | None:
    """``[system] calibration``, loaded and checked against the engine that made the embeddings (None: none)."""
    path = cfg.system.calibration
    if path is None:
        return None
    from faceaudit.mitigation.artefact import load_calibration

    if meta.get("foreign") or not meta.get("engine"):
        raise InputError("[system] calibration: these embeddings were not made by a faceaudit engine, and a "
                         "calibration belongs to the engine it was fitted for; audit them without it")
    fair = load_calibration(path, meta["engine"])
    files["calibration"] = {"path": path, "sha256": sha256_file(path)}
    return fair


def _from_images(cfg: AuditConfig, progress: bool, warn: Callable[[str], None], client: Any = None) -> AuditInputs:
    from faceaudit.api import embed

    d, s, u = cfg.dataset, cfg.system, cfg.uncertainty
    left_out: list[dict[str, Any]] = []
    notes: list[str] = []
    ds: Dataset | None = None
    files: dict[str, dict[str, str]] = {}
    from_cache = None
    if s.embeddings:
        frame, meta = read_embeddings(s.embeddings, system_name=s.name)
        files["embeddings"] = {"path": s.embeddings, "sha256": sha256_file(s.embeddings)}
        if d.attributes:
            frame = join_attributes(frame, Path(d.attributes), notes)
            files["attributes"] = {"path": d.attributes, "sha256": sha256_file(d.attributes)}
        listing = None
        labels = [c for c in frame.columns if c not in CORE_COLUMNS and not c.startswith("_")]
        groupings = usable_groupings(cfg, labels, left_out, warn)
    else:
        assert d.path is not None
        ds = load_dataset(d.path, d.format, pairs=d.pairs, image_root=d.image_root, attributes=d.attributes)
        notes += ds.notes
        files.update(ds.files)
        listing = ds.listing_sha256()
        groupings = usable_groupings(cfg, ds.label_columns, left_out, warn)  # before the slow part
        cache: str | bool = cfg.run.cache
        run = embed(ds.table, engine=s.engines()[0], workers=cfg.run.workers, cache=cache,
                    batch_size=cfg.run.batch_size, progress=progress, cluster=client)
        frame, meta, from_cache = run.frame, run.metadata, run.n_cached
        if len(frame) != len(ds.table):
            raise InputError("the audit needs one face per image; it got several for some images")
    left_out += enrolment_failures(frame)
    fair = load_fairness_calibration(cfg, meta, files)
    score_map = None if fair is None or not frame["ok"].any() else fair.score_map(embedding_matrix(frame))
    targets, alpha = cfg.metrics.target_fmrs, cfg.metrics.alpha
    source = {"dataset": d.path} if ds else {"embeddings": s.embeddings}
    if ds is not None and ds.listed_pairs is not None:
        lp = ds.listed_pairs
        for reason, n in lp.problems.items():
            if n:
                left_out.append({"what": "pairs", "item": "listed pairs", "count": n, "reason": reason,
                                 "examples": lp.examples.get(reason, [])[:EXAMPLES]})
        if lp.label_mismatch:
            notes.append(f"{lp.label_mismatch:,} listed pairs are labelled same/different contrary to their subject "
                         "ids (kept; the subject ids decide), e.g. "
                         + "; ".join(lp.examples.get("label_mismatch", [])[:EXAMPLES]))
        result = evaluate_listed_pairs(frame, meta, lp.index_a, lp.index_b, groupings, target_fmrs=targets,
                                       alpha=alpha,
                                       excluded={k: v for k, v in lp.problems.items() if v}, inputs=source,
                                       score_map=score_map)
        lost = result.excluded.get("pair_failed_to_enrol", 0)
        if lost:
            left_out.append({"what": "pairs", "item": "listed pairs", "count": lost,
                             "reason": "an image of the pair failed to enrol", "examples": []})
        _ignored(cfg, "a pair list", warn)
        mitigation = mitigation_refused(cfg, "pair_list", "a pair list gives only the pairs it lists; the mitigations "
                                        "are calibrated on, and measured on, all pairs among people", warn)
    else:
        result = evaluate_frame(frame, meta, groupings=groupings, bootstrap=u.bootstrap, permutations=u.permutations,
                                seed=u.seed, impostor_sample=cfg.pairs.impostor_sample, progress=progress,
                                inputs=source, target_fmrs=targets, alpha=alpha, cluster=client, score_map=score_map)
        if result.settings.get("pairs_mode") == "sample":
            mitigation = mitigation_refused(cfg, "sampled", "impostor pairs were sampled ([pairs] impostor_sample); "
                                            "the mitigations are calibrated on, and measured on, all pairs among "
                                            "people, with intervals that need all pairs", warn)
        else:
            mitigation = run_mitigation(cfg, frame, groupings)
    hashes = [(str(p), str(h)) for p, h in zip(frame["path"], frame["sha256"], strict=True) if isinstance(h, str)]
    images = frame[["path", "subject_id", "ok", "reason", "message"]]
    return AuditInputs(result, images, hashes, files, listing, meta.get("engine"),
                       protocol_accuracy(ds, frame, fair) if ds is not None else None, left_out, notes, from_cache,
                       mitigation, None if fair is None else {**fair.provenance(), "path": cfg.system.calibration})


def _mitigation_settings(cfg: AuditConfig) -> dict[str, Any]:
    m, u = cfg.mitigation, cfg.uncertainty
    return {"methods": list(m.methods), "folds": m.folds, "n_clusters": m.n_clusters, "seed": u.seed,
            "replicates": u.bootstrap}


def mitigation_refused(cfg: AuditConfig, reason: str, why: str, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """The ``mitigation`` section of an audit that cannot run the mitigations asked for (None: none asked for)."""
    if not cfg.mitigation.methods:
        return None
    message = f"mitigation not measured: {why}. Audit the images or their embeddings, all pairs, to measure it"
    warn(message)
    return {**_mitigation_settings(cfg), "refused": {"reason": reason, "message": message}, "analyses": []}


def run_mitigation(cfg: AuditConfig, frame: pd.DataFrame, groupings: list[list[str]]) -> dict[str, Any] | None:
    """Cross-validate the mitigations asked for on the enrolled images' embeddings (all pairs), for every analysis
    at once (:func:`faceaudit.mitigation.cross_validate_analyses`: the folds and the label-free fits are shared).

    When the protocol itself refuses (too few people for the folds, no target FMR supported by a held-out
    fold), every analysis records the reason; otherwise each carries
    :meth:`faceaudit.mitigation.MitigationResult.to_dict`, where each method's own refusals are.
    """
    from faceaudit.mitigation import MitigationRefused, cross_validate_analyses
    from faceaudit.scoring.groups import assign_groups

    m, u = cfg.mitigation, cfg.uncertainty
    if not m.methods:
        return None
    enrolled = frame[frame["ok"].to_numpy(bool)]
    subjects = enrolled["subject_id"].astype(str).to_numpy()
    try:
        results = cross_validate_analyses(embedding_matrix(frame), subjects,
                                          [assign_groups(enrolled, attrs) for attrs in groupings], m.methods,
                                          cfg.metrics.target_fmrs, folds=m.folds, seed=u.seed,
                                          replicates=u.bootstrap, alpha=cfg.metrics.alpha, n_clusters=m.n_clusters)
        analyses = [{"attributes": list(attrs), "refused": None, "result": res.to_dict()}
                    for attrs, res in zip(groupings, results, strict=True)]
    except MitigationRefused as err:
        analyses = [{"attributes": list(attrs), "refused": {"reason": err.reason, "message": str(err)},
                     "result": None} for attrs in groupings]
    return {**_mitigation_settings(cfg), "refused": None, "analyses": analyses}


def _ignored(cfg: AuditConfig, what: str, warn: Callable[[str], None]) -> None:
    """Say so when settings that need all pairs among the subjects cannot apply."""
    u = cfg.uncertainty
    unused = [f"{k} = {v}" for k, v in (("bootstrap", u.bootstrap), ("permutations", u.permutations),
                                         ("impostor_sample", cfg.pairs.impostor_sample)) if v]
    if unused:
        warn(f"{', '.join(unused)}: not applied to {what}, which gives only the pairs it lists (intervals, tests and "
             "sampling need all pairs among the people)")


def _from_scores(cfg: AuditConfig, progress: bool, warn: Callable[[str], None]) -> AuditInputs:
    d, s = cfg.dataset, cfg.system
    _ignored(cfg, "a score file", warn)
    mitigation = mitigation_refused(cfg, "needs_embeddings", "a score file gives neither the images' embeddings "
                                    "(FSN and FairCal cluster them; group thresholds and every method are calibrated "
                                    "on people other than those measured) nor all pairs among the people", warn)
    assert d.path is not None and s.scores is not None
    table = read_score_manifest(d.path)
    labels = [c for c in table.columns if c not in ("id", "subject_id", "path")]
    left_out: list[dict[str, Any]] = []
    groupings = usable_groupings(cfg, labels, left_out, warn)
    result = evaluate_scores(s.scores, d.path, groupings=groupings, higher_is_similar=not s.distance,
                             target_fmrs=cfg.metrics.target_fmrs, alpha=cfg.metrics.alpha, progress=progress)
    for reason, n in result.excluded.items():
        if n:
            left_out.append({"what": "pairs", "item": "score file rows", "count": n, "reason": reason, "examples": []})
    files = {"manifest": {"path": d.path, "sha256": sha256_file(d.path)},
             "scores": {"path": s.scores, "sha256": sha256_file(s.scores)}}
    images = pd.DataFrame({"path": table["id"], "subject_id": table["subject_id"], "ok": True, "reason": None,
                           "message": None})
    return AuditInputs(result, images, [], files, None, None, None, left_out, [], mitigation=mitigation)


def _system(cfg: AuditConfig, engine: dict[str, Any] | None, calibration: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    s = cfg.system
    if calibration is not None:
        plain = _system(cfg, engine)
        return {**plain, "name": f"{plain['name']}, {calibration['method']} calibrated", "calibration": calibration}
    if s.scores:
        return {"kind": "score file", "name": s.name or "an external system (its score file)",
                "scores": "distance (lower = more alike)" if s.distance else "similarity (higher = more alike)"}
    if engine and engine.get("supplied_by") == "user":
        return {"kind": "embeddings supplied by the user", "name": engine["name"], "engine": engine}
    kind = "embeddings file" if s.embeddings else "engine"
    name = s.name or (f"{engine['name']} v{engine['version']}" if engine else "unknown")
    return {"kind": kind, "name": name, "engine": engine}


def _dataset(cfg: AuditConfig, inputs: AuditInputs) -> dict[str, Any]:
    d = cfg.dataset
    images = inputs.images
    return {"name": d.name or (Path(d.path).name if d.path else "embeddings file"), "path": d.path,
            "format": d.format, "labels": d.labels, "images": len(images),
            "subjects": int(images["subject_id"].nunique()), "enrolled": int(images["ok"].sum()),
            "min_subjects": cfg.groups.min_subjects}


def run_audit(config: AuditConfig, out: str | Path, *, sign: str | Path | None = None, progress: bool = True,
              echo: Callable[[str], None] | None = None) -> AuditOutcome:
    """Run the audit described by ``config`` and write its report folder ``out``.

    With several engines (``[system] engine = [...]``) the report compares them side by side
    (:func:`faceaudit.audit.compare.run_comparison`).
    """
    say = echo or (lambda m: print(m, file=sys.stderr))
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        say(f"warning: {msg}")

    config.check()
    out = Path(out)
    check_out(out)
    if len(config.system.engines()) > 1:
        from faceaudit.audit.compare import run_comparison

        return run_comparison(config, out, sign=sign, progress=progress, say=say, warn=warn, warnings=warnings)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    if config.system.scores:
        inputs = _from_scores(config, progress, warn)
    else:
        from faceaudit.distributed import cluster_client

        with cluster_client(config.run.cluster, say) as client:
            inputs = _from_images(config, progress, warn, client)
    for note in inputs.notes:
        warn(note)
    results = audit_results(config, inputs)
    provenance = {
        "faceaudit_version": __version__,
        "engine": inputs.engine,
        "calibration": inputs.calibration,
        **data_provenance(inputs),
        "config": config.to_dict(),
        "seed": config.uncertainty.seed,
        "machine": machine(),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
        "images_from_cache": inputs.from_cache,
        "command": " ".join(sys.argv) if sys.argv else None,
    }

    def write(tmp: Path) -> None:
        (tmp / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
        (tmp / "config.toml").write_text(config.to_toml())
        write_report_pages(tmp, results, provenance, config.to_toml(), inputs.images)

    write_folder(out, write, sign)
    return AuditOutcome(out, results, provenance, warnings)


def audit_results(config: AuditConfig, inputs: AuditInputs) -> dict[str, Any]:
    """The results document of one system: the evaluation, the protocol accuracy, and the audit's facts."""
    results = inputs.result.to_dict()
    results["protocol"] = inputs.protocol
    results["audit"] = {"title": config.title, "system": _system(config, inputs.engine, inputs.calibration),
                        "dataset": _dataset(config, inputs), "left_out": inputs.left_out,
                        "notes": inputs.notes}
    if inputs.mitigation is not None:
        results["mitigation"] = inputs.mitigation
    return results


def data_provenance(inputs: AuditInputs) -> dict[str, Any]:
    return {
        "files": inputs.files,
        "image_listing_sha256": inputs.listing_sha256,
        "images_merkle_root": merkle_root(inputs.image_hashes) if inputs.image_hashes else None,
        "images_hashed": len(inputs.image_hashes),
        "merkle_rule": "RFC 6962 tree hash over leaves SHA-256(0x00 | path | 0x00 | image SHA-256), sorted by path",
    }


def write_report_pages(folder: Path, results: dict[str, Any], provenance: dict[str, Any], config_toml: str,
                       images: pd.DataFrame) -> None:
    """A single system's pages: summary.md, report.html and left_out.csv (the images that failed)."""
    from faceaudit.report.html import render_html
    from faceaudit.report.summary import render_summary

    (folder / "summary.md").write_text(render_summary(results, provenance))
    (folder / "report.html").write_text(render_html(results, provenance, config_toml))
    images[~images["ok"]].to_csv(folder / "left_out.csv", index=False)


def write_folder(out: Path, write: Callable[[Path], None], sign: str | Path | None) -> None:
    """Build the report in a temporary sibling folder with ``write``, add the manifest (and signature), move it in."""
    from faceaudit.report.integrity import sign_manifest, write_manifest

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        write_manifest(tmp)
        if sign is not None:
            sign_manifest(tmp, sign)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "results.json").exists())):
        raise InputError(f"{out} exists and is not a faceaudit report; choose another --out, or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished report into place; an older report there is replaced only after the new one is whole."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{int(time.time())}")
        out.rename(old)
    tmp.rename(out)
    out.chmod(0o755)  # mkdtemp makes 0700 folders; a report is meant to be read
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
