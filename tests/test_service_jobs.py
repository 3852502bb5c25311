"""Audit jobs over HTTP: a submitted config runs to the CLI's results.json, paths outside the data root are
refused, cancel, an audit of uploaded scores, and a job whose server is killed mid-embedding resumes."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient

from faceaudit.cli import main
from faceaudit.demo import bundled_manifest
from faceaudit.gallery.crypto import generate_key_file
from faceaudit.gallery.gallery import DATABASE_FILE, Gallery
from faceaudit.gallery.policy import Policy
from faceaudit.gallery.store import Store
from faceaudit.report.integrity import generate_key, verify_folder
from faceaudit.service import jobs, keys
from faceaudit.service.app import create_app
from faceaudit.service.jobrunner import JobRunner, claim, recover
from faceaudit.service.settings import ServiceSettings
from service_support import serve

DATA_ROOT = bundled_manifest().parent
ROLES = {"admin": ["enrol", "verify", "policy", "rotate-key", "delete", "audit", "log"], "auditor": ["audit", "log"],
         "clerk": ["enrol", "verify"]}
#: A small audit of the bundled faces: small bootstrap and permutations keep it a few seconds.
CONFIG = f"""title = "Service test audit"

[dataset]
path = "{bundled_manifest()}"
labels = "self-reported"

[groups]
by = ["sex"]

[metrics]
target_fmrs = [0.01]

[uncertainty]
bootstrap = 20
permutations = 10
seed = 1

[run]
workers = 1
"""


@dataclass
class Service:
    client: TestClient
    app: FastAPI
    settings: ServiceSettings
    keys: dict[str, str]  # key name -> the key
    database: Path

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}


def make_gallery(base: Path, policy: dict[str, Any] | None = None) -> tuple[Path, Path, dict[str, str]]:
    """A gallery with the roles above (or ``policy``) and keys alice and bob (auditor), carol (clerk) and dave
    (admin)."""
    key_file = generate_key_file(base / "gallery.key")
    folder = base / "gallery"
    gallery = Gallery.init(folder, key_file=key_file, policy=Policy.from_dict(policy or {"roles": ROLES}))
    try:
        made = {name: keys.create_key(gallery, name, role)[0]
                for name, role in (("alice", "auditor"), ("bob", "auditor"), ("carol", "clerk"), ("dave", "admin"))}
    finally:
        gallery.close()
    return folder, key_file, made


def build_app(settings: ServiceSettings) -> FastAPI:
    """The service's app (its audit routes and page included by create_app)."""
    return create_app(settings)


@contextmanager
def running_service(base: Path, *, data_root: Path | None = DATA_ROOT, runner: bool = True,
                    sign: Path | None = None) -> Iterator[Service]:
    """The service in this process (TestClient), with a job runner (signing reports with ``sign``) unless
    ``runner`` is False."""
    folder, key_file, made = make_gallery(base)
    settings = ServiceSettings(gallery=folder, key_file=key_file, data_root=data_root, jobs_dir=base / "jobs")
    app = build_app(settings)
    with TestClient(app) as client:
        state = app.state.service
        started = getattr(app.state, "jobs", None)  # the app's own runner, where app.py starts one
        if started is not None:
            started.stop()  # these tests decide whether jobs run, and how (signed; in another process)
        jobs.ensure_schema(state.store())
        own = JobRunner.for_service(settings, state.gallery, sign=sign) if runner else None
        if own is not None:
            own.start()
        try:
            yield Service(client, app, settings, made, folder / DATABASE_FILE)
        finally:
            if own is not None:
                own.stop()


def wait_for(client: TestClient, job_id: str, headers: dict[str, str], done: Any, timeout: float = 120.0
             ) -> tuple[dict[str, Any], list[str]]:
    """Poll the job until ``done(status)``; returns the last status and every phase seen."""
    phases: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/audits/{job_id}", headers=headers)
        assert r.status_code == 200, r.text
        status = r.json()
        if not phases or phases[-1] != status["progress"]["phase"]:
            phases.append(status["progress"]["phase"])
        if done(status):
            return status, phases
        assert time.monotonic() < deadline, f"job {job_id} still {status['state']} ({status['progress']})"
        time.sleep(0.1)


