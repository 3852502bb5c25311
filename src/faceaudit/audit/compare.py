"""A comparison audit: several engines, the same images, one report with the engines side by side.

Folder layout: ``report.html``, ``results.json`` (the comparison: each engine's rates and summaries at
its own threshold, and each engine's differences from the reference with paired intervals),
``summary.md``, ``provenance.json`` (every engine's identity and model hashes), ``config.toml``,
``left_out.csv`` (each engine's failures, with an ``engine`` column), and ``engines/<name>/`` with each
engine's full single-system report (on the images every engine enrolled), all under one manifest.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from faceaudit import __version__
from faceaudit.audit.config import AuditConfig
from faceaudit.audit.run import (
    AuditInputs,
    AuditOutcome,
    audit_results,
    data_provenance,
    enrolment_failures,
    protocol_accuracy,
    usable_groupings,
    write_folder,
    write_report_pages,
)
from faceaudit.comparison import ComparisonResult, EngineRun, compare_frames
from faceaudit.engines.registry import engine_spec
from faceaudit.errors import InputError
from faceaudit.io.datasets import load_dataset
from faceaudit.report.provenance import machine

COMPARISON_SCHEMA_VERSION = "1.0"


def engine_slug(name: str, taken: set[str]) -> str:
    """A folder name for an engine (``onnx:/a/b.onnx`` -> ``onnx-b.onnx``), unique among ``taken``."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", name.rsplit("/", 1)[-1] if name.startswith("onnx:") else name)
    base = base.strip("-.") or "engine"
    if name.startswith("onnx:") and not base.startswith("onnx"):
        base = f"onnx-{base}"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


