"""Audit jobs: what was asked, by whom, and how far it got, kept in the gallery's database.

A job is one audit (:func:`faceaudit.audit.run.run_audit`) submitted over HTTP, either as an audit config
whose every path lies under the server's data root, or as an uploaded manifest and score file. Its row in
``audit_jobs`` holds the effective config (TOML: the text the report's ``config.toml`` will hold), the owner
(the API key's name), the state (``queued``, ``running``, ``done``, ``failed``, ``cancelled``), the progress,
the times, the error and the report folder, plus the lease the running server holds on it
(:mod:`faceaudit.service.jobrunner` claims, heartbeats and requeues jobs). The table is created through
:class:`~faceaudit.gallery.store.Store` transactions in portable SQL, so the same code runs on SQLite and on
PostgreSQL, and several server processes on one PostgreSQL gallery share one queue.

Every job has a folder under the jobs folder::

    <jobs>/<id>/cache.sqlite   the audit's embedding cache: a requeued job resumes from it
    <jobs>/<id>/input/         uploaded manifest and score file
    <jobs>/<id>/report/        the report folder, moved into place whole when the audit finishes
    <jobs>/<id>/audit.log      what the audit process printed (warnings, tracebacks of internal errors)
    <jobs>/<id>/report.tar.gz  the download, built from the finished report on first request (or .zip)

This module does not import FastAPI: the routes (:mod:`faceaudit.service.routes.audits`) and the page
translate its errors (:class:`JobInputError`, :class:`JobStateError`) into problem details.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shutil
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from faceaudit.audit.config import MAX_CONFIG_BYTES, AuditConfig
from faceaudit.errors import FaceauditError, InputError
from faceaudit.gallery.store import Store, Tx

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
KINDS = ("config", "scores")
ARCHIVE_FORMATS = ("tar.gz", "zip")
#: A job id: 32 hex digits (a random UUID's worth), checked before it names a folder.
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
#: Largest uploaded manifest or score file kept (bytes); the request body limit usually binds first.
MAX_UPLOAD_BYTES = 1 << 30
#: Images named in a refusal before "... and N more".
SHOWN = 5
#: The largest ``[run] batch_size`` a job may ask for: a batch's images are held in memory together, and
#: clamping instead would change the crops embedded together (and so, in the last digits, the numbers).
MAX_BATCH_SIZE = 256

_SCHEMA = [
    # lease_until is seconds since the epoch: DOUBLE PRECISION on both databases (PostgreSQL's REAL is 4 bytes,
    # which cannot tell one second from the next at today's epoch)
    """CREATE TABLE IF NOT EXISTS audit_jobs (
           id TEXT PRIMARY KEY, state TEXT NOT NULL, kind TEXT NOT NULL, title TEXT NOT NULL,
           owner TEXT NOT NULL, config TEXT NOT NULL, created TEXT NOT NULL, started TEXT, finished TEXT,
           phase TEXT NOT NULL, fraction DOUBLE PRECISION, message TEXT, error TEXT, report TEXT,
           attempts INTEGER NOT NULL, cancel_requested INTEGER NOT NULL,
           lease_owner TEXT, lease_until DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS audit_jobs_state ON audit_jobs(state, created)",
    "CREATE INDEX IF NOT EXISTS audit_jobs_owner ON audit_jobs(owner, created)",
]
COLUMNS = ("id, state, kind, title, owner, config, created, started, finished, phase, fraction, message, error, "
           "report, attempts, cancel_requested")


class JobInputError(InputError):
    """A submission that cannot become a job; ``kind`` is the problem type (``invalid-config``,
    ``outside-data-root``, ``no-data-root``, ``invalid-upload``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class JobStateError(FaceauditError):
    """An operation the job's state does not allow (a report of a job not done, a cancel of a finished job)."""

    def __init__(self, job: Job, message: str) -> None:
        super().__init__(message)
        self.job = job


