"""The ``faceaudit`` command line. Every command calls the public Python API."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from faceaudit import __version__
from faceaudit.engines.base import EnrolSettings, FacePolicy
from faceaudit.errors import FaceauditError


def _settings(policy: str, min_score: float | None, min_face: float) -> EnrolSettings:
    return EnrolSettings(policy=FacePolicy(policy), min_det_score=min_score, min_face_px=min_face)


_policy_opts = [
    click.option("--face", "policy", type=click.Choice([p.value for p in FacePolicy]), default="central",
                 show_default=True, help="Which face is the subject when an image has several."),
    click.option("--min-score", type=float, default=None,
                 help="Detector confidence below which a face fails to enrol (default: the engine's own; "
                      "`faceaudit engines` lists it: 0.6 for yunet-sface, 0 for dlib's HOG margin)."),
    click.option("--min-face", type=float, default=EnrolSettings().min_face_px, show_default=True,
                 help="Shortest face box side, in pixels, below which a face fails to enrol."),
]


cluster_option = click.option(
    "--cluster", default=None,
    help="Run on a Dask cluster: a scheduler address (tcp://host:8786) or local:N for N local workers "
         "(default: $FACEAUDIT_CLUSTER, else this machine without Dask).")


def _echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def policy_options(f: Any) -> Any:
    for opt in reversed(_policy_opts):
        f = opt(f)
    return f


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FaceauditError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="faceaudit")
def main() -> None:
    """faceaudit: face recognition you can audit for demographic bias."""


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--engine", default=None, help="Engine name (see `faceaudit engines`).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def detect(images: tuple[str, ...], engine: str | None, as_json: bool) -> None:
    """Detect faces: box (x, y, w, h), 5 landmarks and score for every face of each IMAGE."""
    from faceaudit.api import detect as detect_faces

    out: list[dict[str, Any]] = []
    failed = 0
    for path in images:
        try:
            faces = detect_faces(path, engine=engine)
            out.append({"image": path, "ok": True, "faces": [f.to_dict() for f in faces]})
        except FaceauditError as exc:
            failed += 1
            out.append({"image": path, "ok": False, "reason": getattr(exc, "reason", "error"), "message": str(exc)})
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        for item in out:
            if not item["ok"]:
                click.echo(f"{item['image']}: cannot read ({item['reason']}): {item['message']}")
                continue
            click.echo(f"{item['image']}: {len(item['faces'])} face(s)")
            for k, f in enumerate(item["faces"]):
                x, y, w, h = f["box"]
                click.echo(f"  [{k}] score {f['score']:.3f}  box x={x:.0f} y={y:.0f} w={w:.0f} h={h:.0f}")
    if failed:
        sys.exit(1)


@main.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output Parquet file.")
@click.option("--engine", default=None, help="Engine name (see `faceaudit engines`).")
@click.option("--workers", type=int, default=None, help="Worker processes (default: all cores).")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Images per inference batch.")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False), default=None,
              help="Embedding cache file (default: ~/.cache/faceaudit/embeddings.sqlite or $FACEAUDIT_CACHE_DIR).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the embedding cache.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@cluster_option
@policy_options
def embed(source: str, out: str, engine: str | None, workers: int | None, batch_size: int, cache_path: str | None,
          no_cache: bool, quiet: bool, cluster: str | None, policy: str, min_score: float | None,
          min_face: float) -> None:
    """Embed every image of SOURCE: a folder with one subfolder per subject, or a manifest (CSV or
    Parquet with `path` and `subject_id`). Writes one row per image to --out, failures with a reason."""
    from faceaudit.api import embed as run_embed
    from faceaudit.distributed import cluster_client

    cache: str | bool = False if no_cache else (cache_path or True)
    with cluster_client(cluster, _echo_err) as client:
        run = run_embed(source, out, engine=engine, settings=_settings(policy, min_score, min_face),
                        workers=workers, cache=cache, batch_size=batch_size, progress=not quiet, cluster=client)
    click.echo(f"{run.n_images} images: {run.n_ok} embedded, {run.n_images - run.n_ok} failed, "
               f"{run.n_cached} from cache -> {out}")
    for reason, n in sorted(run.reasons.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {reason}: {n}")


_calibration_option = click.option(
    "--calibration", type=click.Path(exists=True, dir_okay=False), default=None,
    help="Fairness calibration (`faceaudit calibrate --method`): decide on calibrated scores and its threshold.")


@main.command()
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@click.option("--fmr", type=float, default=None,
              help="Target false match rate [default: 1e-4; with --calibration, the FMR it was fitted at].")
@click.option("--engine", default=None, help="Engine name (see `faceaudit engines`).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_calibration_option
@policy_options
def verify(a: str, b: str, fmr: float | None, engine: str | None, as_json: bool, calibration: str | None, policy: str,
           min_score: float | None, min_face: float) -> None:
    """Do images A and B show the same person? Exit 0 with a decision, 1 when a face cannot be enrolled."""
    from faceaudit.api import verify as run_verify

    res = run_verify(a, b, fmr=fmr, engine=engine, settings=_settings(policy, min_score, min_face),
                     calibration=calibration)
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2))
    elif res.match is None:
        click.echo("no decision: " + "; ".join(res.failures))
    else:
        click.echo(f"{'MATCH' if res.match else 'NO MATCH'}: score {res.score:.4f} "
                   f"{'>=' if res.match else '<'} threshold {res.threshold:.4f}")
        fc = res.fairness_calibration
        if fc is not None:
            click.echo(f"  calibrated with {fc['method']} (sha256 {fc['sha256'][:16]}...): raw score "
                       f"{res.raw_score:.4f}")
        click.echo(f"  threshold for FMR {res.target_fmr:g} ({res.engine}, calibrated on {res.calibration}: "
                   f"FMR {res.calibrated_fmr:.2g}, FNMR {res.calibrated_fnmr:.2%})")
        assert res.score_fmr is not None
        click.echo(f"  a score this high: FMR {res.score_fmr:.2g} on the calibration data")
    if res.match is None:
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def engines(as_json: bool) -> None:
    """List the engines: identity, licence, embedding size, source, and whether each is installed here."""
    from faceaudit.engines.registry import families, list_engines

    items: list[dict[str, Any]] = [
        {"name": s.name, "description": s.description, "licence": s.licence, "source": s.source,
         "min_det_score": s.min_det_score, "installed": s.missing() is None, "install": s.missing(),
         "identity": s.identity().to_dict()} for s in list_engines()
    ]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    for it in items:
        ident = it["identity"]
        state = "" if it["installed"] else f"  [not installed: {it['install']}]"
        click.echo(f"{it['name']}  (v{ident['version']}, {ident['embedding_dim']}-d){state}")
        click.echo(f"  {it['description']}")
        click.echo(f"  licence: {it['licence']}")
        click.echo(f"  source: {it['source']}")
        click.echo(f"  identity: {ident['name']} v{ident['version']}, default min detector score "
                   f"{it['min_det_score']:g}")
        for m in ident["models"]:
            digest = f"sha256 {m['sha256'][:16]}..." if m["sha256"] else "built into the library"
            click.echo(f"  {m['role']}: {m['file']}  {m['licence']}  {digest}")
    for prefix in families():
        click.echo(f"{prefix}:PATH  any ArcFace-style ONNX embedding model by path (YuNet detection and alignment; "
                   "input size, layout and normalisation from the model or PATH.json)")


@main.command()
@click.option("--embeddings", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Embeddings file from `faceaudit embed` over a labelled dataset.")
@click.option("--dataset", default=None,
              help="Name of the dataset, recorded in the calibration (required without --method; with it, the "
                   "default is the embeddings file's name).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The manifest embedded, whose SHA-256 is recorded.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Calibration JSON to write.")
@click.option("--method", type=click.Choice(["faircal", "fsn"]), default=None,
              help="Fit a fairness calibration (FairCal or Fair Score Normalization) instead: an artefact for "
                   "`--calibration FILE` of verify, the gallery and the service.")
@click.option("--target-fmr", "target_fmrs", multiple=True, type=float,
              help="With --method: FMR of its global threshold (repeatable for faircal; default 1e-3).")
@click.option("--clusters", type=click.IntRange(1), default=None,
              help="With --method: k-means clusters (default: one per 50 people, at most 100).")
@click.option("--seed", type=int, default=0, show_default=True, help="With --method: seed of the k-means.")
def calibrate(embeddings: str, dataset: str | None, manifest: str | None, out: str, method: str | None,
              target_fmrs: tuple[float, ...], clusters: int | None, seed: int) -> None:
    """Derive verification thresholds by FMR from all impostor pairs of a labelled embeddings file; with --method,
    fit a deployable fairness calibration on it instead."""
    from faceaudit.calibrate import calibrate_from_embeddings

    if method is not None:
        _calibrate_fairness(embeddings, dataset, out, method, target_fmrs, clusters, seed)
        return
    if target_fmrs or clusters is not None:
        raise click.UsageError("--target-fmr and --clusters go with --method")
    if dataset is None:
        raise click.UsageError("Missing option '--dataset' (the name recorded in the calibration).")
    cal = calibrate_from_embeddings(embeddings, dataset, manifest)
    Path(out).write_text(json.dumps(cal.to_dict(), indent=1) + "\n")
    click.echo(f"{cal.n_impostor:,} impostor and {cal.n_genuine:,} genuine pairs; "
               f"{len(cal.fmr)} thresholds from FMR {cal.fmr[0]:.2g} to {cal.fmr[-1]:.2g} -> {out}")
    for target in (1e-3, 1e-4, 1e-5, 1e-6):
        if target >= cal.fmr[-1]:
            t = cal.threshold_for(target)
            click.echo(f"  FMR {target:g}: threshold {t:.4f}, FNMR {cal.fnmr_at(t):.2%}")


def _calibrate_fairness(embeddings: str, dataset: str | None, out: str, method: str, target_fmrs: tuple[float, ...],
                        clusters: int | None, seed: int) -> None:
    from faceaudit.mitigation.artefact import fit_artefact, save_calibration

    cal = fit_artefact(embeddings, method, target_fmrs=target_fmrs or (1e-3,), n_clusters=clusters, seed=seed,
                       dataset_name=dataset)
    save_calibration(cal, out)
    doc = cal.document
    click.echo(f"{method}: {len(cal.calibration.centres)} clusters fitted on {doc['dataset']['enrolled']:,} images of "
               f"{doc['dataset']['subjects']:,} people ({doc['pairs']['impostor']:,} impostor, "
               f"{doc['pairs']['genuine']:,} genuine pairs) -> {out}")
    for f, (t, achieved, fnmr) in cal.thresholds.items():
        click.echo(f"  FMR {f:g}: calibrated threshold {t:.6g} (FMR {achieved:.2g}, FNMR {fnmr:.2%} on these pairs)")
    click.echo(f"  engine {cal.engine_name}; calibration sha256 {cal.identity.sha256}")


@main.command()
@click.option("--embeddings", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Embeddings file from `faceaudit embed`, or any system's vectors (Parquet or .npz: path or id, "
                   "subject_id, labels, a vector column).")
@click.option("--scores", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Pairs file of another system (CSV or Parquet: id_a, id_b, score); needs --manifest.")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --scores: CSV or Parquet with id, subject_id and attribute columns.")
@click.option("--distance", is_flag=True, help="With --scores: lower scores mean more similar.")
@click.option("--by", "by", multiple=True, required=True, help="Attribute column to group by (repeatable).")
@click.option("--intersect", is_flag=True, help="One analysis of the intersection of all --by attributes.")
@click.option("--fmr", "fmrs", multiple=True, type=float, help="Target FMR (repeatable; default 1e-3..1e-6).")
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Weight of FMR in IR, FDR and GARBE.")
@click.option("--bootstrap", "replicates", type=int, default=1000, show_default=True,
              help="Subject-level bootstrap replicates for confidence intervals (0: none).")
@click.option("--permutations", type=int, default=1000, show_default=True,
              help="Permutation test of FPD and FND: group labels shuffled between subjects (0: none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap and the permutations.")
@click.option("--impostor-sample", type=float, default=None,
              help="Keep each impostor pair with this probability (declared in the result; default: all pairs).")
@click.option("--identification", is_flag=True,
              help="Also 1:N search metrics (FPIR, FNIR, rank-k) by probe group, from a gallery/probe split.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="results.json to write.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--system-name", default=None,
              help="Name of the system whose vectors --embeddings holds, when faceaudit did not make them.")
@cluster_option
def evaluate(embeddings: str | None, scores: str | None, manifest: str | None, distance: bool, by: tuple[str, ...],
             intersect: bool, fmrs: tuple[float, ...], alpha: float, replicates: int, permutations: int, seed: int,
             impostor_sample: float | None, identification: bool, out: str, quiet: bool, cluster: str | None,
             system_name: str | None) -> None:
    """Per-group false match and false non-match rates at one global threshold per target FMR."""
    from faceaudit.evaluate import evaluate_embeddings, evaluate_identification, evaluate_scores
    from faceaudit.metrics.rates import DEFAULT_FMRS

    targets = list(fmrs) or list(DEFAULT_FMRS)
    if (embeddings is None) == (scores is None):
        raise click.UsageError("give either --embeddings, or --scores with --manifest")
    if scores is not None:
        if manifest is None:
            raise click.UsageError("--scores needs --manifest (id, subject_id, attributes)")
        result = evaluate_scores(scores, manifest, list(by), higher_is_similar=not distance, intersect=intersect,
                                 target_fmrs=targets, alpha=alpha)
    else:
        from faceaudit.distributed import cluster_client

        assert embeddings is not None
        with cluster_client(cluster, _echo_err) as client:
            result = evaluate_embeddings(embeddings, list(by), intersect=intersect, target_fmrs=targets, alpha=alpha,
                                         bootstrap=replicates, permutations=permutations, seed=seed,
                                         impostor_sample=impostor_sample, progress=not quiet, cluster=client,
                                         system_name=system_name)
    if identification:
        if embeddings is None:
            raise click.UsageError("--identification needs --embeddings (it searches a gallery)")
        result.identification = evaluate_identification(embeddings, list(by), intersect=intersect, seed=seed)
    doc = result.to_dict()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")
    for analysis in result.analyses:
        table = analysis.group_table()
        cols = ["target_fmr", "group", "threshold", "fmr", "fmr_ci_low", "fmr_ci_high", "false_matches",
                "impostor_pairs", "fnmr", "fnmr_ci_low", "fnmr_ci_high", "genuine_pairs", "threshold_shift"]
        click.echo(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        for op in analysis.operating_points:
            s = op.summary
            click.echo(f"FMR {op.target_fmr:g}: FPD {s.fpd:.3g}  FND {s.fnd:.3g}  IR {s.ir:.3g}  FDR {s.fdr:.4f}  "
                       f"GARBE {s.garbe:.3g}  SER {s.ser:.3g}  (alpha {s.alpha})")
            if op.permutation is not None:
                click.echo(f"  permutation test ({op.permutation.permutations}): p(FPD) "
                           f"{op.permutation.fpd_p_value:.3g}, p(FND) {op.permutation.fnd_p_value:.3g}")
    for ident in result.identification or []:
        click.echo(f"identification by {', '.join(ident['attributes'])}: {ident['mated_searches']} mated and "
                   f"{ident['non_mated_searches']} non-mated searches, {ident['gallery_subjects']} gallery subjects")
        for r in ident["rank_accuracy"]:
            click.echo(f"  rank-{r['rank']} accuracy {r['accuracy']:.4f}")
        for op in ident["operating_points"]:
            click.echo(f"  FPIR {op['target_fpir']:g}: threshold {op['threshold']:.4f}, FPIR {op['fpir']:.4f}, "
                       f"FNIR(rank 1) {op['fnir_rank1']:.4f}")
    click.echo(f"written: {out}")


def _intersections(values: tuple[str, ...]) -> tuple[tuple[str, ...], ...] | None:
    return tuple(tuple(a.strip() for a in v.split(",") if a.strip()) for v in values) or None


@main.command()
@click.argument("dataset", required=False, type=click.Path(exists=True))
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Audit config (TOML); the flags below override its keys.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report folder to write.")
@click.option("--format", "fmt", type=click.Choice(["auto", "manifest", "folder", "lfw", "pairs"]), default=None,
              help="Layout of DATASET (default: auto).")
@click.option("--pairs", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Pair list (RFW .txt or BFW-style CSV): compare only these pairs (format 'pairs').")
@click.option("--attributes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV/Parquet of labels joined on path or subject_id.")
@click.option("--labels", default=None, help="How the demographic labels were obtained (stated in the report).")
@click.option("--engine", "engines", multiple=True,
              help="Engine to audit (see `faceaudit engines`); repeat it to compare engines side by side on the "
                   "same images (the first is the reference).")
@click.option("--embeddings", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Audit precomputed embeddings (from `faceaudit embed`) instead of embedding images.")
@click.option("--scores", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Audit another system from its score file (id_a, id_b, score); DATASET is then the manifest "
                   "of ids (id, subject_id, labels).")
@click.option("--distance", is_flag=True, default=None, help="With --scores: lower scores mean more alike.")
@click.option("--system-name", default=None, help="Name of the system audited, for the report.")
@click.option("--by", "by", multiple=True, help="Attribute to group by (repeatable).")
@click.option("--intersect", "intersections", multiple=True,
              help="An intersection to analyse, comma-separated, e.g. sex,race (repeatable).")
@click.option("--fmr", "fmrs", multiple=True, type=float, help="Target FMR (repeatable; default 1e-3..1e-6).")
@click.option("--bootstrap", type=int, default=None, help="Bootstrap replicates (default 1000; 0: none).")
@click.option("--permutations", type=int, default=None, help="Permutations for the tests (default 1000).")
@click.option("--seed", type=int, default=None, help="Seed of every random draw (default 0).")
@click.option("--impostor-sample", type=float, default=None, help="Keep each impostor pair with this probability.")
@click.option("--mitigate", "mitigate", multiple=True,
              help="Measure a mitigation on held-out people: group_thresholds, fsn or faircal (repeatable; "
                   "replaces [mitigation] methods).")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Fairness calibration (`faceaudit calibrate --method`) of the engine: audit its calibrated scores "
                   "(replaces [system] calibration).")
@click.option("--workers", type=int, default=None, help="Worker processes for embedding.")
@click.option("--no-cache", is_flag=True, default=None, help="Do not read or write the embedding cache.")
@click.option("--title", default=None, help="Report title.")
@click.option("--sign", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Ed25519 private key (from `faceaudit keygen`): sign the report's manifest.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@cluster_option
def audit(dataset: str | None, config_path: str | None, out: str, fmt: str | None, pairs: str | None,
          attributes: str | None, labels: str | None, engines: tuple[str, ...], embeddings: str | None,
          scores: str | None, distance: bool | None, system_name: str | None, by: tuple[str, ...],
          intersections: tuple[str, ...], fmrs: tuple[float, ...], bootstrap: int | None, permutations: int | None,
          seed: int | None, impostor_sample: float | None, mitigate: tuple[str, ...], calibration: str | None,
          workers: int | None, no_cache: bool | None, title: str | None, sign: str | None, quiet: bool,
          cluster: str | None) -> None:
    """Audit a face recognition system for demographic bias and write a signed, reproducible report.

    DATASET: a manifest (CSV/Parquet: path, subject_id, label columns), a folder with one subfolder per
    subject, or an LFW folder; or give everything in --config. Example:
    `faceaudit audit faces.csv --by sex --by race --out report/`.
    """
    from faceaudit.audit.config import AuditConfig
    from faceaudit.audit.run import run_audit

    cfg = AuditConfig.from_toml(config_path) if config_path else AuditConfig()
    cwd = Path.cwd()

    def here(p: str | None) -> str | None:
        return None if p is None else str((cwd / p).resolve())

    if title:
        cfg = replace(cfg, title=title)
    cfg = cfg.override("dataset", path=here(dataset), format=fmt, pairs=here(pairs), attributes=here(attributes),
                       labels=labels)
    if pairs and fmt is None:
        cfg = cfg.override("dataset", format="pairs")
    engine: str | tuple[str, ...] | None = (engines[0] if len(engines) == 1 else engines) or None
    cfg = cfg.override("system", engine=engine, embeddings=here(embeddings), scores=here(scores), distance=distance,
                       name=system_name, calibration=here(calibration))
    cfg = cfg.override("groups", by=by or None, intersections=_intersections(intersections))
    cfg = cfg.override("metrics", target_fmrs=fmrs or None)
    cfg = cfg.override("pairs", impostor_sample=impostor_sample)
    cfg = cfg.override("uncertainty", bootstrap=bootstrap, permutations=permutations, seed=seed)
    cfg = cfg.override("mitigation", methods=mitigate or None)
    cfg = cfg.override("run", workers=workers, cache=False if no_cache else None, cluster=cluster)
    res = run_audit(cfg, out, sign=sign, progress=not quiet, echo=lambda m: click.echo(_shown(m), err=True))
    for line in _audit_lines(res.results):
        click.echo(_shown(line))  # labels are the user's data: no terminal escapes reach the screen
    check = f"faceaudit verify-report {out}" + (" --pubkey YOUR_PUBLIC_KEY" if sign else "")
    click.echo(f"Report: {Path(out) / 'report.html'}  (also results.json, summary.md; check with `{check}`)")


def _audit_lines(results: dict[str, Any]) -> list[str]:
    from faceaudit.report.comparison import headline
    from faceaudit.report.findings import headlines

    if results.get("kind") == "comparison":
        names = [e["name"] for e in results["engines"]]
        lines = [f"{e['name']}: {e['protocol']['name']} accuracy {e['protocol']['accuracy']:.2%}"
                 for e in results["engines"] if e.get("protocol")]
        for a in results["analyses"]:
            lines.append(f"By {' x '.join(a['attributes'])}:")
            lines += [f"  {s}" for s in headline({"engines_order": names}, a, 0)]
        return lines
    lines = []
    if results.get("protocol"):
        p = results["protocol"]
        lines.append(f"{p['name']}: accuracy {p['accuracy']:.2%} (SE {p['standard_error']:.2%})")
    seen = set()
    for h in headlines(results):
        key = tuple(h.attributes)
        if key in seen:  # the first (largest) target FMR of each analysis is the headline
            continue
        seen.add(key)
        lines.append(f"By {' x '.join(h.attributes)}:")
        lines += [f"  {s}" for s in h.sentences()]
    return lines


@main.command()
@click.argument("predictions", type=click.Path(exists=True, dir_okay=False))
@click.option("--truth", required=True, help="Column with the true label (e.g. sex).")
@click.option("--predicted", required=True, help="Column with the classifier's label.")
@click.option("--by", "by", multiple=True, required=True, help="Subgroup attribute column (repeatable).")
@click.option("--separate", is_flag=True, help="Each --by alone instead of their intersection.")
@click.option("--positive", default=None, help="Positive class for TPR, FPR and PPV (default: every class).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="JSON file to write.")
def attributes(predictions: str, truth: str, predicted: str, by: tuple[str, ...], separate: bool,
               positive: str | None, out: str | None) -> None:
    """Accuracy of an attribute classifier per intersectional subgroup (Gender Shades style), from a CSV or
    Parquet file with the true and predicted labels."""
    import pandas as pd

    from faceaudit.io.manifest import read_table
    from faceaudit.metrics.attributes import attribute_table

    df = read_table(predictions, "a predictions file")
    res = attribute_table(df, truth, predicted, list(by), positive=positive, intersect=not separate)
    for analysis in res["analyses"]:
        table = pd.DataFrame([{k: v for k, v in r.items() if k != "values"} for r in analysis["groups"]])
        click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        click.echo(f"error gap (max - min): {analysis['error_gap']:.4f}")
    if res["unlabelled_rows"]:
        click.echo(f"{res['unlabelled_rows']} row(s) without a {truth!r} label were left out")
    if out:
        Path(out).write_text(json.dumps(res, indent=1) + "\n")
        click.echo(f"written: {out}")


@main.command()
@click.option("--private", "private_path", required=True, type=click.Path(dir_okay=False), help="Private key file.")
@click.option("--public", "public_path", required=True, type=click.Path(dir_okay=False), help="Public key file.")
def keygen(private_path: str, public_path: str) -> None:
    """Create an Ed25519 key pair for signing reports (keep the private key; publish the public one)."""
    from faceaudit.report.integrity import generate_key

    for p in (private_path, public_path):
        if Path(p).exists():
            raise click.ClickException(f"{p} exists; refusing to overwrite a key")
    generate_key(private_path, public_path)
    click.echo(f"written: {private_path} (private, mode 600), {public_path} (public)")


@main.command("sign-report")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="Ed25519 private key (PEM).")
def sign_report(folder: str, key: str) -> None:
    """Sign FOLDER's MANIFEST.sha256 (MANIFEST.sig) after checking every file against it.

    Refuses, listing the differences, when a file was changed, removed or added since the manifest was
    written. A folder without a manifest gets one over its files as they are now.
    """
    from faceaudit.report.integrity import MANIFEST, sign_folder

    done = sign_folder(folder, key)
    if done.new_manifest:
        click.echo(f"no {MANIFEST} was there: wrote one over the {done.files} file(s) as they are now (nothing to "
                   "check them against: make sure they are what you mean to sign)")
    else:
        click.echo(f"checked: all {done.files} file(s) match {MANIFEST}")
    click.echo(f"signed: {done.signature}" + (" (the previous signature was replaced)" if done.replaced_signature
                                              else ""))


@main.command("verify-report")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--pubkey", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Ed25519 public key (PEM) of the signer: check the signature too (without it, a signed report "
                   "fails verification and an unsigned one is checked for integrity only).")
def verify_report(folder: str, pubkey: str | None) -> None:
    """Check every file of a report FOLDER against its manifest and, with --pubkey, its signature.

    Exit 1 on any difference, on a signature that does not hold, and when the report is signed but no
    --pubkey was given (then nothing shows who wrote it). Without a signature or a key, only integrity
    against the shipped manifest is checked, and the output says so.
    """
    from faceaudit.report.integrity import verify_folder

    res = verify_folder(folder, pubkey)
    for line in res.describe():
        click.echo(line)
    click.echo(res.verdict())
    if not res.ok:
        sys.exit(1)


@main.command()
@click.option("--out", default="faceaudit-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--workers", type=int, default=None, help="Worker processes (default: all cores).")
@click.option("--sign", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Ed25519 private key: sign the report.")
def demo(out: str, workers: int | None, sign: str | None) -> None:
    """A complete audit of the bundled London faces (CC BY 4.0) by sex and by ethnicity."""
    from faceaudit.demo import run_demo

    res = run_demo(out, workers=workers, sign=sign)
    for line in _audit_lines(res.results):
        click.echo(line)
    click.echo(f"Report: {(Path(out) / 'report.html').resolve()}")


# --- gallery ---

class _GalleryGroup(click.Group):
    """The gallery and log commands: errors and warnings (an exposed key file) go to stderr with any control
    character in them (from a subject id, an actor or a role) shown escaped instead of sent to the terminal."""

    def invoke(self, ctx: click.Context) -> Any:
        import warnings

        from faceaudit.gallery.safety import printable

        def show(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
            click.echo(f"warning: {printable(message)}", err=True)

        with warnings.catch_warnings():
            warnings.showwarning = show
            try:
                return super().invoke(ctx)
            except FaceauditError as exc:
                raise click.ClickException(printable(str(exc))) from exc


def _published_head(text: str | None) -> tuple[int, str] | None:
    """``SEQ:HASH`` as given to --head (None when not given)."""
    import re

    if text is None:
        return None
    m = re.fullmatch(r"(\d+):([0-9a-f]{64})", text.strip())
    if not m:
        raise click.BadParameter("write the head as SEQ:HASH, e.g. 42:<64 lowercase hex digits>", param_hint="--head")
    return int(m.group(1)), m.group(2)


@main.group(cls=_GalleryGroup)
def gallery() -> None:
    """A gallery for 1:1 verification and (when the policy allows) 1:N search, with encrypted templates,
    consent per person, erasure and a tamper-evident log of every operation."""


def _gallery_options(f: Any) -> Any:
    import getpass

    f = click.option("--role", default="operator", show_default=True, help="Your role, as the policy names it.")(f)
    f = click.option("--actor", default=getpass.getuser, show_default="your user name",
                     help="Who runs the operation (recorded in the log).")(f)
    f = click.option("--key", "key_file", type=click.Path(dir_okay=False), default=None,
                     help="Gallery key file (default: $FACEAUDIT_GALLERY_KEY).")(f)
    return click.argument("folder", type=click.Path(file_okay=False))(f)


def _open(folder: str, key_file: str | None, actor: str, role: str, calibration: str | None = None) -> Any:
    from faceaudit.gallery.gallery import Gallery

    return Gallery.open(folder, key_file=key_file, actor=actor, role=role, calibration=calibration)


@gallery.command("keygen")
@click.argument("key_file", type=click.Path(dir_okay=False))
def gallery_keygen(key_file: str) -> None:
    """Create a gallery key (AES-256, base64; keep it apart from the gallery)."""
    from faceaudit.gallery.crypto import generate_key_file

    click.echo(f"written: {generate_key_file(key_file)} (mode 600)")


@gallery.command("init")
@_gallery_options
@click.option("--database", default=None, help="postgresql://... (default: FOLDER/gallery.sqlite).")
@click.option("--index", "index_kind", type=click.Choice(["exact", "hnsw", "pq"]), default="exact", show_default=True,
              help="Search index: exact (brute force), hnsw (graph), pq (4-bit codes scanned, best re-scored exactly).")
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Policy (TOML); default: enrol and 1:1 verify only, no 1:N search.")
@click.option("--engine", default=None, help="Engine (see `faceaudit engines`).")
def gallery_init(folder: str, key_file: str | None, actor: str, role: str, database: str | None, index_kind: str,
                 policy_file: str | None, engine: str | None) -> None:
    """Create a gallery in FOLDER."""
    from faceaudit.gallery.gallery import Gallery
    from faceaudit.gallery.policy import Policy

    pol = Policy.from_toml(policy_file) if policy_file else None
    with Gallery.init(folder, key_file=key_file, database=database, index=index_kind, engine=engine, policy=pol,
                      actor=actor, role=role) as g:
        click.echo(f"gallery created: {folder} ({g.store.dialect}, {index_kind} index, engine {g.settings.engine}); "
                   f"1:N search {'on' if g.policy.search.enabled else 'off'}")


@gallery.command("enrol")
@_gallery_options
@click.argument("subject")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--consent-by", required=True, help="Who gave consent.")
@click.option("--consent-date", required=True, help="When (YYYY-MM-DD).")
@click.option("--legal-basis", required=True, help="Legal basis of the processing.")
@click.option("--expires", default=None, help="End of consent (YYYY-MM-DD); default: the policy's retention.")
def gallery_enrol(folder: str, key_file: str | None, actor: str, role: str, subject: str, images: tuple[str, ...],
                  consent_by: str, consent_date: str, legal_basis: str, expires: str | None) -> None:
    """Enrol SUBJECT from IMAGES (one face each) with a consent record."""
    from faceaudit.gallery.gallery import Consent

    with _open(folder, key_file, actor, role) as g:
        ids = g.enrol(subject, Consent(consent_by, consent_date, legal_basis, expires), images=list(images))
    click.echo(f"enrolled {_shown(subject)}: template(s) {', '.join(map(str, ids))}")


@gallery.command("search")
@_gallery_options
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--purpose", default=None, help="The declared purpose (must be the policy's).")
@click.option("--legal-basis", default=None, help="The declared legal basis (must be the policy's).")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Candidates to return.")
@click.option("--fpir", type=float, default=0.01, show_default=True, help="Target false positive identification rate.")
@click.option("--json", "as_json", is_flag=True)
@_calibration_option
def gallery_search(folder: str, key_file: str | None, actor: str, role: str, image: str, purpose: str | None,
                   legal_basis: str | None, k: int, fpir: float, as_json: bool, calibration: str | None) -> None:
    """1:N search of IMAGE (only where the policy allows it, for its declared purpose)."""
    with _open(folder, key_file, actor, role, calibration) as g:
        res = g.search(image=image, k=k, fpir=fpir, purpose=purpose, legal_basis=legal_basis)
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=1))
        return
    click.echo(f"threshold {res.threshold:.4f} for FPIR {fpir:g} over {res.gallery_size:,} templates "
               f"(log entry {res.log_seq})")
    if res.calibration is not None:
        click.echo(f"scores calibrated with {res.calibration['method']} (sha256 {res.calibration['sha256'][:16]}...)")
    for c in res.candidates:
        click.echo(f"  {c.rank:>2}. {_shown(c.subject_id)}  score {c.score:.4f}  "
                   f"{'MATCH' if c.match else 'below threshold'}")
    if res.investigative_lead:
        click.echo("Candidates are investigative leads for a person to review, not identifications.")


@gallery.command("verify")
@_gallery_options
@click.argument("subject")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--fmr", type=float, default=None,
              help="Target false match rate [default: 1e-4; with --calibration, the FMR it was fitted at].")
@click.option("--json", "as_json", is_flag=True)
@_calibration_option
def gallery_verify(folder: str, key_file: str | None, actor: str, role: str, subject: str, image: str,
                   fmr: float | None, as_json: bool, calibration: str | None) -> None:
    """1:1: is IMAGE the enrolled SUBJECT?"""
    with _open(folder, key_file, actor, role, calibration) as g:
        r = g.verify(subject, image=image, fmr=fmr)
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    click.echo(f"{'MATCH' if r['match'] else 'NO MATCH'}: score {r['score']:.4f}, threshold {r['threshold']:.4f}"
               + ("" if r["calibration"] is None else
                  f" (calibrated with {r['calibration']['method']}, sha256 {r['calibration']['sha256'][:16]}...)"))


_subject_request = click.option(
    "--subject-request", is_flag=True,
    help="The subject asked for this themselves (recorded in the log); otherwise your role needs the operation in "
         "the policy's [roles].")


def _shown(text: object) -> str:
    from faceaudit.gallery.safety import printable

    return printable(text)


@gallery.command("delete")
@_gallery_options
@click.argument("subject")
@_subject_request
def gallery_delete(folder: str, key_file: str | None, actor: str, role: str, subject: str,
                   subject_request: bool) -> None:
    """Erase SUBJECT: templates and consent from the store, the index and its file (logged)."""
    with _open(folder, key_file, actor, role) as g:
        ids = g.delete(subject, requested_by_subject=subject_request)
        problems = g.verify_erasure(subject, ids)
    click.echo(f"erased {_shown(subject)}: {len(ids)} template(s)"
               + ("" if not problems else "; " + _shown("; ".join(problems))))
    if problems:
        sys.exit(1)


@gallery.command("verify-erasure")
@_gallery_options
@click.argument("subject")
def gallery_verify_erasure(folder: str, key_file: str | None, actor: str, role: str, subject: str) -> None:
    """Check that nothing of an erased SUBJECT is left (exit 1 if something is)."""
    with _open(folder, key_file, actor, role) as g:
        problems = g.verify_erasure(subject)
    for p in problems:
        click.echo(f"  {_shown(p)}")
    click.echo("erased: nothing left" if not problems else "NOT fully erased")
    if problems:
        sys.exit(1)


@gallery.command("export")
@_gallery_options
@click.argument("subject")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSON file to write (mode 600).")
@_subject_request
def gallery_export(folder: str, key_file: str | None, actor: str, role: str, subject: str, out: str,
                   subject_request: bool) -> None:
    """Everything held about SUBJECT (subject-access request), as JSON: templates in plaintext."""
    from faceaudit.gallery.safety import write_private

    with _open(folder, key_file, actor, role) as g:
        doc = g.export(subject, requested_by_subject=subject_request)
    write_private(out, json.dumps(doc, indent=1) + "\n")
    click.echo(f"written: {_shown(out)} ({len(doc['templates'])} template(s), {len(doc['log_entries'])} log entries)")


@gallery.command("rotate-key")
@_gallery_options
@click.option("--new-key", required=True, type=click.Path(exists=True, dir_okay=False), help="The new key file.")
def gallery_rotate_key(folder: str, key_file: str | None, actor: str, role: str, new_key: str) -> None:
    """Re-encrypt every template (and the index) under a new key."""
    from faceaudit.gallery.crypto import TemplateCipher

    with _open(folder, key_file, actor, role) as g:
        n = g.rotate_key(TemplateCipher.load(new_key))
    click.echo(f"{n} template(s) re-encrypted; use {new_key} from now on")


@gallery.command("expire")
@_gallery_options
def gallery_expire(folder: str, key_file: str | None, actor: str, role: str) -> None:
    """Erase everyone whose consent or retention period has ended."""
    with _open(folder, key_file, actor, role) as g:
        gone = g.expire()
    click.echo(f"expired: {_shown(', '.join(gone)) if gone else 'nobody'}")


@gallery.command("policy")
@_gallery_options
@click.argument("policy_file", type=click.Path(exists=True, dir_okay=False))
def gallery_policy(folder: str, key_file: str | None, actor: str, role: str, policy_file: str) -> None:
    """Replace the gallery's policy (logged with the old and new rules)."""
    from faceaudit.gallery.policy import Policy

    with _open(folder, key_file, actor, role) as g:
        g.set_policy(Policy.from_toml(policy_file))
    click.echo("policy replaced")


