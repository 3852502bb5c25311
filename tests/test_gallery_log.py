"""Audit log hash chain: every single-byte edit, deleted, inserted, swapped or reordered entry, cut-off tail and
re-hashed chain is detected and named by its seq; the log refuses anything that looks like a template."""

from __future__ import annotations

import itertools
import json
import random
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from faceaudit.gallery.log import (
    EMPTY_HEAD,
    GENESIS,
    LogEntry,
    LogFormatError,
    entry_hash,
    next_entry,
    verify_chain,
)

N = 30
_OPS = [
    ("enrol", "operator", None, None, {"subject": "s-{i:03d}", "templates": 2}, {"template_ids": ["t-{i}a", "t-{i}b"]}),
    ("search", "investigator", "case 2025/17: Zoë Ånström", "art. 9(2)(g) GDPR", {"k": 10, "fpir": 0.001},
     {"candidates": [{"id": "s-{i:03d}", "score": 0.7312}], "review": True}),
    ("delete", "dpo", "erasure request", "art. 17 GDPR", {"subject": "s-{i:03d}"}, {"templates_removed": 2}),
    ("export", "dpo", "subject access 東京", "art. 15 GDPR", {"subject": "s-{i:03d}"}, {"entries": 3}),
    ("policy", "admin", None, None, {"allow": ["enrol", "verify"], "max_k": 10}, {}),
    ("rotate-key", "admin", None, None, {"old": "a1b2c3d4", "new": "e5f6a7b8"}, {"templates": 40}),
    ("expire", "system", "retention", "consent expired", {"before": "2025-02-01"}, {"subjects": ["s-{i:03d}"]}),
]


def _fill(obj: object, i: int) -> object:
    if isinstance(obj, str):
        return obj.format(i=i)
    if isinstance(obj, dict):
        return {k: _fill(v, i) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, i) for v in obj]
    return obj


def build_chain(n: int = N) -> list[LogEntry]:
    entries: list[LogEntry] = []
    start = datetime(2025, 1, 31, 9, 0, tzinfo=UTC)
    for i in range(n):
        op, role, purpose, basis, params, result = _OPS[i % len(_OPS)]
        entries.append(next_entry(
            entries[-1] if entries else None, actor=f"user-{i % 4}", role=role, operation=op, purpose=purpose,
            legal_basis=basis, params=_fill(params, i), result=_fill(result, i),  # type: ignore[arg-type]
            time=start + timedelta(minutes=7 * i),
        ))  # fmt: skip
    return entries


def rows_of(entries: list[LogEntry]) -> list[tuple[int, str]]:
    return [(e.seq, e.to_json()) for e in entries]


@pytest.fixture(scope="module")
def chain() -> list[LogEntry]:
    return build_chain()


def named(problems: list[str]) -> set[str]:
    """What each problem is about: 'seq 7' or 'head'."""
    return {m.group(1) for p in problems if (m := re.match(r"(seq \d+|head):", p))}


def test_fresh_chain_verifies(chain: list[LogEntry]) -> None:
    rows = rows_of(chain)
    for head in (None, chain[-1].head, [chain[-1].seq, chain[-1].hash]):  # the store keeps the head as JSON
        check = verify_chain(rows, head)
        assert check.ok and check.entries == N and check.problems == []
    assert chain[0].seq == 1 and chain[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash and b.seq == a.seq + 1 for a, b in itertools.pairwise(chain))
    assert verify_chain(iter(rows)).ok  # one pass over any iterable (a database cursor)


def test_empty_log() -> None:
    assert verify_chain([]).ok and verify_chain([], EMPTY_HEAD).entries == 0
    check = verify_chain([], (3, "a" * 64))
    assert not check.ok and "seq 1 to 3 are missing" in check.problems[0]


def test_canonical_json_round_trip(chain: list[LogEntry]) -> None:
    e = chain[1]
    text = e.to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert "Zoë Ånström" in text and '": ' not in text and ', "' not in text
    assert LogEntry.from_json(text) == e
    assert e.time == "2025-01-31T09:07:00.000000Z"


def test_hash_covers_every_field_but_itself(chain: list[LogEntry]) -> None:
    f = chain[3].fields()
    assert entry_hash(f) == chain[3].hash
    assert entry_hash({**f, "hash": "f" * 64}) == chain[3].hash
    for name, value in [("prev_hash", "1" * 64), ("seq", 99), ("purpose", None), ("params", {}), ("actor", "x")]:
        assert entry_hash({**f, name: value}) != chain[3].hash, name


