"""Decision thresholds for 1:1 verification, read from a calibration file shipped with each engine.

A calibration is an impostor score distribution measured on labelled data by ``faceaudit calibrate``
(see ``make calibrate``): for each false match rate (FMR) on a grid, the threshold that gives it.
FMR(t) = #(impostor pairs with score >= t) / #(impostor pairs) (ISO/IEC 19795-1 false match rate;
a pair matches when its score is at least the threshold). The file records the data it came from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from faceaudit.engines.base import EngineIdentity
from faceaudit.errors import CalibrationError

#: A target FMR is supported only if at least this many impostor pairs lie above its threshold.
MIN_FALSE_MATCHES = 10


@dataclass(frozen=True)
class Calibration:
    """Thresholds by FMR for one engine (``fmr`` descending, ``threshold`` ascending)."""

    engine: str
    engine_version: str
    model_sha256: tuple[str, ...]
    fmr: np.ndarray
    threshold: np.ndarray
    fnmr: np.ndarray  # genuine pairs of the calibration data below each threshold, for information
    n_impostor: int
    n_genuine: int
    source: dict[str, Any]

    @property
    def min_fmr(self) -> float:
        return MIN_FALSE_MATCHES / self.n_impostor

    def threshold_for(self, target_fmr: float) -> float:
        """The score threshold whose FMR on the calibration data is ``target_fmr`` (log-linear in between)."""
        if not (0.0 < target_fmr < 1.0):
            raise CalibrationError(f"target FMR must be between 0 and 1, got {target_fmr}")
        if target_fmr < self.min_fmr or target_fmr < self.fmr[-1]:
            lowest = max(self.min_fmr, self.fmr[-1])
            raise CalibrationError(
                f"target FMR {target_fmr:g} is below what the calibration supports ({lowest:.2g}: "
                f"{self.n_impostor:,} impostor pairs, at least {MIN_FALSE_MATCHES} false matches needed)"
            )
        if target_fmr > self.fmr[0]:
            raise CalibrationError(f"target FMR {target_fmr:g} is above the calibrated range (max {self.fmr[0]:g})")
        # np.interp needs increasing x: log FMR ascending means threshold descending.
        return float(np.interp(math.log10(target_fmr), np.log10(self.fmr[::-1]), self.threshold[::-1]))

    def fmr_at(self, score: float) -> float:
        """The calibration data's FMR at threshold ``score`` (clamped to the calibrated range)."""
        t = float(np.clip(score, self.threshold[0], self.threshold[-1]))
        return float(10 ** np.interp(t, self.threshold, np.log10(self.fmr)))

    def fnmr_at(self, score: float) -> float:
        t = float(np.clip(score, self.threshold[0], self.threshold[-1]))
        return float(np.interp(t, self.threshold, self.fnmr))

    def matches(self, identity: EngineIdentity) -> bool:
        """True when this calibration was made with exactly the engine's models."""
        shas = tuple(str(m["sha256"]) for m in identity.models)
        return (identity.name, identity.version, shas) == (self.engine, self.engine_version, self.model_sha256)

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "engine_version": self.engine_version,
            "model_sha256": list(self.model_sha256),
            "n_impostor": self.n_impostor,
            "n_genuine": self.n_genuine,
            "source": self.source,
            "table": [
                {"fmr": float(f), "threshold": float(t), "fnmr": float(n)}
                for f, t, n in zip(self.fmr, self.threshold, self.fnmr, strict=True)
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        table = d["table"]
        return cls(
            engine=d["engine"],
            engine_version=str(d["engine_version"]),
            model_sha256=tuple(d["model_sha256"]),
            fmr=np.array([r["fmr"] for r in table], np.float64),
            threshold=np.array([r["threshold"] for r in table], np.float64),
            fnmr=np.array([r["fnmr"] for r in table], np.float64),
            n_impostor=int(d["n_impostor"]),
            n_genuine=int(d["n_genuine"]),
            source=dict(d["source"]),
        )


def calibration_path(engine: str) -> Path:
    return Path(str(resources.files("faceaudit.engines").joinpath("calibration", f"{engine}.json")))


def load_calibration(identity: EngineIdentity, path: str | Path | None = None) -> Calibration:
    """The calibration shipped for ``identity`` (or read from ``path``); checks it fits the models."""
    p = Path(path) if path is not None else calibration_path(identity.name)
    try:
        cal = Calibration.from_dict(json.loads(p.read_text()))
    except FileNotFoundError:
        raise CalibrationError(
            f"no calibration for engine {identity.name!r} at {p}; create one with `faceaudit calibrate`"
        ) from None
    if not cal.matches(identity):
        raise CalibrationError(
            f"calibration {p} was made for {cal.engine} v{cal.engine_version} with other model files; "
            "rerun `faceaudit calibrate` for this engine"
        )
    return cal
