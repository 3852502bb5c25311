"""The attacks of the gallery's security review (issue 15), each performed and shown to fail now.

Most attacks are raw SQL on the gallery's database through a connection of the attacker's own (sqlite3 or
psycopg), as someone who can write the database but has not the gallery key; every test that does not depend
on SQLite's files runs on SQLite and on a real PostgreSQL server.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from faceaudit.cli import main
from faceaudit.errors import FaceauditError, InputError
from faceaudit.gallery import store as store_module
from faceaudit.gallery.crypto import IntegrityError, KeyFileWarning, TemplateCipher, generate_key_file
from faceaudit.gallery.gallery import INDEX_FILE, SETTINGS, Consent, Gallery
from faceaudit.gallery.log import LogEntry, next_entry, verify_chain
from faceaudit.gallery.policy import Policy, PolicyError
from faceaudit.gallery.safety import printable, write_private
from faceaudit.gallery.store import ErasureIncompleteError

DIM = 128
CONSENT = Consent("the person", "2026-01-05", "consent (GDPR Art. 9(2)(a))")
SEARCH = {"purpose": "duplicate enrolment check", "legal_basis": "Art. 6(1)(c)"}
SEARCH_POLICY = Policy.from_dict({
    "roles": {"operator": ["enrol", "verify"], "investigator": ["search"],
              "admin": ["enrol", "verify", "policy", "rotate-key", "delete"]},
    "search": {"enabled": True, **SEARCH, "max_k": 5, "max_fpir": 0.05}})


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return generate_key_file(tmp_path / "gallery.key")


def _gallery(tmp_path: Path, key: Path, database: str | None, policy: Policy | None = None) -> Gallery:
    return Gallery.init(tmp_path / "g", key_file=key, database=database, policy=policy, actor="tester", role="admin")


def _open(tmp_path: Path, key: Path, role: str = "admin", actor: str = "tester") -> Gallery:
    return Gallery.open(tmp_path / "g", key_file=key, actor=actor, role=role)


def attack(g: Gallery, database: str | None, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Run ``sql`` on the gallery's database through the attacker's own connection, outside faceaudit."""
    if database is None:
        assert g.store.path is not None
        con = sqlite3.connect(g.store.path)
        with con:
            con.execute(sql, params)
        con.close()
        return
    import psycopg

    with psycopg.connect(database, autocommit=True) as pg:
        pg.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]


def ops(g: Gallery) -> list[dict[str, Any]]:
    return [json.loads(e) for _, e in g.store.log_rows()]


# --- 1. owners are bound cryptographically on every path ------------------------------------------------------

def test_relabelled_template_is_an_integrity_error_not_a_wrong_name(tmp_path: Path, key: Path,
                                                                    database: str | None) -> None:
    rng = np.random.default_rng(10)
    v = unit(rng, 3)
    with _gallery(tmp_path, key, database, SEARCH_POLICY) as g:
        g.role = "operator"
        [alice] = g.enrol("alice", CONSENT, embeddings=v[:1])
        g.enrol("bob", CONSENT, embeddings=v[1:2])
        g.enrol("carol", CONSENT, embeddings=v[2:3])
        g.role = "investigator"
        probe = v[0] + 0.02 * unit(rng, 1)[0]
        assert g.search(embedding=probe, k=3, fpir=0.05, **SEARCH).candidates[0].subject_id == "alice"
        # the attack: relabel alice's template as bob's; the ciphertext is untouched
        attack(g, database, "UPDATE templates SET subject_id = 'bob' WHERE template_id = ?", (alice,))
        with pytest.raises(IntegrityError, match=rf"template {alice}, stored as belonging to 'bob', fails auth"):
            g.search(embedding=probe, k=3, fpir=0.05, **SEARCH)
        assert isinstance(IntegrityError("x"), FaceauditError)
        assert not any(e["operation"] == "search" and e["result"]["candidates"][0][0] == "bob" for e in ops(g))
        g.role = "operator"
        with pytest.raises(IntegrityError, match="Restore the gallery database"):
            g.verify("bob", embedding=probe)  # bob's rows now include the relabelled one
        g.role = "admin"
        with pytest.raises(IntegrityError):
            g.export("bob", requested_by_subject=True)


