"""Single sign-on with OpenID Connect: staff log in with the lab's identity provider (Authentik, Keycloak, …).

Built on mozilla-django-oidc (the authorization-code flow with PKCE, state and nonce), with the lab's rules on top:

* A login matches a member by e-mail, case-insensitively, and only an address the provider says it verified
  (``email_verified`` true). The member must exist, be active, not disabled, not erased, and have portal access
  (``is_staff``); anything else is refused with a clear message on the login page.
* No account is created unless ``OIDC_CREATE_USERS``; then with least privilege: the default role that grants nothing
  (``members.models.default_role``) and no portal access, so the login that created it is still refused until staff
  give access.
* The ID token's signature (JWKS), audience (our client id), issuer (the discovered one), expiry and nonce are checked.
* Every SSO login and every refusal is in the audit trail (``operations/audit.py``). The SSO callback does not go
  through ``django.contrib.auth.authenticate``: its refusals are not password failures, so django-axes neither
  counts them nor locks out the address they came from (the provider guards its own password form), and axes keeps
  guarding the password form exactly as before.
* ``OIDC_PASSWORD_LOGIN=false`` hides the password form and refuses password logins, except for superusers: the
  break-glass when the provider is down (their form is at ``/admin/login/?password=1``, their password set with
  ``manage.py changepassword``).
* Logging out ends the local session, then, when the provider publishes an ``end_session_endpoint``, its session too.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlencode

import jwt
import requests
from django.conf import settings
from django.contrib import admin, auth, messages
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import resolve_url
from django.urls import reverse
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy, gettext_noop
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import OIDCAuthenticationRequestView

from members.models import Member, default_role
from members.sso import BACKEND, enabled
from operations import audit

log = logging.getLogger(__name__)

# Our settings and the discovery document's keys for them; an explicit setting wins over discovery.
DISCOVERED = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
    "OIDC_OP_LOGOUT_ENDPOINT": "end_session_endpoint",
    "OIDC_OP_ISSUER": "issuer",
}
DISCOVERY_SECONDS = 3600
_discovery: dict[str, tuple[float, dict[str, Any]]] = {}
_discovery_lock = threading.Lock()


class Refused(Exception):
    """A single sign-on that must not log anyone in: why (shown on the login page and stored in the audit trail)."""

    def __init__(self, reason: Promise, *, member: Member | None = None, email: str = "") -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.member = member
        self.email = email

    def record(self, request: HttpRequest) -> None:
        if self.member is not None or not self.email:  # on the member, or about no one (the provider is down)
            message = gettext_noop("Single sign-on refused: %(reason)s")
            target = self.member if self.member is not None else Member
            audit.record(target, message=message, params={"reason": self.reason}, access=True, request=request)
        else:
            message = gettext_noop("Single sign-on refused for “%(email)s”: %(reason)s")
            params = {"email": self.email[:254], "reason": self.reason}
            audit.record(Member, message=message, params=params, access=True, request=request)


def discovery() -> dict[str, Any]:
    """The provider's discovery document (``OIDC_OP_DISCOVERY_URL``), fetched at most once an hour; {} when unset.

    Raises ``Refused`` when the provider cannot be reached or answers nonsense.
    """
    url = getattr(settings, "OIDC_OP_DISCOVERY_URL", "")
    if not url:
        return {}
    with _discovery_lock:
        cached = _discovery.get(url)
        if cached is not None and time.monotonic() - cached[0] < DISCOVERY_SECONDS:
            return cached[1]
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT, verify=settings.OIDC_VERIFY_SSL)
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        log.warning("OpenID discovery at %s failed: %s", url, exc)
        raise Refused(gettext_lazy("The identity provider cannot be reached. Please try again later.")) from exc
    if not isinstance(document, dict) or not all(isinstance(document.get(k), str) for k in ("issuer", "jwks_uri")):
        raise Refused(gettext_lazy("The identity provider cannot be reached. Please try again later."))
    with _discovery_lock:
        _discovery[url] = (time.monotonic(), document)
    return document


def op_setting(attr: str, *default: Any) -> Any:
    """mozilla-django-oidc's ``get_settings`` with the provider's endpoints from discovery when not set."""
    if attr in DISCOVERED:
        explicit = getattr(settings, attr, "")
        if explicit:
            return explicit
        value = discovery().get(DISCOVERED[attr], "") if enabled() else ""
        return value if isinstance(value, str) else ""
    return import_from_settings(attr, *default)


def _email_verified(claims: dict[str, Any]) -> bool:
    verified = claims.get("email_verified")
    return verified is True or (isinstance(verified, str) and verified.lower() == "true")


class MemberOIDCBackend(OIDCAuthenticationBackend):
    """The provider's answer to the callback, checked (mozilla-django-oidc and the checks below). Not an
    authentication backend of the settings: the session it opens names ``members.sso.SSOBackend``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Nothing is resolved here: Django builds a backend for every request of a logged-in member, and the
        # provider's endpoints come from discovery (a request to the provider) only when a login needs them.
        self.UserModel = Member

    get_settings = staticmethod(op_setting)

    def __getattr__(self, name: str) -> Any:
        # The base class reads its settings as attributes (self.OIDC_OP_TOKEN_ENDPOINT, …): resolved on use.
        if name.startswith("OIDC_"):
            defaults = {"OIDC_RP_SIGN_ALGO": "RS256", "OIDC_RP_IDP_SIGN_KEY": None}
            return op_setting(name, defaults[name]) if name in defaults else op_setting(name)
        raise AttributeError(name)

    def authenticate(self, request: HttpRequest | None, **credentials: Any) -> None:
        return None  # only sso_login (the callback) logs in through single sign-on

    def sso_login(self, request: HttpRequest, *, nonce: str | None, code_verifier: str | None) -> Member:
        """The member the provider's answer (``code`` in ``request``) names, or ``Refused``."""
        try:
            member = super().authenticate(request, nonce=nonce, code_verifier=code_verifier)
        except (requests.RequestException, SuspiciousOperation, jwt.InvalidTokenError, ValueError, KeyError) as exc:
            log.warning("Single sign-on failed: %s", exc)
            raise Refused(gettext_lazy("The identity provider's answer could not be verified.")) from exc
        if member is None:  # the base class's own refusals (no code, a multiple match): never expected here
            raise Refused(gettext_lazy("The identity provider's answer could not be verified."))
        return member

    def _verify_jws(self, payload: str, key: Any) -> dict[str, Any]:
        """The ID token's signature with the expected algorithm, and (beyond the base class) its audience (our
        client id), its issuer (when known) and its expiry."""
        header = jwt.get_unverified_header(payload)
        if header.get("alg") != self.OIDC_RP_SIGN_ALGO:
            raise SuspiciousOperation("The provider's algorithm does not match OIDC_RP_SIGN_ALGO.")
        issuer = op_setting("OIDC_OP_ISSUER") or None
        return jwt.decode(
            payload,
            key,
            algorithms=[self.OIDC_RP_SIGN_ALGO],
            audience=settings.OIDC_RP_CLIENT_ID,
            issuer=issuer,
            options={"require": ["exp", "iat", "aud"]},
            leeway=60,
        )

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> Member:
        claims = self.get_userinfo(access_token, id_token, payload)
        if not isinstance(claims, dict) or claims.get("sub") != payload.get("sub"):
            raise SuspiciousOperation("The userinfo answer is not about the ID token's subject.")
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise Refused(gettext_lazy("The identity provider sent no e-mail address."))
        email = email.strip()
        if not _email_verified(claims):
            raise Refused(
                gettext_lazy("The identity provider has not verified your e-mail address."),
                member=Member.objects.filter(email__iexact=email).first(),
                email=email,
            )
        matches = list(Member.objects.filter(email__iexact=email)[:2])
        if len(matches) > 1:
            raise Refused(gettext_lazy("More than one member has this e-mail address."), email=email)
        if not matches:
            return self._create(email, claims)
        member = matches[0]
        if member.deleted_at is not None or not member.is_active:
            raise Refused(gettext_lazy("This account is closed."), member=member)
        if member.disabled:
            raise Refused(gettext_lazy("This member is disabled."), member=member)
        if not member.is_staff:
            raise Refused(gettext_lazy("This member has no portal access. Ask the lab's staff."), member=member)
        return member

    def _create(self, email: str, claims: dict[str, Any]) -> Member:
        """A member for an unknown verified address, when ``OIDC_CREATE_USERS`` allows: least privilege, no portal
        access; the login itself is refused until staff give access."""
        if not settings.OIDC_CREATE_USERS:
            raise Refused(gettext_lazy("No member of the lab has this e-mail address."), email=email)
        role = default_role()
        if role is None:  # the default role was edited to grant something: nobody is created with it
            log.warning("Single sign-on: no account created for a new address, the default role grants access")
            raise Refused(gettext_lazy("No member of the lab has this e-mail address."), email=email)
        first = str(claims.get("given_name") or claims.get("name") or email.split("@")[0])[:150]
        last = str(claims.get("family_name") or "")[:150]
        member = Member.objects.create_user(email=email, first_name=first, last_name=last, role=role, is_staff=False)
        audit.record(member, message=gettext_noop("Account created by single sign-on"), access=True)
        raise Refused(
            gettext_lazy("Your account was created without portal access: the lab's staff can give it to you."),
            member=member,
        )


