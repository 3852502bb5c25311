"""The gallery end to end, on SQLite and on a real PostgreSQL server: policy, search, erasure, log, crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from faceaudit.cli import main
from faceaudit.errors import InputError
from faceaudit.gallery.crypto import DecryptionError, TemplateCipher, generate_key_file
from faceaudit.gallery.gallery import INDEX_FILE, Consent, Gallery
from faceaudit.gallery.policy import Policy, PolicyError

DIM = 128
CONSENT = Consent("the person", "2026-01-05", "consent (GDPR Art. 9(2)(a))")
SEARCH_POLICY = Policy.from_dict({
    "roles": {"operator": ["enrol", "verify"], "investigator": ["search"], "admin": ["policy", "rotate-key"]},
    "search": {"enabled": True, "purpose": "duplicate enrolment check", "legal_basis": "Art. 6(1)(c)",
               "max_k": 5, "max_fpir": 0.05}})
SEARCH = {"purpose": "duplicate enrolment check", "legal_basis": "Art. 6(1)(c)"}


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return generate_key_file(tmp_path / "gallery.key")


def _gallery(tmp_path: Path, key: Path, database: str | None, policy: Policy | None = None,
             role: str = "admin") -> Gallery:
    return Gallery.init(tmp_path / "g", key_file=key, database=database, policy=policy, actor="tester", role=role)


def test_default_policy_allows_enrol_and_verify_only(tmp_path: Path, key: Path, database: str | None) -> None:
    rng = np.random.default_rng(0)
    with _gallery(tmp_path, key, database) as g:
        g.role = "operator"
        v = unit(rng, 2)
        g.enrol("alice", CONSENT, embeddings=v[:1])
        assert g.verify("alice", embedding=v[0])["match"]
        with pytest.raises(PolicyError, match=r"search\.enabled") as err:
            g.search(embedding=v[0], **SEARCH)
        assert err.value.rule == "search.enabled"
        with pytest.raises(PolicyError, match=r"roles\.\*"):
            g.rotate_key(TemplateCipher(os.urandom(32)))
        ops = [json.loads(e)["operation"] for _, e in g.store.log_rows()]
        assert ops == ["init", "enrol", "verify", "search-refused", "rotate-key-refused"]  # refusals are logged
        assert g.verify_log().ok


def test_search_finds_the_person_and_the_threshold_grows_with_the_gallery(tmp_path: Path, key: Path,
                                                                         database: str | None) -> None:
    rng = np.random.default_rng(1)
    people = unit(rng, 40)
    with _gallery(tmp_path, key, database, SEARCH_POLICY) as g:
        g.role = "operator"
        g.enrol("p0", CONSENT, embeddings=people[:1])
        small = g.threshold_for_fpir(0.01)
        for i in range(1, 40):
            g.enrol(f"p{i}", CONSENT, embeddings=people[i:i + 1])
        assert g.threshold_for_fpir(0.01) > small  # FPIR(N) = 1 - (1 - FMR)^N: more people, stricter threshold
        g.role = "investigator"
        probe = people[7] + 0.02 * unit(rng, 1)[0]
        res = g.search(embedding=probe, k=5, fpir=0.01, **SEARCH)
        assert res.candidates[0].subject_id == "p7" and res.candidates[0].match
        assert not any(c.match for c in res.candidates[1:]) and res.investigative_lead
        for bad, rule in (({"k": 6}, "search.max_k"), ({"fpir": 0.1}, "search.max_fpir"),
                          ({"purpose": "curiosity"}, "search.purpose")):
            with pytest.raises(PolicyError) as err:
                g.search(embedding=probe, **{"k": 5, **SEARCH, **bad})  # type: ignore[arg-type]
            assert err.value.rule == rule
        log = [json.loads(e) for _, e in g.store.log_rows()]
        last_search = [e for e in log if e["operation"] == "search"][-1]
        assert last_search["purpose"] == SEARCH["purpose"] and last_search["result"]["candidates"][0][0] == "p7"
        assert "embedding" not in json.dumps(log)


def test_erasure_leaves_no_bytes_anywhere(tmp_path: Path, key: Path) -> None:
    """After delete, neither the plaintext nor the ciphertext is in the database file, its WAL or the index."""
    rng = np.random.default_rng(2)
    vecs = unit(rng, 30)
    with _gallery(tmp_path, key, None) as g:
        for i in range(30):
            g.enrol(f"p{i}", CONSENT, embeddings=vecs[i:i + 1])
        [row] = g.store.templates("p3")
        secret_plain, secret_cipher = vecs[3].astype("<f4").tobytes(), row.blob
        files = [*g.store.files(), g.index_path]

        def found() -> list[str]:
            hits = []
            for f in [*g.store.files(), g.index_path]:
                data = f.read_bytes()
                hits += [f"{f.name}: {what}" for what, b in (("plaintext", secret_plain),
                                                             ("ciphertext", secret_cipher[20:60])) if b in data]
            return hits

        assert any(f.name == "gallery.sqlite" for f in files)
        ids = g.delete("p3")
        assert found() == [] and g.verify_erasure("p3", ids) == []
        res = g.index.search(vecs[3:4], 5)[1][0]
        assert row.template_id not in res.tolist()
        g.enrol("late", CONSENT, embeddings=unit(rng, 1))  # later writes copy zeroed pages, not the template
        assert found() == [] and g.verify_erasure("p3") == []
    assert CliRunner().invoke(main, ["gallery", "verify-erasure", str(tmp_path / "g"), "p3", "--key",
                                     str(key)]).exit_code == 0


def test_export_expire_rotate_and_wrong_keys(tmp_path: Path, key: Path, database: str | None) -> None:
    rng = np.random.default_rng(3)
    v = unit(rng, 3)
    with _gallery(tmp_path, key, database) as g:
        g.enrol("alice", CONSENT, embeddings=v[:2])
        past = (date.today() - timedelta(days=1)).isoformat()
        g.enrol("bob", Consent("bob", "2025-01-01", "consent", expires=past), embeddings=v[2:])
        doc = g.export("alice", requested_by_subject=True)
        assert len(doc["templates"]) == 2 and doc["consent"]["given_by"] == "the person"
        assert [e["params"]["subject_id"] for e in doc["log_entries"]] == ["alice"]  # not bob's, not others'
        assert doc["log_entries"][0]["operation"] == "enrol"
        assert "template_ids" in doc["log_entries"][0]["result"]
        back = np.frombuffer(__import__("base64").b64decode(doc["templates"][0]["embedding_float32_base64"]), "<f4")
        assert np.allclose(back, v[0])
        assert g.expire() == ["bob"] and g.store.templates("bob") == []
        old_blobs = {r.template_id: r.blob for r in g.store.templates()}
        new_key = generate_key_file(tmp_path / "new.key")
        assert g.rotate_key(TemplateCipher.load(new_key)) == 2
        assert all(r.blob != old_blobs[r.template_id] for r in g.store.templates())
    with pytest.raises(InputError, match="is not the gallery's"):
        Gallery.open(tmp_path / "g", key_file=key)
    with Gallery.open(tmp_path / "g", key_file=new_key) as g:
        assert g.verify("alice", embedding=v[1])["match"]
        ops = [json.loads(e)["operation"] for _, e in g.store.log_rows()]
        assert {"export", "delete", "rotate-key", "verify"} <= set(ops) and g.verify_log().ok
        # a ciphertext moved onto another row does not decrypt (bound to its template id)
        rows = g.store.templates("alice")
        with pytest.raises(DecryptionError):
            g.cipher.decrypt(rows[0].blob, g._aad(rows[1].template_id, "alice"))


def test_tampered_log_is_detected_in_the_database(tmp_path: Path, key: Path, database: str | None) -> None:
    rng = np.random.default_rng(4)
    with _gallery(tmp_path, key, database) as g:
        for i in range(5):
            g.enrol(f"p{i}", CONSENT, embeddings=unit(rng, 1))
        head = g.log_head()
        seq, text = g.store.log_rows()[2]
        with g.store.transaction() as tx:
            tx.run("UPDATE log SET entry = ? WHERE seq = ?", (text.replace('"p1"', '"px"'), seq))
        check = g.verify_log()
        assert not check.ok and str(seq) in " ".join(check.problems)
        with g.store.transaction() as tx:
            tx.run("UPDATE log SET entry = ? WHERE seq = ?", (text, seq))
            tx.run("DELETE FROM log WHERE seq = ?", (head[0],))  # drop the newest entry
        assert not g.verify_log(head).ok  # caught against the published head


def test_stale_or_missing_index_is_rebuilt_from_the_store(tmp_path: Path, key: Path) -> None:
    rng = np.random.default_rng(5)
    v = unit(rng, 5)
    with _gallery(tmp_path, key, None) as g:
        for i in range(5):
            g.enrol(f"p{i}", CONSENT, embeddings=v[i:i + 1])
    (tmp_path / "g" / INDEX_FILE).unlink()
    with Gallery.open(tmp_path / "g", key_file=key) as g:
        assert len(g.index) == 5 and g.index.search(v[2:3], 1)[1][0, 0] == g.store.templates("p2")[0].template_id


_ENROL_SCRIPT = """
import sys, numpy as np
from faceaudit.gallery.gallery import Gallery, Consent
g = Gallery.open(sys.argv[1], key_file=sys.argv[2], actor="batch", role="operator")
rng = np.random.default_rng(0)
for i in range(100000):
    v = rng.normal(size=(1, 128)).astype(np.float32)
    g.enrol(f"s{i}", Consent("x", "2026-01-01", "consent"), embeddings=v)
    print(i, flush=True)
