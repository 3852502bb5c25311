"""One pass over every calibration pair, shared by every threshold a fold's mitigations need.

Group thresholds and FSN set thresholds at a target FMR over impostor pairs of a code (a group or a
cluster): by the rule of :func:`faceaudit.mitigation.base.threshold_at_fmr`, each needs only the k + 1
largest impostor scores of its code. A :class:`CalibrationSet` collects those requests from every
method and target FMR of a fold (:meth:`CalibrationSet.request`), then compares each unordered pair of
calibration images once (:meth:`CalibrationSet.run`) and keeps, per request and code, the largest
scores; a method reads its own (:meth:`CalibrationSet.top`). Two requests on the same codes with the
same pair rule share one tally (the larger count kept serves both). Scores are cosines of unit rows,
in [-1, 1] (the tally's sort key relies on it).

The pass. Row chunks against the columns after them (each unordered pair once: the upper triangle),
scores as float32 products; pairs of one subject are excluded (set to -inf). Per request, a code's
floor is its current (keep)-th largest score (-inf until it has that many), and only scores above the
floor can enter, so after the first chunks the candidates are few: one comparison with the lowest floor
of all requests picks them out of each chunk, and each request then looks at those only. The first
chunk is small, so the first floors are set cheaply. Exact: a score at or below a floor can never be
among the largest kept.

Pair rules: ``within`` (both images in code c: group thresholds) or ``touch`` (at least one image in c,
each pair counted once for each code it touches: FSN), as in :mod:`faceaudit.mitigation.methods`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from faceaudit.mitigation.base import prepare

FIRST_CHUNK = 64
CHUNK = 1024


@dataclass
class _Tally:
    """The ``keep[c]`` largest scores of each code c seen so far (values with their codes, sorted by code then
    descending), and each code's floor: the smallest kept once it holds ``keep[c]``, -inf before, +inf for a
    code that keeps nothing. Offered scores wait in a buffer until :meth:`merge` (:meth:`merge_due`); the
    floors then lag behind, which only lets more scores through the filter, never fewer."""

    keep: np.ndarray  # (K,) int
    values: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    codes: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    floors: np.ndarray = field(init=False)
    _buffer: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    _buffered: int = 0

    def __post_init__(self) -> None:
        self.floors = np.where(self.keep > 0, -np.inf, np.inf).astype(np.float32)

    def add(self, values: np.ndarray, codes: np.ndarray) -> None:
        if len(values):
            self._buffer.append((values, codes))
            self._buffered += len(values)

    def merge_due(self) -> bool:
        """Whether to merge now: while a code's floor is unset (the filter lets everything through), or once the
        buffer holds a quarter of what is kept (a sort of the kept scores is then worth it)."""
        return self._buffered > 0 and (bool(np.isneginf(self.floors).any())
                                       or self._buffered >= max(len(self.values) // 4, 4096))

    def merge(self) -> None:
        if not self._buffer:
            return
        v = np.concatenate([self.values, *(b[0] for b in self._buffer)])
        c = np.concatenate([self.codes, *(b[1] for b in self._buffer)])
        self._buffer, self._buffered = [], 0
        # by code, then descending score: one float64 key, exact (a float32 score s in [-1, 1] makes 1 - s in
        # [0, 2] exactly, well apart from the next code's keys), and one argsort rather than a two-key lexsort
        order = np.argsort(c * 4.0 + (1.0 - v.astype(np.float64)), kind="stable")
        v, c = v[order], c[order]
        starts = np.searchsorted(c, np.arange(len(self.keep)))
        rank = np.arange(len(c)) - starts[c]
        kept = rank < self.keep[c]
        self.values, self.codes = v[kept], c[kept]
        counts = np.bincount(self.codes, minlength=len(self.keep))
        full = np.flatnonzero((counts == self.keep) & (self.keep > 0))
        ends = np.cumsum(counts) - 1
        self.floors[full] = self.values[ends[full]]

    def top(self, code: int) -> np.ndarray:
        """The kept scores of ``code``, descending, as float64."""
        self.merge()
        out: np.ndarray = self.values[self.codes == code].astype(np.float64)
        return out


@dataclass(frozen=True)
class Ticket:
    """What :meth:`CalibrationSet.request` returns: where a request's scores are, and how many it asked for."""

    tally: int
    keep: np.ndarray