# --- Views -------------------------------------------------------------------------------------------------------


def _to_login(request: HttpRequest, refusal: Refused) -> HttpResponse:
    refusal.record(request)
    messages.error(request, str(refusal.reason))
    return HttpResponseRedirect(reverse("admin:login"))


class StartView(OIDCAuthenticationRequestView):
    """``/oidc/authenticate/``: to the provider's login, with state, nonce and PKCE kept in the session."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super(OIDCAuthenticationRequestView, self).__init__(*args, **kwargs)
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID

    get_settings = staticmethod(op_setting)

    def get(self, request: HttpRequest) -> HttpResponse:
        if not enabled():
            raise Http404
        try:
            self.OIDC_OP_AUTH_ENDPOINT = op_setting("OIDC_OP_AUTHORIZATION_ENDPOINT")
        except Refused as refusal:
            return _to_login(request, refusal)
        return super().get(request)


def callback_view(request: HttpRequest) -> HttpResponse:
    """``/oidc/callback/``: the provider's answer; the member logged in, or the login page saying why not."""
    if not enabled():
        raise Http404
    try:
        member = _answer(request)
    except Refused as refusal:
        return _to_login(request, refusal)
    auth.login(request, member, backend=BACKEND)  # user_logged_in: audit.on_login records it as an SSO login
    next_url = request.session.pop("oidc_login_next", None)
    return HttpResponseRedirect(next_url or resolve_url("admin:index"))


