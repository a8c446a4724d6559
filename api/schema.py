"""How the OpenAPI schema describes the API's two ways in (loaded by ``ApiConfig.ready``)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.authentication import SessionScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "api.auth.BearerTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token made in the portal (API tokens): Authorization: Bearer fab_…",
        }


class StaffSessionScheme(SessionScheme):
    target_class = "api.auth.StaffSessionAuthentication"


ERROR = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
    "description": "Why the request was refused.",
}
INVALID = {
    "type": "object",
    "additionalProperties": True,
    "description": "Each invalid field (or query parameter) with what is wrong with it.",
}
REFUSALS = {
    "401": "No token, or an unknown or revoked one (or no portal session).",
    "403": "The token is read-only, or its owner may not do this in the portal.",
    "404": "No such object (or an invalid cursor).",
}


def error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Every operation documents its refusals: 401, 403 and 404 (``{"detail": …}``), and 400 (per field) for
    writes and for lists with filters (drf-spectacular's post-processing hook)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"], schemas["ValidationError"] = ERROR, INVALID
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for code, text in REFUSALS.items():
                responses.setdefault(code, error_body(text, "Error"))
            filtered = any(p.get("in") == "query" and p["name"] != "cursor" for p in operation.get("parameters", []))
            if method in ("post", "put", "patch") or filtered:
                responses.setdefault("400", error_body("Invalid input.", "ValidationError"))
    return result


def error_body(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }
