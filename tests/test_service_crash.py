"""kill -9 of the server in the middle of an enrol batch (many requests in flight): after a restart the gallery
is consistent (every subject with its log entry or absent, every acknowledged enrolment kept, the index equal to
the store) and the log verifies. On SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from faceaudit.gallery.gallery import INDEX_FILE
from faceaudit.gallery.index import SearchIndex
from service_support import CONSENT, Server, auth, faces, make_setup, serve

N_REQUESTS = 48
IN_FLIGHT = 8


def test_kill_9_during_an_enrol_batch_leaves_a_consistent_gallery(tmp_path: Path, database: str | None) -> None:
    setup = make_setup(tmp_path, database=database)
    key = setup.keys["operator"]
    people = faces()[:N_REQUESTS]
    acknowledged: dict[str, list[int]] = {}
    lock = threading.Lock()
    server = Server(setup.settings(), tmp_path / "server.log")
    server.start()
    try:
        def enrol(i: int) -> None:
            subject, image, _ = people[i]
            try:
                r = httpx.post(f"{server.url}/v1/subjects", headers=auth(key), timeout=60,
                               data={"subject_id": f"p{subject}", **CONSENT},
                               files=[("images", ("a.jpg", image, "image/jpeg"))])
            except httpx.TransportError:
                return  # the server died under it: this enrolment may or may not have happened
            if r.status_code == 201:
                with lock:
                    acknowledged[r.json()["subject_id"]] = r.json()["template_ids"]

        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures = [pool.submit(enrol, i) for i in range(N_REQUESTS)]
            deadline = time.monotonic() + 60
            while len(acknowledged) < 6 and time.monotonic() < deadline:
                time.sleep(0.01)
            server.kill()  # mid-batch: requests are in flight, some in the middle of their transaction
            for f in futures:
                f.result()
    finally:
        server.stop()
    assert 6 <= len(acknowledged) < N_REQUESTS, "the kill should have landed in the middle of the batch"

    with serve(setup.settings(), tmp_path / "server2.log") as again:  # the restart opens (and repairs) the gallery
        with setup.open() as g:
            store = {}
            for row in g.store.templates():
                store.setdefault(row.subject_id, []).append(row.template_id)
            log = [json.loads(e) for _, e in g.store.log_rows()]
            enrolled = {e["params"]["subject_id"]: e["result"]["template_ids"]
                        for e in log if e["operation"] == "enrol"}
            assert store == enrolled  # each subject with its log entry, or neither
            for subject, ids in acknowledged.items():
                assert store.get(subject) == ids  # an acknowledged enrolment survived the crash
            index = SearchIndex.load(setup.folder / INDEX_FILE, g.cipher)
            assert set(index.ids().tolist()) == {i for ids in store.values() for i in ids}
            assert g.integrity().ok
        # and the restarted server serves the survivors
        subject = next(iter(acknowledged))
        probe = next(second for s, _, second in people if f"p{s}" == subject)
        r = httpx.post(f"{again.url}/v1/verify", headers=auth(key), data={"subject_id": subject},
                       files={"image": ("p.jpg", probe, "image/jpeg")}, timeout=60)
        assert r.status_code == 200 and r.json()["match"], r.text