def run_comparison(config: AuditConfig, out: Path, *, sign: str | Path | None, progress: bool,
                   say: Callable[[str], None], warn: Callable[[str], None], warnings: list[str]) -> AuditOutcome:
    """Embed the dataset with every engine, compare them, and write the report folder ``out``."""
    from faceaudit.api import embed
    from faceaudit.distributed import cluster_client

    started = datetime.now(UTC)
    t0 = time.perf_counter()
    d, u = config.dataset, config.uncertainty
    assert d.path is not None
    ds = load_dataset(d.path, d.format, pairs=d.pairs, image_root=d.image_root, attributes=d.attributes)
    left_out: list[dict[str, Any]] = []
    groupings = usable_groupings(config, ds.label_columns, left_out, warn)
    names = [engine_spec(e).name for e in config.system.engines()]
    if len(set(names)) != len(names):
        raise InputError(f"[system] engine names the same engine twice ({', '.join(names)}); list each once")
    runs: list[EngineRun] = []
    cached: dict[str, int] = {}
    with cluster_client(config.run.cluster, say) as client:
        for name in names:
            say(f"embedding with {name}")
            run = embed(ds.table, engine=name, workers=config.run.workers, cache=config.run.cache,
                        batch_size=config.run.batch_size, progress=progress, cluster=client)
            if len(run.frame) != len(ds.table):
                raise InputError("the audit needs one face per image; it got several for some images")
            runs.append(EngineRun(name, run.frame, run.metadata))
            cached[name] = run.n_cached
        cmp = compare_frames(runs, groupings, target_fmrs=config.metrics.target_fmrs, alpha=config.metrics.alpha,
                             bootstrap=u.bootstrap, permutations=u.permutations, seed=u.seed, progress=progress,
                             inputs={"dataset": d.path}, cluster=client)
    for note in ds.notes:
        warn(note)
    per_engine: list[tuple[str, AuditInputs]] = []
    taken: set[str] = set()
    for r, res in zip(runs, cmp.results, strict=True):
        lost = int(cmp.results[0].inputs["images"]) - int(res.inputs["enrolled"]) - res.excluded["failed_to_enrol"]
        mine = [*left_out, *enrolment_failures(r.frame)]
        if lost:
            mine.append({"what": "images", "item": "enrolled, but left out of the comparison", "count": lost,
                         "reason": "another engine failed to enrol the image (every engine is measured on the "
                                   "images all engines enrolled)", "examples": []})
        hashes = [(str(p), str(h)) for p, h in zip(r.frame["path"], r.frame["sha256"], strict=True)
                  if isinstance(h, str)]
        images = r.frame[["path", "subject_id", "ok", "reason", "message"]]
        inputs = AuditInputs(res, images, hashes, dict(ds.files), ds.listing_sha256(), r.metadata.get("engine"),
                         protocol_accuracy(ds, r.frame), mine, list(ds.notes), cached[r.name])
        per_engine.append((engine_slug(r.name, taken), inputs))
    results = comparison_results(config, cmp, per_engine)
    results["limitations"] = _limitations(config, per_engine)
    first = per_engine[0][1]
    provenance = {
        "faceaudit_version": __version__,
        "engines": {r.name: i.engine for r, (_, i) in zip(runs, per_engine, strict=True)},
        **data_provenance(first),
        "config": config.to_dict(),
        "seed": u.seed,
        "machine": machine(),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
        "images_from_cache": cached,
        "command": " ".join(sys.argv) if sys.argv else None,
    }
    toml = config.to_toml()

    def write(tmp: Path) -> None:
        from faceaudit.report.comparison import render_comparison_html, render_comparison_summary

        (tmp / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
        (tmp / "config.toml").write_text(toml)
        (tmp / "summary.md").write_text(render_comparison_summary(results, provenance))
        (tmp / "report.html").write_text(render_comparison_html(results, provenance, toml))
        failed = [i.images[~i.images["ok"]].assign(engine=name) for name, (_, i)
                  in zip(names, per_engine, strict=True)]
        pd.concat(failed, ignore_index=True).to_csv(tmp / "left_out.csv", index=False)
        for slug, inputs in per_engine:
            folder = tmp / "engines" / slug
            folder.mkdir(parents=True)
            doc = audit_results(config, inputs)
            doc["audit"]["system"] = {"kind": "engine", "name": _engine_title(inputs.engine),
                                      "engine": inputs.engine}
            doc["audit"]["comparison"] = {"report": "../../report.html", "engines": names,
                                          "rule": cmp.common["rule"]}
            (folder / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
            write_report_pages(folder, doc, {**provenance, "engine": inputs.engine}, toml, inputs.images)

    write_folder(out, write, sign)
    return AuditOutcome(out, results, provenance, warnings)


def _limitations(config: AuditConfig, per_engine: list[tuple[str, AuditInputs]]) -> list[dict[str, str]]:
    """Every engine's limitations (small groups, wide intervals, ...), each stated once, naming the engines."""
    from faceaudit.report.findings import limitations

    seen: dict[tuple[str, str], list[str]] = {}
    for slug, inputs in per_engine:
        for item in limitations(audit_results(config, inputs)):
            seen.setdefault((item["kind"], item["text"]), []).append(slug)
    every = len(per_engine)
    return [{"kind": kind, "text": text if len(slugs) == every else f"{', '.join(slugs)}: {text}"}
            for (kind, text), slugs in seen.items()]


def _engine_title(identity: dict[str, Any] | None) -> str:
    return f"{identity['name']} v{identity['version']}" if identity else "unknown"


def comparison_results(config: AuditConfig, cmp: ComparisonResult,
                       per_engine: list[tuple[str, AuditInputs]]) -> dict[str, Any]:
    """The comparison's results document (``results.json`` of a comparison report)."""
    d = config.dataset
    images = per_engine[0][1].images
    engines = []
    for name, (slug, inputs) in zip(cmp.engines, per_engine, strict=True):
        engines.append({"name": name, "title": _engine_title(inputs.engine), "identity": inputs.engine,
                        "folder": f"engines/{slug}", "protocol": inputs.protocol,
                        "failed_to_enrol": cmp.common["failed_to_enrol"][name]})
    return {
        "comparison_schema_version": COMPARISON_SCHEMA_VERSION,
        "kind": "comparison",
        "faceaudit_version": __version__,
        **cmp.to_dict(),
        "engines": engines,
        "audit": {"title": config.title,
                  "dataset": {"name": d.name or (Path(d.path).name if d.path else "dataset"), "path": d.path,
                              "format": d.format, "labels": d.labels, "images": len(images),
                              "subjects": int(images["subject_id"].nunique()),
                              "enrolled_by_all": cmp.common["enrolled_by_all"],
                              "min_subjects": config.groups.min_subjects},
                  "left_out": [x for x in per_engine[0][1].left_out if x["what"] == "analysis"]},
    }
