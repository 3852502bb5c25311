"""What a gallery allows: operations per role, 1:N search bound to a declared purpose, limits, retention.

A policy is a TOML file (``examples/gallery-policy.toml``)::

    [roles]                      # role = the operations it may run
    operator = ["enrol", "verify", "detect", "embed"]
    investigator = ["search"]
    dpo = ["export", "delete"]   # export or erase on someone else's behalf (see below)
    auditor = ["audit", "log"]   # run bias audits; read and check the audit log

    [search]                     # 1:N search: off unless switched on with a purpose and legal basis
    enabled = true
    purpose = "finding duplicate enrolments in the staff badge system"
    legal_basis = "GDPR Art. 6(1)(c), employment records"
    max_k = 10
    max_fpir = 0.01              # the loosest false positive identification rate a search may ask for
    min_score = 0.35             # no threshold below this score, whatever the FPIR
    human_review = true          # candidates are investigative leads, for a person to review

    [limits]                     # per actor, over a sliding window; a refusal names the limit and is logged
    window_minutes = 60
    max_verifies = 1000          # 1:1 verifications: looping verify over every subject id is a 1:N search
    max_exports = 10             # exports: each is a plaintext copy of someone's templates

    [retention]
    days = 365                   # templates expire this long after enrolment unless consent ends sooner

The operations: ``enrol``, ``verify`` (1:1 against an enrolled subject, or two images), ``search`` (1:N),
``delete`` and ``export`` (on someone else's behalf), ``rotate-key``, ``policy`` (replace it); and those the
service (``faceaudit serve``) checks in front of the gallery for each API key's role: ``detect`` and ``embed``
(faces and vectors of uploaded images, nothing stored), ``audit`` (submit, follow and download bias-audit
jobs) and ``log`` (read the log head and have the log verified).

Export and delete carry the data subjects' rights of access and erasure: a request by the subject
themselves (``requested_by_subject``, recorded in the log) is always allowed. On anyone else's behalf
they are ordinary operations that a role must be given: an export is a plaintext copy of someone's
templates, which anyone could then search offline. The default policy (no file) allows enrol, 1:1
verify, detect and embed to every role; the role ``admin`` may also replace the policy, rotate the key,
erase on someone's behalf, run audits and read the log; nobody exports for others; 1:N search is off.
Every refusal names the rule that refused it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceaudit.errors import FaceauditError, InputError

OPERATIONS = ("enrol", "verify", "search", "delete", "export", "rotate-key", "policy", "detect", "embed", "audit",
              "log")
#: Rights of the people enrolled: always allowed when the subject asks for it themselves.
SUBJECT_RIGHTS = ("delete", "export")
#: Without a policy: anyone may enrol, verify, detect and embed; the role "admin" may also replace the policy
#: (the only way to switch search on, and logged), rotate the key, erase someone on their behalf, run audits
#: and read the log. "*" stands for any other role.
DEFAULT_ROLES = {"*": ("enrol", "verify", "detect", "embed"),
                 "admin": ("enrol", "verify", "detect", "embed", "policy", "rotate-key", "delete", "audit", "log")}


class PolicyError(FaceauditError):
    """An operation refused by the policy; ``rule`` names the rule."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"refused by the gallery policy ({rule}): {message}")
        self.rule = rule


@dataclass(frozen=True)
class SearchRules:
    enabled: bool = False
    purpose: str | None = None
    legal_basis: str | None = None
    max_k: int = 10
    max_fpir: float = 0.01
    min_score: float | None = None
    human_review: bool = True


@dataclass(frozen=True)
class Limits:
    """How many rate-limited operations one actor may run within ``window_minutes``.

    The defaults leave room for a busy 1:1 terminal (one verification every 3.6 s for an hour) while
    stopping a loop of verify over a gallery's subject ids, and exports to a handful."""

    window_minutes: int = 60
    max_verifies: int = 1000
    max_exports: int = 10

    def key_for(self, operation: str) -> str | None:
        """The key in [limits] that limits ``operation`` (None: not rate-limited)."""
        return _LIMITED.get(operation)

    def max_for(self, operation: str) -> int | None:
        """The limit for ``operation`` (None: not rate-limited)."""
        key = self.key_for(operation)
        return None if key is None else int(getattr(self, key))


#: The rate-limited operations and the [limits] key of each.
_LIMITED = {"verify": "max_verifies", "export": "max_exports"}


