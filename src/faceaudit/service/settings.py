"""The service's settings: one frozen value, made by ``faceaudit serve`` or by a test.

With ``--workers N`` uvicorn starts N processes that each import the app by name, so the settings cannot be
handed over as a Python object: ``faceaudit serve`` writes them into environment variables
(:meth:`ServiceSettings.to_env`) and every worker's factory reads them back (:meth:`ServiceSettings.from_env`).
Only paths and numbers travel this way, never the gallery key itself (the key file's path does, or the key is
already in ``$FACEAUDIT_GALLERY_KEY``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from faceaudit.errors import InputError

#: Prefix of the environment variables that carry the settings to uvicorn's worker processes.
ENV_PREFIX = "FACEAUDIT_SERVICE_"


@dataclass(frozen=True)
class ServiceSettings:
    gallery: Path                     # gallery folder (gallery.toml); the service's state lives in its database
    key_file: Path | None = None      # gallery key (else $FACEAUDIT_GALLERY_KEY); read by the server only
    data_root: Path | None = None     # audit configs may only name datasets under this folder
    jobs_dir: Path | None = None      # report folders of audit jobs (default: <gallery>/jobs)
    max_body_bytes: int = 32 * 2**20
    max_image_pixels: int = 40_000_000
    max_images_per_request: int = 16
    rate_per_minute: int = 600        # per API key
    request_timeout_s: float = 60.0
    audit_workers: int = 1            # audit jobs run at once per server process
    cluster: str | None = None        # Dask scheduler for audit jobs (--cluster)
    report_key: Path | None = None    # Ed25519 private key (faceaudit keygen): audit jobs' reports are signed
    calibration: Path | None = None   # fairness calibration (faceaudit calibrate --method) of verify and search

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_image_pixels", "max_images_per_request", "rate_per_minute",
                     "audit_workers"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"service setting {name} must be >= 1, got {getattr(self, name)!r}")
        if not self.request_timeout_s > 0:
            raise InputError(f"service setting request_timeout_s must be > 0, got {self.request_timeout_s!r}")

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables (unset ones left out) for :meth:`from_env` in another process."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[ENV_PREFIX + f.name.upper()] = str(Path(value).resolve()) if isinstance(value, Path) else str(value)
        return out

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        """The settings :meth:`to_env` wrote (InputError naming the variable if one is missing or malformed)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            text = env.get(name)
            if text is None:
                continue
            kind = str(f.type)
            try:
                if "Path" in kind:
                    values[f.name] = Path(text)
                elif kind == "int":
                    values[f.name] = int(text)
                elif kind == "float":
                    values[f.name] = float(text)
                else:
                    values[f.name] = text
            except ValueError:
                raise InputError(f"${name}: {text!r} is not a valid {kind}") from None
        if "gallery" not in values:
            raise InputError(f"${ENV_PREFIX}GALLERY is not set: start the service with `faceaudit serve --gallery DIR`")
        return cls(**values)  # type: ignore[arg-type]

    @property
    def jobs_folder(self) -> Path:
        """Where audit jobs write their reports: ``jobs_dir``, else ``<gallery>/jobs``."""
        return self.jobs_dir if self.jobs_dir is not None else self.gallery / "jobs"
