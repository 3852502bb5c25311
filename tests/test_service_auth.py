"""Who may do what over HTTP: every role of a policy with several roles against every protected endpoint gives
what the policy says, without a valid key every protected endpoint is 401, and every refusal is in the gallery's
log with its rule. Also: API keys (stored as hashes only, CLI), the per-key rate limit, problem details."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from faceaudit.cli import main
from faceaudit.gallery.gallery import Consent
from faceaudit.service import jobs
from faceaudit.service.app import create_app
from faceaudit.service.keys import lookup, revoke_key
from faceaudit.service.limits import TokenBuckets
from faceaudit.service.models import PolicyDocument
from service_support import CONSENT, POLICY, SEARCH, Setup, auth, faces, make_setup

Call = Callable[[TestClient, dict[str, str], str], httpx.Response]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # the route's template, as the app lists it
    operation: str | None  # the policy operation it needs (None: any valid key)
    call: Call
    also_ok: tuple[int, ...] = ()  # answers that depend on a job's state (409: not finished, or finished already)


def _score_upload() -> dict[str, Any]:
    """A tiny score-file audit: 20 people, two images each (the multipart form of POST /v1/audits)."""
    ids = [f"p{s:02d}_{i}" for s in range(20) for i in range(2)]
    subject = [i.split("_")[0] for i in ids]
    a, b = np.triu_indices(len(ids), k=1)
    same = np.array(subject)[a] == np.array(subject)[b]
    rng = np.random.default_rng(1)
    scores = pd.DataFrame({"id_a": np.array(ids)[a], "id_b": np.array(ids)[b],
                           "score": np.where(same, 0.7, 0.1) + rng.normal(0, 0.05, len(a))})
    manifest = pd.DataFrame({"id": ids, "subject_id": subject, "sex": ["F", "M"] * 20})
    return {"files": {"manifest": ("ids.csv", manifest.to_csv(index=False).encode(), "text/csv"),
                      "scores": ("s.csv", scores.to_csv(index=False).encode(), "text/csv")},
            "data": {"options": json.dumps({"by": ["sex"], "target_fmrs": [0.1]})}}




def _img(n: int, second: bool = False) -> bytes:
    return faces()[n][2 if second else 1]


ENDPOINTS = [
    Endpoint("POST", "/v1/detect", "detect",
             lambda c, h, role: c.post("/v1/detect", headers=h, files={"image": ("a.jpg", _img(0), "image/jpeg")})),
    Endpoint("POST", "/v1/embed", "embed",
             lambda c, h, role: c.post("/v1/embed", headers=h, files=[("images", ("a.jpg", _img(0), "image/jpeg"))])),
    Endpoint("POST", "/v1/verify", "verify",
             lambda c, h, role: c.post("/v1/verify", headers=h, data={"subject_id": "enrolled"},
                                       files={"image": ("p.jpg", _img(0, True), "image/jpeg")})),
    Endpoint("POST", "/v1/subjects", "enrol",
             lambda c, h, role: c.post("/v1/subjects", headers=h, data={"subject_id": f"new-{role}", **CONSENT},
                                       files=[("images", ("a.jpg", _img(1), "image/jpeg"))])),
    Endpoint("GET", "/v1/subjects/{subject_id:path}/export", "export",
             lambda c, h, role: c.get("/v1/subjects/enrolled/export", headers=h)),
    Endpoint("DELETE", "/v1/subjects/{subject_id:path}", "delete",
             lambda c, h, role: c.delete(f"/v1/subjects/victim-{role}", headers=h)),
    Endpoint("POST", "/v1/search", "search",
             lambda c, h, role: c.post("/v1/search", headers=h, data={**SEARCH, "k": "3", "fpir": "0.01"},
                                       files={"image": ("p.jpg", _img(0, True), "image/jpeg")})),
    Endpoint("GET", "/v1/log/head", "log", lambda c, h, role: c.get("/v1/log/head", headers=h)),
    Endpoint("POST", "/v1/log/verify", "log", lambda c, h, role: c.post("/v1/log/verify", headers=h, json={})),
    Endpoint("GET", "/v1/policy", None, lambda c, h, role: c.get("/v1/policy", headers=h)),
    Endpoint("PUT", "/v1/policy", "policy",
             lambda c, h, role: c.put("/v1/policy", headers=h, json=PolicyDocument.of(POLICY).model_dump())),
    Endpoint("POST", "/v1/key-rotation", "rotate-key", lambda c, h, role: c.post("/v1/key-rotation", headers=h)),
    Endpoint("POST", "/v1/audits", "audit", lambda c, h, role: c.post("/v1/audits", headers=h, **_score_upload())),
    Endpoint("GET", "/v1/audits", "audit", lambda c, h, role: c.get("/v1/audits", headers=h)),
    Endpoint("GET", "/v1/audits/{job_id}", "audit", lambda c, h, role: c.get(f"/v1/audits/{JOBS[0]}", headers=h)),
    Endpoint("POST", "/v1/audits/{job_id}/cancel", "audit",
             lambda c, h, role: c.post(f"/v1/audits/{JOBS[0]}/cancel", headers=h), also_ok=(409,)),
    Endpoint("GET", "/v1/audits/{job_id}/report", "audit",
             lambda c, h, role: c.get(f"/v1/audits/{JOBS[0]}/report", headers=h), also_ok=(409,)),
]
JOBS: list[str] = []  # the job the matrix reads and cancels, submitted by _prepare


def _prepare(setup: Setup) -> None:
    """Someone to verify against and export, and one person per role for that role to try to erase."""
    rng = np.random.default_rng(0)
    consent = Consent("the person", "2026-01-05", "consent")
    with setup.open("operator") as g:
        g.enrol("enrolled", consent, images=[_img(0)])
        for role in POLICY.roles:
            v = rng.normal(size=(1, g.dim)).astype(np.float32)
            g.enrol(f"victim-{role}", consent, embeddings=v / np.linalg.norm(v))
        # an audit job of the auditor's (only its owner, or a role that sets the policy, may cancel it)
        upload = _score_upload()["files"]
        jobs.ensure_schema(g.store)
        job = jobs.submit_scores(g.store, setup.settings().jobs_folder, "auditor-key", upload["manifest"][1],
                                 upload["scores"][1], jobs.ScoreAudit(by=("sex",), target_fmrs=(0.1,)))
        JOBS[:] = [job.id]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Setup, TestClient]]:
    setup = make_setup(tmp_path)
    _prepare(setup)
    app = create_app(setup.settings())
    with TestClient(app) as client:
        # this test sends more unauthenticated requests than one address may have logged per minute
        app.state.service.refusal_log_rates = TokenBuckets(10_000)
        yield setup, client


def _refusals(log: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    return Counter((str(e["actor"]), str(e["operation"]).removesuffix("-refused"), str(e["result"]["rule"]))
                   for e in log if str(e["operation"]).endswith("-refused"))


def _problem(r: httpx.Response) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/problem+json"), (r.status_code, r.text)
    body: dict[str, Any] = r.json()
    assert body["status"] == r.status_code and body["type"].startswith("/problems/") and body["detail"]
    return body


def test_every_protected_endpoint_is_in_the_matrix(served: tuple[Setup, TestClient]) -> None:
    _, client = served
    routes = {(m, r.path) for r in client.app.routes if getattr(r, "path", "").startswith("/v1")  # type: ignore[attr-defined]
              for m in getattr(r, "methods", ())}
    missing = routes - {(e.method, e.path) for e in ENDPOINTS}
    assert not missing, f"add these endpoints to ENDPOINTS in {__file__}: {sorted(missing)}"


def test_every_role_gets_what_the_policy_says_and_every_refusal_is_logged(
        served: tuple[Setup, TestClient]) -> None:
    setup, client = served
    expected: Counter[tuple[str, str, str]] = Counter()
    for endpoint in ENDPOINTS:
        for role, key in setup.keys.items():
            r = endpoint.call(client, auth(key), role)
            allowed = endpoint.operation is None or endpoint.operation in POLICY.roles[role]
            where = f"{role} {endpoint.method} {endpoint.path}: {r.status_code} {r.text[:300]}"
            if allowed:
                assert r.status_code < 500 and r.status_code not in (401, 403), where
                # the requests are valid: an allowed one succeeds (or meets a job in another state)
                assert r.status_code < 300 or r.status_code in endpoint.also_ok, where
            else:
                assert r.status_code == 403, where
                body = _problem(r)
                assert body["type"] == "/problems/forbidden" and body["rule"] == f"roles.{role}", where
                assert endpoint.operation is not None
                expected[(f"{role}-key", endpoint.operation, f"roles.{role}")] += 1
    assert _refusals(setup.log()) == expected
    # the subject's own request is their right, whatever the key's role
    r = client.get("/v1/subjects/enrolled/export", params={"requested_by_subject": "true"},
                   headers=auth(setup.keys["operator"]))
    assert r.status_code == 200 and r.json()["subject_id"] == "enrolled"
    with setup.open() as g:
        assert g.integrity().ok


def test_without_a_valid_key_every_protected_endpoint_is_401_and_logged(served: tuple[Setup, TestClient]) -> None:
    setup, client = served
    with setup.open() as g:
        revoke_key(g, "dpo-key")
    revoked = setup.keys["dpo"]
    bad = {"no key": {}, "wrong key": auth("fa_0123456789abcdef_" + "A" * 43), "malformed key": {"X-API-Key": "hello"},
           "revoked key": {"X-API-Key": revoked}}
    before = _refusals(setup.log())
    expected: Counter[tuple[str, str, str]] = Counter()
    for endpoint in ENDPOINTS:
        for what, headers in bad.items():
            r = endpoint.call(client, headers, "dpo")
            assert r.status_code == 401, f"{what} {endpoint.method} {endpoint.path}: {r.status_code} {r.text[:200]}"
            assert _problem(r)["type"] == "/problems/unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
            actor = "dpo-key" if what == "revoked key" else "anonymous"
            expected[(actor, endpoint.operation or "read", "auth.key")] += 1
    assert _refusals(setup.log()) - before == expected
    with setup.open() as g:
        assert g.integrity().ok


def test_refusals_beyond_the_per_address_budget_are_counted_not_logged(served: tuple[Setup, TestClient]) -> None:
    setup, client = served
    client.app.state.service.refusal_log_rates = TokenBuckets(2)  # type: ignore[attr-defined]
    before = len(setup.log())
    for _ in range(5):
        assert client.get("/v1/log/head").status_code == 401
    assert len(setup.log()) == before + 2
    assert "faceaudit_auth_refusals_unlogged_total 3.0" in client.get("/metrics").text


def test_rate_limit_per_key_answers_429_with_retry_after(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    with TestClient(create_app(setup.settings(rate_per_minute=3))) as client:
        statuses = [client.get("/v1/policy", headers=auth(setup.keys["operator"])).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        r = client.get("/v1/policy", headers=auth(setup.keys["operator"]))
        assert _problem(r)["type"] == "/problems/rate-limited"
        assert int(r.headers["retry-after"]) >= 1 and r.json()["retry_after"] == int(r.headers["retry-after"])
        # the bucket is per key: another key is not affected
        assert client.get("/v1/policy", headers=auth(setup.keys["admin"])).status_code == 200


def test_errors_are_problems_never_tracebacks(served: tuple[Setup, TestClient]) -> None:
    setup, client = served
    h = auth(setup.keys["operator"])
    r = client.get("/v1/nowhere", headers=h)
    assert r.status_code == 404 and _problem(r)["type"] == "/problems/not-found"
    r = client.post("/v1/verify", headers=h, data={"subject_id": "nobody"},
                    files={"image": ("p.jpg", _img(0), "image/jpeg")})
    assert r.status_code == 404 and _problem(r)["type"] == "/problems/not-found"
    r = client.post("/v1/verify", headers=h, files={"image": ("p.jpg", _img(0), "image/jpeg")})
    assert r.status_code == 400 and _problem(r)["type"] == "/problems/invalid-input"  # neither reference nor id
    r = client.post("/v1/detect", headers=h, files={"image": ("p.jpg", b"GIF89a" + b"\0" * 20, "image/gif")})
    assert r.status_code == 422 and _problem(r)["reason"] in ("not_an_image", "unsupported_format", "corrupt")
    r = client.post("/v1/detect", headers=h, files={"picture": ("p.jpg", _img(0), "image/jpeg")})
    body = _problem(r)
    assert r.status_code == 422 and body["type"] == "/problems/validation" and body["errors"][0]["loc"][-1] == "image"
    assert "Traceback" not in r.text


def test_keys_are_shown_once_stored_as_hashes_and_managed_from_the_cli(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    runner = CliRunner()
    common = ["--gallery", str(setup.folder), "--key", str(setup.key_file)]
    res = runner.invoke(main, ["keys", "create", *common, "--name", "ci-bot", "--role", "operator"])
    assert res.exit_code == 0, res.output
    key = res.stdout.strip().splitlines()[-1]
    assert key.startswith("fa_") and len(key) == 3 + 16 + 1 + 43
    database = (setup.folder / "gallery.sqlite").read_bytes() + b"".join(
        p.read_bytes() for p in setup.folder.glob("gallery.sqlite-*"))
    assert key.encode() not in database and key.split("_")[-1].encode() not in database  # only its hash is kept
    res = runner.invoke(main, ["keys", "list", *common, "--json"])
    assert res.exit_code == 0, res.output
    listed = {k["name"]: k for k in json.loads(res.stdout)}
    assert listed["ci-bot"]["role"] == "operator" and listed["ci-bot"]["revoked"] is None
    assert key not in res.stdout
    again = runner.invoke(main, ["keys", "create", *common, "--name", "ci-bot", "--role", "operator"])
    assert again.exit_code != 0 and "exists already" in again.output
    unknown = runner.invoke(main, ["keys", "create", *common, "--name", "x", "--role", "nobody"])
    assert unknown.exit_code != 0 and "not in the gallery's policy" in unknown.output
    with setup.open() as g:
        record, why = lookup(g.store, key)
        assert why == "ok" and record is not None and record.name == "ci-bot"
        assert lookup(g.store, key[:-1] + ("B" if key[-1] != "B" else "C"))[1] == "unknown"
    res = runner.invoke(main, ["keys", "revoke", *common, "--name", "ci-bot"])
    assert res.exit_code == 0, res.output
    with setup.open() as g:
        assert lookup(g.store, key)[1] == "revoked"
    ops = [(e["operation"], e["params"].get("name")) for e in setup.log() if str(e["operation"]).startswith("key-")]
    assert ("key-create", "ci-bot") in ops and ("key-revoke", "ci-bot") in ops
    assert all("fa_" not in json.dumps(e) for e in setup.log())  # neither keys nor hashes in the log
    with TestClient(create_app(setup.settings())) as client:
        assert client.get("/v1/policy", headers=auth(key)).status_code == 401


def test_an_unexpected_error_is_a_500_problem_with_an_incident_and_no_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from faceaudit.service.routes import recognition

    def broken(*args: object, **kw: object) -> None:
        raise RuntimeError("internal detail the client must not see")

    monkeypatch.setattr(recognition, "detect_faces", broken)
    setup = make_setup(tmp_path)
    with TestClient(create_app(setup.settings()), raise_server_exceptions=False) as client:
        r = client.post("/v1/detect", headers=auth(setup.keys["operator"]),
                        files={"image": ("a.jpg", _img(0), "image/jpeg")})
    body = _problem(r)
    assert r.status_code == 500 and body["type"] == "/problems/internal"
    assert "internal detail" not in r.text and "Traceback" not in r.text
    assert body["incident"] in caplog.text and "internal detail the client must not see" in caplog.text
