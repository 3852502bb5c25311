"""Tamper evidence for a report folder: a SHA-256 manifest of every file, optionally signed with Ed25519.

``MANIFEST.sha256`` lists ``<hex digest>  <relative path>`` for every file of the folder except the
manifest and its signature, sorted by path (the format ``sha256sum -c`` reads). ``MANIFEST.sig`` holds
the Ed25519 signature (RFC 8032, via the cryptography package) of the manifest's exact bytes, so one
signature covers every file. Verification reports exactly what differs: changed, missing and extra
files, and what the signature proves.

The manifest alone shows only that the files match the manifest shipped with them: whoever edits a
file can rewrite the manifest too. Only a signature checked with the signer's public key shows that
the report is what the key's holder signed, so verification is not "ok" when a signature is present
but was not checked, and says "integrity only" when there is none. Signing checks the folder against
its existing manifest first, so a signature cannot vouch for an edit made after the report was written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from faceaudit.errors import InputError
from faceaudit.io.files import FileRefused, read_regular
from faceaudit.io.images import sha256_file

MANIFEST = "MANIFEST.sha256"
SIGNATURE = "MANIFEST.sig"
#: Reads of files a report's reader does not control are bounded (a report has tens of files).
MAX_MANIFEST_BYTES = 64 << 20
MAX_KEY_BYTES = 64 << 10
#: Differences listed in an error before "... and N more".
SHOWN = 20


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
    _replace_file(out, "".join(lines).encode())
    return out


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``path`` as a new file, a temporary renamed over it: never through a symlink, hard link or FIFO
    planted at ``path`` (a folder handed over for signing is not trusted)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def generate_key(private_path: str | Path, public_path: str | Path) -> None:
    """Write a new Ed25519 key pair (PEM; the private key unencrypted, readable by its owner only).

    Neither file may exist: the private key is created with mode 600 and ``O_EXCL`` (never readable by
    others, even for a moment, and never written through a planted symlink).
    """
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise InputError(f"{path} exists; refusing to overwrite a key (choose another file name)")
    _create(private_path, pem, 0o600)
    try:
        _create(public_path, public, 0o644)
    except BaseException:
        os.unlink(private_path)  # no half pair left behind
        raise


def _create(path: str | Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    except FileExistsError:
        raise InputError(f"{path} exists; refusing to overwrite a key (choose another file name)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _load_private(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(read_regular(path, max_bytes=MAX_KEY_BYTES, what="a key file"),
                                                 password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: cannot read an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path}: not an Ed25519 key; create one with `faceaudit keygen`")
    return key


def _load_public(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(read_regular(path, max_bytes=MAX_KEY_BYTES, what="a key file"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path}: not an Ed25519 public key")
    return key


def sign_manifest(folder: str | Path, private_key: str | Path) -> Path:
    """Sign the folder's manifest with an Ed25519 private key, after checking every file against it.

    Refuses (:class:`InputError` listing the differences) when any file is changed, missing or not in the
    manifest: signing then would vouch for an edit nobody checked. A folder without a manifest gets one
    written over its files as they are (nothing to check them against); see :func:`sign_folder`.
    """
    return sign_folder(folder, private_key).signature


@dataclass(frozen=True)
class Signed:
    """What :func:`sign_folder` did."""

    signature: Path
    files: int  # files the manifest covers
    new_manifest: bool  # there was no manifest: one was written over the files as they are
    replaced_signature: bool  # a previous MANIFEST.sig was overwritten


def sign_folder(folder: str | Path, private_key: str | Path) -> Signed:
    """:func:`sign_manifest`, saying whether the manifest was new and a signature replaced."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    key = _load_private(private_key)  # a bad key fails before anything is written
    manifest = root / MANIFEST
    new = not manifest.exists()
    if new:
        write_manifest(root)
    else:
        check = verify_folder(root)
        if not check.intact:
            raise InputError(f"{root}: refusing to sign: the folder differs from its {MANIFEST}, so a signature now "
                             "would vouch for changes nobody checked:\n  " + "\n  ".join(_shown(check.differences()))
                             + f"\nUndo the changes; or, if they are yours and meant, delete {MANIFEST} (and "
                             f"{SIGNATURE}) and sign again to write a new manifest over the files as they are now.")
    data = _read_manifest(manifest)
    sig = root / SIGNATURE
    replaced = sig.exists()
    _replace_file(sig, key.sign(data))
    return Signed(sig, sum(1 for line in data.splitlines() if line.strip()), new, replaced)