def test_index_of_another_gallery_under_the_same_key_is_caught(tmp_path: Path, key: Path) -> None:
    """A copy of a gallery (same key, same template ids) diverges; its index file swapped in would pair a
    template id with someone else's vector: the score recomputed from the store shows it."""
    rng = np.random.default_rng(11)
    v = unit(rng, 4)
    with _gallery(tmp_path, key, None, SEARCH_POLICY) as g:
        for i in range(2):
            g.enrol(f"p{i}", CONSENT, embeddings=v[i:i + 1])
    shutil.copytree(tmp_path / "g", tmp_path / "copy")
    with _open(tmp_path, key) as g:
        [x] = g.enrol("x", CONSENT, embeddings=v[2:3])
    with Gallery.open(tmp_path / "copy", key_file=key, role="admin") as c:
        [y] = c.enrol("y", CONSENT, embeddings=v[3:4])
    assert x == y  # the same id for different people in the two galleries
    shutil.copy(tmp_path / "g" / INDEX_FILE, tmp_path / "copy" / INDEX_FILE)
    with (Gallery.open(tmp_path / "copy", key_file=key, role="investigator") as c,
          pytest.raises(IntegrityError, match=r"search index's vector for template \d+ is not the store's")):
        c.search(embedding=v[2], k=3, fpir=0.05, **SEARCH)
    (tmp_path / "copy" / INDEX_FILE).unlink()  # as the message says: rebuilt from the store
    with Gallery.open(tmp_path / "copy", key_file=key, role="investigator") as c:
        assert c.search(embedding=v[3], k=3, fpir=0.05, **SEARCH).candidates[0].subject_id == "y"


# --- 2. the policy is sealed ----------------------------------------------------------------------------------

def test_policy_switched_on_in_the_database_is_refused(tmp_path: Path, key: Path, database: str | None) -> None:
    rng = np.random.default_rng(12)
    v = unit(rng, 2)
    with _gallery(tmp_path, key, database) as g:
        g.enrol("alice", CONSENT, embeddings=v[:1])
        assert not g.policy.search.enabled
        forged = json.dumps(SEARCH_POLICY.to_dict(), sort_keys=True)
        attack(g, database, "UPDATE meta SET value = ? WHERE key = 'policy'", (forged,))
        # a gallery already open notices at its next write (every operation writes its log entry)
        with pytest.raises(IntegrityError, match="changed outside faceaudit"):
            g.verify("alice", embedding=v[0])
    with pytest.raises(IntegrityError, match="fails its integrity check") as err:
        _open(tmp_path, key, role="investigator")
    assert any("seal" in p for p in err.value.problems)
    check = Gallery.check(tmp_path / "g", key_file=key)
    assert check.chain.ok and not check.ok and check.seal_problems
    res = CliRunner().invoke(main, ["log", "verify", str(tmp_path / "g"), "--key", str(key)])
    assert res.exit_code == 1 and "seal:" in res.output and "FAILED" in res.output
    # the CLI refuses before it reads the probe image (any file will do here)
    res = CliRunner().invoke(main, ["gallery", "search", str(tmp_path / "g"), str(key), "--key", str(key),
                                    "--role", "investigator"])
    assert res.exit_code == 1 and "fails its integrity check" in res.output
    # recovery: the log does not vouch for the stored policy, so only replacing it can seal the gallery
    with pytest.raises(IntegrityError, match="not the last policy set in the audit log"):
        Gallery.seal(tmp_path / "g", key_file=key, role="admin")
    with pytest.raises(PolicyError):  # the policy to be in force must let the role set policies
        Gallery.seal(tmp_path / "g", key_file=key, role="operator", policy=Policy())
    found = Gallery.seal(tmp_path / "g", key_file=key, actor="dpo", role="admin", policy=Policy())
    assert found and any("seal" in p for p in found)
    with _open(tmp_path, key) as g:
        assert not g.policy.search.enabled and g.verify_log().ok
        last = ops(g)[-1]
        assert last["operation"] == "seal" and last["params"]["replaced"] and last["params"]["problems"]
    assert Gallery.check(tmp_path / "g", key_file=key).ok


