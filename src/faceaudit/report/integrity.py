"""Tamper evidence for a report folder: a SHA-256 manifest of every file, optionally signed with Ed25519.

``MANIFEST.sha256`` lists ``<hex digest>  <relative path>`` for every file of the folder except the
manifest and its signature, sorted by path (the format ``sha256sum -c`` reads). ``MANIFEST.sig`` holds
the Ed25519 signature (RFC 8032, via the cryptography package) of the manifest's exact bytes, so one
signature covers every file. Verification reports exactly what differs: changed, missing and extra
files, and whether the signature holds for the given public key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from faceaudit.errors import InputError
from faceaudit.io.images import sha256_file

MANIFEST = "MANIFEST.sha256"
SIGNATURE = "MANIFEST.sig"


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name not in (MANIFEST, SIGNATURE))


def write_manifest(folder: str | Path) -> Path:
    """Write ``MANIFEST.sha256`` over every file of ``folder``; returns its path."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    lines = [f"{sha256_file(root / rel)}  {rel}\n" for rel in _files(root)]
    out = root / MANIFEST
    out.write_text("".join(lines))
    return out


def generate_key(private_path: str | Path, public_path: str | Path) -> None:
    """Write a new Ed25519 key pair (PEM; the private key unencrypted, readable by its owner only)."""
    key = Ed25519PrivateKey.generate()
    priv = Path(private_path)
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    priv.chmod(0o600)
    Path(public_path).write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo))


def _load_private(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: cannot read an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path}: not an Ed25519 key; create one with `faceaudit keygen`")
    return key


def _load_public(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path}: not an Ed25519 public key")
    return key


def sign_manifest(folder: str | Path, private_key: str | Path) -> Path:
    """Sign the folder's manifest (written first if missing) with an Ed25519 private key."""
    root = Path(folder)
    manifest = root / MANIFEST
    if not manifest.is_file():
        write_manifest(root)
    sig = root / SIGNATURE
    sig.write_bytes(_load_private(private_key).sign(manifest.read_bytes()))
    return sig


@dataclass
class Verification:
    """What verifying a report folder found; ``ok`` when nothing differs and any signature holds."""

    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    signature: str = "not checked"  # "valid", "invalid", "absent", "not checked"

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.extra or self.malformed) and self.signature in (
            "valid", "not checked")

    def describe(self) -> list[str]:
        lines = [f"changed: {p}" for p in self.changed] + [f"missing: {p}" for p in self.missing]
        lines += [f"not in the manifest: {p}" for p in self.extra] + [f"malformed manifest line: {m}"
                                                                       for m in self.malformed]
        lines.append(f"signature: {self.signature}")
        return lines


def verify_folder(folder: str | Path, public_key: str | Path | None = None) -> Verification:
    """Check every file against the manifest and, given a public key, the manifest's signature."""
    root = Path(folder)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise InputError(f"{root}: no {MANIFEST}; this folder was not written as a faceaudit report")
    result = Verification()
    listed: dict[str, str] = {}
    for line in manifest.read_text().splitlines():
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel:
            result.malformed.append(line)
            continue
        listed[rel] = digest
    for rel, digest in listed.items():
        path = root / rel
        if not path.is_file():
            result.missing.append(rel)
        elif sha256_file(path) != digest:
            result.changed.append(rel)
    result.extra = [rel for rel in _files(root) if rel not in listed]
    if public_key is not None:
        sig = root / SIGNATURE
        if not sig.is_file():
            result.signature = "absent"
        else:
            try:
                _load_public(public_key).verify(sig.read_bytes(), manifest.read_bytes())
                result.signature = "valid"
            except InvalidSignature:
                result.signature = "invalid"
    return result
