"""Schemathesis (the real tool, its command line) against a running server and the committed OpenAPI document.

With a key whose role may run every operation: no 5xx, and every response conforms to the schema
(status code, content type, headers, body). With no key, or a wrong one: every protected operation
answers 401 with a problem document.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from faceaudit.gallery.policy import OPERATIONS, Policy
from service_support import SEARCH, auth, make_setup, serve
from tests_paths import ROOT

SCHEMA = ROOT / "schemas" / "openapi.json"
EVERYTHING = Policy.from_dict({"roles": {"all": list(OPERATIONS)},
                               "search": {"enabled": True, **SEARCH, "max_k": 5, "max_fpir": 0.05}})
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance")


def _st() -> str:
    found = Path(sys.executable).with_name("st")
    if not found.exists():
        pytest.skip("schemathesis is not installed (make test installs it)")
    return str(found)


def test_every_operation_with_a_valid_key_gives_no_5xx_and_conforms(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, policy=EVERYTHING)
    data_root = tmp_path / "data"
    data_root.mkdir()
    with serve(setup.settings(data_root=data_root), tmp_path / "server.log") as server:
        done = subprocess.run(
            [_st(), "run", str(SCHEMA), "--url", server.url, "-H", f"Authorization: Bearer {setup.keys['all']}",
             "--checks", CHECKS, "--max-examples", "12", "--generation-deterministic", "--request-timeout", "60",
             # an operation with no parameters (GET /v1/policy) leaves Hypothesis little to vary: not a finding
             "--suppress-health-check", "filter_too_much",
             "--no-color", "--report", "junit", "--report-dir", str(tmp_path / "st")],
            capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path)
        said = done.stdout + done.stderr
        assert done.returncode == 0, f"schemathesis found problems:\n{said[-6000:]}\n\nserver:\n{server.log_tail()}"
        assert "Traceback" not in server.log_tail(400)
    shutil.rmtree(tmp_path / "st", ignore_errors=True)


def test_every_protected_operation_refuses_no_key_and_a_wrong_key(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, policy=EVERYTHING)
    doc = json.loads(SCHEMA.read_text())
    protected = [(path, method) for path, ops in doc["paths"].items() for method, op in ops.items()
                 if op.get("security")]
    assert len(protected) >= 17
    wrong = "fa_" + "0" * 16 + "_" + "x" * 43
    with serve(setup.settings(), tmp_path / "server.log") as server:
        for path, method in protected:
            url = server.url + path.replace("{subject_id}", "alice").replace("{job_id}", "1")
            for headers in ({}, auth(wrong), {"X-API-Key": "not-a-key"}):
                r = httpx.request(method.upper(), url, headers=headers, timeout=30)
                assert r.status_code == 401, f"{method.upper()} {path} with {headers or 'no key'}: {r.status_code}"
                assert r.headers["content-type"].startswith("application/problem+json")
                assert r.json()["type"].endswith("/unauthorized")