def test_replayed_older_policy_and_seal_are_refused(tmp_path: Path, key: Path, database: str | None) -> None:
    """Search was on once and was switched off: restoring the older policy together with its older (genuine)
    seal does not switch it back on, because the seal also covers the log head, which has moved on."""
    with _gallery(tmp_path, key, database, SEARCH_POLICY) as g:
        old_policy, old_seal = g.store.get_meta("policy"), g.store.get_meta("seal")
        g.set_policy(Policy())
        attack(g, database, "UPDATE meta SET value = ? WHERE key = 'policy'", (json.dumps(old_policy),))
        attack(g, database, "UPDATE meta SET value = ? WHERE key = 'seal'", (json.dumps(old_seal),))
    with pytest.raises(IntegrityError, match="seal over them"):
        _open(tmp_path, key, role="investigator")


def test_gallery_without_a_seal_is_not_sealed_on_opening(tmp_path: Path, key: Path, database: str | None) -> None:
    """A gallery from before sealing (simulated: the seal row removed) is not sealed on opening, where deleting
    the seal would be enough to have the next user seal anything; `gallery seal` refuses what the log does not
    vouch for."""
    with _gallery(tmp_path, key, database, SEARCH_POLICY) as g:
        g.set_policy(Policy())
        attack(g, database, "DELETE FROM meta WHERE key = 'seal'")
        attack(g, database, "UPDATE meta SET value = ? WHERE key = 'policy'",
               (json.dumps(SEARCH_POLICY.to_dict()),))  # and switch search back on, as an earlier policy had it
    with pytest.raises(IntegrityError, match="has no seal"):
        _open(tmp_path, key)
    with pytest.raises(IntegrityError, match="not the last policy set"):
        Gallery.seal(tmp_path / "g", key_file=key, role="admin")


def test_gallery_without_a_seal_is_sealed_by_an_admin_as_logged(tmp_path: Path, key: Path,
                                                               database: str | None) -> None:
    with _gallery(tmp_path, key, database, SEARCH_POLICY) as g:
        g.set_policy(Policy())
        attack(g, database, "DELETE FROM meta WHERE key = 'seal'")
    with pytest.raises(IntegrityError, match="has no seal"):
        _open(tmp_path, key)
    run = CliRunner().invoke
    res = run(main, ["gallery", "seal", str(tmp_path / "g"), "--key", str(key), "--role", "operator"])
    assert res.exit_code == 1 and "roles.*" in res.output
    res = run(main, ["gallery", "seal", str(tmp_path / "g"), "--key", str(key), "--role", "admin"])
    assert res.exit_code == 0 and "sealed the stored policy" in res.output, res.output
    with _open(tmp_path, key) as g:
        last = ops(g)[-1]
        assert last["operation"] == "seal" and not last["params"]["replaced"] and not g.policy.search.enabled
    res = run(main, ["gallery", "seal", str(tmp_path / "g"), "--key", str(key), "--role", "admin"])
    assert res.exit_code == 0 and "nothing to seal" in res.output


# --- 3. export, delete and bulk verification --------------------------------------------------------------------

def test_export_and_delete_on_someone_elses_behalf_need_a_role(tmp_path: Path, key: Path,
                                                              database: str | None) -> None:
    rng = np.random.default_rng(13)
    v = unit(rng, 3)
    with _gallery(tmp_path, key, database) as g:
        for i, name in enumerate(("alice", "bob", "carol")):
            g.enrol(name, CONSENT, embeddings=v[i:i + 1])
        g.role = "operator"
        with pytest.raises(PolicyError, match="someone else's behalf") as err:
            g.export("alice")
        assert err.value.rule == "roles.*"
        refused = ops(g)[-1]
        assert refused["operation"] == "export-refused" and refused["result"]["rule"] == "roles.*"
        with pytest.raises(PolicyError):
            g.delete("bob")
        assert ops(g)[-1]["operation"] == "delete-refused"
        g.role = "admin"  # the default admin may erase on someone's behalf, but not export
        with pytest.raises(PolicyError):
            g.export("alice")
        assert g.delete("bob") and ops(g)[-1]["params"]["requested_by_subject"] is False
        g.role = "operator"
        doc = g.export("alice", requested_by_subject=True)  # the subject's own request: always
        assert len(doc["templates"]) == 1
        assert ops(g)[-1]["operation"] == "export" and ops(g)[-1]["params"]["requested_by_subject"] is True
        assert g.delete("carol", requested_by_subject=True)
        g.role = "admin"
        g.set_policy(Policy.from_dict({"roles": {"dpo": ["export"], "admin": ["policy"]}}))
        g.role = "dpo"
        assert g.export("alice")["subject_id"] == "alice"
        with pytest.raises(PolicyError, match=r"roles\.dpo"):
            g.delete("alice")


