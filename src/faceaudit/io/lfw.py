"""The LFW View 2 protocol file (``pairs.txt``): 10 folds of 300 matched and 300 mismatched pairs.

Format (LFW README, section "View 2"): a header line "10 300", then per fold 300 lines
``name n1 n2`` (same person) followed by 300 lines ``name1 n1 name2 n2`` (different people).
Image ``n`` of ``name`` is ``images/<name>/<name>_<nnnn>.jpg``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from faceaudit.errors import InputError


@dataclass(frozen=True)
class LfwPair:
    fold: int
    a: str  # path relative to the LFW folder
    b: str
    same: bool


def lfw_image(name: str, number: int) -> str:
    return f"images/{name}/{name}_{number:04d}.jpg"


def read_pairs(path: str | Path) -> list[LfwPair]:
    """Parse ``pairs.txt`` into pairs with their fold (0-based)."""
    lines = Path(path).read_text().split("\n")
    try:
        n_folds, n_each = (int(v) for v in lines[0].split())
    except ValueError:
        raise InputError(f"{path}: first line must be '<folds> <pairs per class>', got {lines[0]!r}") from None
    pairs = []
    body = [ln.split() for ln in lines[1:] if ln.strip()]
    if len(body) != n_folds * 2 * n_each:
        raise InputError(f"{path}: expected {n_folds * 2 * n_each} pair lines, found {len(body)}")
    for i, parts in enumerate(body):
        fold, within = divmod(i, 2 * n_each)
        if within < n_each:
            if len(parts) != 3:
                raise InputError(f"{path}: line {i + 2}: a matched pair has 3 fields, got {parts}")
            pairs.append(LfwPair(fold, lfw_image(parts[0], int(parts[1])), lfw_image(parts[0], int(parts[2])), True))
        else:
            if len(parts) != 4:
                raise InputError(f"{path}: line {i + 2}: a mismatched pair has 4 fields, got {parts}")
            pairs.append(LfwPair(fold, lfw_image(parts[0], int(parts[1])), lfw_image(parts[2], int(parts[3])), False))
    return pairs
