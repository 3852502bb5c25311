"""Helpers for the service tests: a gallery with a policy of several roles and a key per role, the bundled face
images as bytes, and a real uvicorn server in a subprocess (started on a free local port, stopped at the end).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import httpx
import pandas as pd

from faceaudit.demo import bundled_manifest
from faceaudit.gallery.crypto import generate_key_file
from faceaudit.gallery.gallery import Gallery
from faceaudit.gallery.policy import Policy
from faceaudit.service.keys import create_key
from faceaudit.service.settings import ServiceSettings

SEARCH = {"purpose": "finding duplicate enrolments", "legal_basis": "GDPR Art. 6(1)(c)"}
#: A policy with a role for each kind of caller (and 1:N search switched on for one purpose).
POLICY = Policy.from_dict({
    "roles": {"operator": ["enrol", "verify", "detect", "embed"], "investigator": ["search"],
              "dpo": ["export", "delete"], "auditor": ["audit", "log"],
              "admin": ["policy", "rotate-key", "delete", "log"]},
    "search": {"enabled": True, **SEARCH, "max_k": 5, "max_fpir": 0.05},
})
CONSENT = {"consent_by": "the person", "consent_date": "2026-01-05", "legal_basis": "consent, GDPR Art. 9(2)(a)"}


@cache
def faces() -> list[tuple[str, bytes, bytes]]:
    """``(subject id, first image, second image)`` of each bundled person, as JPEG bytes."""
    manifest = bundled_manifest()
    df = pd.read_csv(manifest, dtype=str)
    out = []
    for subject, rows in df.groupby("subject_id", sort=True):
        paths = list(rows["path"])
        out.append((str(subject), (manifest.parent / paths[0]).read_bytes(), (manifest.parent / paths[1]).read_bytes()))
    return out


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming ``width`` x ``height`` pixels, with a token of image data: what a
    decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


@dataclass
class Setup:
    """A gallery ready to serve: its folder, key file and one API key per role (by role name)."""

    folder: Path
    key_file: Path
    keys: dict[str, str]

    def settings(self, **kw: object) -> ServiceSettings:
        return ServiceSettings(gallery=self.folder, key_file=self.key_file, **kw)  # type: ignore[arg-type]

    def open(self, role: str = "admin") -> Gallery:
        return Gallery.open(self.folder, key_file=self.key_file, actor="test", role=role)

    def log(self) -> list[dict[str, object]]:
        with self.open() as g:
            return [json.loads(e) for _, e in g.store.log_rows()]


def make_setup(tmp: Path, *, database: str | None = None, policy: Policy = POLICY) -> Setup:
    key_file = generate_key_file(tmp / "gallery.key")
    folder = tmp / "gallery"
    keys = {}
    with Gallery.init(folder, key_file=key_file, database=database, policy=policy, actor="test") as g:
        for role in policy.roles:
            keys[role], _ = create_key(g, f"{role}-key", role)
    return Setup(folder, key_file, keys)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``faceaudit serve`` in a subprocess on a free local port (:func:`serve` starts and stops it)."""

    def __init__(self, settings: ServiceSettings, log_path: Path) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """``faceaudit serve`` with these settings (one worker: the server is this one process)."""
        s = self.settings
        cmd = [sys.executable, "-m", "faceaudit.cli", "serve", "--gallery", str(s.gallery), "--port", str(self.port),
               "--rate-per-minute", str(s.rate_per_minute), "--request-timeout", str(s.request_timeout_s),
               "--max-body-mb", str(s.max_body_bytes // 2**20), "--max-images", str(s.max_images_per_request),
               "--max-pixels", str(s.max_image_pixels)]
        assert s.max_body_bytes % 2**20 == 0, "the command line takes the body limit in MiB"
        cmd += ["--audit-workers", str(s.audit_workers)]
        for flag, value in (("--key", s.key_file), ("--data-root", s.data_root), ("--jobs-dir", s.jobs_dir),
                            ("--sign", s.report_key), ("--cluster", s.cluster)):
            if value is not None:
                cmd += [flag, str(value)]
        return cmd

    def start(self, timeout: float = 90.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not get ready in {timeout:g} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """kill -9, as a crash would."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@contextmanager
def serve(settings: ServiceSettings, log_path: Path) -> Iterator[Server]:
    server = Server(settings, log_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