@gallery.command("seal")
@_gallery_options
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Replace the stored policy with this one (TOML) and seal that; without it the stored policy is "
                   "sealed only if the audit log vouches for it.")
@click.option("--head", default=None, help="A published head, SEQ:HASH, the log must still hold.")
def gallery_seal(folder: str, key_file: str | None, actor: str, role: str, policy_file: str | None,
                 head: str | None) -> None:
    """Seal a gallery whose policy or log head fails authentication, or one made before galleries were sealed
    (logged, with the problems found)."""
    from faceaudit.gallery.gallery import Gallery
    from faceaudit.gallery.policy import Policy

    pol = Policy.from_toml(policy_file) if policy_file else None
    found = Gallery.seal(folder, key_file=key_file, actor=actor, role=role, policy=pol, head=_published_head(head))
    for p in found:
        click.echo(f"  {_shown(p)}")
    if not found and pol is None:
        click.echo("nothing to seal: the policy and the log head are intact")
    else:
        click.echo(("sealed with the policy from " + _shown(policy_file) if policy_file else "sealed the stored policy")
                   + ("; the problems above are recorded in the audit log" if found else ""))


@main.group("log", cls=_GalleryGroup)
def log_group() -> None:
    """The gallery's audit log."""


@log_group.command("verify")
@_gallery_options
@click.option("--head", default=None, help="A published head, SEQ:HASH, to check the log against.")
def log_verify(folder: str, key_file: str | None, actor: str, role: str, head: str | None) -> None:
    """Check the hash chain of FOLDER's log (any edited, deleted, inserted or reordered entry is named) and the
    seal over its policy and head; with --head, that the log still holds that published head."""
    from faceaudit.gallery.gallery import Gallery

    res = Gallery.check(folder, key_file=key_file, head=_published_head(head))
    for p in res.chain.problems:
        click.echo(f"  {_shown(p)}")
    for p in res.seal_problems:
        click.echo(f"  seal: {_shown(p)}")
    where = f"head {res.head[0]}:{res.head[1]}" if res.head else "no head stored"
    click.echo(f"{'OK' if res.ok else 'FAILED'}: {res.chain.entries} entries; {where}")
    if not res.ok:
        sys.exit(1)



