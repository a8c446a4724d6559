"""The REST API in this process: who may do what with which token (every endpoint × every kind of caller), the
trainer rule and the audit trail of every write, the portal's token pages, and the schema's validity."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from api import tokens
from api.models import ApiToken
from machines.models import Authorization, Intervention, Machine, MachineType, Use
from members.models import Member, Role, UnknownCard

from .conftest import Lab

pytestmark = pytest.mark.django_db

READS = [
    "/api/v1/machines/",
    "/api/v1/machines/{laser}/",
    "/api/v1/uses/",
    "/api/v1/uses/{use}/",
    "/api/v1/members/",
    "/api/v1/members/{normal}/",
    "/api/v1/cards/",
    "/api/v1/cards/{card}/",
    "/api/v1/authorizations/",
    "/api/v1/authorizations/{authorization}/",
    "/api/v1/maintenance-plans/",
    "/api/v1/maintenance-plans/{plan}/",
    "/api/v1/interventions/",
    "/api/v1/interventions/{intervention}/",
    "/api/v1/unknown-cards/",
    "/api/v1/unknown-cards/{unknown}/",
]
# (method, path, body, the status a read-write token of a portal administrator gets)
WRITES = [
    ("post", "/api/v1/authorizations/", {"member": "{unauthorized}", "machine": "{laser}"}, 201),
    ("post", "/api/v1/authorizations/{authorization}/renew/", None, 200),
    ("delete", "/api/v1/authorizations/{authorization}/", None, 204),
    ("post", "/api/v1/interventions/", {"plan": "{plan}", "note": "lens cleaned"}, 201),
    ("post", "/api/v1/cards/", {"member": "{unauthorized}", "uid": "de:ad:be:ef"}, 201),
]


@pytest.fixture
def world(lab: Lab) -> dict[str, int]:
    """Ids of one row of each kind, for the paths above."""
    now = timezone.now()
    use = Use.objects.create(member=lab.normal, machine=lab.laser, started_at=now, last_seen=now)
    intervention = Intervention.objects.create(plan=lab.plan, machine=lab.laser, member=lab.staff)
    unknown = UnknownCard.objects.create(uid="deadbeef", machine=lab.laser)
    return {
        "laser": lab.laser.pk,
        "use": use.pk,
        "normal": lab.normal.pk,
        "unauthorized": lab.unauthorized.pk,
        "card": lab.normal.cards.get().pk,
        "authorization": Authorization.objects.get(member=lab.normal, machine=lab.laser).pk,
        "plan": lab.plan.pk,
        "intervention": intervention.pk,
        "unknown": unknown.pk,
    }


@pytest.fixture
def admin_member(lab: Lab) -> Member:
    """A portal administrator: the owner of the tokens below."""
    return Member.objects.create_user(
        email="boss@lab.test",
        first_name="Boss",
        role=Role.objects.create(name="BACKEND", backend_admin=True),
        is_staff=True,
    )


@pytest.fixture
def viewer(lab: Lab) -> Member:
    """Staff who are neither portal administrators nor trainers: they only view in the portal."""
    return Member.objects.create_user(
        email="viewer@lab.test", first_name="Vera", role=Role.objects.get(name="USER"), is_staff=True
    )


def fill(template: str, ids: dict[str, int]) -> str:
    return template.format(**ids)


def body_of(body: dict | None, ids: dict[str, int]) -> dict | None:
    if body is None:
        return None
    return {key: int(fill(value, ids)) if "{" in value else value for key, value in body.items()}


def call(method: str, path: str, secret: str | None, body: dict | None = None) -> int:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    client = Client()
    response = getattr(client, method)(path, body, content_type="application/json", headers=headers)
    return response.status_code


Caller = Callable[[], str | None]


@pytest.fixture
def callers(admin_member: Member, viewer: Member) -> dict[str, Caller]:
    def make(owner: Member, scope: str, *, revoked: bool = False) -> Caller:
        def secret() -> str:
            token, value = tokens.create_token("t", owner=owner, scope=scope)
            if revoked:
                tokens.revoke(token)
            return value

        return secret

    return {
        "none": lambda: None,
        "garbage": lambda: "fab_" + "x" * 43,
        "revoked": make(admin_member, ApiToken.Scope.WRITE, revoked=True),
        "read-only": make(admin_member, ApiToken.Scope.READ),
        "read-write": make(admin_member, ApiToken.Scope.WRITE),
        "non-admin-owner": make(viewer, ApiToken.Scope.WRITE),
    }


READ_STATUS = {"none": 401, "garbage": 401, "revoked": 401, "read-only": 200, "read-write": 200, "non-admin-owner": 200}


@pytest.mark.parametrize("kind", list(READ_STATUS))
def test_every_read_endpoint_for_every_kind_of_caller(
    world: dict[str, int], callers: dict[str, Caller], kind: str
) -> None:
    secret = callers[kind]()
    for path in READS:
        assert call("get", fill(path, world), secret) == READ_STATUS[kind], (kind, path)


@pytest.mark.parametrize("write", WRITES, ids=[f"{m} {p}" for m, p, _, _ in WRITES])
@pytest.mark.parametrize("kind", list(READ_STATUS))
def test_every_write_endpoint_for_every_kind_of_caller(
    world: dict[str, int], callers: dict[str, Caller], kind: str, write: tuple
) -> None:
    method, path, body, allowed = write
    expected = {"none": 401, "garbage": 401, "revoked": 401, "read-only": 403, "non-admin-owner": 403}
    secret = callers[kind]()
    entries = LogEntry.objects.count()
    status = call(method, fill(path, world), secret, body_of(body, world))
    assert status == expected.get(kind, allowed), kind
    if status >= 400:
        assert LogEntry.objects.count() == entries  # a refused write changes nothing and records nothing


def test_head_and_options_are_reads(world: dict[str, int], callers: dict[str, Caller]) -> None:
    secret = callers["read-only"]()
    assert call("head", "/api/v1/uses/", secret) == 200
    assert call("options", "/api/v1/authorizations/", secret) == 200
    assert call("head", "/api/v1/uses/", None) == 401


def test_a_method_an_endpoint_lacks_is_405(world: dict[str, int], callers: dict[str, Caller]) -> None:
    secret = callers["read-write"]()
    assert call("post", "/api/v1/uses/", secret, {}) == 405
    assert call("delete", f"/api/v1/members/{world['normal']}/", secret) == 405
    assert call("put", f"/api/v1/authorizations/{world['authorization']}/", secret, {}) == 405
    assert call("post", "/api/v1/uses/", callers["read-only"](), {}) == 405
    assert call("post", "/api/v1/uses/", None, {}) == 401


def test_an_unknown_scheme_or_a_malformed_header_is_401_with_a_bearer_challenge(world: dict[str, int]) -> None:
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "Bearer fab_short", "Bearer \u00e8"):
        response = Client().get("/api/v1/machines/", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response["WWW-Authenticate"].startswith("Bearer"), header


def test_a_token_stops_working_when_its_owner_loses_portal_access(admin_member: Member) -> None:
    _token, secret = tokens.create_token("hass", owner=admin_member)
    assert call("get", "/api/v1/machines/", secret) == 200
    admin_member.is_staff = False
    admin_member.save()
    assert call("get", "/api/v1/machines/", secret) == 401


def test_only_the_secret_hash_is_kept_and_last_use_is_stamped(admin_member: Member) -> None:
    token, secret = tokens.create_token("hass", owner=admin_member)
    assert re.fullmatch(r"fab_[A-Za-z0-9_-]{43}", secret)
    assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert token.last_used_at is None
    call("get", "/api/v1/machines/", secret)
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_a_staff_session_reads_and_writes_only_with_csrf(world: dict[str, int], admin_member: Member) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_member)
    assert client.get("/api/v1/machines/").status_code == 200
    body = {"member": world["unauthorized"], "machine": world["laser"]}
    assert client.post("/api/v1/authorizations/", body, content_type="application/json").status_code == 403
    assert not Authorization.objects.filter(member_id=world["unauthorized"]).exists()


# --- the trainer rule and the audit trail ---------------------------------------------------------------------


@pytest.fixture
def trainer(lab: Lab) -> Member:
    """Staff who train on the laser only (machine A); the printer's type is machine B's."""
    member = Member.objects.create_user(
        email="trainer@lab.test", first_name="Tina", role=Role.objects.get(name="USER"), is_staff=True
    )
    lab.laser.trainers.add(member)
    return member


def test_a_trainer_of_machine_a_grants_a_but_not_b(lab: Lab, trainer: Member) -> None:
    other_type = MachineType.objects.create(name="T3")
    cutter = Machine.objects.create(id=3, name="CUTTER", type=other_type)
    _token, secret = tokens.create_token("booking", owner=trainer, scope=ApiToken.Scope.WRITE)
    refused = call("post", "/api/v1/authorizations/", secret, {"member": lab.unauthorized.pk, "machine": cutter.pk})
    assert refused == 403
    assert not Authorization.objects.filter(member=lab.unauthorized, machine=cutter).exists()
    granted = call("post", "/api/v1/authorizations/", secret, {"member": lab.unauthorized.pk, "machine": lab.laser.pk})
    assert granted == 201
    authorization = Authorization.objects.get(member=lab.unauthorized, machine=lab.laser)
    assert authorization.trained_by == trainer
    # Nor may they revoke or renew a training on a machine they do not train.
    theirs = Authorization.objects.create(member=lab.normal, machine=cutter)
    assert call("delete", f"/api/v1/authorizations/{theirs.pk}/", secret) == 403
    assert call("post", f"/api/v1/authorizations/{theirs.pk}/renew/", secret) == 403
    assert Authorization.objects.filter(pk=theirs.pk).exists()


def test_an_expired_training_shows_as_expired_and_renewing_it_revives_it(lab: Lab, admin_member: Member) -> None:
    lab.laser.type.training_expiry, lab.laser.type.training_days = "after_days", 30
    lab.laser.type.save()
    authorization = Authorization.objects.get(member=lab.normal, machine=lab.laser)
    authorization.expiry, authorization.expiry_days = "after_days", 30
    authorization.granted_at = timezone.now() - timedelta(days=40)
    authorization.expires_at = authorization.granted_at + timedelta(days=30)
    authorization.save()
    _token, secret = tokens.create_token("crm", owner=admin_member, scope=ApiToken.Scope.WRITE)
    client = Client(headers={"Authorization": f"Bearer {secret}"})
    shown = client.get(f"/api/v1/authorizations/{authorization.pk}/").json()
    assert shown["expired"] is True and shown["expiry"] == "after_days"
    listed = client.get(f"/api/v1/authorizations/?expired=true&member={lab.normal.pk}").json()["results"]
    assert [row["id"] for row in listed] == [authorization.pk]
    assert client.get(f"/api/v1/authorizations/?expired=false&member={lab.normal.pk}").json()["results"] == []
    renewed = client.post(f"/api/v1/authorizations/{authorization.pk}/renew/").json()
    assert renewed["expired"] is False and renewed["trained_by"] == admin_member.pk


def test_a_grant_takes_the_types_rule_or_the_one_given_as_the_portal_checks_it(lab: Lab, admin_member: Member) -> None:
    _token, secret = tokens.create_token("crm", owner=admin_member, scope=ApiToken.Scope.WRITE)
    client = Client(headers={"Authorization": f"Bearer {secret}"})

    def grant(**rule: object) -> dict:
        body = {"member": lab.unauthorized.pk, "machine": lab.laser.pk, **rule}
        response = client.post("/api/v1/authorizations/", body, content_type="application/json")
        return {"status": response.status_code, **response.json()}

    assert grant()["expiry"] == "never"  # T1's rule
    shown = grant(rule="after_days", days=30)
    assert shown["status"] == 201 and shown["expiry"] == "after_days" and shown["expiry_days"] == 30
    assert shown["expired"] is False
    assert grant(rule="after_days")["status"] == 400  # how many days?
    past = (timezone.localdate() - timedelta(days=1)).isoformat()
    refused = grant(rule="on_date", on_date=past)
    assert refused["status"] == 400 and "on_date" in refused
    day = (timezone.localdate() + timedelta(days=10)).isoformat()
    assert grant(rule="on_date", on_date=day)["expiry"] == "on_date"


def test_every_write_is_in_the_audit_trail_with_the_token_named(lab: Lab, admin_member: Member) -> None:
    token, secret = tokens.create_token("membership system", owner=admin_member, scope=ApiToken.Scope.WRITE)
    client = Client(headers={"Authorization": f"Bearer {secret}"})
    body = {"member": lab.unauthorized.pk, "machine": lab.laser.pk}
    created = client.post("/api/v1/authorizations/", body, content_type="application/json").json()
    client.post(f"/api/v1/authorizations/{created['id']}/renew/")
    client.delete(f"/api/v1/authorizations/{created['id']}/")
    done = client.post("/api/v1/interventions/", {"plan": lab.plan.pk}, content_type="application/json").json()
    card = {"member": lab.unauthorized.pk, "uid": "DEADBEEF"}
    assert client.post("/api/v1/cards/", card, content_type="application/json").json()["uid"] == "deadbeef"
    named = f"“membership system” (#{token.pk})"
    messages = [
        entry.additional_data["message"]
        for entry in LogEntry.objects.filter(additional_data__params__token=named).order_by("pk")
    ]
    assert messages == [
        "Training granted by %(trainer)s through the API (%(token)s).",
        "Training renewed by %(trainer)s through the API (%(token)s).",
        "Authorization revoked through the API (%(token)s).",
        "Intervention recorded through the API (%(token)s).",
        "Card registered through the API (%(token)s).",
    ]
    assert set(LogEntry.objects.filter(additional_data__params__token=named).values_list("actor", flat=True)) == {
        admin_member.pk
    }
    # The models' own entries (created, deleted) name the token's owner too.
    kind = ContentType.objects.get_for_model(Authorization)
    model_entries = LogEntry.objects.filter(
        content_type=kind, object_pk=str(created["id"]), additional_data__isnull=True
    )
    assert model_entries.exists() and set(model_entries.values_list("actor", flat=True)) == {admin_member.pk}
    assert Intervention.objects.get(pk=done["id"]).member == admin_member


def test_the_uses_list_filters_as_the_portal_does(lab: Lab, admin_member: Member) -> None:
    now = timezone.now()
    old = Use.objects.create(
        member=lab.normal, machine=lab.laser, started_at=now - timedelta(days=3), last_seen=now, ended_at=now
    )
    flagged = Use.objects.create(
        member=lab.staff,
        machine=lab.printer,
        started_at=now - timedelta(days=2),
        last_seen=now,
        ended_at=now,
        flag=Use.Flag.BEYOND_LOGOFF,
    )
    running = Use.objects.create(member=lab.staff, machine=lab.laser, started_at=now, last_seen=now)
    _token, secret = tokens.create_token("bi", owner=admin_member)
    client = Client(headers={"Authorization": f"Bearer {secret}"})

    def ids(query: str) -> list[int]:
        response = client.get(f"/api/v1/uses/?{query}")
        assert response.status_code == 200, response.content
        return [row["id"] for row in response.json()["results"]]

    assert ids("") == [running.pk, flagged.pk, old.pk]
    assert ids(f"machine={lab.laser.pk}") == [running.pk, old.pk]
    assert ids(f"member={lab.staff.pk}") == [running.pk, flagged.pk]
    assert ids("open=true") == [running.pk] and ids("open=false") == [flagged.pk, old.pk]
    assert ids("flagged=true") == [flagged.pk]
    since = (now - timedelta(days=2, hours=1)).isoformat()
    assert ids(f"started_after={since.replace('+', '%2B')}") == [running.pk, flagged.pk]
    assert ids(f"started_before={since.replace('+', '%2B')}") == [old.pk]
    for bad in ("machine=x", "open=maybe", "started_after=yesterday", "member=99999999999999999999"):
        assert client.get(f"/api/v1/uses/?{bad}").status_code == 400, bad
    # Keyset pages: one row each, following "next" walks the whole list once.
    seen, url = [], "/api/v1/uses/?page_size=1"
    while url:
        page = client.get(url).json()
        assert "count" not in page
        seen += [row["id"] for row in page["results"]]
        url = page["next"]
    assert seen == [running.pk, flagged.pk, old.pk]


def test_machines_show_the_dashboard_state(lab: Lab, admin_member: Member) -> None:
    now = timezone.now()
    Use.objects.create(member=lab.normal, machine=lab.laser, started_at=now, last_seen=now)
    Machine.objects.filter(pk=lab.laser.pk).update(last_seen=now, hours=12.5)
    _token, secret = tokens.create_token("hass", owner=admin_member)
    machines = Client(headers={"Authorization": f"Bearer {secret}"}).get("/api/v1/machines/").json()
    laser = next(row for row in machines if row["id"] == lab.laser.pk)
    assert laser["state"] == "in_use" and laser["user"] == "Nina" and laser["online"] is True
    assert laser["hours"] == 12.5 and laser["maintenance_due"] is True and laser["maintenance"] == "pulire lente"
    assert "email" not in laser and "ip" not in laser
    printer = next(row for row in machines if row["id"] == lab.printer.pk)
    assert printer["state"] == "offline" and printer["online"] is False and printer["user"] is None


# --- the portal's token pages ---------------------------------------------------------------------------------


@pytest.fixture
def boss_client(admin_member: Member) -> Client:
    client = Client()
    client.force_login(admin_member)
    return client


def test_creating_a_token_shows_its_secret_once(boss_client: Client, admin_member: Member) -> None:
    add = reverse("admin:api_apitoken_add")
    response = boss_client.post(add, {"name": "Home Assistant", "scope": "read"})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    html = response.content.decode()
    found = re.search(r'<code class="fab-secret" id="api-secret">(fab_[A-Za-z0-9_-]{43})</code>', html)
    assert found is not None and "data-fab-copy" in html
    secret = found.group(1)
    token = ApiToken.objects.get(name="Home Assistant")
    assert token.owner == admin_member and token.scope == "read"
    assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    change = boss_client.get(reverse("admin:api_apitoken_change", args=[token.pk])).content.decode()
    listing = boss_client.get(reverse("admin:api_apitoken_changelist")).content.decode()
    assert secret not in change and secret not in listing
    assert call("get", "/api/v1/machines/", secret) == 200
    assert LogEntry.objects.get_for_object(token).filter(action=LogEntry.Action.CREATE).exists()


def test_revoking_a_token_is_confirmed_recorded_and_final(boss_client: Client, admin_member: Member) -> None:
    token, secret = tokens.create_token("crm", owner=admin_member, scope=ApiToken.Scope.WRITE)
    url = reverse("admin:api_apitoken_revoke", args=[token.pk])
    assert boss_client.get(url).status_code == 405
    asked = boss_client.post(url)
    assert asked.status_code == 200 and "cannot be undone" in asked.content.decode()
    assert call("get", "/api/v1/machines/", secret) == 200  # only asked
    assert boss_client.post(url, {"post": "yes"}).status_code == 302
    assert call("get", "/api/v1/machines/", secret) == 401
    entry = LogEntry.objects.get_for_object(token).get(changes__has_key="revoked_at")
    assert entry.actor == admin_member and entry.additional_data == {"message": "API token revoked.", "params": {}}


def test_only_portal_administrators_manage_tokens(lab: Lab, trainer: Member, admin_member: Member) -> None:
    token, _secret = tokens.create_token("crm", owner=admin_member)
    client = Client()
    client.force_login(trainer)
    for url in (
        reverse("admin:api_apitoken_changelist"),
        reverse("admin:api_apitoken_add"),
        reverse("admin:api_apitoken_change", args=[token.pk]),
    ):
        assert client.get(url).status_code == 403, url
    assert client.post(reverse("admin:api_apitoken_revoke", args=[token.pk]), {"post": "yes"}).status_code == 403
    token.refresh_from_db()
    assert token.revoked_at is None


# --- the schema -----------------------------------------------------------------------------------------------


def test_the_schema_validates_without_a_warning(tmp_path) -> None:
    call_command(
        "spectacular",
        "--validate",
        "--fail-on-warn",
        "--urlconf",
        "api.root_urls",
        "--file",
        str(tmp_path / "schema.yaml"),
    )
    text = (tmp_path / "schema.yaml").read_text()
    assert "/api/v1/uses/" in text and "bearer" in text


def test_the_schema_and_its_docs_page_are_for_staff_and_keep_the_csp(admin_member: Member) -> None:
    assert Client().get("/api/v1/schema/").status_code == 401
    _token, secret = tokens.create_token("docs", owner=admin_member)
    assert Client().get("/api/v1/schema/", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    client = Client()
    client.force_login(admin_member)
    page = client.get("/api/v1/docs/")
    html = page.content.decode()
    assert page.status_code == 200 and "script-src 'self'" in page["Content-Security-Policy"]
    assert "<script>" not in html and "<style>" not in html and "cdn" not in html.lower()
    script = re.search(r'<script src="([^"]*script=[^"]*)"', html)
    assert script is not None
    assert client.get(script.group(1).replace("&amp;", "&")).status_code == 200


def test_the_bridge_loads_none_of_the_api() -> None:
    """The board bridge (FABOMATIC_PROCESS=bridge) stays small: no REST framework, no schema generator."""
    import os
    import subprocess
    import sys

    from .services import ROOT

    code = (
        "import sys, django; django.setup(); from telemetry.mqtt import Bridge; import telemetry.ingest; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'rest_framework', 'drf_spectacular', 'api'}))"
    )
    env = {**os.environ, "FABOMATIC_PROCESS": "bridge", "SECRET_KEY": "x", "FABOMATIC_ENV_FILE": "/nonexistent"}
    env["DJANGO_SETTINGS_MODULE"] = "fabomatic.settings"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_portal_loads_the_api_only_for_api_requests(tmp_path: Path) -> None:
    """A portal process carries Django REST framework (about 20 MB) only once a request under /api/ came
    (api/routing.py): the admin's pages, which reverse every portal URL, do not load it."""
    import os
    import subprocess
    import sys

    from .services import ROOT

    code = (
        "import sys, django; django.setup()\n"
        "from django.test import Client; c = Client(secure=True)\n"
        "heavy = {'rest_framework.compat', 'rest_framework.views', 'drf_spectacular.openapi'}\n"
        "api = lambda: sorted(set(sys.modules) & heavy)\n"
        "c.get('/admin/login/'); print(api())\n"
        "c.get('/api/v1/machines/'); print(api())\n"
    )
    env = {**os.environ, "SECRET_KEY": "x", "FABOMATIC_ENV_FILE": "/nonexistent", "FABOMATIC_DATA_DIR": str(tmp_path)}
    env.pop("FABOMATIC_PROCESS", None)
    env["DJANGO_SETTINGS_MODULE"] = "fabomatic.settings"
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    env["ALLOWED_HOSTS"] = "testserver"
    # In its own process: migrate runs the system checks, and drf-spectacular's generate the schema.
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == [
        "[]",
        "['drf_spectacular.openapi', 'rest_framework.compat', 'rest_framework.views']",
    ], out.stdout


def test_a_card_is_registered_as_the_portal_registers_it(lab: Lab, admin_member: Member) -> None:
    UnknownCard.objects.create(uid="deadbeef", machine=lab.laser)
    _token, secret = tokens.create_token("membership", owner=admin_member, scope=ApiToken.Scope.WRITE)
    client = Client(headers={"Authorization": f"Bearer {secret}"})

    def register(uid: str) -> tuple[int, dict]:
        body = {"member": lab.unauthorized.pk, "uid": uid}
        response = client.post("/api/v1/cards/", body, content_type="application/json")
        return response.status_code, response.json()

    status, card = register("DE:AD:BE:EF")
    assert status == 201 and card["uid"] == "deadbeef" and card["member"] == lab.unauthorized.pk
    assert not UnknownCard.objects.filter(uid="deadbeef").exists()  # no longer unknown
    status, errors = register("deadbeef")  # registered already
    assert status == 400 and "uid" in errors
    status, errors = register("not-a-uid")
    assert status == 400 and "uid" in errors