def _answer(request: HttpRequest) -> Member:
    state = request.GET.get("state", "")
    states = request.session.get("oidc_states") or {}
    pending = states.pop(state, None) if state else None  # used once, whatever happens next (no replay)
    request.session["oidc_states"] = states
    if request.GET.get("error"):
        raise Refused(gettext_lazy("The identity provider did not log you in."))
    if pending is None or not request.GET.get("code"):
        raise Refused(gettext_lazy("This login link has expired. Please try again."))
    backend = MemberOIDCBackend()
    return backend.sso_login(request, nonce=pending.get("nonce"), code_verifier=pending.get("code_verifier"))


def logout_view(request: HttpRequest) -> HttpResponse:
    """The portal's logout (``/admin/logout/``): the local session ends; a member logged in by single sign-on is then
    sent to the provider's ``end_session_endpoint`` (when it has one) to end that session too."""
    from django.contrib.auth import BACKEND_SESSION_KEY

    id_token = request.session.get("oidc_id_token")
    by_sso = enabled() and request.method == "POST" and request.session.get(BACKEND_SESSION_KEY) == BACKEND
    response = admin.site.logout(request)
    if not by_sso:
        return response
    try:
        end_session = op_setting("OIDC_OP_LOGOUT_ENDPOINT")
    except Refused:
        return response
    if not end_session:
        return response
    params = {"client_id": settings.OIDC_RP_CLIENT_ID, "post_logout_redirect_uri": settings.OIDC_LOGOUT_REDIRECT_URL}
    if id_token:
        params["id_token_hint"] = id_token
    return HttpResponseRedirect(f"{end_session}?{urlencode(params)}")