# --- the service ---

@main.command()
@click.option("--gallery", "gallery_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The gallery the service serves (its database also holds the API keys and audit jobs).")
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Gallery key file (default: $FACEAUDIT_GALLERY_KEY); read by the server only. Key rotation over "
                   "the API writes the new key here.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Server processes (each loads the engine once); use PostgreSQL for more than a few.")
@click.option("--data-root", type=click.Path(exists=True, file_okay=False), default=None,
              help="Audit jobs may only read datasets under this folder.")
@click.option("--rate-per-minute", type=click.IntRange(1), default=600, show_default=True,
              help="Requests per minute per API key (per server process).")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds before a request is answered 504.")
@click.option("--audit-workers", type=click.IntRange(1), default=1, show_default=True,
              help="Audit jobs run at once per server process.")
@click.option("--max-body-mb", type=click.IntRange(1), default=32, show_default=True,
              help="Largest request body, in MiB (413 above it).")
@click.option("--max-images", type=click.IntRange(1), default=16, show_default=True,
              help="Most images in one request.")
@click.option("--max-pixels", type=click.IntRange(1), default=40_000_000, show_default=True,
              help="Most pixels in one image, checked from its header before it is decoded.")
@click.option("--jobs-dir", type=click.Path(file_okay=False), default=None,
              help="Where audit jobs write their reports (default: GALLERY/jobs).")
