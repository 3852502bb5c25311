"""Run queued audit jobs: claim one atomically, run it in its own process, keep its lease, requeue it after a crash.

One :class:`JobRunner` per server process, with ``slots`` jobs at once. A background thread (never the event
loop) does everything, on its own database connection:

- Claim. A queued job becomes ``running`` with this runner's lease in one transaction: the oldest queued row
  is selected (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so runners of other server processes skip a row being
  claimed rather than wait for it) and updated ``WHERE state = 'queued'``; an update that changed no row lost
  the race. SQLite's ``BEGIN IMMEDIATE`` (every :meth:`Store.transaction`) already admits one writer at a time.
- Run. Each attempt is a ``spawn``-ed process (``fork`` deadlocks once OpenCV's threads have run, see
  :mod:`faceaudit.engines.batch`) that starts its own process group, so a cancel kills the audit together with
  its embedding workers. The process reports progress through a pipe; the runner writes it into the job's row.
- Lease. Every second the runner renews the lease of each job it runs (``lease_seconds`` ahead) and reads the
  job's cancel flag; a renewal that changes no row means the job was taken from it (its lease expired while
  the process stalled), and the attempt is killed.
- Recovery. A running job whose lease expired is requeued (its server died); so is one leased by a process of
  this machine that no longer exists, at once rather than after the lease. After ``max_attempts`` attempts a
  job fails instead, so a job that takes its server down with it cannot do so forever. The job's embedding
  cache keeps every image already embedded, so the next attempt resumes, and the report is written to a
  temporary folder and moved into place whole, so a killed attempt leaves no half report: the finished job's
  results.json is the one ``faceaudit audit --config`` writes for the same config.
- An attempt's process kills itself and its workers when its server process dies (it watches its parent), so
  an orphan never races the next attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import threading
import time
import tomllib
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faceaudit.errors import FaceauditError
from faceaudit.gallery.store import Store
from faceaudit.service.jobs import COLUMNS, Job, Progress, ensure_schema, job_folder, now_iso

if TYPE_CHECKING:
    from faceaudit.gallery.gallery import Gallery
    from faceaudit.service.settings import ServiceSettings

log = logging.getLogger("faceaudit.service")

LEASE_SECONDS = 30.0
POLL_SECONDS = 0.5
#: How often a running job's lease is renewed, its progress written and its cancel flag read (seconds).
BEAT_SECONDS = 1.0
MAX_ATTEMPTS = 3
#: The audit process's progress messages are sent at most this often (seconds), phase changes at once.
REPORT_SECONDS = 0.25


def machine_tag() -> str:
    """This machine's process namespace since boot (host name, boot id, PID namespace), hashed; empty when
    unknown. Two lease owners with the same tag see the same processes, so a dead owner can be recognised
    at once; a container with the host's name but its own PID namespace gets another tag."""
    try:
        parts = [socket.gethostname(), Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 os.readlink("/proc/self/ns/pid")]
    except OSError:
        return ""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _dead_here(owner: str | None, tag: str) -> bool:
    """The lease ``owner`` was a process of this machine that is gone."""
    if not owner or not tag:
        return False
    owner_tag, _, rest = owner.partition("|")
    pid = rest.partition("|")[0]
    return owner_tag == tag and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid))


# --- the queue's transactions ---

def claim(store: Store, owner: str, lease_seconds: float) -> Job | None:
    """Take the oldest queued job for ``owner``; None when there is none (or another runner took it first)."""
    lock = " FOR UPDATE SKIP LOCKED" if store.dialect == "postgres" else ""
    with store.transaction() as tx:
        row = tx.one("SELECT id FROM audit_jobs WHERE state = 'queued' ORDER BY created, id LIMIT 1" + lock)
        if row is None:
            return None
        cur = tx.run("UPDATE audit_jobs SET state = 'running', lease_owner = ?, lease_until = ?, "
                     "started = COALESCE(started, ?), attempts = attempts + 1, phase = 'starting', fraction = NULL, "
                     "message = NULL WHERE id = ? AND state = 'queued'",
                     (owner, time.time() + lease_seconds, now_iso(), row[0]))
        if cur.rowcount != 1:
            return None
        got = tx.one(f"SELECT {COLUMNS} FROM audit_jobs WHERE id = ?", (row[0],))
    return None if got is None else Job.from_row(got)


