"""The API's URLs are loaded by the requests that use them, not by every portal process.

Django REST framework and drf-spectacular weigh about 20 MB of a portal process (the Raspberry Pi's budget, README
→ Memory): a lab that never calls the API should not carry them. So the portal's root URLconf (fabomatic/urls.py)
does not include the API; :func:`api_urlconf`, a middleware, gives requests under ``/api/`` the URLconf
``api.root_urls`` (the API, then every portal URL), and Django resolves and reverses with it for that request.
Code outside an API request that needs an API URL reverses with ``urlconf=API_URLCONF``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

API_URLCONF = "api.root_urls"
PREFIX = "/api/"


@sync_and_async_middleware
def api_urlconf(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    """Requests under ``/api/`` resolve with the API's URLconf."""
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponseBase:
            if request.path_info.startswith(PREFIX):
                request.urlconf = API_URLCONF  # type: ignore[attr-defined]  # read by Django, untyped
            return await get_response(request)

        return async_middleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        if request.path_info.startswith(PREFIX):
            request.urlconf = API_URLCONF  # type: ignore[attr-defined]  # read by Django, untyped
        return get_response(request)

    return middleware