@click.option("--sign", "report_key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Ed25519 private key (faceaudit keygen): the reports of audit jobs are signed with it.")
@_calibration_option
@cluster_option
def serve(gallery_dir: str, key_file: str | None, host: str, port: int, workers: int, data_root: str | None,
          rate_per_minute: int, request_timeout: float, audit_workers: int, max_body_mb: int, max_images: int,
          max_pixels: int, jobs_dir: str | None, report_key: str | None, calibration: str | None,
          cluster: str | None) -> None:
    """Serve recognition, the gallery and audits over HTTP (uvicorn), with API keys (`faceaudit keys`)."""
    import os
    import shutil
    import tempfile

    import uvicorn

    from faceaudit.gallery.gallery import Gallery
    from faceaudit.service.settings import ServiceSettings

    try:
        settings = ServiceSettings(gallery=Path(gallery_dir), key_file=None if key_file is None else Path(key_file),
                                   data_root=None if data_root is None else Path(data_root),
                                   rate_per_minute=rate_per_minute, request_timeout_s=request_timeout,
                                   audit_workers=audit_workers, max_body_bytes=max_body_mb * 2**20,
                                   max_images_per_request=max_images, max_image_pixels=max_pixels, cluster=cluster,
                                   report_key=None if report_key is None else Path(report_key),
                                   jobs_dir=None if jobs_dir is None else Path(jobs_dir),
                                   calibration=None if calibration is None else Path(calibration))
        # a wrong key, a failed seal, an altered calibration or one for another engine: say so before starting
        Gallery.open(gallery_dir, key_file=key_file, calibration=calibration).close()
    except FaceauditError as exc:
        raise click.ClickException(str(exc)) from exc
    # every worker process builds its app from these (uvicorn imports the factory by name in each)
    os.environ.update(settings.to_env())
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # one /metrics for all workers: prometheus_client adds up the values they keep in this folder
        metrics_dir = tempfile.mkdtemp(prefix="faceaudit-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run("faceaudit.service.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level="info", timeout_graceful_shutdown=30)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@main.group("keys", cls=_GalleryGroup)
