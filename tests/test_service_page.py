"""The page at `/`: sign-in, the audit jobs with their reports, the gallery's size, policy and log head; hostile
text shown as text. Rendered in headless Chromium against a real server, and checked over HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI
from fastapi.testclient import TestClient

from browser import chromium, needs_chromium
from faceaudit.gallery.gallery import Consent, Gallery
from faceaudit.service.jobrunner import JobRunner
from faceaudit.service.routes.pages import COOKIE
from faceaudit.service.settings import ServiceSettings
from test_service_jobs import ROLES, _score_files, build_app, finished, make_gallery, wait_for

HOSTILE_TITLE = "<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\"> & \"quotes\""
HOSTILE_ROLE = "<b onmouseover=\"window.pwned = 3\">boss</b>"
PURPOSE = "finding duplicates </p><script>window.pwned = 4</script>"
POLICY = {"roles": {**ROLES, HOSTILE_ROLE: ["verify"]},
          "search": {"enabled": True, "purpose": PURPOSE, "legal_basis": "GDPR <Art. 6(1)(c)>", "max_k": 5}}


@contextmanager
def page_service(base: Path) -> Iterator[tuple[FastAPI, dict[str, str], ServiceSettings]]:
    """A gallery of two people with a hostile policy, and the app, not yet started."""
    folder, key_file, made = make_gallery(base, POLICY)
    admin = Gallery.open(folder, key_file=key_file, actor="admin", role="admin")
    try:
        rng = np.random.default_rng(0)
        consent = Consent(given_by="the person", given_at="2026-01-01", legal_basis="consent")
        admin.enrol_many([(sid, consent, rng.normal(size=(1, admin.dim)).astype(np.float32))
                          for sid in ("<script>alert(1)</script>", "robert'); DROP TABLE subjects;--")])
    finally:
        admin.close()
    settings = ServiceSettings(gallery=folder, key_file=key_file, data_root=None, jobs_dir=base / "jobs")
    yield build_app(settings), made, settings


def _finished_job(client: Any, headers: dict[str, str], base: Path, title: str) -> str:
    manifest, scores = _score_files(base)
    files = {"manifest": ("ids.csv", manifest, "text/csv"), "scores": ("s.parquet", scores, "application/x-parquet")}
    r = client.post("/v1/audits", files=files, headers=headers,
                    data={"options": json.dumps({"by": ["sex"], "target_fmrs": [0.01], "title": title})})
    assert r.status_code == 202, r.text
    status, _ = wait_for(client, r.json()["id"], headers, finished)
    assert status["state"] == "done", status
    return str(r.json()["id"])


def test_page_over_http(tmp_path: Path) -> None:
    """Sign-in, what each role sees, escaping and the headers, without a browser."""
    with page_service(tmp_path) as (app, made, settings), TestClient(app) as c:
        runner = JobRunner.for_service(settings, app.state.service.gallery)
        runner.start()
        try:
            job = _finished_job(c, {"X-API-Key": made["alice"]}, tmp_path, HOSTILE_TITLE)
        finally:
            runner.stop()
        anonymous = c.get("/")
        assert anonymous.status_code == 200 and 'name="key"' in anonymous.text
        assert job not in anonymous.text and "boss" not in anonymous.text  # nothing without a key
        csp = anonymous.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
        assert anonymous.headers["cache-control"] == "no-store"

        # a forged sign-in from another site, and a wrong key: refused; the wrong key is in the log
        assert c.post("/login", data={"key": made["alice"]}, headers={"Origin": "https://evil.example"}
                      ).status_code == 403
        assert c.post("/login", data={"key": made["alice"]}, headers={"Sec-Fetch-Site": "cross-site"}
                      ).status_code == 403
        wrong = c.post("/login", data={"key": "fa_0000000000000000_" + "A" * 43})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        assert COOKIE not in wrong.headers.get("set-cookie", "")
        log = [e for _, e in app.state.service.store().log_rows()]
        assert any('"page-login-refused"' in e and '"auth.key"' in e for e in log)

        r = c.post("/login", data={"key": made["alice"]}, headers={"Origin": "http://testserver"},
                   follow_redirects=False)
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and made["alice"] not in cookie
        page = c.get("/").text
        assert f'id="job-{job}"' in page and "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in page
        assert "<script" not in page and "<img" not in page and "<b " not in page
        assert "&lt;b onmouseover=" in page and "GDPR &lt;Art. 6(1)(c)&gt;" in page
        assert f'href="/audits/{job}/report.tar.gz"' in page
        download = c.get(f"/audits/{job}/report.zip")
        assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
        # the cookie authenticates the page, never the API
        assert c.get("/v1/audits").status_code == 401

        c.post("/logout")
        assert 'name="key"' in c.get("/").text
        assert c.get(f"/audits/{job}/report.zip").status_code == 401

        # a role that may not audit or read the log: the page says so, shows no job; downloads refused
        c.post("/login", data={"key": made["carol"]})
        page = c.get("/").text
        assert job not in page and "may not run audits" in page and "may not read the log" in page
        assert c.get(f"/audits/{job}/report.zip").status_code == 403


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app on a real server (uvicorn, in a thread) on a free local port; its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@needs_chromium
def test_page_in_chromium(tmp_path: Path) -> None:
    with page_service(tmp_path) as (app, made, settings), serving(app) as url:
        runner = JobRunner.for_service(settings, app.state.service.gallery)
        runner.start()
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                job = _finished_job(client, {"Authorization": f"Bearer {made['alice']}"}, tmp_path, HOSTILE_TITLE)
        finally:
            runner.stop()
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        def after_load(by: str, value: str) -> Any:  # a form post navigates: wait for the next page's element
            return WebDriverWait(driver, 20).until(expected_conditions.presence_of_element_located((by, value)))

        with chromium(tmp_path / "profile") as driver:
            driver.get(url + "/")
            driver.find_element(By.NAME, "key").send_keys("fa_not_a_key")
            driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            assert "not valid" in after_load(By.ID, "login-error").text

            driver.find_element(By.NAME, "key").send_keys(made["alice"])
            driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            assert after_load(By.ID, "who").text == "alice"
            row = driver.find_element(By.ID, f"job-{job}")
            cells = row.find_elements(By.TAG_NAME, "td")
            assert cells[1].text == HOSTILE_TITLE  # shown as the text it is
            assert cells[2].text == "alice" and cells[3].text == "done"
            assert row.find_element(By.LINK_TEXT, "tar.gz").get_attribute("href") == \
                f"{url}/audits/{job}/report.tar.gz"
            assert driver.find_element(By.ID, "subjects").text == "2"
            assert driver.find_element(By.ID, "templates").text == "2"
            assert driver.find_element(By.ID, "log-head").text.startswith("seq ")
            policy = driver.find_element(By.ID, "policy").text
            assert HOSTILE_ROLE in policy and "auditor" in policy and "audit, log" in policy
            search = driver.find_element(By.ID, "search").text
            assert "on" in search and PURPOSE in search and "GDPR <Art. 6(1)(c)>" in search
            # nothing hostile ran, and nothing but the page's own markup is there
            assert driver.execute_script("return window.pwned === undefined")
            assert driver.execute_script("return document.scripts.length") == 0
            assert driver.execute_script("return document.images.length") == 0
            session = driver.get_cookie(COOKIE)
            assert session is not None and session["httpOnly"] and session["sameSite"] == "Strict"
            assert driver.execute_script("return document.cookie") == ""  # no script can read the session

            r = httpx.get(f"{url}/audits/{job}/report.tar.gz", cookies={COOKIE: session["value"]})
            assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"

            driver.find_element(By.CSS_SELECTOR, ".who button").click()
            after_load(By.NAME, "key")  # signed out: the form again
            assert driver.get_cookie(COOKIE) is None
