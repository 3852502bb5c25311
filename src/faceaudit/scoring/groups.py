"""Demographic groups of images: one attribute, or the intersection of several.

A missing label is its own group, ``unknown``: nothing is dropped silently. Group keys read
``sex=F`` or, for an intersection, ``sex=F|race=Black``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from faceaudit.errors import InputError

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Grouping:
    """Images assigned to groups: ``labels`` (G,) group keys, ``index`` (N,) each image's group."""

    attributes: tuple[str, ...]
    labels: tuple[str, ...]
    index: np.ndarray

    @property
    def n_groups(self) -> int:
        return len(self.labels)

    def values(self, g: int) -> dict[str, str]:
        """The attribute values of group ``g``, e.g. {'sex': 'F', 'race': 'Black'}."""
        return dict(part.split("=", 1) for part in self.labels[g].split("|"))


def assign_groups(table: pd.DataFrame, attributes: Sequence[str]) -> Grouping:
    """Group each row of ``table`` by the intersection of ``attributes`` (one attribute: plain groups)."""
    attrs = tuple(attributes)
    if not attrs:
        raise InputError("name at least one attribute to group by (e.g. --by sex)")
    missing = [a for a in attrs if a not in table.columns]
    if missing:
        cols = ", ".join(c for c in map(str, table.columns) if not c.startswith("_"))
        raise InputError(f"unknown attribute column(s) {', '.join(missing)}; columns available: {cols}")
    parts = []
    for a in attrs:
        col = table[a].astype("string").str.strip()
        col = col.fillna(UNKNOWN).replace("", UNKNOWN)
        parts.append(f"{a}=" + col)
    keys = parts[0]
    for p in parts[1:]:
        keys = keys + "|" + p
    labels, index = np.unique(keys.to_numpy(dtype=str), return_inverse=True)
    return Grouping(attributes=attrs, labels=tuple(str(v) for v in labels), index=index.astype(np.int32))


def cell_index(a: np.ndarray | int, b: np.ndarray | int, n_groups: int) -> np.ndarray:
    """Index of the unordered group pair (a, b) among the G(G+1)/2 cells of the upper triangle."""
    lo = np.minimum(a, b)
    hi = np.maximum(a, b)
    return np.asarray(lo * n_groups - lo * (lo - 1) // 2 + (hi - lo), dtype=np.int64)


def n_cells(n_groups: int) -> int:
    return n_groups * (n_groups + 1) // 2
