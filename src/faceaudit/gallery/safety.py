"""Small guards for what the gallery writes to disk and to a terminal.

* :func:`write_private`: files that hold personal data (exports, settings that may carry a database
  password) are created readable by their owner only, whatever the umask.
* :func:`printable`: subject ids, actors and roles are whatever a caller passed in; printed as they are,
  a control character or ANSI escape sequence in one could rewrite the terminal (hide a line, recolour a
  refusal, move the cursor over an audit result). Only what is printed is changed, never the data.
"""

from __future__ import annotations

import os
import tempfile
import unicodedata
from pathlib import Path

#: Characters that reorder or hide text without being control characters (Unicode bidirectional
#: overrides and isolates, the directional marks): they can make one id read as another.
_INVISIBLE = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: object) -> str:
    """``text`` with every control character (C0, DEL, C1: hence every ANSI escape sequence, which starts
    with ESC or CSI), line or paragraph separator and bidirectional override shown as a visible escape
    (``\\x1b``, ``\\u202e``).

    Escaped rather than removed: removing them would print ``alice`` and ``alice<ESC>[0m`` alike, so that
    one enrolled id could pass for another in the output an operator reads."""
    out = []
    for ch in str(text):
        if ch in _INVISIBLE or unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def write_private(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` with mode 0600 (set explicitly: the umask neither widens nor narrows it).

    Written to a new file in the same folder and renamed over ``path``: overwriting an existing file in
    place would keep its old, perhaps wider, permissions for whoever already has it open."""
    p = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