def keys_group() -> None:
    """API keys of the service: 256-bit random, shown once, stored as SHA-256 hashes in the gallery's database;
    each has a role of the gallery policy, and its name is the actor in the gallery's log."""


def _keys_options(f: Any) -> Any:
    import getpass

    f = click.option("--actor", default=getpass.getuser, show_default="your user name",
                     help="Who manages the key (recorded in the log).")(f)
    f = click.option("--key", "key_file", type=click.Path(dir_okay=False), default=None,
                     help="Gallery key file (default: $FACEAUDIT_GALLERY_KEY).")(f)
    return click.option("--gallery", "gallery_dir", required=True, type=click.Path(exists=True, file_okay=False),
                        help="The gallery the service serves.")(f)


def _open_for_keys(gallery_dir: str, key_file: str | None, actor: str) -> Any:
    from faceaudit.gallery.gallery import Gallery

    # whoever holds the gallery key manages the service's keys; the log records them in that capacity
    return Gallery.open(gallery_dir, key_file=key_file, actor=actor, role="gallery-key")


@keys_group.command("create")
@_keys_options
@click.option("--name", required=True, help="The key's name: the actor in the log for every request made with it.")
@click.option("--role", required=True, help="A role of the gallery policy.")
def keys_create(gallery_dir: str, key_file: str | None, actor: str, name: str, role: str) -> None:
    """Create an API key; it is printed once, on stdout, and stored only as a hash."""
    from faceaudit.service.keys import create_key

    with _open_for_keys(gallery_dir, key_file, actor) as g:
        key, record = create_key(g, name, role)
    click.echo(f"key {_shown(record.name)} (role {_shown(record.role)}, id {record.key_id}) created; it is shown "
               "only now:", err=True)
    click.echo(key)