@dataclass(frozen=True)
class Progress:
    phase: str  # queued, starting, embedding, comparing, reading scores, evaluating, done, failed, cancelled
    fraction: float | None  # of the phase, when the phase can say (embedding: images done / images)
    message: str | None  # the audit's last line (a warning, the engine being run)


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    kind: str
    title: str
    owner: str
    config: str  # the effective audit config, TOML
    created: str
    started: str | None
    finished: str | None
    progress: Progress
    error: str | None
    report: Path | None  # the report folder, once done
    attempts: int
    cancel_requested: bool

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Job:
        (id_, state, kind, title, owner, config, created, started, finished, phase, fraction, message, error,
         report, attempts, cancel) = row
        return cls(str(id_), str(state), str(kind), str(title), str(owner), str(config), str(created), started,
                   finished, Progress(str(phase), None if fraction is None else float(fraction), message), error,
                   None if report is None else Path(report), int(attempts), bool(cancel))

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class ScoreAudit:
    """An audit from another system's scores: what the uploaded manifest and score file are audited for."""

    by: tuple[str, ...]
    intersections: tuple[tuple[str, ...], ...] = ()
    target_fmrs: tuple[float, ...] | None = None
    distance: bool = False
    system_name: str | None = None
    title: str | None = None
    labels: str | None = None  # how the labels were obtained, in the submitter's words
    dataset_name: str | None = None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def ensure_schema(store: Store) -> None:
    with store.transaction() as tx:
        for sql in _SCHEMA:
            tx.run(sql)


def job_folder(jobs_dir: Path, job_id: str) -> Path:
    """The job's folder; the id is checked first, so it never names a path outside ``jobs_dir``."""
    if not JOB_ID.match(job_id):
        raise JobInputError("invalid-job-id", f"{job_id!r} is not a job id (32 hex digits)")
    return jobs_dir / job_id


# --- submissions ---

def submit_config(store: Store, jobs_dir: Path, owner: str, text: str, data_root: Path | None, *,
                  cluster: str | None = None) -> Job:
    """Queue an audit described by a config's TOML text; every path in it (and every image its dataset
    lists) must lie under ``data_root`` once resolved, symlinks followed. Relative paths start at the data
    root. JobInputError says what to change."""
    if data_root is None:
        raise JobInputError("no-data-root", "this server takes no audit configs: it was started without a data "
                                            "root (`faceaudit serve --data-root DIR`); upload a manifest and a "
                                            "score file instead")
    job_id = _new_id()
    folder = _make_folder(jobs_dir, job_id)
    try:
        cfg = prepare_config(text, data_root, cache=folder / "cache.sqlite", cluster=cluster)
        return _insert(store, job_id, "config", owner, cfg)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def submit_scores(store: Store, jobs_dir: Path, owner: str, manifest: bytes, scores: bytes, options: ScoreAudit,
                  *, cluster: str | None = None) -> Job:
    """Queue an audit of another system's score file (``id_a,id_b,score``) over its manifest
    (``id,subject_id,labels``), both uploaded and kept in the job's folder."""
    from faceaudit.io.scores import iter_pairs, read_score_manifest

    job_id = _new_id()
    folder = _make_folder(jobs_dir, job_id)
    try:
        inputs = folder / "input"
        inputs.mkdir(mode=0o700)
        manifest_path = _save_upload(inputs, "manifest", manifest)
        scores_path = _save_upload(inputs, "scores", scores)
        raw: dict[str, Any] = {
            "dataset": {"path": str(manifest_path), "format": "manifest"},
            "system": {"scores": str(scores_path), "distance": options.distance},
            "groups": {"by": list(options.by), "intersections": [list(i) for i in options.intersections]},
            # intervals and permutation tests need all pairs among the people; a score file gives only its pairs
            "uncertainty": {"bootstrap": 0, "permutations": 0},
        }
        for section, key, value in (("", "title", options.title), ("dataset", "labels", options.labels),
                                    ("dataset", "name", options.dataset_name),
                                    ("system", "name", options.system_name),
                                    ("metrics", "target_fmrs", None if options.target_fmrs is None
                                     else list(options.target_fmrs))):
            if value is not None:
                (raw.setdefault(section, {}) if section else raw)[key] = value
        cfg = _with_run(_config_from(raw, folder, "the audit options"), folder / "cache.sqlite", cluster)
        try:
            cfg.check()
            table = read_score_manifest(manifest_path)  # a bad upload is refused now, not found out by the job
            next(iter_pairs(scores_path, None, chunk_rows=1000), None)  # its columns, and that it can be read
        except InputError as exc:  # named as the submitter knows them, not by where the server keeps them
            why = str(exc).replace(str(manifest_path), "the manifest").replace(str(scores_path), "the score file")
            raise JobInputError("invalid-upload", why) from exc
        labels = [c for c in table.columns if c not in ("id", "subject_id", "path")]
        if not any(all(a in labels for a in g) for g in cfg.groupings()):  # as the audit would find, only sooner
            raise JobInputError("invalid-upload", f"none of the groups asked for can be formed: the manifest's label "
                                                  f"columns are {', '.join(labels) or 'none'}")
        return _insert(store, job_id, "scores", owner, cfg)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def prepare_config(text: str, data_root: Path, *, cache: Path, cluster: str | None) -> AuditConfig:
    """The effective config of a submitted config text: validated, paths resolved against the data root and
    checked to lie under it, ``[run]`` set by the server (see :func:`_with_run`)."""
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise JobInputError("invalid-config", f"the config is larger than {MAX_CONFIG_BYTES:,} bytes")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobInputError("invalid-config", f"the config is not valid TOML ({exc})") from None
    except RecursionError:
        raise JobInputError("invalid-config", "the config nests values too deeply") from None
    root = data_root.resolve()
    cfg = _with_run(_resolve_engines(_config_from(raw, root, "config"), root), cache, cluster)
    check_under_root(cfg, raw, root)
    try:
        cfg.check()
    except InputError as exc:
        raise JobInputError("invalid-config", str(exc)) from exc
    check_images_under_root(cfg, root)
    return cfg


