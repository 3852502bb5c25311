"""Templates encrypted at rest: AES-256-GCM (the ``cryptography`` package), one key per gallery.

A blob is ``key id (8 bytes) || nonce (12 bytes) || ciphertext and tag``. The associated data binds
a ciphertext to what it belongs to (e.g. ``template:<id>``), so a blob copied onto another row does
not decrypt. The key comes from a key file (32 random bytes, base64) or an environment variable;
``faceaudit gallery rotate-key`` re-encrypts every template under a new key. The key id (the first
8 bytes of SHA-256 of the key) says which key a blob needs, without revealing it.

The same key also authenticates what is stored beside the templates in the clear (the policy and the
log head, :meth:`TemplateCipher.seal`): HMAC-SHA256 with a separate key derived by HKDF-SHA256, so no
key is used for two purposes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
import warnings
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from faceaudit.errors import FaceauditError, InputError

KEY_ENV = "FACEAUDIT_GALLERY_KEY"
_NONCE = 12
_KEY_ID = 8


_SEAL_INFO = b"faceaudit gallery seal v1"


class DecryptionError(FaceauditError):
    """A blob could not be decrypted: wrong key, or the data or its binding was altered."""


class IntegrityError(FaceauditError):
    """Stored gallery data fails authentication: a template row, the policy, the log head or the index was
    altered outside faceaudit. ``problems`` lists what was found, one sentence each."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class KeyFileWarning(UserWarning):
    """The gallery key file can be read (or written) by users other than its owner."""


def generate_key_file(path: str | Path) -> Path:
    """Write a new random 256-bit key (base64) readable by its owner only; refuses to overwrite."""
    p = Path(path)
    if p.exists():
        raise InputError(f"{p} exists; refusing to overwrite a key (the templates it encrypts would be lost)")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(AESGCM.generate_key(bit_length=256)).decode() + "\n")
    return p


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise InputError(f"{where}: not a base64 key; create one with `faceaudit gallery keygen`") from None
    if len(key) != 32:
        raise InputError(f"{where}: a gallery key is 32 bytes (base64), got {len(key)}")
    return key


class TemplateCipher:
    """AES-256-GCM with one key; see the module docstring for the blob layout."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("AES-256 needs a 32-byte key")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(key).digest()[:_KEY_ID]
        # a separate key for MACs: the AES key itself is never used for anything but AES-GCM
        self._seal_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(key)

    @classmethod
    def load(cls, key_file: str | Path | None = None) -> TemplateCipher:
        """The key from ``key_file``, else from ``$FACEAUDIT_GALLERY_KEY`` (base64)."""
        if key_file is not None:
            p = Path(key_file)
            if not p.is_file():
                raise InputError(f"{p}: no such key file; create one with `faceaudit gallery keygen`")
            _warn_if_exposed(p)
            return cls(_decode_key(p.read_text(), str(p)))
        env = os.environ.get(KEY_ENV)
        if not env:
            raise InputError(f"no gallery key: give --key FILE or set {KEY_ENV} (base64 of 32 random bytes)")
        return cls(_decode_key(env, f"${KEY_ENV}"))

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        # random 96-bit nonces: NIST SP 800-38D allows 2^32 encryptions per key this way; rotate-key renews
        nonce = os.urandom(_NONCE)
        return self.key_id + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        kid, nonce, body = blob[:_KEY_ID], blob[_KEY_ID:_KEY_ID + _NONCE], blob[_KEY_ID + _NONCE:]
        if kid != self.key_id:
            raise DecryptionError(f"encrypted under key {kid.hex()}, not the key given ({self.key_id.hex()})")
        try:
            return self._aead.decrypt(nonce, body, aad)
        except InvalidTag:
            raise DecryptionError("the data or what it is bound to was altered (authentication failed)") from None

    def seal(self, data: bytes) -> str:
        """HMAC-SHA256 (hex) of ``data`` under the key derived for sealing (see the module docstring)."""
        return hmac.new(self._seal_key, data, hashlib.sha256).hexdigest()

    def seal_ok(self, data: bytes, tag: str) -> bool:
        """Whether ``tag`` is :meth:`seal` of ``data`` (compared in constant time)."""
        return isinstance(tag, str) and hmac.compare_digest(self.seal(data), tag)


def _warn_if_exposed(path: Path) -> None:
    """Warn when a key file is open to group or others: anyone who can read it can decrypt every template."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        warnings.warn(f"the gallery key file {path} is accessible to group or others (mode {mode:03o}); anyone "
                      f"who can read it can decrypt every template: restrict it with `chmod 600 {path}`",
                      KeyFileWarning, stacklevel=3)
