"""Merkle root of image contents: hand-computed trees, order independence, sensitivity to any change."""

from __future__ import annotations

import hashlib

from faceaudit.report.provenance import EMPTY_ROOT, leaf_hash, machine, merkle_root


def h(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


D = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5)]


def test_small_trees_by_hand() -> None:
    a, b, c = leaf_hash("a.jpg", D[0]), leaf_hash("b.jpg", D[1]), leaf_hash("c.jpg", D[2])
    assert a == h(b"\x00a.jpg\x00" + bytes.fromhex(D[0]))
    assert merkle_root([("a.jpg", D[0])]) == a.hex()
    assert merkle_root([("a.jpg", D[0]), ("b.jpg", D[1])]) == h(b"\x01" + a + b).hex()
    # three leaves: RFC 6962 splits at 2 -> (a, b) and c
    assert merkle_root([("c.jpg", D[2]), ("a.jpg", D[0]), ("b.jpg", D[1])]) == h(b"\x01" + h(b"\x01" + a + b) + c).hex()
    assert merkle_root([]) == EMPTY_ROOT


def test_root_changes_with_any_image_path_or_membership() -> None:
    base = [(f"{i}.jpg", D[i]) for i in range(5)]
    root = merkle_root(base)
    assert merkle_root(list(reversed(base))) == root
    assert merkle_root([*base[:2], ("2.jpg", D[4]), *base[3:]]) != root
    assert merkle_root([*base[:2], ("2b.jpg", D[2]), *base[3:]]) != root
    assert merkle_root(base[:4]) != root


def test_machine_names_the_libraries() -> None:
    m = machine()
    assert m["cpus"] and "numpy" in m["libraries"] and m["libraries"]["numpy"] != "not installed"