def _same_class(b: int) -> int:
    """A deterministic other byte of the same kind (digit for digit, hex for hex, letter for letter), so most
    edits keep the text valid JSON and it is the hashes, not the parser, that have to catch them."""
    for alphabet in (b"0123456789", b"abcdef", b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"):
        if b in alphabet:
            return alphabet[(alphabet.index(b) + 1) % len(alphabet)]
    return b ^ 0x01  # punctuation becomes other punctuation; a UTF-8 byte another (still valid) character


def test_every_single_byte_edit_is_detected(chain: list[LogEntry]) -> None:
    rows = rows_of(chain)
    head = chain[-1].head
    checks = 0
    for i, (seq, text) in enumerate(rows):
        data = text.encode()
        for pos in range(len(data)):
            edited = bytearray(data)
            edited[pos] = _same_class(data[pos])
            assert edited[pos] != data[pos]
            tampered = [*rows[:i], (seq, edited.decode("utf-8", errors="replace")), *rows[i + 1 :]]
            check = verify_chain(tampered, head)
            where = named(check.problems)
            assert not check.ok, (seq, pos, edited.decode("utf-8", errors="replace"))
            # named at the edited entry; at most the next one (whose link to it broke) and the head besides
            assert f"seq {seq}" in where and where <= {f"seq {seq}", f"seq {seq + 1}", "head"}, (pos, check.problems)
            checks += 1
    assert checks == sum(len(t.encode()) for _, t in rows) > 9000


def test_bit_flips_and_invalid_utf8_are_detected(chain: list[LogEntry]) -> None:
    """Other byte values on a sample of positions: flipping any of the 8 bits, including into invalid UTF-8."""
    rows = rows_of(chain)
    seq, text = rows[12]
    data = text.encode()
    for pos in range(0, len(data), 3):
        for bit in range(8):
            edited = bytearray(data)
            edited[pos] ^= 1 << bit
            tampered = [*rows[:12], (seq, edited.decode("utf-8", errors="replace")), *rows[13:]]
            check = verify_chain(tampered, chain[-1].head)
            assert not check.ok and f"seq {seq}" in named(check.problems), (pos, bit)


def test_every_deleted_entry_is_detected(chain: list[LogEntry]) -> None:
    rows = rows_of(chain)
    for i in range(N):
        seq = i + 1
        check = verify_chain(rows[:i] + rows[i + 1 :], chain[-1].head)
        assert not check.ok and f"seq {seq} is missing" in " ".join(check.problems), (seq, check.problems)
        # the gap closed by renumbering the seq column: the entries themselves still say where they belong
        renumbered = rows[:i] + [(s - 1, t) for s, t in rows[i + 1 :]]
        check = verify_chain(renumbered, chain[-1].head)
        assert not check.ok and f"seq {seq}" in " ".join(check.problems), (seq, check.problems)
    # without the head, the last entry's deletion cannot be seen: that is what the head is for
    assert verify_chain(rows[:-1]).ok


def test_every_inserted_entry_is_detected(chain: list[LogEntry]) -> None:
    rows = rows_of(chain)
    for i in range(N + 1):
        # a well-formed entry, linked to the one before, with its own hash computed correctly
        forged = next_entry(chain[i - 1] if i else None, actor="intruder", role="admin", operation="search",
                            purpose="looks legitimate", legal_basis="art. 6", params={"k": 1},
                            result={"candidates": [{"id": "s-001", "score": 0.9}]}, time="2025-02-01T00:00:00Z")
        assert forged.seq == i + 1 and entry_hash(forged.fields()) == forged.hash
        inserted = [*rows[:i], (forged.seq, forged.to_json()), *rows[i:]]
        check = verify_chain(inserted, chain[-1].head)
        assert not check.ok and f"seq {i + 1}" in " ".join(check.problems), (i, check.problems)
        # the seq column renumbered after it, so it looks like an unbroken sequence
        shifted = [*rows[:i], (forged.seq, forged.to_json()), *[(s + 1, t) for s, t in rows[i:]]]
        check = verify_chain(shifted, chain[-1].head)
        if i < N:
            assert not check.ok and f"seq {i + 2}" in named(check.problems), (i, check.problems)
        else:  # appended after the last entry: a valid extension of the chain, but the head did not move
            assert check.problems == [
                "head: the log goes on to seq 31 but the head says it ends at seq 30: "
                "seq 31 was added without moving the head (inserted?)"
            ]


def test_every_swapped_pair_is_detected(chain: list[LogEntry]) -> None:
    rows = rows_of(chain)
    for i in range(N - 1):
        a, b = i + 1, i + 2
        # rows out of storage order
        swapped = [*rows[:i], rows[i + 1], rows[i], *rows[i + 2 :]]
        check = verify_chain(swapped, chain[-1].head)
        assert not check.ok and {f"seq {a}", f"seq {b}"} <= named(check.problems), (a, check.problems)
        # texts swapped under an untouched seq column (what ORDER BY seq returns after swapping two entries)
        texts = [*rows[:i], (a, rows[i + 1][1]), (b, rows[i][1]), *rows[i + 2 :]]
        check = verify_chain(texts, chain[-1].head)
        assert not check.ok and {f"seq {a}", f"seq {b}"} <= named(check.problems), (a, check.problems)
        assert f"seq {a}: the entry inside says seq {b}" in " ".join(check.problems)


def test_reordering_is_detected(chain: list[LogEntry]) -> None:
    rows = rows_of(chain)
    rng = random.Random(5)
    for _ in range(50):
        shuffled = rows[:]
        rng.shuffle(shuffled)
        if shuffled == rows:
            continue
        assert not verify_chain(shuffled).ok
        relabelled = [(k + 1, t) for k, (_, t) in enumerate(shuffled)]
        assert not verify_chain(relabelled).ok


def test_truncated_tail_needs_the_original_head(chain: list[LogEntry]) -> None:
    rows = rows_of(chain)
    kept = rows[:20]
    # whoever cut the tail also wrote a head that matches what is left: the chain alone looks fine ...
    assert verify_chain(kept, chain[19].head).ok
    # ... but against the head kept elsewhere (the original) the cut shows, with the missing seqs named
    check = verify_chain(kept, chain[-1].head)
    assert not check.ok and check.problems == [
        "head: the log ends at seq 20 but the head says seq 30: seq 21 to 30 are missing (truncated?)"
    ]


def test_rewritten_and_rehashed_chain_is_caught_by_the_head(chain: list[LogEntry]) -> None:
    # hide a search result: rewrite entry 9 and re-hash every entry after it
    forged = chain[:8]
    for e in chain[8:]:
        result = {"candidates": []} if e.seq == 9 else e.result
        forged.append(next_entry(forged[-1], actor=e.actor, role=e.role, operation=e.operation, purpose=e.purpose,
                                 legal_basis=e.legal_basis, params=e.params, result=result, time=e.time))
    assert chain[8].operation == "search" and forged[8].result != chain[8].result
    rows = rows_of(forged)
    assert verify_chain(rows).ok and verify_chain(rows, forged[-1].head).ok  # self-consistent forgery
    check = verify_chain(rows, chain[-1].head)
    assert not check.ok and named(check.problems) == {"head"}
    assert "seq 30 has hash" in check.problems[0] and "re-hashed" in check.problems[0]
    # a forged chain of another length shows as added or missing entries
    longer = next_entry(forged[-1], actor="x", role="admin", operation="search")
    assert "seq 31 was added" in verify_chain([*rows, (31, longer.to_json())], chain[-1].head).problems[0]


def test_non_canonical_text_is_an_edit(chain: list[LogEntry]) -> None:
    rows = rows_of(chain)
    e = chain[1]
    for text in (
        json.dumps(e.fields(), sort_keys=True),  # same fields, spaces after separators
        json.dumps(e.fields(), sort_keys=True, separators=(",", ":")),  # non-ASCII escaped
        e.to_json().replace('"fpir":0.001', '"fpir":1e-3'),  # the same number written another way
        e.to_json().replace('"seq":2', '"seq":2,"seq":2'),  # duplicate key
    ):
        assert text != e.to_json() and LogEntry.from_json(text) == e
        check = verify_chain([rows[0], (2, text), *rows[2:]])
        assert check.problems == ["seq 2: entry text is not in canonical form (edited?)"], text


def test_hash_member_found_exactly_despite_lookalikes() -> None:
    # actor (the only field sorted before "hash") and params hold text that looks like the hash member
    a = next_entry(None, actor='m"hash":"' + "0" * 64 + '",', role="r", operation="enrol",
                   params={"hash": "0" * 64, '"hash":"': 1})
    b = next_entry(a, actor="x", role="r", operation="search", params={"hash": a.hash}, result={"hash": a.hash})
    assert verify_chain(rows_of([a, b]), b.head).ok


def test_malformed_rows_are_named() -> None:
    chain = build_chain(5)
    rows = rows_of(chain)
    for text, why in [
        ("", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"seq":3}', "wrong fields"),
        (rows[2][1].replace('"seq":3', '"seq":true'), "seq must be an integer"),
        (rows[2][1].replace('"seq":3', '"seq":NaN'), "not valid JSON"),
        (rows[2][1].replace('"templates_removed":2', '"templates_removed":1e400'), "out of range"),
        (rows[2][1].replace(".000000Z", ".000000+01:00"), "UTC"),
        (rows[2][1].replace(".000000Z", ".000000"), "UTC"),
        (rows[2][1].replace('"role":"dpo"', '"role":""'), "role must be a non-empty string"),
        (rows[2][1].replace(chain[2].hash, chain[2].hash.upper()), "64 lowercase hex"),
    ]:
        with pytest.raises(LogFormatError, match=why):
            LogEntry.from_json(text)
        check = verify_chain([*rows[:2], (3, text), *rows[3:]])
        assert check.problems[0].startswith("seq 3: entry text is unreadable (edited?)") and why in check.problems[0]
    with pytest.raises(ValueError):  # LogFormatError is a ValueError too
        LogEntry.from_json("{")
    check = verify_chain([rows[0], ("2", rows[1][1]), *rows[2:]])  # type: ignore[list-item]
    assert "seq '2': the seq column is not an integer" in check.problems[0]
    assert "malformed head" in verify_chain(rows, ("5", chain[-1].hash)).problems[0]


def test_next_entry_refuses_templates() -> None:
    ok = next_entry(None, actor="a", role="r", operation="search", params={"v": [0.5] * 16},
                    result={"candidates": [{"id": f"s{i}", "score": 0.5} for i in range(100)]})
    assert ok.params["v"] == [0.5] * 16
    for params in (
        {"embedding": [0.1] * 17},
        {"nested": {"deep": [[0.0] * 128]}},
        {"tuple": tuple(float(x) for x in range(64))},
        {"array": np.zeros(128, dtype=np.float32)},
        {"image": b"\x89PNG\r\n"},
    ):
        with pytest.raises(ValueError, match=r"template|embedding"):
            next_entry(None, actor="a", role="r", operation="enrol", params=params)
        with pytest.raises(ValueError, match=r"template|embedding"):
            next_entry(None, actor="a", role="r", operation="enrol", result=params)


def test_next_entry_checks_and_normalises() -> None:
    for bad in ({"actor": ""}, {"role": None}, {"operation": 3}, {"purpose": 5}):
        kwargs = {"actor": "a", "role": "r", "operation": "o", **bad}
        with pytest.raises(ValueError):
            next_entry(None, **kwargs)  # type: ignore[arg-type]
    for time in ("2025-03-01T10:00:00", "2025-03-01T11:00:00+01:00", "yesterday",
                 datetime(2025, 3, 1, 10, tzinfo=UTC).astimezone(UTC).replace(tzinfo=None)):
        with pytest.raises(ValueError, match=r"UTC|ISO"):
            next_entry(None, actor="a", role="r", operation="o", time=time)
    with pytest.raises(ValueError, match="JSON"):
        next_entry(None, actor="a", role="r", operation="o", params={"x": float("nan")})
    with pytest.raises(ValueError, match="JSON"):
        next_entry(None, actor="a", role="r", operation="o", params={"x": {1, 2}})
    with pytest.raises(ValueError, match="keys in the audit log are strings"):
        next_entry(None, actor="a", role="r", operation="o", params={"n": {7: "seven", "7": "sept"}})
    e = next_entry(None, actor="a", role="r", operation="o", params={"ids": ("a", "b")}, time="2025-03-01T10:00:00Z")
    assert e.params == {"ids": ["a", "b"]} and e.time == "2025-03-01T10:00:00.000000Z"
    assert LogEntry.from_json(e.to_json()) == e
    now = next_entry(e, actor="a", role="r", operation="o")
    stamp = datetime.fromisoformat(now.time)
    assert now.seq == 2 and now.prev_hash == e.hash and abs(datetime.now(UTC) - stamp) < timedelta(minutes=1)