"""


def test_killed_mid_batch_leaves_every_template_whole(tmp_path: Path, key: Path) -> None:
    """SIGKILL while enrolling: each subject is there with its log entry, or absent; the index matches."""
    _gallery(tmp_path, key, None).close()
    proc = subprocess.Popen([sys.executable, "-c", _ENROL_SCRIPT, str(tmp_path / "g"), str(key)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line and int(line.split()[0]) >= 40:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Gallery.open(tmp_path / "g", key_file=key) as g:
        rows = g.store.templates()
        logged = {json.loads(e)["params"].get("subject_id") for _, e in g.store.log_rows()
                  if json.loads(e)["operation"] == "enrol"}
        assert len(rows) >= 40 and {r.subject_id for r in rows} == logged
        assert set(g.index.ids().tolist()) == {r.template_id for r in rows}
        assert g.verify_log().ok


def test_cli_from_real_faces(tmp_path: Path, tiny: pd.DataFrame) -> None:
    run = CliRunner().invoke
    key = str(tmp_path / "k")
    folder = str(tmp_path / "g")
    assert run(main, ["gallery", "keygen", key]).exit_code == 0
    assert run(main, ["gallery", "init", folder, "--key", key, "--role", "admin"]).exit_code == 0
    first = tiny.drop_duplicates("subject_id").head(6)
    for _, r in first.iterrows():
        res = run(main, ["gallery", "enrol", folder, r["subject_id"], r["file"], "--key", key, "--consent-by",
                         "self", "--consent-date", "2017-01-01", "--legal-basis", "consent (CC BY 4.0 release)"])
        assert res.exit_code == 0, res.output
    cache_dir = Path(os.environ["FACEAUDIT_CACHE_DIR"])
    assert not list(cache_dir.glob("*"))  # enrolling never wrote a template into the embedding cache
    other = tiny[(tiny["subject_id"] == first.iloc[2]["subject_id"]) & (tiny["file"] != first.iloc[2]["file"])]
    probe = other.iloc[0]["file"]
    refused = run(main, ["gallery", "search", folder, probe, "--key", key, "--role", "investigator"])
    assert refused.exit_code != 0 and "search.enabled" in refused.output
    policy = tmp_path / "p.toml"
    policy.write_text('[roles]\ninvestigator = ["search"]\nadmin = ["policy"]\n[search]\nenabled = true\n'
                      'purpose = "demo"\nlegal_basis = "test"\nmax_fpir = 0.1\n')
    assert run(main, ["gallery", "policy", folder, str(policy), "--key", key, "--role", "admin"]).exit_code == 0
    found = run(main, ["gallery", "search", folder, probe, "--key", key, "--role", "investigator", "--purpose", "demo",
                       "--legal-basis", "test", "-k", "3", "--fpir", "0.1", "--json"])
    assert found.exit_code == 0, found.output
    doc = json.loads(found.output)
    assert doc["candidates"][0]["subject_id"] == first.iloc[2]["subject_id"] and doc["candidates"][0]["match"]
    gone = run(main, ["gallery", "delete", folder, first.iloc[2]["subject_id"], "--key", key, "--subject-request"])
    assert gone.exit_code == 0 and "erased" in gone.output
    check = run(main, ["log", "verify", folder, "--key", key])
    assert check.exit_code == 0 and "OK" in check.output