@keys_group.command("list")
@_keys_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def keys_list(gallery_dir: str, key_file: str | None, actor: str, as_json: bool) -> None:
    """List the API keys (names, roles, ids, when created and revoked; never the keys)."""
    from dataclasses import asdict

    from faceaudit.service.keys import list_keys

    with _open_for_keys(gallery_dir, key_file, actor) as g:
        records = list_keys(g.store)
    if as_json:
        click.echo(json.dumps([asdict(r) for r in records], indent=1))
        return
    for r in records:
        state = f"revoked {r.revoked}" if r.revoked else "active"
        click.echo(f"{_shown(r.name)}  role {_shown(r.role)}  id {r.key_id}  created {r.created}  {state}")
    if not records:
        click.echo("no keys")


@keys_group.command("revoke")
@_keys_options
@click.option("--name", required=True, help="The key to revoke.")
def keys_revoke(gallery_dir: str, key_file: str | None, actor: str, name: str) -> None:
    """Revoke an API key: refused from the next request on, in every server process (logged)."""
    from faceaudit.service.keys import revoke_key

    with _open_for_keys(gallery_dir, key_file, actor) as g:
        record = revoke_key(g, name)
    click.echo(f"key {_shown(record.name)} (id {record.key_id}) revoked")

if __name__ == "__main__":
    main()