def test_bulk_verify_and_export_are_rate_limited_and_logged(tmp_path: Path, key: Path, database: str | None) -> None:
    rng = np.random.default_rng(14)
    v = unit(rng, 6)
    limited = Policy.from_dict({"roles": {"*": ["enrol", "verify"], "dpo": ["export"], "admin": ["policy"]},
                                "limits": {"window_minutes": 60, "max_verifies": 3, "max_exports": 1}})
    with _gallery(tmp_path, key, database, limited) as g:
        g.role = "operator"
        for i in range(6):
            g.enrol(f"s{i}", CONSENT, embeddings=v[i:i + 1])
        g.actor = "mallory"
        probe = v[4]
        # 1:1 looped over the subject ids, to find who the probe is: a 1:N search by the back door
        assert [g.verify(f"s{i}", embedding=probe)["match"] for i in range(3)] == [False, False, False]
        with pytest.raises(PolicyError, match="mallory") as err:
            g.verify("s4", embedding=probe)
        assert err.value.rule == "limits.max_verifies"
        last = ops(g)[-1]
        assert last["operation"] == "verify-refused" and last["result"]["rule"] == "limits.max_verifies"
        assert last["actor"] == "mallory" and last["params"]["subject_id"] == "s4"
        with pytest.raises(PolicyError):  # unknown ids count too: no free enumeration of subject ids
            g.verify("nobody", embedding=probe)
        g.actor = "kiosk"  # per actor
        assert g.verify("s4", embedding=probe)["match"]
        g.actor, g.role = "dpo-1", "dpo"
        g.export("s1")
        with pytest.raises(PolicyError) as err:
            g.export("s2")
        assert err.value.rule == "limits.max_exports" and ops(g)[-1]["operation"] == "export-refused"
    for bad in ({"limits": {"max_verifies": 0}}, {"limits": {"max_searches": 5}}, {"limits": {"max_exports": 1.5}},
                {"retention": {"days": 3, "weeks": 1}}):
        with pytest.raises(InputError):
            Policy.from_dict(bad)
    assert Policy().limits.max_verifies == 1000 and Policy().limits.max_exports == 10
    assert Policy.from_toml(Path(__file__).parents[1] / "examples" / "gallery-policy.toml").roles["dpo"] == (
        "export", "delete")


# --- 4. a copied gallery uses its own database --------------------------------------------------------------

