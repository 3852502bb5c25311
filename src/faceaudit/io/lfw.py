"""The LFW View 2 protocol file (``pairs.txt``): 10 folds of 300 matched and 300 mismatched pairs.

Format (LFW README, section "View 2"): a header line "10 300", then per fold 300 lines
``name n1 n2`` (same person) followed by 300 lines ``name1 n1 name2 n2`` (different people).
Image ``n`` of ``name`` is ``images/<name>/<name>_<nnnn>.jpg``.

:func:`parse_pair_lines` also reads the other files written in this style (LFW's ``pairsDevTrain.txt``
with a one-number header, RFW's ``<Race>_pairs.txt`` with none); :mod:`faceaudit.io.pairlist` uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from faceaudit.errors import InputError
from faceaudit.io.files import read_text

_LINE_FORMS = "'name n1 n2' (same person) or 'name1 n1 name2 n2' (different people)"


@dataclass(frozen=True)
class LfwPair:
    fold: int
    a: str  # path relative to the LFW folder
    b: str
    same: bool


class TextPair(NamedTuple):
    """One pair line of an LFW-style text file."""

    a: str
    b: str
    same: bool
    fold: int | None  # 0-based; None when the header gives no folds or there is no header


def person_image(name: str, number: int) -> str:
    """Image ``number`` of ``name`` relative to the folder of per-person folders (LFW and RFW naming)."""
    return f"{name}/{name}_{number:04d}.jpg"


def lfw_image(name: str, number: int) -> str:
    return f"images/{person_image(name, number)}"  # our LFW folder keeps the person folders in images/


def parse_header(line: str) -> tuple[int | None, int] | None:
    """``(folds, pairs per class)`` from ``"10 300"``, ``(None, n)`` from ``"1100"``; None if not a header.

    A pair line always starts with a name, so a line of one or two whole numbers cannot be one.
    """
    fields = line.split()
    if not 1 <= len(fields) <= 2 or not all(f.isdigit() for f in fields):
        return None
    return (int(fields[0]), int(fields[1])) if len(fields) == 2 else (None, int(fields[0]))


def parse_pair_lines(source: str | Path, lines: Sequence[str],
                     image: Callable[[str, int], str] = person_image) -> list[TextPair]:
    """Pairs from the lines of an LFW-style file, with or without a header line.

    With a header, the body is blocks of ``pairs per class`` matched then as many mismatched lines, one
    block per fold (LFW's layout, checked). Without one, a line's field count says which kind it is.
    ``image(name, number)`` turns a name and image number into a path.
    """
    header = parse_header(lines[0]) if lines else None
    body = [(no, ln.split()) for no, ln in enumerate(lines, start=1) if ln.strip()][header is not None:]
    if header is not None:
        n_folds, n_each = header
        expected = (n_folds or 1) * 2 * n_each
        if len(body) != expected:
            raise InputError(f"{source}: expected {expected} pair lines (from the header {lines[0].strip()!r}), "
                             f"found {len(body)}")
    pairs = []
    for i, (no, parts) in enumerate(body):
        fold = None
        if header is None:
            if len(parts) not in (3, 4):
                raise InputError(f"{source}: line {no}: expected {_LINE_FORMS}, got {parts}")
            same = len(parts) == 3
        else:
            block, within = divmod(i, 2 * n_each)
            fold = None if n_folds is None else block
            same = within < n_each
            if len(parts) != (3 if same else 4):
                kind = "a matched pair has 3 fields" if same else "a mismatched pair has 4 fields"
                raise InputError(f"{source}: line {no}: {kind}, got {parts}")
        name_b, numbers = (parts[0], parts[1:]) if same else (parts[2], parts[1::2])
        if not all(n.isdigit() for n in numbers):
            raise InputError(f"{source}: line {no}: image numbers must be whole numbers in {_LINE_FORMS}, "
                             f"got {parts}")
        pairs.append(TextPair(image(parts[0], int(numbers[0])), image(name_b, int(numbers[1])), same, fold))
    return pairs


def read_pairs(path: str | Path) -> list[LfwPair]:
    """Parse ``pairs.txt`` into pairs with their fold (0-based)."""
    lines = read_text(path, "LFW's pairs.txt").split("\n")
    header = parse_header(lines[0])
    if header is None or header[0] is None:
        raise InputError(f"{path}: first line must be '<folds> <pairs per class>', got {lines[0]!r}")
    # fold is never None here (the header has folds); ``or 0`` only narrows the type
    return [LfwPair(p.fold or 0, p.a, p.b, p.same) for p in parse_pair_lines(path, lines, lfw_image)]