def _config_from(raw: dict[str, Any], base: Path, where: str) -> AuditConfig:
    try:
        return AuditConfig.from_dict(raw, base_dir=base, where=where)
    except InputError as exc:
        raise JobInputError("invalid-config", str(exc)) from exc
    except RecursionError:
        raise JobInputError("invalid-config", "the config nests values too deeply") from None


def _with_run(cfg: AuditConfig, cache: Path, cluster: str | None) -> AuditConfig:
    """``[run]`` is the server's business, whatever the submitter wrote: the embedding cache is the job's own
    file (shared by its attempts, so a requeued job resumes; a submitted path would make the server write a
    file of the submitter's choosing), the cluster is the server's (``--cluster``; a submitted address would
    make the server connect wherever it was told), and workers are at most this machine's cores. None of
    these change the numbers: results.json is the CLI's for the same config."""
    if not 1 <= cfg.run.batch_size <= MAX_BATCH_SIZE:
        raise JobInputError("invalid-config", f"[run] batch_size = {cfg.run.batch_size}: this server takes 1 to "
                                              f"{MAX_BATCH_SIZE}")
    cores = os.cpu_count() or 1
    workers = None if cfg.run.workers is None else max(1, min(cfg.run.workers, cores))
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, cache=str(cache), cluster=cluster,
                                                            workers=workers))


#: The config's file keys: (section, key) -> how the refusal names it.
_PATH_KEYS = (("dataset", "path"), ("dataset", "pairs"), ("dataset", "image_root"), ("dataset", "attributes"),
              ("system", "embeddings"), ("system", "scores"), ("system", "calibration"))


def check_under_root(cfg: AuditConfig, raw: dict[str, Any], root: Path) -> None:
    """Refuse a config naming a file outside ``root``: paths were resolved (``..`` and symlinks followed) by
    :meth:`AuditConfig.from_dict`; the refusal quotes the path as submitted, never where a symlink leads."""
    named: list[tuple[str, str, str]] = []  # (key, as given, resolved)
    for section, key in _PATH_KEYS:
        value = getattr(getattr(cfg, section), key)
        if value is not None:
            named.append((f"[{section}] {key}", str(raw.get(section, {}).get(key, value)), value))
    for given, engine in zip(_engine_names(raw), cfg.system.engines(), strict=False):
        if engine is not None and engine.startswith("onnx:"):  # a model file the server would read and run
            named.append(("[system] engine", given, engine.removeprefix("onnx:")))
    for key, given, resolved in named:
        if not _is_under(Path(resolved), root):
            raise JobInputError("outside-data-root",
                                f"{key} = {given!r} lies outside the server's data root (after resolving '..' "
                                "and symbolic links): an audit may read only datasets the server's operator put "
                                "under the data root. Name a path relative to the data root")