def finished(status: dict[str, Any]) -> bool:
    return status["state"] in jobs.FINAL_STATES


def embedding_started(status: dict[str, Any]) -> bool:
    p = status["progress"]
    return p["phase"] == "embedding" and (p["fraction"] or 0) > 0


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """results.json of `faceaudit audit --config` on CONFIG (its own cache: nothing shared with the jobs)."""
    base = tmp_path_factory.mktemp("cli")
    (base / "audit.toml").write_text(CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEAUDIT_CACHE_DIR", str(base / "cache"))
        res = CliRunner().invoke(main, ["audit", "--config", str(base / "audit.toml"), "--out", str(base / "report"),
                                        "--quiet"])
    assert res.exit_code == 0, res.output
    return (base / "report" / "results.json").read_bytes()


def test_config_job_runs_to_the_clis_results(tmp_path: Path, cli_results: bytes) -> None:
    with running_service(tmp_path) as svc:
        c, alice = svc.client, svc.auth("alice")
        r = c.post("/v1/audits", json={"config": CONFIG}, headers=alice)
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"/v1/audits/{job['id']}"
        assert job["state"] == "queued" and job["owner"] == "alice" and job["kind"] == "config"
        assert str(tmp_path / "jobs" / job["id"] / "cache.sqlite") in job["config"]  # [run] is the server's
        early = c.get(f"/v1/audits/{job['id']}/report", headers=alice)
        if early.status_code != 200:  # the job is fast; it may be done already
            assert early.status_code == 409 and early.json()["type"] == "/problems/conflict"
        status, phases = wait_for(c, job["id"], alice, finished)
        assert status["state"] == "done", status
        assert "embedding" in phases and phases[-1] == "done", phases
        assert status["progress"]["fraction"] == 1.0 and status["report"] == f"/v1/audits/{job['id']}/report"

        r = c.get(f"/v1/audits/{job['id']}/report", headers=alice)
        assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
        assert f'filename="audit-{job["id"]}.tar.gz"' in r.headers["content-disposition"]
        with tarfile.open(fileobj=io.BytesIO(r.content)) as t:
            names = t.getnames()
            t.extractall(tmp_path / "got", filter="data")
        top = f"audit-{job['id']}"
        assert {f"{top}/{n}" for n in ("report.html", "results.json", "MANIFEST.sha256", "config.toml")} <= set(names)
        got = tmp_path / "got" / top
        assert verify_folder(got).ok  # every file as the manifest says
        assert (got / "results.json").read_bytes() == cli_results

        r = c.get(f"/v1/audits/{job['id']}/report", params={"format": "zip"}, headers=svc.auth("bob"))
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            assert z.read(f"{top}/results.json") == cli_results

        listed = c.get("/v1/audits", headers=svc.auth("bob")).json()["jobs"]
        assert [j["id"] for j in listed] == [job["id"]]  # auditors share the queue
        assert c.get("/v1/audits", params={"mine": "true"}, headers=svc.auth("bob")).json() == {"jobs": []}
        assert c.get("/v1/audits", params={"state": "done"}, headers=alice).json()["jobs"][0]["id"] == job["id"]
        # a role the policy does not let audit: 403 naming the rule; no key: 401
        r = c.get("/v1/audits", headers=svc.auth("carol"))
        assert r.status_code == 403 and r.json()["rule"] == "roles.clerk"
        assert c.get(f"/v1/audits/{job['id']}/report").status_code == 401
        assert c.get(f"/v1/audits/{'0' * 32}", headers=alice).status_code == 404
        assert c.get("/v1/audits/not-an-id", headers=alice).status_code == 422


def test_configs_outside_the_data_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "secret.csv").write_text("path,subject_id,sex\nx.jpg,1,F\n")
    (root / "link.csv").symlink_to(tmp_path / "secret.csv")
    (root / "escape").symlink_to(tmp_path)
    pd.DataFrame({"path": ["../secret.jpg", "/etc/hostname", "ok.jpg"], "subject_id": ["1", "2", "3"],
                  "sex": ["F", "M", "F"]}).to_csv(root / "listing.csv", index=False)
    (root / "attributes.csv").write_text("subject_id,race\n1,x\n")
    (root / "inside.csv").write_text("path,subject_id,sex\nimages/a.jpg,1,F\nimages/b.jpg,2,M\n")

    def config(dataset: str, extra: str = "") -> dict[str, str]:
        return {"config": f'[dataset]\n{dataset}\n[groups]\nby = ["sex"]\n{extra}'}

    with running_service(tmp_path / "svc", data_root=root, runner=False) as svc:
        c, alice = svc.client, svc.auth("alice")
        for dataset, extra in [(f'path = "{tmp_path / "secret.csv"}"', ""),  # absolute, outside
                               ('path = "../secret.csv"', ""),  # climbs out
                               ('path = "link.csv"', ""),  # a symlink inside pointing outside
                               ('path = "escape/secret.csv"', ""),  # through a linked folder
                               ('path = "listing.csv"\nattributes = "/etc/passwd"', ""),
                               ('path = "listing.csv"', '[system]\nengine = "onnx:/tmp/model.onnx"\n')]:
            r = c.post("/v1/audits", json=config(dataset, extra), headers=alice)
            assert r.status_code == 400, (dataset, r.text)
            problem = r.json()
            assert r.headers["content-type"] == "application/problem+json"
            assert problem["type"] == "/problems/outside-data-root", problem
            assert "outside the server's data root" in problem["detail"]
            if "link.csv" in dataset or "escape" in dataset:  # quoted as given, never where the link leads
                assert str(tmp_path / "secret.csv") not in problem["detail"]
        # the manifest lies inside, but lists images outside: refused, naming them as the manifest does
        r = c.post("/v1/audits", json=config('path = "listing.csv"'), headers=alice)
        assert r.status_code == 400 and r.json()["type"] == "/problems/outside-data-root"
        assert "2 image(s)" in r.json()["detail"] and "'../secret.jpg'" in r.json()["detail"]
        # inside, with its labels: accepted (relative to the data root); [run] is the server's
        r = c.post("/v1/audits", json=config('path = "inside.csv"\nattributes = "attributes.csv"',
                                             '[run]\ncache = "/etc/cache.sqlite"\ncluster = "tcp://elsewhere:1"\n'),
                   headers=alice)
        assert r.status_code == 202, r.text
        accepted = r.json()
        assert str(root / "inside.csv") in accepted["config"] and "/etc/cache.sqlite" not in accepted["config"]
        assert "elsewhere" not in accepted["config"]
        # bad requests: each its problem, and no job folder left behind
        for body, status, kind in [({"config": "[dataset\n"}, 400, "invalid-config"),
                                   ({"config": '[dataset]\npath = "listing.csv"\nsize = 3\n'}, 400, "invalid-config"),
                                   ({"config": '[dataset]\npath = "inside.csv"\n[groups]\nby = ["sex"]\n'
                                               '[run]\nbatch_size = 100000\n'}, 400, "invalid-config"),
                                   ({"config": "x = 1", "extra": True}, 422, "validation"),
                                   ({"config": ""}, 422, "validation")]:
            r = c.post("/v1/audits", json=body, headers=alice)
            assert (r.status_code, r.json()["type"]) == (status, f"/problems/{kind}"), r.text
        assert "size" in c.post("/v1/audits", json={"config": '[dataset]\nsize = 3\n'}, headers=alice).json()["detail"]
        r = c.post("/v1/audits", content=b"title = 'x'", headers={**alice, "content-type": "text/plain"})
        assert r.status_code == 415 and r.json()["type"] == "/problems/unsupported-media-type"
        assert sorted(p.name for p in (tmp_path / "svc" / "jobs").iterdir()) == [accepted["id"]]

    with running_service(tmp_path / "none", data_root=None, runner=False) as svc:
        r = svc.client.post("/v1/audits", json={"config": CONFIG}, headers=svc.auth("alice"))
        assert r.status_code == 400 and r.json()["type"] == "/problems/no-data-root"


