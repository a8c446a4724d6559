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