def _resolve_engines(cfg: AuditConfig, root: Path) -> AuditConfig:
    """``onnx:PATH`` engines with their model path resolved against the data root, like the config's other
    paths (the audit process would otherwise read a relative path from its own working folder)."""
    engine = cfg.system.engine
    if engine is None:
        return cfg

    def fix(name: str) -> str:
        if not name.startswith("onnx:"):
            return name
        return "onnx:" + str((root / Path(name.removeprefix("onnx:")).expanduser()).resolve())

    fixed: str | tuple[str, ...] = fix(engine) if isinstance(engine, str) else tuple(fix(e) for e in engine)
    return dataclasses.replace(cfg, system=dataclasses.replace(cfg.system, engine=fixed))


def _engine_names(raw: dict[str, Any]) -> list[str]:
    engine = raw.get("system", {}).get("engine") if isinstance(raw.get("system"), dict) else None
    if isinstance(engine, str):
        return [engine]
    return [str(e) for e in engine] if isinstance(engine, list) else []


def _is_under(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def check_images_under_root(cfg: AuditConfig, root: Path) -> None:
    """Every image the dataset lists must lie under ``root`` too: a manifest under the data root could list
    ``/etc/shadow`` or ``../../home/x.jpg``, and the audit would read it (its failure to decode, quoted in the
    report, would tell whether it exists). Loading the dataset also refuses a dataset the audit could not read,
    now rather than in the job."""
    if cfg.system.scores or cfg.system.embeddings:
        return  # a score manifest lists ids, an embeddings file holds vectors: no image is read
    from faceaudit.io.datasets import load_dataset
    from faceaudit.io.manifest import FILE_COLUMN

    d = cfg.dataset
    assert d.path is not None  # AuditConfig.check
    try:
        ds = load_dataset(d.path, d.format, pairs=d.pairs, image_root=d.image_root, attributes=d.attributes)
    except InputError as exc:
        raise JobInputError("invalid-config", str(exc)) from exc
    outside = [str(p) for p, f in zip(ds.table["path"], ds.table[FILE_COLUMN], strict=True)
               if not _is_under(Path(str(f)).resolve(), root)]
    if outside:
        shown = ", ".join(repr(p) for p in outside[:SHOWN]) + (f" and {len(outside) - SHOWN:,} more"
                                                               if len(outside) > SHOWN else "")
        raise JobInputError("outside-data-root",
                            f"the dataset lists {len(outside):,} image(s) outside the server's data root (after "
                            f"resolving '..' and symbolic links): {shown}. An audit may read only images under "
                            "the data root")


def _save_upload(folder: Path, name: str, data: bytes) -> Path:
    """Keep an uploaded table as CSV or Parquet (by its content: Parquet files start with ``PAR1``)."""
    if not data:
        raise JobInputError("invalid-upload", f"the {name} file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise JobInputError("invalid-upload", f"the {name} file is larger than {MAX_UPLOAD_BYTES:,} bytes")
    path = folder / f"{name}.{'parquet' if data[:4] == b'PAR1' else 'csv'}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _new_id() -> str:
    return secrets.token_hex(16)


def _make_folder(jobs_dir: Path, job_id: str) -> Path:
    jobs_dir.mkdir(parents=True, exist_ok=True)
    folder = job_folder(jobs_dir, job_id)
    folder.mkdir(mode=0o700)
    folder.chmod(0o700)  # mkdir's mode is filtered by the umask: inputs and logs are for the server alone
    return folder


def _insert(store: Store, job_id: str, kind: str, owner: str, cfg: AuditConfig) -> Job:
    with store.transaction() as tx:
        tx.run(f"INSERT INTO audit_jobs ({COLUMNS}, lease_owner, lease_until) "
               "VALUES (?, 'queued', ?, ?, ?, ?, ?, NULL, NULL, 'queued', NULL, NULL, NULL, NULL, 0, 0, NULL, NULL)",
               (job_id, kind, cfg.title, owner, cfg.to_toml(), now_iso()))
        job = _get(tx, job_id)
    assert job is not None
    return job


# --- reading and cancelling ---

def _get(tx: Tx, job_id: str) -> Job | None:
    row = tx.one(f"SELECT {COLUMNS} FROM audit_jobs WHERE id = ?", (job_id,))
    return None if row is None else Job.from_row(row)


def get_job(store: Store, job_id: str) -> Job | None:
    if not JOB_ID.match(job_id):
        return None
    with store.transaction() as tx:
        return _get(tx, job_id)


def list_jobs(store: Store, *, owner: str | None = None, state: str | None = None, limit: int = 100,
              offset: int = 0) -> list[Job]:
    """Jobs, newest first; only ``owner``'s and in ``state`` when given."""
    where, params = [], []
    if owner is not None:
        where.append("owner = ?")
        params.append(owner)
    if state is not None:
        where.append("state = ?")
        params.append(state)
    sql = f"SELECT {COLUMNS} FROM audit_jobs" + (f" WHERE {' AND '.join(where)}" if where else "")
    with store.transaction() as tx:
        rows = tx.rows(sql + " ORDER BY created DESC, id DESC LIMIT ? OFFSET ?", (*params, int(limit), int(offset)))
    return [Job.from_row(r) for r in rows]


def count_jobs(store: Store) -> dict[str, int]:
    """How many jobs are in each state (every state listed, zeros included)."""
    with store.transaction() as tx:
        rows = tx.rows("SELECT state, COUNT(*) FROM audit_jobs GROUP BY state")
    counts = dict.fromkeys(STATES, 0)
    counts.update({str(s): int(n) for s, n in rows})
    return counts


def request_cancel(store: Store, job_id: str) -> Job:
    """Cancel a job: a queued one at once; a running one is marked, and the server running it kills its audit
    process and marks it cancelled within a heartbeat. JobStateError for a finished job, KeyError for none."""
    with store.transaction() as tx:
        job = _get(tx, job_id) if JOB_ID.match(job_id) else None
        if job is None:
            raise KeyError(job_id)
        if job.final:
            raise JobStateError(job, f"job {job_id} is {job.state} already; there is nothing to cancel")
        if job.state == "queued":
            tx.run("UPDATE audit_jobs SET state = 'cancelled', phase = 'cancelled', fraction = NULL, finished = ?, "
                   "cancel_requested = 1 WHERE id = ? AND state = 'queued'", (now_iso(), job_id))
        else:
            tx.run("UPDATE audit_jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        job = _get(tx, job_id)
    assert job is not None
    return job


# --- the report archive ---

def report_archive(jobs_dir: Path, job: Job, fmt: str = "tar.gz") -> Path:
    """The finished report folder as one archive (``tar.gz`` or ``zip``), every file under ``audit-<id>/``,
    ``MANIFEST.sha256`` (and ``MANIFEST.sig`` when signed) included: the receiver checks it with
    ``faceaudit verify-report``. Built once (a report never changes once done) and kept beside the report."""
    if fmt not in ARCHIVE_FORMATS:
        raise JobInputError("invalid-format", f"archive format {fmt!r}: use one of {', '.join(ARCHIVE_FORMATS)}")
    if job.state != "done" or job.report is None:
        raise JobStateError(job, f"job {job.id} is {job.state}: "
                            + ("its report is not written yet" if not job.final else "it has no report"))
    folder = job_folder(jobs_dir, job.id)
    out = folder / f"report.{fmt}"
    if out.is_file():
        return out
    if not (job.report / "MANIFEST.sha256").is_file():
        raise JobStateError(job, f"job {job.id} is done, but its report folder is no longer on the server")
    tmp = folder / f".report.{fmt}.{secrets.token_hex(8)}.tmp"
    top = PurePosixPath(f"audit-{job.id}")
    try:
        if fmt == "zip":
            with zipfile.ZipFile(tmp, "x", zipfile.ZIP_DEFLATED) as z:
                for rel, path in _report_files(job.report):
                    z.write(path, str(top / rel))
        else:
            with tarfile.open(tmp, "x:gz") as t:
                for rel, path in _report_files(job.report):
                    t.add(path, str(top / rel), recursive=False, filter=_plain_member)
        os.replace(tmp, out)  # whole or absent: two downloads at once each build, the last rename wins
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _report_files(report: Path) -> Iterator[tuple[str, Path]]:
    """Regular files of the report, sorted, with their paths relative to it (a report holds no links)."""
    for path in sorted(report.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path.relative_to(report).as_posix(), path


def _plain_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No owner names or ids of the server's accounts in a downloaded archive."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
