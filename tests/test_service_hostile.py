"""Hostile input over HTTP, against a real uvicorn server in a subprocess: truncated images, a decompression bomb's
header, text sent as an image, bodies over the limit (declared and streamed), wrong content types, unknown JSON
fields, SQL and HTML metacharacters in subject ids. Every refusal is a 4xx problem, never a 5xx; the server's
memory stays bounded; nothing refused is written to the gallery. Also the timeout middleware (504)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import psutil
import pytest

from faceaudit.service.limits import Timeout
from service_support import CONSENT, Server, Setup, auth, faces, make_setup, png_header, serve

MAX_BODY = 2 * 2**20
# ids a careless service would splice into SQL or HTML
NASTY_IDS = ["x'); DROP TABLE subjects; --", "<script>alert(1)</script>", "a\"b'c;--%00", "ids/with/slashes",
             "ünï cödé & <b>bold</b>"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Setup, Server]]:
    tmp = tmp_path_factory.mktemp("hostile")
    setup = make_setup(tmp)
    with serve(setup.settings(max_body_bytes=MAX_BODY, max_images_per_request=4), tmp / "server.log") as srv:
        yield setup, srv


def _problem(r: httpx.Response, status: int | None = None) -> dict[str, object]:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers["content-type"]
    body: dict[str, object] = r.json()
    assert body["status"] == r.status_code and str(body["type"]).startswith("/problems/")
    assert "Traceback" not in r.text
    return body


def _head(srv: Server, setup: Setup) -> object:
    return httpx.get(f"{srv.url}/v1/log/head", headers=auth(setup.keys["admin"])).json()


def test_hostile_requests_are_4xx_problems_and_write_nothing(server: tuple[Setup, Server]) -> None:
    setup, srv = server
    h = auth(setup.keys["operator"])
    jpeg = faces()[0][1]
    url = srv.url
    proc = psutil.Process(srv.pid)
    bomb = png_header(30000, 30000)
    start_rss = proc.memory_info().rss
    with httpx.Client(base_url=url, timeout=60) as c:
        c.post("/v1/detect", headers=h, files={"image": ("a.jpg", jpeg, "image/jpeg")}).raise_for_status()  # warm
        start_rss = proc.memory_info().rss
        head = _head(srv, setup)
        refused: list[tuple[str, httpx.Response, int | None, str | None]] = []

        def enrol(subject: str, data: bytes, name: str = "a.jpg") -> httpx.Response:
            return c.post("/v1/subjects", headers=h, data={"subject_id": subject, **CONSENT},
                          files=[("images", (name, data, "image/jpeg"))])

        for endpoint in ("detect", "enrol"):
            for what, data, reason in (("truncated", jpeg[: len(jpeg) // 2], "truncated"),
                                       ("bomb", bomb, "too_large"),
                                       ("text", b"I am not an image, I am a text file.\n" * 10, "not_an_image"),
                                       ("empty", b"", "empty_file")):
                r = (c.post("/v1/detect", headers=h, files={"image": ("x.png", data, "image/png")})
                     if endpoint == "detect" else enrol(f"victim-{what}", data, "x.png"))
                refused.append((f"{endpoint} {what}", r, 422, reason))
        # a truncated image among good ones: nothing of the request is enrolled
        r = c.post("/v1/subjects", headers=h, data={"subject_id": "half", **CONSENT},
                   files=[("images", ("a.jpg", jpeg, "image/jpeg")), ("images", ("b.jpg", jpeg[:500], "image/jpeg"))])
        refused.append(("enrol good+truncated", r, 422, None))
        r = c.post("/v1/embed", headers=h, files=[("images", (f"{i}.jpg", jpeg, "image/jpeg")) for i in range(5)])
        refused.append(("too many images", r, 413, None))
        # bodies over the limit: declared (refused before it is read) and streamed without a length
        big = b"\0" * (MAX_BODY + 1)
        r = c.post("/v1/detect", headers=h, files={"image": ("big.png", big, "image/png")})
        refused.append(("declared body over the limit", r, 413, None))

        def chunks() -> Iterator[bytes]:
            yield b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"
            for _ in range(MAX_BODY // 65536 + 4):
                yield b"\0" * 65536

        r = c.post("/v1/detect", headers={**h, "Content-Type": "multipart/form-data; boundary=xyz"}, content=chunks())
        refused.append(("streamed body over the limit", r, 413, None))
        # wrong content types
        r = c.post("/v1/detect", headers=h, json={"image": "aGVsbG8="})
        refused.append(("json to a multipart endpoint", r, 415, None))
        r = c.post("/v1/log/verify", headers={**auth(setup.keys["admin"]), "Content-Type": "text/plain"},
                   content=b"head=1")
        refused.append(("text to a json endpoint", r, 415, None))
        r = c.put("/v1/policy", headers={**auth(setup.keys["admin"]), "Content-Type": "application/xml"},
                  content=b"<policy/>")
        refused.append(("xml policy", r, 415, None))
        # unknown JSON fields, and wrong types
        admin = auth(setup.keys["admin"])
        r = c.post("/v1/log/verify", headers=admin, json={"head": None, "also": 1})
        refused.append(("unknown field", r, 422, None))
        r = c.post("/v1/log/verify", headers=admin, json={"head": {"seq": 1, "hash": "0" * 64, "extra": True}})
        refused.append(("unknown nested field", r, 422, None))
        r = c.put("/v1/policy", headers=admin, json={"roles": {"admin": ["policy"]}, "search": {"enabled": "yes",
                                                                                                "sneaky": 1}})
        refused.append(("unknown policy key", r, 422, None))
        r = c.post("/v1/log/verify", headers=admin, content=b"{not json", )
        refused.append(("malformed json", r, 415, None))  # no JSON content type: refused as such
        r = c.post("/v1/log/verify", headers={**admin, "Content-Type": "application/json"}, content=b"{not json")
        refused.append(("malformed json body", r, 422, None))
        # a metacharacter id that is not enrolled: not found, like any other
        r = c.post("/v1/verify", headers=h, data={"subject_id": NASTY_IDS[0]},
                   files={"image": ("p.jpg", jpeg, "image/jpeg")})
        refused.append(("unknown nasty id", r, 404, None))
        r = c.delete(f"/v1/subjects/{quote(NASTY_IDS[1], safe='')}", headers=admin)
        refused.append(("delete unknown nasty id", r, 404, None))
        r = enrol("", jpeg)
        refused.append(("empty subject id", r, 422, None))
        r = enrol("nul\x00id", jpeg)
        refused.append(("NUL in the subject id", r, 400, None))

        for what, r, status, reason in refused:
            body = _problem(r, status)
            if reason is not None:
                assert body.get("reason") == reason, (what, body)
        # many bombs in a row: each refused from its header, so memory does not grow with them
        for _ in range(20):
            _problem(c.post("/v1/detect", headers=h, files={"image": ("x.png", bomb, "image/png")}), 422)
        assert _head(srv, setup) == head, "a refused request wrote to the gallery's log"
        with setup.open() as g:
            assert g.counts() == {"subjects": 0, "templates": 0}
        grown = proc.memory_info().rss - start_rss
        assert grown < 150 * 2**20, f"server RSS grew by {grown / 2**20:.0f} MiB"


def test_metacharacters_in_subject_ids_are_data(server: tuple[Setup, Server]) -> None:
    setup, srv = server
    h = auth(setup.keys["operator"])
    people = faces()[1:1 + len(NASTY_IDS)]
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        for subject, (_, first, _) in zip(NASTY_IDS, people, strict=True):
            r = c.post("/v1/subjects", headers=h, data={"subject_id": subject, **CONSENT},
                       files=[("images", ("a.jpg", first, "image/jpeg"))])
            assert r.status_code == 201, r.text
            assert r.json()["subject_id"] == subject
        for subject, (_, _, second) in zip(NASTY_IDS, people, strict=True):
            r = c.post("/v1/verify", headers=h, data={"subject_id": subject},
                       files={"image": ("p.jpg", second, "image/jpeg")})
            assert r.status_code == 200 and r.json()["subject_id"] == subject and r.json()["match"], r.text
            r = c.get(f"/v1/subjects/{quote(subject, safe='')}/export", params={"requested_by_subject": "true"},
                      headers=h)
            assert r.status_code == 200 and r.json()["subject_id"] == subject, (subject, r.text[:300])
            assert r.headers["content-type"] == "application/json"  # never HTML that could run the markup
        r = c.delete(f"/v1/subjects/{quote(NASTY_IDS[0], safe='')}", params={"requested_by_subject": "true"}, headers=h)
        assert r.status_code == 200 and r.json()["complete"], r.text
    with setup.open() as g:
        assert g.counts()["subjects"] == len(NASTY_IDS) - 1  # the tables are intact: only the erased one is gone
        logged = {json.loads(e)["params"].get("subject_id") for _, e in g.store.log_rows()}
        assert set(NASTY_IDS) <= logged
        assert g.integrity().ok


def test_a_slow_request_gets_a_504_problem() -> None:
    async def slow(scope: object, receive: object, send: object) -> None:
        await asyncio.sleep(5)

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    middleware = Timeout(slow, seconds=0.05)  # type: ignore[arg-type]
    asyncio.run(middleware({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 504
    body = json.loads(sent[1]["body"])  # type: ignore[arg-type]
    assert body["type"] == "/problems/timeout"
