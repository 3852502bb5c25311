"""faceaudit over HTTP (``faceaudit serve``): recognition, the gallery and bias audits, with API keys, the
gallery's policy enforced at the boundary, limits, and errors as RFC 9457 problem details.

Which layer owns what: the Python API (:mod:`faceaudit.api`, :class:`faceaudit.Gallery`, the audit) does the
work and holds every rule (policy, consent, erasure, the log); the service authenticates the caller, applies
the limits, and translates HTTP to those calls and their results back (:mod:`faceaudit.service.routes`); the
command line does the same for a terminal. Nothing outside this package imports it except the command line.

Modules: :mod:`~faceaudit.service.settings`, :mod:`~faceaudit.service.app` (the factory),
:mod:`~faceaudit.service.state` (per process), :mod:`~faceaudit.service.auth`, :mod:`~faceaudit.service.keys`,
:mod:`~faceaudit.service.limits`, :mod:`~faceaudit.service.problems`, :mod:`~faceaudit.service.metrics`,
:mod:`~faceaudit.service.models`, :mod:`~faceaudit.service.openapi`.
"""
