"""The service's OpenAPI document, as committed in ``schemas/openapi.json``.

FastAPI generates the document from the routes and models; this module makes the error responses say what the
service really sends: every 4xx and 5xx is ``application/problem+json`` with the :class:`ProblemDetails` schema
(FastAPI would describe them as ``application/json``, and its 422 with its own validation-error schema), 429
carries ``Retry-After`` and 401 ``WWW-Authenticate``.

Regenerate the committed document after changing the API::

    python -m faceaudit.service.openapi > schemas/openapi.json

(``tests/test_service_openapi.py`` fails while the two differ.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from faceaudit.service.problems import MEDIA_TYPE, ProblemDetails

_REF = "#/components/schemas/ProblemDetails"
_HEADERS = {
    "429": {"Retry-After": {"description": "seconds to wait before the next request", "schema": {"type": "integer"}}},
    "401": {"WWW-Authenticate": {"description": "the authentication scheme (Bearer)", "schema": {"type": "string"}}},
}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app`` with its error responses as problem details (module docstring)."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["ProblemDetails"] = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    for path in doc.get("paths", {}).values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = {MEDIA_TYPE: {"schema": {"$ref": _REF}}}
                    if status == "422":
                        response["description"] = "An image cannot be used, or the request does not match the schema"
                    if status in _HEADERS:
                        response["headers"] = _HEADERS[status]
    text = json.dumps(doc)
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{unused}" not in text:
            schemas.pop(unused, None)
    return doc


def render(doc: dict[str, Any]) -> str:
    """The document as committed: sorted keys, indented, one trailing newline (stable, diff-friendly)."""
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def current() -> str:
    """The committed form of the document of the app as this code builds it (no gallery is opened)."""
    from faceaudit.service.app import create_app
    from faceaudit.service.settings import ServiceSettings

    return render(create_app(ServiceSettings(gallery=Path("gallery"))).openapi())


if __name__ == "__main__":
    sys.stdout.write(current())