def recover(store: Store, owner: str, tag: str, max_attempts: int) -> list[str]:
    """Requeue running jobs whose server is gone (lease expired, or a dead process of this machine); a job
    with a cancel request becomes cancelled, one out of attempts failed. Returns their ids."""
    now = time.time()
    done = []
    with store.transaction() as tx:
        rows = tx.rows("SELECT id, lease_owner, lease_until, attempts, cancel_requested FROM audit_jobs "
                       "WHERE state = 'running'")
        for job_id, lease_owner, until, attempts, cancel in rows:
            if lease_owner == owner or not (until is None or float(until) < now or _dead_here(lease_owner, tag)):
                continue
            if cancel:
                sets, values = "state = 'cancelled', phase = 'cancelled', finished = ?", [now_iso()]
            elif int(attempts) >= max_attempts:
                sets = "state = 'failed', phase = 'failed', finished = ?, error = ?"
                values = [now_iso(), f"the server running this audit stopped during each of its {attempts} attempts"]
            else:
                sets = "state = 'queued', phase = 'queued', message = ?"
                values = [f"requeued: the server running attempt {attempts} stopped"]
            # the owner may have renewed its lease since the read: then the row does not match and stays its own
            cur = tx.run(f"UPDATE audit_jobs SET {sets}, lease_owner = NULL, lease_until = NULL, fraction = NULL "
                         "WHERE id = ? AND state = 'running' AND lease_owner = ? AND lease_until = ?",
                         (*values, job_id, lease_owner, until))
            if cur.rowcount == 1:
                done.append(str(job_id))
    return done


@dataclass
class _Attempt:
    job: Job
    process: BaseProcess
    conn: Connection
    progress: Progress
    outcome: tuple[str, str | None] | None = None  # ("done", None) or ("failed", why), from the process