class CalibrationSet:
    """The calibration images of one fit (unit rows, subject codes 0..S-1) and the threshold requests of every
    method fitted on them (module docstring). ``subject_ids``: as given."""

    def __init__(self, embeddings: np.ndarray, subjects: np.ndarray) -> None:
        self.subject_ids = np.asarray(subjects)
        self.embeddings, self.subjects = prepare(embeddings, subjects)
        self._keys: dict[tuple[bytes, bool], int] = {}
        self._specs: list[tuple[np.ndarray, bool, np.ndarray]] = []  # codes, within, keep
        self._tallies: list[_Tally] | None = None

    def __len__(self) -> int:
        return len(self.embeddings)

    def request(self, codes: np.ndarray, keep: np.ndarray, within: bool) -> Ticket:
        """Ask for the ``keep[c]`` largest impostor scores of each code c under the pair rule (before :meth:`run`)."""
        if self._tallies is not None:
            raise RuntimeError("the pass has run; request before CalibrationSet.run")
        codes = np.asarray(codes, np.int64)
        keep = np.asarray(keep, np.int64)
        key = (codes.tobytes() + keep.shape[0].to_bytes(8, "little"), within)
        if key in self._keys:
            i = self._keys[key]
            c, w, k = self._specs[i]
            self._specs[i] = (c, w, np.maximum(k, keep))
        else:
            i = self._keys[key] = len(self._specs)
            self._specs.append((codes, within, keep))
        return Ticket(i, keep)

    def top(self, ticket: Ticket, code: int) -> np.ndarray:
        """The ``ticket.keep[code]`` largest impostor scores of ``code`` (descending, float64), after :meth:`run`."""
        if self._tallies is None:
            self.run()
        assert self._tallies is not None
        return self._tallies[ticket.tally].top(code)[:int(ticket.keep[code])]

    def run(self) -> None:
        """Compare every unordered pair once and fill every request's tallies (module docstring)."""
        if self._tallies is not None:
            return
        tallies = [_Tally(keep.copy()) for _, _, keep in self._specs]
        self._tallies = tallies
        if not tallies:
            return
        e, subj = self.embeddings, self.subjects
        n = len(e)
        r0 = 0
        while r0 < n:
            # chunks grow from FIRST_CHUNK rows, doubling up to CHUNK: a chunk never holds many more pairs than
            # those seen before it, so the floors set so far already filter most of its scores
            r1 = min(n, r0 + min(CHUNK, max(FIRST_CHUNK, r0)))
            s = e[r0:r1] @ e[r0:].T  # rows against themselves and every later column
            s[subj[r0:r1, None] == subj[None, r0:]] = -np.inf  # genuine pairs: not impostors
            s[:, :r1 - r0][np.tril_indices(r1 - r0)] = -np.inf  # each pair once (column after row)
            # one pass over the chunk: only a score above the lowest floor of all can enter any tally
            lowest = min(float(t.floors.min()) for t in tallies)
            ri, ci = np.nonzero(s > lowest)
            vals = s[ri, ci]
            for (codes, within, _), tally in zip(self._specs, tallies, strict=True):
                _offer(tally, vals, codes[r0:r1][ri], codes[r0:][ci], within)
                if tally.merge_due():
                    tally.merge()
            r0 = r1


def _offer(tally: _Tally, vals: np.ndarray, rows: np.ndarray, cols: np.ndarray, within: bool) -> None:
    """Offer candidate pairs (score, row's code, column's code) to a tally: each pair to its row's code, and under
    the touch rule also to its column's code when that is another code."""
    f = tally.floors
    if within:
        hit = (rows == cols) & (vals > f[rows])
        tally.add(vals[hit], rows[hit])
        return
    a = vals > f[rows]
    b = (rows != cols) & (vals > f[cols])
    tally.add(np.concatenate([vals[a], vals[b]]), np.concatenate([rows[a], cols[b]]))