def test_copied_gallery_rotates_its_own_database(tmp_path: Path, key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(15)
    v = unit(rng, 2)
    monkeypatch.chdir(tmp_path)
    with Gallery.init("staff", key_file=key, actor="t", role="admin") as g:
        g.enrol("alice", CONSENT, embeddings=v[:1])
    assert "database = \"gallery.sqlite\"" in (tmp_path / "staff" / SETTINGS).read_text()
    shutil.copytree(tmp_path / "staff", tmp_path / "staff2")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    new_key = generate_key_file(tmp_path / "new.key")
    with Gallery.open(tmp_path / "staff2", key_file=key, role="admin") as c:
        assert c.store.path == tmp_path / "staff2" / "gallery.sqlite"
        c.rotate_key(TemplateCipher.load(new_key))
    with Gallery.open(tmp_path / "staff", key_file=key) as g:  # the original still opens with its own key
        assert g.verify("alice", embedding=v[0])["match"]
    with Gallery.open(tmp_path / "staff2", key_file=new_key) as c:
        assert c.verify("alice", embedding=v[0])["match"]


def test_gallery_settings_of_the_older_layout_still_open_their_own_database(tmp_path: Path, key: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(16)
    v = unit(rng, 2)
    monkeypatch.chdir(tmp_path)
    with Gallery.init("staff", key_file=key, actor="t", role="admin") as g:
        g.enrol("alice", CONSENT, embeddings=v[:1])
    settings = tmp_path / "staff" / SETTINGS
    # what an older faceaudit wrote: the path relative to the working directory of `gallery init`, no layout
    settings.write_text('database = "staff/gallery.sqlite"\nindex = "exact"\nengine = "yunet-sface"\n')
    shutil.copytree(tmp_path / "staff", tmp_path / "staff2")
    monkeypatch.chdir(tmp_path)  # even from the folder where the old path points at the original
    with Gallery.open("staff2", key_file=key, role="admin") as c:
        assert c.store.path == Path("staff2") / "gallery.sqlite"
        c.enrol("bob", CONSENT, embeddings=v[1:])
    with Gallery.open("staff", key_file=key) as g:
        assert [r.subject_id for r in g.store.templates()] == ["alice"]
    (tmp_path / "staff2" / "gallery.sqlite").rename(tmp_path / "staff2" / "moved.sqlite")
    with pytest.raises(InputError, match="layout = 2"):
        Gallery.open("staff2", key_file=key)


# --- 5. erasure while another connection reads --------------------------------------------------------------

def test_erasure_with_a_concurrent_reader_fails_loudly(tmp_path: Path, key: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "CHECKPOINT_WAIT", 0.3)  # the test's readers never let go on their own
    rng = np.random.default_rng(17)
    v = unit(rng, 6)
    name = "Zelda Quintessa-Unique"
    with _gallery(tmp_path, key, None) as g:
        for i in range(6):
            consent = Consent(name, "2026-01-05", "consent") if i == 3 else CONSENT
            g.enrol(f"p{i}", consent, embeddings=v[i:i + 1])
        [row] = g.store.templates("p3")
        secrets = {"ciphertext": row.blob[20:60], "consent name": name.encode()}

        def left() -> list[str]:
            return sorted({what for f in g.store.files() for what, b in secrets.items() if b in f.read_bytes()})

        assert g.store.path is not None
        reader = sqlite3.connect(g.store.path, isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM templates").fetchone() == (6,)  # an open read transaction
        with pytest.raises(ErasureIncompleteError, match=r"erasure is incomplete.*verify-erasure"):
            g.delete("p3", requested_by_subject=True)
        assert left()  # the bytes really are still on disk: claiming success would have been false
        assert row.template_id not in g.index.ids().tolist()  # but p3 is out of every search already
        problems = g.verify_erasure("p3")
        assert any("cannot be checkpointed" in p for p in problems), problems
        res = CliRunner().invoke(main, ["gallery", "verify-erasure", str(tmp_path / "g"), "p3", "--key", str(key)])
        assert res.exit_code == 1 and "NOT fully erased" in res.output
        reader.execute("COMMIT")
        reader.close()
        assert g.verify_erasure("p3") == [] and left() == []  # verify-erasure finished the purge
    res = CliRunner().invoke(main, ["gallery", "verify-erasure", str(tmp_path / "g"), "p3", "--key", str(key)])
    assert res.exit_code == 0 and "nothing left" in res.output


# --- 6. published heads --------------------------------------------------------------------------------------

def _rewrite_from(g: Gallery, database: str | None, seq: int, extra: int = 0) -> None:
    """Forge the log from ``seq`` on: rewrite that entry, re-hash every later one, append ``extra`` more and
    move the stored head, so that the chain is consistent with itself."""
    rows = g.store.log_rows()
    entries = [LogEntry.from_json(t) for _, t in rows]
    forged = entries[:seq - 1]
    for e in entries[seq - 1:]:
        forged.append(next_entry(forged[-1] if forged else None, actor="forger" if e.seq == seq else e.actor,
                                 role=e.role, operation=e.operation, purpose=e.purpose, legal_basis=e.legal_basis,
                                 params=e.params, result=e.result, time=e.time))
    for _ in range(extra):
        forged.append(next_entry(forged[-1], actor="forger", role="admin", operation="verify"))
    for e in forged[seq - 1:]:
        if e.seq <= len(entries):
            attack(g, database, "UPDATE log SET entry = ? WHERE seq = ?", (e.to_json(), e.seq))
        else:
            attack(g, database, "INSERT INTO log (seq, entry) VALUES (?, ?)", (e.seq, e.to_json()))
    attack(g, database, "UPDATE meta SET value = ? WHERE key = 'log_head'", (json.dumps(list(forged[-1].head)),))


def test_published_head_holds_after_later_operations_and_catches_rewrites(tmp_path: Path, key: Path,
                                                                         database: str | None) -> None:
    rng = np.random.default_rng(18)
    v = unit(rng, 6)
    run = CliRunner().invoke
    folder = str(tmp_path / "g")
    with _gallery(tmp_path, key, database) as g:
        for i in range(3):
            g.enrol(f"p{i}", CONSENT, embeddings=v[i:i + 1])
        head = g.log_head()
        assert head is not None
        published = f"{head[0]}:{head[1]}"
        for i in range(3, 6):
            g.enrol(f"p{i}", CONSENT, embeddings=v[i:i + 1])
        assert g.verify_log(head).ok  # later operations are not tampering
    res = run(main, ["log", "verify", folder, "--key", str(key), "--head", published])
    assert res.exit_code == 0 and "OK" in res.output, res.output
    assert run(main, ["log", "verify", folder, "--key", str(key), "--head", "3:abc"]).exit_code == 2
    with _open(tmp_path, key) as g:
        _rewrite_from(g, database, head[0] - 1, extra=2)  # a forged, self-consistent, longer chain
        check = g.verify_log(head)
        assert not check.ok and check.problems == [
            f"head: the entry at seq {head[0]} differs from the published head (rewritten): its hash is "
            f"{LogEntry.from_json(g.store.log_rows()[head[0] - 1][1]).hash[:12]}…, the published head says "
            f"{head[1][:12]}…"]
        assert g.verify_log().ok  # self-consistent: only the published head (or the seal) shows it
    res = run(main, ["log", "verify", folder, "--key", str(key), "--head", published])
    assert res.exit_code == 1 and "(rewritten)" in res.output and "seal:" in res.output
    with pytest.raises(IntegrityError):  # the seal covers the head: no key, no new seal
        _open(tmp_path, key)


def test_deleted_head_is_detected(tmp_path: Path, key: Path, database: str | None) -> None:
    rng = np.random.default_rng(19)
    v = unit(rng, 4)
    with _gallery(tmp_path, key, database) as g:
        for i in range(4):
            g.enrol(f"p{i}", CONSENT, embeddings=v[i:i + 1])
        attack(g, database, "DELETE FROM meta WHERE key = 'log_head'")
    res = CliRunner().invoke(main, ["log", "verify", str(tmp_path / "g"), "--key", str(key)])
    assert res.exit_code == 1 and "head stored beside the log is missing" in res.output and "no head stored" in \
        res.output and "empty log" not in res.output, res.output
    with pytest.raises(IntegrityError, match="head is missing"):
        _open(tmp_path, key)


def test_truncated_log_is_detected(tmp_path: Path, key: Path, database: str | None) -> None:
    rng = np.random.default_rng(19)
    v = unit(rng, 4)
    with _gallery(tmp_path, key, database) as g:
        for i in range(4):
            g.enrol(f"p{i}", CONSENT, embeddings=v[i:i + 1])
        head = g.log_head()
        assert head is not None
        rows = g.store.log_rows()
        for seq, _ in rows[-2:]:
            attack(g, database, "DELETE FROM log WHERE seq = ?", (seq,))
        seq, text = rows[-3]
        # the cut hidden from the chain: the stored head moved back to the new last entry
        attack(g, database, "UPDATE meta SET value = ? WHERE key = 'log_head'",
               (json.dumps(list(LogEntry.from_json(text).head)),))
        assert g.verify_log().ok
        check = g.verify_log(head)
        assert check.problems == [f"head: the log is shorter than the published head (truncated): it ends at seq "
                                  f"{seq}, the published head is seq {head[0]}: seq {seq + 1} to {head[0]} are missing"]
    res = CliRunner().invoke(main, ["log", "verify", str(tmp_path / "g"), "--key", str(key), "--head",
                                    f"{head[0]}:{head[1]}"])
    assert res.exit_code == 1 and "(truncated)" in res.output
    with pytest.raises(IntegrityError, match="seal over them"):  # the seal covered the old head
        _open(tmp_path, key)


def test_published_head_unit() -> None:
    entries = [next_entry(None, actor="a", role="r", operation="init")]
    for _ in range(5):
        entries.append(next_entry(entries[-1], actor="a", role="r", operation="verify"))
    rows = [(e.seq, e.to_json()) for e in entries]
    assert verify_chain(rows, entries[-1].head, published=entries[2].head).ok
    assert verify_chain(rows, published=(0, "0" * 64)).ok
    assert "malformed published head" in verify_chain(rows, published=(3, "xyz")).problems[0]
    assert "(truncated)" in verify_chain(rows[:2], published=entries[2].head).problems[0]
    assert "(rewritten)" in verify_chain(rows, published=(3, "f" * 64)).problems[0]


# --- 9. files, key file, terminal output ---------------------------------------------------------------------

def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_database_settings_and_exports_are_private_whatever_the_umask(tmp_path: Path, key: Path) -> None:
    old = os.umask(0o022)
    try:
        rng = np.random.default_rng(20)
        with _gallery(tmp_path, key, None) as g:
            g.enrol("alice", CONSENT, embeddings=unit(rng, 1))
            files = {p.name: _mode(p) for p in g.store.files()}
            assert set(files) >= {"gallery.sqlite", "gallery.sqlite-wal", "gallery.sqlite-shm"}
            assert set(files.values()) == {0o600}, files
            assert _mode(tmp_path / "g" / SETTINGS) == 0o600 and _mode(g.index_path) == 0o600
        out = tmp_path / "alice.json"
        out.write_text("old")
        out.chmod(0o644)
        res = CliRunner().invoke(main, ["gallery", "export", str(tmp_path / "g"), "alice", "--out", str(out),
                                        "--key", str(key), "--subject-request"])
        assert res.exit_code == 0, res.output
        assert _mode(out) == 0o600 and json.loads(out.read_text())["subject_id"] == "alice"
        os.umask(0o077)
        assert _mode(write_private(tmp_path / "x", b"1")) == 0o600
    finally:
        os.umask(old)


def test_key_file_open_to_others_is_warned_about(tmp_path: Path, key: Path) -> None:
    with _gallery(tmp_path, key, None):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TemplateCipher.load(key)  # mode 600, as keygen writes it: no warning
    key.chmod(0o644)
    with pytest.warns(KeyFileWarning, match="chmod 600"):
        TemplateCipher.load(key)
    res = CliRunner().invoke(main, ["gallery", "expire", str(tmp_path / "g"), "--key", str(key)])
    assert res.exit_code == 0 and "warning: the gallery key file" in res.stderr and "chmod 600" in res.stderr


def test_printable_escapes_control_characters_and_ansi() -> None:
    assert printable("alice") == "alice" and printable("Zoë Ånström 東京") == "Zoë Ånström 東京"
    assert printable("a\x1b[2J\x1b[31mb") == "a\\x1b[2J\\x1b[31mb"
    assert printable("x\ny\r\tz\x00\x7f\x9b") == "x\\x0ay\\x0d\\x09z\\x00\\x7f\\x9b"
    assert printable("evil\u202egnp.exe\u2028") == "evil\\u202egnp.exe\\u2028"
    assert "\x1b" not in printable("\x1b]0;title\x07")


def test_cli_output_escapes_hostile_subject_ids(tmp_path: Path, key: Path) -> None:
    rng = np.random.default_rng(21)
    hostile = "mallory\x1b[2K\rroot\x1b[0m"
    with _gallery(tmp_path, key, None) as g:
        g.enrol(hostile, CONSENT, embeddings=unit(rng, 1))
    run = CliRunner().invoke
    res = run(main, ["gallery", "delete", str(tmp_path / "g"), hostile, "--key", str(key), "--subject-request"])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\r" not in res.output and "mallory\\x1b[2K\\x0droot" in res.output
    res = run(main, ["gallery", "export", str(tmp_path / "g"), hostile, "--out", str(tmp_path / "o.json"),
                     "--key", str(key), "--subject-request", "--actor", "x\x1b[31m"])
    assert res.exit_code == 1 and "\x1b" not in res.output and "\\x1b" in res.output
    with _open(tmp_path, key) as g:  # the data itself is unchanged
        assert [e["params"]["subject_id"] for e in ops(g) if e["operation"] == "delete"] == [hostile]