def _shown(lines: list[str]) -> list[str]:
    return lines[:SHOWN] + ([f"... and {len(lines) - SHOWN} more"] if len(lines) > SHOWN else [])


def _read_manifest(path: Path) -> bytes:
    return read_regular(path, max_bytes=MAX_MANIFEST_BYTES, what="a report manifest")


#: Signature states: checked with a public key ("valid", "invalid", "absent": none to check), or not
#: checked ("present, not checked": no public key given; "unsigned": no key and no signature).
SIGNATURE_STATES = ("valid", "invalid", "absent", "present, not checked", "unsigned")


@dataclass
class Verification:
    """What verifying a report folder found.

    ``intact``: every file matches the manifest (integrity against the manifest shipped with the files,
    which anyone can rewrite). ``ok``: intact, and the signature is valid for the given key, or there is
    neither a signature nor a key (then only integrity was checked: see :meth:`verdict`).
    """

    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    signature: str = "unsigned"  # one of SIGNATURE_STATES

    @property
    def intact(self) -> bool:
        return not (self.changed or self.missing or self.extra or self.malformed)

    @property
    def ok(self) -> bool:
        return self.intact and self.signature in ("valid", "unsigned")

    def differences(self) -> list[str]:
        return ([f"changed: {p}" for p in self.changed] + [f"missing: {p}" for p in self.missing]
                + [f"not in the manifest: {p}" for p in self.extra]
                + [f"malformed manifest line: {m}" for m in self.malformed])

    def describe(self) -> list[str]:
        return [*self.differences(), f"signature: {self.signature}"]

    def verdict(self) -> str:
        """One paragraph: what was checked, what it proves, and what to do."""
        if not self.intact:
            head = f"FAILED: the report differs from its {MANIFEST} (see above)"
            if self.signature == "invalid":
                return head + "; and the signature does not match the manifest for this public key."
            return head + "."
        if self.signature == "valid":
            return (f"OK: every file matches {MANIFEST}, and its signature is valid for the given public key: the "
                    "report is as the holder of the matching private key signed it.")
        if self.signature == "invalid":
            return (f"FAILED: the signature does not match {MANIFEST} for this public key: the manifest was "
                    "changed after signing (for instance rewritten to hide an edited file), or signed with another "
                    "key.")
        if self.signature == "absent":
            return (f"FAILED: the files match {MANIFEST}, but there is no {SIGNATURE} to check against the public "
                    "key: nothing shows who wrote this report, and anyone can rewrite an unsigned manifest.")
        if self.signature == "present, not checked":
            return (f"NOT VERIFIED: the files match {MANIFEST} (integrity only), but the report is signed and no "
                    "--pubkey was given, so the signature was not checked; anyone can rewrite a manifest. Run "
                    "again with --pubkey and the signer's public key.")
        return (f"OK (integrity only): every file matches {MANIFEST}. The manifest is unsigned, so this proves only "
                "that the files match the manifest shipped with them (anyone who edits a file can rewrite it), not "
                "who wrote the report. Sign reports (`faceaudit sign-report`, or `audit --sign`) to prove that.")


def _listed_path(rel: str) -> bool:
    """A manifest path names a file inside the folder: relative, no '..' (never a file elsewhere)."""
    pure = PurePosixPath(rel)
    return not pure.is_absolute() and ".." not in pure.parts


def verify_folder(folder: str | Path, public_key: str | Path | None = None) -> Verification:
    """Check every file against the manifest and, given a public key, the manifest's signature."""
    root = Path(folder)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise InputError(f"{root}: no {MANIFEST}; this folder was not written as a faceaudit report")
    data = _read_manifest(manifest)
    result = Verification()
    listed: dict[str, str] = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel or not _listed_path(rel):
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
    sig = root / SIGNATURE
    if public_key is None:
        result.signature = "present, not checked" if sig.exists() else "unsigned"
    elif not sig.exists():
        result.signature = "absent"
    else:
        key = _load_public(public_key)
        try:
            key.verify(read_regular(sig, max_bytes=MAX_KEY_BYTES, what="a signature"), data)
            result.signature = "valid"
        except (InvalidSignature, FileRefused):  # garbage, a folder or a device where the signature should be
            result.signature = "invalid"
    return result