def _attempt_pid(job_folder: Path) -> int:
    return int(re.findall(r"process (\d+)", (job_folder / "audit.log").read_text())[-1])


def _gone(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` ends within ``within`` seconds (a zombie waiting for its parent has ended)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.1)
    return False


def test_cancel(tmp_path: Path) -> None:
    with running_service(tmp_path / "queued", runner=False) as svc:  # no runner: the job stays queued
        c = svc.client
        job = c.post("/v1/audits", json={"config": CONFIG}, headers=svc.auth("alice")).json()
        r = c.post(f"/v1/audits/{job['id']}/cancel", headers=svc.auth("bob"))
        assert r.status_code == 403 and r.json()["rule"] == "audit.owner"  # not bob's
        log = [e for _, e in svc.app.state.service.store().log_rows()]
        assert any('"audit-cancel-refused"' in e and '"bob"' in e and '"audit.owner"' in e for e in log)
        r = c.post(f"/v1/audits/{job['id']}/cancel", headers=svc.auth("alice"))
        assert r.status_code == 202 and r.json()["state"] == "cancelled"
        r = c.post(f"/v1/audits/{job['id']}/cancel", headers=svc.auth("alice"))
        assert r.status_code == 409 and r.json()["state"] == "cancelled"
        assert c.get(f"/v1/audits/{job['id']}/report", headers=svc.auth("alice")).status_code == 409
        other = c.post("/v1/audits", json={"config": CONFIG}, headers=svc.auth("bob")).json()
        r = c.post(f"/v1/audits/{other['id']}/cancel", headers=svc.auth("dave"))  # an administrator may
        assert r.status_code == 202 and r.json()["state"] == "cancelled"

    with running_service(tmp_path / "running") as svc:
        c, alice = svc.client, svc.auth("alice")
        job = c.post("/v1/audits", json={"config": CONFIG}, headers=alice).json()
        wait_for(c, job["id"], alice, embedding_started)
        pid = _attempt_pid(svc.settings.jobs_folder / job["id"])
        r = c.post(f"/v1/audits/{job['id']}/cancel", headers=alice)
        assert r.status_code == 202 and r.json()["cancel_requested"] is True
        status, _ = wait_for(c, job["id"], alice, finished, timeout=20)
        assert status["state"] == "cancelled" and status["progress"]["phase"] == "cancelled"
        assert _gone(pid), "the audit process outlived its cancel"
        folder = svc.settings.jobs_folder / job["id"]
        assert not (folder / "report").exists() and not list(folder.glob(".report.*"))
        assert c.get(f"/v1/audits/{job['id']}/report", headers=alice).status_code == 409


def _score_files(tmp_path: Path) -> tuple[bytes, bytes]:
    """An external system's scores for 80 people (two images each): genuine pairs score high."""
    rng = np.random.default_rng(5)
    ids = [f"p{s:03d}_{i}" for s in range(80) for i in range(2)]
    subject = [i.split("_")[0] for i in ids]
    sex = ["F" if int(s[1:]) % 2 else "M" for s in subject]
    a, b = np.triu_indices(len(ids), k=1)
    same = np.array(subject)[a] == np.array(subject)[b]
    score = np.where(same, rng.normal(0.7, 0.1, len(a)), rng.normal(0.1, 0.1, len(a)))
    manifest = pd.DataFrame({"id": ids, "subject_id": subject, "sex": sex}).to_csv(index=False).encode()
    scores = pd.DataFrame({"id_a": np.array(ids)[a], "id_b": np.array(ids)[b], "score": score})
    buf = io.BytesIO()
    scores.to_parquet(buf)
    return manifest, buf.getvalue()


def test_audit_of_uploaded_scores(tmp_path: Path) -> None:
    manifest, scores = _score_files(tmp_path)
    options = {"by": ["sex"], "target_fmrs": [0.01], "system_name": "Vendor <X>", "labels": "self-reported"}
    generate_key(tmp_path / "report.pem", tmp_path / "report.pub")
    with running_service(tmp_path, data_root=None, sign=tmp_path / "report.pem") as svc:
        c, alice = svc.client, svc.auth("alice")

        def post(opts: Any = options, man: bytes = manifest, extra: dict[str, Any] | None = None) -> Any:
            files = {"manifest": ("ids.csv", man, "text/csv"), "scores": ("s.parquet", scores, "application/x-parquet")}
            data = {"options": opts if isinstance(opts, str) else json.dumps(opts), **(extra or {})}
            return c.post("/v1/audits", files=files, data=data, headers=alice)

        r = post()
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["kind"] == "scores"
        status, _ = wait_for(c, job["id"], alice, finished)
        assert status["state"] == "done", status
        folder = svc.settings.jobs_folder / job["id"]
        assert (folder / "input" / "scores.parquet").is_file() and (folder / "input" / "manifest.csv").is_file()
        doc = json.loads((folder / "report" / "results.json").read_text())
        assert doc["audit"]["system"]["name"] == "Vendor <X>"
        r = c.get(f"/v1/audits/{job['id']}/report", params={"format": "zip"}, headers=alice)
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            assert f"audit-{job['id']}/MANIFEST.sig" in z.namelist()  # the server signs its reports
            z.extractall(tmp_path / "got")
        assert verify_folder(tmp_path / "got" / f"audit-{job['id']}", tmp_path / "report.pub").signature == "valid"
        groups = {g["values"]["sex"]: g for g in doc["analyses"][0]["operating_points"][0]["groups"]}
        assert set(groups) == {"F", "M"} and groups["F"]["genuine_pairs"] == 40

        for bad, status_code, kind in [({"by": ["sex"], "colour": "red"}, 422, "validation"),
                                       ({"by": []}, 422, "validation"),
                                       ("{not json", 422, "validation"),
                                       ({"by": ["sex"], "target_fmrs": [2.0]}, 422, "validation")]:
            r = post(bad)
            assert (r.status_code, r.json()["type"]) == (status_code, f"/problems/{kind}"), r.text
        r = post(extra={"note": "hi"})
        assert r.status_code == 422 and "note" in r.json()["detail"]
        r = post(man=b"who,what\n1,2\n")
        assert r.status_code == 400 and r.json()["type"] == "/problems/invalid-upload", r.text
        r = post({"by": ["skin"]})  # a label the manifest does not have: refused now, not found out by the job
        assert r.status_code == 400 and "sex" in r.json()["detail"], r.text
        assert len(list(svc.settings.jobs_folder.iterdir())) == 1  # nothing left of the refused ones


RUNNER = """\
import sys, time
from pathlib import Path
from faceaudit.gallery.store import Store
from faceaudit.service.jobrunner import JobRunner

if __name__ == "__main__":  # the audit processes are spawned: they re-import this file
    database, jobs_dir = sys.argv[1], Path(sys.argv[2])
    runner = JobRunner(lambda: Store.open(database), jobs_dir)
    runner.start()
    print("runner started", flush=True)
    while True:
        time.sleep(1)
"""


def test_job_resumes_after_its_server_is_killed(tmp_path: Path, cli_results: bytes) -> None:
    """kill -9 of the process running the job mid-embedding; the next one requeues it at once (the dead process
    was on this machine), resumes from the job's cache and writes the CLI's results.json."""
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    with running_service(tmp_path, runner=False) as svc:
        c, alice = svc.client, svc.auth("alice")
        job = c.post("/v1/audits", json={"config": CONFIG}, headers=alice).json()
        folder = svc.settings.jobs_folder / job["id"]

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, str(script), str(svc.database), str(svc.settings.jobs_folder)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        first = start()
        try:
            wait_for(c, job["id"], alice, embedding_started, timeout=60)
            attempt = _attempt_pid(folder)
            first.send_signal(signal.SIGKILL)
            first.wait()
        finally:
            first.kill()
        assert _gone(attempt), "the audit process outlived its killed server"
        assert not (folder / "report").exists()  # no half report
        status = c.get(f"/v1/audits/{job['id']}", headers=alice).json()
        assert status["state"] == "running" and status["attempts"] == 1  # until a server looks at it

        second = start()
        try:
            status, _ = wait_for(c, job["id"], alice, finished, timeout=120)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(10)
        assert status["state"] == "done" and status["attempts"] == 2, status
        assert (folder / "report" / "results.json").read_bytes() == cli_results
        provenance = json.loads((folder / "report" / "provenance.json").read_text())
        assert provenance["images_from_cache"] > 0  # the second attempt resumed from the first's embeddings
        assert not list(folder.glob(".report.*"))


def test_job_resumes_after_faceaudit_serve_is_killed(tmp_path: Path, cli_results: bytes) -> None:
    """The whole server (uvicorn, its job runner and the audit process it started) killed -9 mid-embedding; the
    next server takes the job up again and writes the CLI's results.json."""
    folder, key_file, made = make_gallery(tmp_path)
    settings = ServiceSettings(gallery=folder, key_file=key_file, data_root=DATA_ROOT, jobs_dir=tmp_path / "jobs")
    alice = {"Authorization": f"Bearer {made['alice']}"}
    with serve(settings, tmp_path / "server1.log") as first:
        r = httpx.post(f"{first.url}/v1/audits", json={"config": CONFIG}, headers=alice, timeout=30)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 90
        while not embedding_started(httpx.get(f"{first.url}/v1/audits/{job_id}", headers=alice, timeout=30).json()):
            assert time.monotonic() < deadline, first.log_tail()
            time.sleep(0.1)
        attempt = _attempt_pid(settings.jobs_folder / job_id)
        first.kill()
    assert _gone(attempt), "the audit process outlived its killed server"
    assert not (settings.jobs_folder / job_id / "report").exists()  # no half report
    with serve(settings, tmp_path / "server2.log") as second:
        deadline = time.monotonic() + 180
        while True:
            status = httpx.get(f"{second.url}/v1/audits/{job_id}", headers=alice, timeout=30).json()
            if finished(status):
                break
            assert time.monotonic() < deadline, f"{status}\n{second.log_tail()}"
            time.sleep(0.2)
        assert status["state"] == "done" and status["attempts"] == 2, status
        report = httpx.get(f"{second.url}/v1/audits/{job_id}/report", headers=alice, timeout=60)
        assert report.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(report.content)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("results.json"))
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == cli_results


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_claims_and_leases(database: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Two runners never claim one job; an expired lease is requeued, then failed after its attempts; a job
    cancelled while its server was down ends cancelled. On both databases."""
    url = str(tmp_path / "g.sqlite") if database == "sqlite" else request.getfixturevalue("postgres_db")
    store = Store.open(url)
    other = Store.open(url)
    try:
        jobs.ensure_schema(store)
        made = [jobs.submit_scores(store, tmp_path / "jobs", "alice", *_score_files(tmp_path),
                                   jobs.ScoreAudit(by=("sex",))) for _ in range(3)]
        first, second = claim(store, "a|1|x", 30), claim(other, "b|2|y", 30)
        assert first is not None and second is not None and first.id != second.id
        assert {first.id, second.id} == {m.id for m in made[:2]}  # oldest first
        assert first.state == "running" and first.attempts == 1
        # a's server died: its lease runs out; c requeues the job, b's lease still holds
        with store.transaction() as tx:
            tx.run("UPDATE audit_jobs SET lease_until = ? WHERE id = ?", (time.time() - 1, first.id))
        assert recover(other, "c|3|z", "", max_attempts=3) == [first.id]
        assert jobs.get_job(store, first.id).state == "queued"  # type: ignore[union-attr]
        for attempt in (2, 3):
            again = claim(store, "a|1|x", -1)  # a lease that is over at once
            assert again is not None and again.id == first.id and again.attempts == attempt
            recover(other, "c|3|z", "", max_attempts=3)
        failed = jobs.get_job(store, first.id)
        assert failed is not None and failed.state == "failed" and "3 attempts" in (failed.error or "")
        # a cancel asked for while the server running the job was down
        jobs.request_cancel(store, second.id)
        with store.transaction() as tx:
            tx.run("UPDATE audit_jobs SET lease_until = ? WHERE id = ?", (time.time() - 1, second.id))
        recover(store, "c|3|z", "", max_attempts=3)
        assert jobs.get_job(store, second.id).state == "cancelled"  # type: ignore[union-attr]
        assert jobs.count_jobs(store) == {"queued": 1, "running": 0, "done": 0, "failed": 1, "cancelled": 1}
    finally:
        store.close()
        other.close()