@dataclass
class JobRunner:
    """Runs audit jobs of the database that ``connect`` opens, with ``slots`` at once; :meth:`start` and
    :meth:`stop` (a server's lifespan)."""

    connect: Callable[[], Store]
    jobs_dir: Path
    slots: int = 1
    sign: Path | None = None  # an Ed25519 private key: every report is signed (MANIFEST.sig)
    lease_seconds: float = LEASE_SECONDS
    poll_seconds: float = POLL_SECONDS
    max_attempts: int = MAX_ATTEMPTS
    owner: str = field(init=False)
    _active: dict[str, _Attempt] = field(init=False, default_factory=dict)
    _stopping: threading.Event = field(init=False, default_factory=threading.Event)
    _thread: threading.Thread | None = field(init=False, default=None)
    _tag: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError("a job runner needs at least one slot")
        self._tag = machine_tag()
        self.owner = f"{self._tag}|{os.getpid()}|{os.urandom(8).hex()}"

    @classmethod
    def for_service(cls, settings: ServiceSettings, gallery: Gallery, *, sign: Path | None = None) -> JobRunner:
        """The runner of a server process: jobs in the gallery's database (on a connection of the runner's own,
        so its heartbeats never wait behind requests), reports under ``settings.jobs_folder``,
        ``settings.audit_workers`` at once."""
        url = gallery.settings.database_url(gallery.folder)
        return cls(lambda: Store.open(url), settings.jobs_folder, slots=settings.audit_workers, sign=sign)

    # --- lifecycle ---
    def start(self) -> None:
        """Create the jobs table (so the routes can use it at once) and start the runner's thread."""
        if self._thread is not None:
            return
        store = self.connect()
        try:
            ensure_schema(store)
        finally:
            store.close()
        self._thread = threading.Thread(target=self._run, name="faceaudit-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, kill the running attempts and put their jobs back in the queue (the next server
        resumes them from their caches)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> list[str]:
        return list(self._active)

    def _connect(self) -> Store | None:
        """The runner's connection; while the database cannot be reached, retried (and said) until it can."""
        wait = 1.0
        while not self._stopping.is_set():
            try:
                return self.connect()
            except Exception as exc:  # any failure to connect is retried: it is not the end of the runner
                log.warning("audit jobs: cannot open the database (%s); retrying in %g s", exc, wait)
                self._stopping.wait(wait)
                wait = min(wait * 2, 30.0)
        return None

    def _run(self) -> None:
        store = self._connect()
        if store is None:
            return
        try:
            next_recover = next_beat = 0.0
            while not self._stopping.is_set():
                now = time.monotonic()
                try:
                    if now >= next_recover:
                        for job_id in recover(store, self.owner, self._tag, self.max_attempts):
                            log.info("audit job %s: its server stopped; requeued (or ended)", job_id)
                        next_recover = now + min(self.lease_seconds / 3, 10.0)
                    self._reap(store)
                    if now >= next_beat:
                        self._beat(store)
                        next_beat = now + BEAT_SECONDS
                    self._fill(store)
                except Exception:  # a database hiccup must not end the runner: the next round tries again
                    log.exception("audit jobs: a round of the runner failed; trying again")
                self._stopping.wait(self.poll_seconds)
            self._release_all(store)
        finally:
            store.close()

    # --- one round ---
    def _fill(self, store: Store) -> None:
        while len(self._active) < self.slots and not self._stopping.is_set():
            job = claim(store, self.owner, self.lease_seconds)
            if job is None:
                return
            log.info("audit job %s (owner %s): attempt %d started", job.id, job.owner, job.attempts)
            try:
                self._active[job.id] = self._spawn(job)
            except Exception as exc:  # the process could not start: the job fails, with the reason
                self._finish(store, job.id, "failed", f"the audit process could not start ({exc})")

    def _spawn(self, job: Job) -> _Attempt:
        folder = job_folder(self.jobs_dir, job.id)
        ctx = mp.get_context("spawn")
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=attempt_main, name=f"faceaudit-audit-{job.id[:8]}", daemon=False,
                           args=(job.config, str(folder), None if self.sign is None else str(self.sign),
                                 child_end, os.getpid(), job.attempts))
        proc.start()
        child_end.close()  # the parent keeps only its end: recv then sees EOF when the process is gone
        return _Attempt(job, proc, parent_end, Progress("starting", None, None))

    def _reap(self, store: Store) -> None:
        for job_id, a in list(self._active.items()):
            alive = a.process.is_alive()
            self._drain(a)
            if alive:
                continue
            a.process.join()
            a.conn.close()
            del self._active[job_id]
            if a.outcome is not None and a.outcome[0] == "done":
                self._finish(store, job_id, "done", None)
            elif a.outcome is not None:
                self._finish(store, job_id, "failed", a.outcome[1])
            else:
                self._finish(store, job_id, "failed", f"the audit process stopped unexpectedly (exit code "
                             f"{a.process.exitcode}); the job's audit.log on the server may say why")

    def _drain(self, a: _Attempt) -> None:
        try:
            while a.conn.poll():
                kind, *payload = a.conn.recv()
                if kind == "progress":
                    a.progress = Progress(*payload)
                elif kind in ("done", "failed"):
                    a.outcome = (kind, payload[0] if payload else None)
        except (EOFError, OSError):
            pass  # the process is gone; _reap sees it

    def _beat(self, store: Store) -> None:
        """Renew the leases, write progress, and act on cancel requests and lost leases."""
        if not self._active:
            return
        until = time.time() + self.lease_seconds
        lost, cancelled = [], []
        with store.transaction() as tx:
            for job_id, a in self._active.items():
                p = a.progress
                cur = tx.run("UPDATE audit_jobs SET lease_until = ?, phase = ?, fraction = ?, message = ? "
                             "WHERE id = ? AND state = 'running' AND lease_owner = ?",
                             (until, p.phase, p.fraction, p.message, job_id, self.owner))
                if cur.rowcount != 1:
                    lost.append(job_id)
                    continue
                row = tx.one("SELECT cancel_requested FROM audit_jobs WHERE id = ?", (job_id,))
                if row is not None and row[0]:
                    cancelled.append(job_id)
        for job_id in lost:  # another runner requeued it (this one stalled past its lease): it is theirs now
            self._kill(self._active.pop(job_id), "lease")
        for job_id in cancelled:
            self._kill(self._active.pop(job_id), "cancel")
            self._finish(store, job_id, "cancelled", None)

    def _kill(self, a: _Attempt, why: str) -> None:
        """Kill the attempt's process group (the audit and its embedding workers) and wait for it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            assert a.process.pid is not None
            os.killpg(a.process.pid, signal.SIGKILL)  # the group exists once the process ran setsid
        a.process.kill()
        a.process.join(10)
        a.conn.close()
        if why != "lease":  # a lost job may be running elsewhere already: its temporary folder is not ours
            _remove_partial(job_folder(self.jobs_dir, a.job.id))

    def _finish(self, store: Store, job_id: str, state: str, error: str | None) -> None:
        report = str(job_folder(self.jobs_dir, job_id) / "report") if state == "done" else None
        log.info("audit job %s: %s%s", job_id, state, f" ({error})" if error else "")
        with store.transaction() as tx:
            tx.run("UPDATE audit_jobs SET state = ?, phase = ?, fraction = ?, error = ?, report = ?, finished = ?, "
                   "lease_owner = NULL, lease_until = NULL WHERE id = ? AND state = 'running' AND lease_owner = ?",
                   (state, state, 1.0 if state == "done" else None, error, report, now_iso(), job_id, self.owner))

    def _release_all(self, store: Store) -> None:
        """On stop: kill every attempt and requeue its job (the attempt does not count: nothing went wrong)."""
        for job_id, a in list(self._active.items()):
            self._kill(a, "stop")
            with contextlib.suppress(Exception), store.transaction() as tx:
                tx.run("UPDATE audit_jobs SET state = 'queued', phase = 'queued', fraction = NULL, "
                       "message = 'requeued: the server stopped', attempts = attempts - 1, lease_owner = NULL, "
                       "lease_until = NULL WHERE id = ? AND state = 'running' AND lease_owner = ?",
                       (job_id, self.owner))
        self._active.clear()


def _remove_partial(folder: Path) -> None:
    """Temporary report folders a killed attempt left (run_audit builds ``.report.*`` beside ``report``)."""
    for p in folder.glob(".report.*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


# --- the audit process ---

#: tqdm bar descriptions in the audit code, and the phase each means.
_PHASES = {"embed": "embedding", "embed (cluster)": "embedding", "compare": "comparing",
           "compare (cluster)": "comparing", "scores: range": "reading scores", "scores: fold": "reading scores"}


class _Reporter:
    """Sends the audit's progress to the runner: phases and fractions from its progress bars, its messages."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._phase = "starting"
        self._fraction: float | None = None
        self._message: str | None = None
        self._sent = 0.0
        self._bars: set[int] = set()

    def send(self, phase: str, fraction: float | None, *, now: bool = False) -> None:
        changed = phase != self._phase
        self._phase, self._fraction = phase, fraction
        t = time.monotonic()
        if now or changed or t - self._sent >= REPORT_SECONDS:
            self._sent = t
            with contextlib.suppress(OSError):  # the runner is gone: the parent watch ends this process
                self._conn.send(("progress", self._phase, self._fraction, self._message))

    def echo(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        self._message = line[:500]
        self.send(self._phase, self._fraction, now=True)

    def bar(self, bar: Any, event: str) -> None:
        phase = _PHASES.get(str(bar.desc))
        if phase is None:  # a bar this runner does not know: its fraction would be read as the phase's
            return
        total = bar.total
        fraction = min(1.0, bar.n / total) if total else None
        if event == "close":
            if id(bar) in self._bars:
                self._bars.discard(id(bar))
                # what follows a bar: the statistics (intervals, tests) and the report, until the next bar
                self.send("evaluating", None, now=True)
            return
        if event == "start":
            self._bars.add(id(bar))
        self.send(phase, fraction, now=event == "start")


def _observe_bars(reporter: _Reporter) -> None:
    """Route the audit's tqdm bars to ``reporter`` (their text goes nowhere). run_audit reports progress only
    through its bars and ``echo``; this process runs one audit and nothing else, so patching the bar class
    here changes nothing outside it."""
    from tqdm import std

    cls: Any = std.tqdm
    init, update, close = cls.__init__, cls.update, cls.close
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process

    def patched_init(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) < 5:  # file is tqdm's fifth parameter
            kwargs.setdefault("file", sink)
        init(self, *args, **kwargs)
        if not self.disable:
            reporter.bar(self, "start")

    def patched_update(self: Any, n: float = 1) -> Any:
        shown = update(self, n)
        if not self.disable:
            reporter.bar(self, "update")
        return shown

    def patched_close(self: Any) -> None:
        if not self.disable:
            reporter.bar(self, "close")
        close(self)

    cls.__init__, cls.update, cls.close = patched_init, patched_update, patched_close


def _watch_parent(parent: int) -> None:
    """Kill this process group (the audit and its workers) when the server that started it dies: its job is
    requeued, and an orphan writing the same report and cache would race the next attempt."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def attempt_main(config_toml: str, folder: str, sign: str | None, conn: Connection, parent: int,
                 attempt: int) -> None:
    """One attempt of a job, in its own process (the target of :meth:`JobRunner._spawn`)."""
    os.setsid()  # its own process group: a cancel kills the audit and its embedding workers together
    _watch_parent(parent)
    job = Path(folder)
    log = os.open(job / "audit.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)  # whatever the audit or a native library prints goes to the job's log
    os.dup2(log, 2)
    print(f"--- attempt {attempt}, {now_iso()}, process {os.getpid()}", file=sys.stderr, flush=True)
    reporter = _Reporter(conn)
    _observe_bars(reporter)
    reporter.send("starting", None, now=True)
    try:
        from faceaudit.audit.config import AuditConfig
        from faceaudit.audit.run import run_audit

        cfg = AuditConfig.from_dict(tomllib.loads(config_toml), base_dir=job, where="job config")
        _remove_partial(job)  # what a killed attempt left
        run_audit(cfg, job / "report", sign=sign, progress=True, echo=reporter.echo)
        reporter.send("done", 1.0, now=True)
        conn.send(("done", None))
    except FaceauditError as exc:
        print(f"failed: {exc}", file=sys.stderr, flush=True)
        conn.send(("failed", str(exc).replace(f"{job}/", "")))  # the job's files by their names in its folder
    except Exception as exc:  # a bug, not the input: the traceback goes to the log, never to the client
        traceback.print_exc()
        sys.stderr.flush()
        conn.send(("failed", f"internal error in the audit ({type(exc).__name__}); the job's audit.log on the "
                             "server has the details"))
    finally:
        conn.close()
