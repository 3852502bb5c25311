"""The seal: what authenticates a gallery's policy and log head, which are stored in the clear.

What it protects
    The policy (who may do what, whether 1:N search is on) and the head of the audit log (its last seq
    and hash, :mod:`faceaudit.gallery.log`) are rows of the ``meta`` table, readable and writable by
    anyone who can write the database. The log's hash chain needs no key, so such a person could also
    rewrite and re-hash it. The seal is what they cannot forge without the gallery key: an ``UPDATE meta``
    that switches search on, a deleted or moved head, entries cut off the end of the log, or an older
    policy put back together with its older (genuine) seal all fail its check.

What it is
    ``meta["seal"] = {"v": 1, "policy_seq": seq, "mac": hex}``, where ``mac`` is HMAC-SHA256 under a key
    derived by HKDF-SHA256 from the gallery key (:meth:`faceaudit.gallery.crypto.TemplateCipher.seal`: the
    AES key itself is used for nothing but AES-GCM) over the stored policy as stored, the seq of the log
    entry that set it (an ``init``, ``policy`` or ``seal`` entry) and the log head, as
    ``b"faceaudit-seal\\0"`` followed by their canonical JSON. The seal is valid only if that entry
    records the same policy (:func:`same_policy`: older stored policies lack keys that now have defaults)
    and the head is the log's last entry.

When it is checked and renewed
    :func:`seal_problems` (a few rows read by key, no scan of the log) runs when a gallery is opened and at
    the start of every write transaction; a write renews the seal with :func:`put_seal` in the same
    transaction, before it commits, so a change made outside faceaudit is never sealed by accident.
    ``faceaudit log verify`` (``Gallery.check``) also checks the whole chain (:func:`check_chain`) and that
    the seal names the last policy the log records (:func:`latest_policy_problems`).

Why it is not renewed automatically on opening
    A gallery that fails (or has no seal: one created before faceaudit sealed policies) is refused, with
    :func:`raise_if_unsealed`. Sealing it is an admin's explicit act with the key (``faceaudit gallery
    seal``, ``Gallery.seal``), logged as a ``seal`` entry: it seals the stored policy only when the log
    vouches for it, or else replaces it with a policy given (``--policy FILE``). Were it done on opening,
    whoever can write the database could delete the seal, change the policy, and have the next user's
    open seal the change.

What it cannot do
    Whoever holds the key can do anything anyway. A whole older copy of the database (policy, log, head and
    seal together) is consistent with itself; only a head published elsewhere shows that it is older
    (``faceaudit log verify --head``).

Nothing in here imports :mod:`faceaudit.gallery.gallery`, which builds on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from faceaudit.errors import FaceauditError
from faceaudit.gallery.crypto import IntegrityError, TemplateCipher
from faceaudit.gallery.log import ChainCheck, LogEntry, LogFormatError, verify_chain
from faceaudit.gallery.policy import Policy
from faceaudit.gallery.store import Store, Tx, get_meta, set_meta

#: Log operations that set the policy in force, and where their entry holds it.
_POLICY_PARAM = {"init": "policy", "policy": "new", "seal": "policy"}
_SEAL_VERSION = 1


def stored_head(store: Store) -> tuple[int, str] | None:
    """The log head stored beside the log, ``(last seq, last hash)`` (None: missing)."""
    value = store.get_meta("log_head")
    return None if value is None else (int(value[0]), str(value[1]))


def check_chain(store: Store, stored: tuple[int, str] | None, published: tuple[int, str] | None) -> ChainCheck:
    """The log's hash chain checked against the head stored beside it (``stored``, from :func:`stored_head`)
    and, if given, a ``published`` head; a missing stored head is a problem when the log has entries."""
    check = verify_chain(store.log_rows(), stored, published=published)
    if stored is None and check.entries:
        # a missing head is not an empty log: the head row was deleted (and with it the check of the tail)
        problem = (f"head: the head stored beside the log is missing, though the log has {check.entries} entries "
                   "(deleted?)")
        return ChainCheck(False, check.entries, [*check.problems, problem])
    return check


def _canonical(obj: Any) -> bytes:
    # not the log's canonical JSON, which raises on NaN: a policy edited in the database may hold one, and that
    # must come out as a seal problem, not as a crash of the check
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _seal_text(policy: Any, policy_seq: int, head: Any) -> bytes:
    """What the seal authenticates: the stored policy as stored, the seq of the log entry that set it, the head."""
    return b"faceaudit-seal\0" + _canonical({"head": head, "policy": policy, "policy_seq": policy_seq})


def put_seal(tx: Tx, cipher: TemplateCipher, policy_seq: int | None = None) -> None:
    """Seal the policy and the head as they now are in ``tx`` (``policy_seq``: the entry that set the policy;
    default: the one the current seal names)."""
    if policy_seq is None:
        seal = get_meta(tx, "seal")
        policy_seq = int(seal["policy_seq"])
    mac = cipher.seal(_seal_text(get_meta(tx, "policy"), policy_seq, get_meta(tx, "log_head")))
    set_meta(tx, "seal", {"v": _SEAL_VERSION, "policy_seq": policy_seq, "mac": mac})


def seal_problems(tx: Tx, cipher: TemplateCipher, *, with_head: bool = True) -> list[str]:
    """What is wrong with the seal, the policy and the head as stored (empty: all authentic). Cheap: a few
    rows by key, no scan of the log."""
    problems: list[str] = []
    policy = get_meta(tx, "policy")
    head = get_meta(tx, "log_head")
    if with_head:
        last = tx.one("SELECT seq, entry FROM log ORDER BY seq DESC LIMIT 1")
        if last is None and head not in (None, [0, "0" * 64]):
            problems.append(f"the log is empty but its head says it ends at seq {head[0]} (entries deleted)")
        elif last is not None:
            try:
                tail: list[Any] | None = list(LogEntry.from_json(str(last[1])).head)
            except LogFormatError:
                tail = None
                problems.append(f"the log's last entry (seq {last[0]}) is unreadable (edited?)")
            if head is None:
                problems.append(f"the log head is missing, though the log goes on to seq {last[0]} (deleted?)")
            elif tail is not None and list(head) != tail:
                problems.append(f"the log's last entry is seq {tail[0]} but the head says seq {head[0]}: entries were "
                                "added, deleted or rewritten outside faceaudit")
    seal = get_meta(tx, "seal")
    if seal is None:
        problems.append("the gallery has no seal: it was created before faceaudit authenticated policies (or the "
                        "seal was deleted), so its policy cannot be trusted as stored")
        return problems
    if not (isinstance(seal, dict) and type(seal.get("policy_seq")) is int and isinstance(seal.get("mac"), str)):
        problems.append("the seal is malformed (edited?)")
        return problems
    if not cipher.seal_ok(_seal_text(policy, seal["policy_seq"], head), seal["mac"]):
        problems.append("the stored policy or log head was changed outside faceaudit: the seal over them (an HMAC "
                        "under a key derived from the gallery key) does not match")
    entry = tx.one("SELECT entry FROM log WHERE seq = ?", (seal["policy_seq"],))
    try:
        logged = logged_policy(LogEntry.from_json(str(entry[0]))) if entry else None
    except LogFormatError:
        logged = None
    if not same_policy(logged, policy):
        problems.append(f"the stored policy is not the one the audit log records at seq {seal['policy_seq']}")
    return problems


def latest_policy_problems(tx: Tx) -> list[str]:
    """Whether the seal names the last policy set in the log (a scan of the log; for `log verify`)."""
    seal = get_meta(tx, "seal")
    last = last_policy_entry(tx)
    if not isinstance(seal, dict) or last is None or last.seq == seal.get("policy_seq"):
        return []
    return [f"the policy in force was set at seq {seal.get('policy_seq')}, but seq {last.seq} set a later one "
            "(rolled back?)"]


def last_policy_entry(tx: Tx) -> LogEntry | None:
    # canonical JSON: the pattern '"operation":"x"' cannot occur inside a string value, where quotes are escaped
    likes = " OR ".join("entry LIKE ?" for _ in _POLICY_PARAM)
    row = tx.one(f"SELECT entry FROM log WHERE {likes} ORDER BY seq DESC LIMIT 1",
                 [f'%"operation":"{op}"%' for op in _POLICY_PARAM])
    if row is None:
        return None
    try:
        return LogEntry.from_json(str(row[0]))
    except LogFormatError:
        return None


def logged_policy(entry: LogEntry) -> Any:
    """The policy an init, policy or seal entry set (None for any other entry)."""
    key = _POLICY_PARAM.get(entry.operation)
    return None if key is None else entry.params.get(key)


def same_policy(a: Any, b: Any) -> bool:
    """Whether two stored policies are the same rules (older ones lack keys that now have defaults)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    try:
        return Policy.from_dict(a).to_dict() == Policy.from_dict(b).to_dict()
    except (FaceauditError, TypeError, ValueError):
        return False


def _seal_message(folder: Path, problems: list[str]) -> str:
    return (f"the gallery {folder} fails its integrity check: " + "; ".join(problems) + ". Its policy may have been "
            f"changed outside faceaudit; refusing to use it. See `faceaudit log verify {folder}`; then restore the "
            f"database from a backup, or (an admin with the key) seal it again with `faceaudit gallery seal "
            f"{folder} --key KEY --role admin` (if the log vouches for the stored policy) or with `--policy FILE` "
            "added (replacing the policy with FILE)")


def raise_if_unsealed(folder: Path, problems: list[str]) -> None:
    """Refuse the gallery in ``folder`` (IntegrityError saying how to recover) if :func:`seal_problems`
    found any ``problems``."""
    if problems:
        raise IntegrityError(_seal_message(folder, problems), problems)
