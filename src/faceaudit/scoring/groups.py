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
    """Images assigned to groups: ``labels`` (G,) group keys, ``index`` (N,) each image's group.

    ``group_values`` holds each group's attribute values as given: a value may contain ``|`` or ``=``,
    so they are kept, never parsed back out of the label.
    """

    attributes: tuple[str, ...]
    labels: tuple[str, ...]
    index: np.ndarray
    group_values: tuple[tuple[str, ...], ...] = ()

    @property
    def n_groups(self) -> int:
        return len(self.labels)

    def values(self, g: int) -> dict[str, str]:
        """The attribute values of group ``g``, e.g. {'sex': 'F', 'race': 'Black'}."""
        if self.group_values:
            return dict(zip(self.attributes, self.group_values[g], strict=True))
        return dict(part.split("=", 1) for part in self.labels[g].split("|"))


def assign_groups(table: pd.DataFrame, attributes: Sequence[str]) -> Grouping:
    """Group each row of ``table`` by the intersection of ``attributes`` (one attribute: plain groups).

    Groups are ordered by their key (``sex=F|race=A`` before ``sex=F|race=B``).
    """
    attrs = tuple(attributes)
    if not attrs:
        raise InputError("name at least one attribute to group by (e.g. --by sex)")
    missing = [a for a in attrs if a not in table.columns]
    if missing:
        have = ", ".join(c for c in map(str, table.columns) if not c.startswith("_"))
        raise InputError(f"unknown attribute column(s) {', '.join(missing)}; columns available: {have}")
    cols = [table[a].astype("string").str.strip().fillna(UNKNOWN).replace("", UNKNOWN).to_numpy(dtype=object)
            for a in attrs]
    combined = np.zeros(len(table), np.int64)
    for col in cols:
        codes, values = pd.factorize(col)
        # re-factorised after each attribute, so the combined code stays below the number of rows
        combined = pd.factorize(combined * len(values) + codes)[0].astype(np.int64)
    _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    tuples = [tuple(str(col[i]) for col in cols) for i in first]
    keys = ["|".join(f"{a}={v}" for a, v in zip(attrs, t, strict=True)) for t in tuples]
    if len(set(keys)) != len(keys):
        raise InputError(f"labels of {', '.join(attrs)} give two groups the same name (a value holding '|' or "
                         "'='); rename those values")
    order = sorted(range(len(keys)), key=keys.__getitem__)
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return Grouping(attributes=attrs, labels=tuple(keys[i] for i in order), index=rank[inverse.ravel()],
                    group_values=tuple(tuples[i] for i in order))


def cell_index(a: np.ndarray | int, b: np.ndarray | int, n_groups: int) -> np.ndarray:
    """Index of the unordered group pair (a, b) among the G(G+1)/2 cells of the upper triangle."""
    lo = np.minimum(a, b)
    hi = np.maximum(a, b)
    return np.asarray(lo * n_groups - lo * (lo - 1) // 2 + (hi - lo), dtype=np.int64)


def n_cells(n_groups: int) -> int:
    return n_groups * (n_groups + 1) // 2