@dataclass(frozen=True)
class Policy:
    roles: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_ROLES))
    search: SearchRules = field(default_factory=SearchRules)
    retention_days: int | None = None
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_toml(cls, path: str | Path) -> Policy:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise InputError(f"{p}: no such policy file") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{p}: not valid TOML ({exc})") from exc
        return cls.from_dict(raw, str(p))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "policy") -> Policy:
        unknown = set(raw) - {"roles", "search", "limits", "retention"}
        if unknown:
            raise InputError(f"{where}: unknown section(s) {sorted(unknown)}; known: roles, search, limits, retention")
        roles: dict[str, tuple[str, ...]] = {}
        for role, ops in (raw.get("roles") or {}).items():
            if not isinstance(ops, list) or any(o not in OPERATIONS for o in ops):
                raise InputError(f"{where}: [roles] {role} must list operations among {', '.join(OPERATIONS)}")
            roles[str(role)] = tuple(ops)
        s = raw.get("search") or {}
        known = set(SearchRules.__dataclass_fields__)
        if set(s) - known:
            raise InputError(f"{where}: unknown key(s) in [search]: {sorted(set(s) - known)}; known: {sorted(known)}")
        search = SearchRules(**s)
        if search.enabled and not (search.purpose and search.legal_basis):
            raise InputError(f"{where}: [search] enabled = true needs a declared purpose and legal_basis")
        if not 0 < search.max_fpir < 1 or search.max_k < 1:
            raise InputError(f"{where}: [search] max_fpir must be in (0, 1) and max_k >= 1")
        lim = raw.get("limits") or {}
        known = set(Limits.__dataclass_fields__)
        if set(lim) - known:
            raise InputError(f"{where}: unknown key(s) in [limits]: {sorted(set(lim) - known)}; known: {sorted(known)}")
        for name, value in lim.items():
            # no "unlimited": a limit that cannot be switched off is the point; set a large number instead
            if type(value) is not int or value < 1:
                raise InputError(f"{where}: [limits] {name} must be a whole number >= 1, got {value!r}")
        retention = raw.get("retention") or {}
        if set(retention) - {"days"}:
            raise InputError(f"{where}: unknown key(s) in [retention]: {sorted(set(retention) - {'days'})}; known: "
                             "['days']")
        days = retention.get("days")
        if days is not None and (not isinstance(days, int) or days < 1):
            raise InputError(f"{where}: [retention] days must be a whole number >= 1")
        return cls(roles=roles or dict(DEFAULT_ROLES), search=search, retention_days=days, limits=Limits(**lim))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"roles": {r: list(o) for r, o in self.roles.items()},
                               "search": {k: v for k, v in self.search.__dict__.items() if v is not None},
                               "limits": dict(self.limits.__dict__)}
        if self.retention_days is not None:
            out["retention"] = {"days": self.retention_days}
        return out

    # --- checks ---
    def allow(self, role: str, operation: str, *, requested_by_subject: bool = False) -> None:
        """Raise PolicyError unless ``role`` may run ``operation``. Export and delete are always allowed for the
        subject's own request (``requested_by_subject``); the caller vouches for that claim and it is logged."""
        if operation in SUBJECT_RIGHTS and requested_by_subject:
            return
        allowed = self.roles.get(role, self.roles.get("*", ()))
        if operation not in allowed:
            why = (" on someone else's behalf (a request by the subject themselves is always allowed: "
                   "requested_by_subject, --subject-request)" if operation in SUBJECT_RIGHTS else "")
            raise PolicyError(f"roles.{role if role in self.roles else '*'}",
                              f"role {role!r} may not {operation}{why} (allowed: {', '.join(allowed) or 'nothing'})")

    def allow_search(self, role: str, purpose: str | None, legal_basis: str | None, k: int, fpir: float) -> None:
        s = self.search
        if not s.enabled:
            raise PolicyError("search.enabled", "1:N search is switched off; a policy must switch it on with a "
                                                "declared purpose and legal basis")
        self.allow(role, "search")
        if not purpose or purpose != s.purpose:
            raise PolicyError("search.purpose", f"declare the policy's purpose ({s.purpose!r}) with --purpose")
        if not legal_basis or legal_basis != s.legal_basis:
            raise PolicyError("search.legal_basis", f"declare the policy's legal basis ({s.legal_basis!r}) "
                                                    "with --legal-basis")
        if k > s.max_k:
            raise PolicyError("search.max_k", f"k = {k} is more than the {s.max_k} candidates allowed")
        if fpir > s.max_fpir:
            raise PolicyError("search.max_fpir", f"a target FPIR of {fpir:g} is looser than the {s.max_fpir:g} "
                                                 "allowed")
