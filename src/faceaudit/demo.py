"""``faceaudit demo``: a complete audit of the bundled London faces, by sex and by ethnicity.

The 204 crops (102 people, two photos each; CC BY 4.0, see ``data/london_tiny/README.md``) are
embedded with the default engine and audited like any dataset. Studio photos of few people: the
report shows how an audit reads and what its limitations section says about small groups, rather
than measuring the engine.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from faceaudit.audit.config import AuditConfig, DatasetConfig, GroupsConfig, MetricsConfig, RunConfig
from faceaudit.audit.run import AuditOutcome, run_audit

#: 20,604 impostor pairs support targets down to about 5e-4 (at least 10 expected false matches).
DEMO_FMRS = (1e-2, 1e-3)


def bundled_manifest() -> Path:
    """The manifest of the bundled 112x112 London crops (CC BY 4.0, see its README)."""
    return Path(str(resources.files("faceaudit").joinpath("data", "london_tiny", "manifest.csv")))


def demo_config(workers: int | None = None) -> AuditConfig:
    return AuditConfig(
        title="Demo audit: the default engine on the Face Research Lab London Set",
        dataset=DatasetConfig(
            path=str(bundled_manifest()), format="manifest", name="Face Research Lab London Set (112x112 crops)",
            labels="self-reported by the people photographed, who gave signed consent (DeBruine & Jones 2017, "
                   "CC BY 4.0); the race column holds their self-described ethnicity"),
        groups=GroupsConfig(by=("sex", "race")),
        metrics=MetricsConfig(target_fmrs=DEMO_FMRS),
        run=RunConfig(workers=workers),
    )


def run_demo(out: str | Path, *, workers: int | None = None, progress: bool = True,
             sign: str | Path | None = None) -> AuditOutcome:
    return run_audit(demo_config(workers), out, sign=sign, progress=progress)
