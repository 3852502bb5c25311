"""The committed OpenAPI document is the app's; and several server processes on one PostgreSQL gallery stay
consistent (what one enrols, erases, revokes or changes in the policy, the other sees at its next request)."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from faceaudit.service.app import create_app
from faceaudit.service.models import PolicyDocument
from faceaudit.service.openapi import current
from service_support import CONSENT, POLICY, SEARCH, auth, faces, make_setup
from tests_paths import ROOT

COMMITTED = ROOT / "schemas" / "openapi.json"


def test_committed_openapi_document_is_the_apps() -> None:
    want = current()
    assert COMMITTED.read_text() == want, (
        "schemas/openapi.json differs from the app's OpenAPI document; after changing the API regenerate it with\n"
        "    python -m faceaudit.service.openapi > schemas/openapi.json\nand review the diff")
    doc = json.loads(want)
    # every operation under /v1 needs a key, and says so
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path.startswith("/v1"):
                assert {"HTTPBearer": []} in op["security"] and {"APIKeyHeader": []} in op["security"], (path, method)
                assert "401" in op["responses"], (path, method)
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (path, method, status)


def test_two_server_processes_on_one_postgres_gallery_stay_consistent(tmp_path: Path, postgres_db: str) -> None:
    setup = make_setup(tmp_path, database=postgres_db)
    (a_subject, a_first, a_second), (b_subject, b_first, _) = faces()[0], faces()[1]
    op, inv, admin = (auth(setup.keys[r]) for r in ("operator", "investigator", "admin"))
    search = {**SEARCH, "k": "3", "fpir": "0.01"}
    # two apps, each with its own connection, gallery state and index: two worker processes of one server
    with TestClient(create_app(setup.settings())) as one, TestClient(create_app(setup.settings())) as two:
        assert two.post("/v1/search", headers=inv, data=search,
                        files={"image": ("p.jpg", a_second, "image/jpeg")}).json()["candidates"] == []
        for subject, image in ((a_subject, a_first), (b_subject, b_first)):
            r = one.post("/v1/subjects", headers=op, data={"subject_id": subject, **CONSENT},
                         files=[("images", ("a.jpg", image, "image/jpeg"))])
            assert r.status_code == 201, r.text
        # enrolled through one, found through the other (its index reloaded: the store changed underneath it)
        r = two.post("/v1/search", headers=inv, data=search, files={"image": ("p.jpg", a_second, "image/jpeg")})
        assert r.status_code == 200, r.text
        top = r.json()["candidates"][0]
        assert top["subject_id"] == a_subject and top["match"] and r.json()["gallery_size"] == 2
        r = two.post("/v1/verify", headers=op, data={"subject_id": a_subject},
                     files={"image": ("p.jpg", a_second, "image/jpeg")})
        assert r.status_code == 200 and r.json()["match"]
        # erased through one: gone from the other's search
        assert one.delete(f"/v1/subjects/{a_subject}", headers=admin).status_code == 200
        r = two.post("/v1/search", headers=inv, data=search, files={"image": ("p.jpg", a_second, "image/jpeg")})
        assert r.status_code == 200 and a_subject not in [c["subject_id"] for c in r.json()["candidates"]]
        assert r.json()["gallery_size"] == 1
        # a policy replaced through one binds the other at once
        stricter = PolicyDocument.of(POLICY).model_dump()
        stricter["roles"]["operator"] = ["enrol", "verify"]
        assert one.put("/v1/policy", headers=admin, json=stricter).status_code == 200
        r = two.post("/v1/detect", headers=op, files={"image": ("a.jpg", a_first, "image/jpeg")})
        assert r.status_code == 403 and r.json()["rule"] == "roles.operator"
        # the key rotated through one: the other reads the new key file and goes on
        rotated = one.post("/v1/key-rotation", headers=admin)
        assert rotated.status_code == 200, rotated.text
        r = two.post("/v1/verify", headers=op, data={"subject_id": b_subject},
                     files={"image": ("p.jpg", b_first, "image/jpeg")})
        assert r.status_code == 200 and r.json()["match"], r.text
        check = two.post("/v1/log/verify", headers=admin, json={})
        assert check.status_code == 200 and check.json()["ok"], check.text
