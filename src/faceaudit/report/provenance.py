"""Provenance of an audit: what was measured, with what, on which machine, so a rerun can be compared.

The image contents are summarised by a Merkle root (RFC 6962, section 2.1, Certificate Transparency's
tree hash): leaves are SHA-256(0x00 || path || 0x00 || image SHA-256), interior nodes
SHA-256(0x01 || left || right), the tree split at the largest power of two below the leaf count.
Leaves are sorted by path, so the root does not depend on file order, and changes if any image, path
or the set of images changes; one image can later be proven part of the set with a log-size path.
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from typing import Any

EMPTY_ROOT = hashlib.sha256(b"").hexdigest()


def leaf_hash(path: str, image_sha256: str) -> bytes:
    return hashlib.sha256(b"\x00" + path.encode() + b"\x00" + bytes.fromhex(image_sha256)).digest()


def _tree(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)  # largest power of two below len(leaves)
    return hashlib.sha256(b"\x01" + _tree(leaves[:k]) + _tree(leaves[k:])).digest()


def merkle_root(images: Sequence[tuple[str, str]]) -> str:
    """Hex Merkle root over (path, image SHA-256) pairs; ``EMPTY_ROOT`` for none."""
    if not images:
        return EMPTY_ROOT
    leaves = [leaf_hash(p, d) for p, d in sorted(images)]
    return _tree(leaves).hex()


def machine() -> dict[str, Any]:
    """The machine and the versions of the libraries that shape the numbers."""
    versions = {}
    for dist in ("numpy", "onnxruntime", "opencv-python-headless", "numba", "pandas", "pyarrow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "libraries": versions}
