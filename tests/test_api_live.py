"""The REST API over HTTP: daphne serving the portal, schemathesis generating requests from the served OpenAPI
schema (a read-write token, a seeded lab), and the uses list's query plan on a million uses."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from api import tokens
from api.models import ApiToken
from machines.models import Intervention, Use
from members.models import Member, Role, UnknownCard

from .browser import daphne, server_env
from .conftest import Lab


def seed(lab: Lab) -> str:
    """A lab with some history, and the secret of a read-write token of a portal administrator."""
    now = timezone.now()
    for day in range(30):
        start = now - timedelta(days=day, hours=2)
        Use.objects.create(
            member=lab.normal, machine=lab.laser, started_at=start, last_seen=start, ended_at=start, duration=600
        )
    Use.objects.create(member=lab.staff, machine=lab.printer, started_at=now, last_seen=now)
    Intervention.objects.create(plan=lab.plan, machine=lab.laser, member=lab.staff, note="lens")
    UnknownCard.objects.create(uid="deadbeef", machine=lab.laser)
    owner = Member.objects.create_user(
        email="boss@lab.test",
        first_name="Boss",
        role=Role.objects.create(name="BACKEND", backend_admin=True),
        is_staff=True,
    )
    _token, secret = tokens.create_token("schemathesis", owner=owner, scope=ApiToken.Scope.WRITE)
    return secret


@pytest.mark.django_db(transaction=True)
def test_schemathesis_against_the_running_api(lab: Lab, tmp_path: Path) -> None:
    """Every operation of the served schema, with generated valid and invalid inputs: no 5xx, every response as
    the schema says (status, content type, body), auth enforced; then stateful scenarios along the links
    schemathesis infers between operations. Bounded: 8 examples per operation."""
    secret = seed(lab)
    env = {**server_env(str(connection.settings_dict["NAME"]), redis_url=""), "FABOMATIC_DATA_DIR": str(tmp_path)}
    with daphne(env) as server:
        schema_url = f"{server.url}/api/v1/schema/?format=json"
        request = urllib.request.Request(schema_url, headers={"Authorization": f"Bearer {secret}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert "/api/v1/uses/" in json.load(response)["paths"]
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"),
                "--config-file",
                str(Path(__file__).with_name("schemathesis.toml")),
                "run",
                schema_url,
                "--header",
                f"Authorization: Bearer {secret}",
                "--checks",
                "all",
                "--max-examples",
                "8",
                "--seed",
                "14",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--request-timeout",
                "20",
                "--no-color",
                "--generation-database",
                "none",
            ],
            cwd=tmp_path,  # its reports and caches stay out of the work tree
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    for phase in ("Coverage", "Fuzzing", "Stateful"):  # each ran and passed (a phase with nothing to do is skipped)
        assert f"✅  {phase}" in run.stdout, run.stdout[-3000:]


MILLION = 1_000_000
FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %s)
INSERT INTO machines_use
    (member_id, machine_id, started_at, ended_at, last_seen, duration, replay, flag)
SELECT CASE i %% 2 WHEN 0 THEN %s ELSE %s END, CASE i %% 3 WHEN 0 THEN %s ELSE %s END,
       strftime('%%Y-%%m-%%d %%H:%%M:%%S', '2020-01-01', '+' || i || ' minutes'),
       strftime('%%Y-%%m-%%d %%H:%%M:%%S', '2020-01-01', '+' || (i + 1) || ' minutes'),
       strftime('%%Y-%%m-%%d %%H:%%M:%%S', '2020-01-01', '+' || (i + 1) || ' minutes'),
       60, 0, CASE WHEN i %% 5000 = 0 THEN 'beyond_logoff' ELSE '' END
FROM n"""


def plan_of(sql: str, params: tuple) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        return " | ".join(str(row[-1]) for row in cursor.fetchall())


@pytest.mark.django_db
def test_the_uses_list_is_an_index_walk_at_a_million_uses(lab: Lab) -> None:
    """Each page of /api/v1/uses/ (the first, the next, filtered by machine or member) reads its index in order:
    no sort of the history, no COUNT(*), a constant number of queries. Timed by ``make bench``, not here."""
    if connection.vendor != "sqlite":
        pytest.skip("EXPLAIN QUERY PLAN is SQLite's")
    with connection.cursor() as cursor:
        cursor.execute(FILL, [MILLION, lab.normal.pk, lab.staff.pk, lab.laser.pk, lab.printer.pk])
        cursor.execute("ANALYZE")
    assert Use.objects.count() == MILLION
    secret = seed(lab)
    client = Client(headers={"Authorization": f"Bearer {secret}"})
    expected_index = {
        "": "use_started",
        f"machine={lab.laser.pk}": "use_machine_recent",
        f"member={lab.normal.pk}": "use_member_recent",
        "open=false": "use_started",
        "started_after=2020-06-01T00:00:00Z&started_before=2021-06-01T00:00:00Z": "use_started",
    }
    for query, index in expected_index.items():
        url = f"/api/v1/uses/?page_size=50&{query}"
        for page in (1, 2):
            with CaptureQueriesContext(connection) as queries:
                response = client.get(url)
            assert response.status_code == 200, response.content
            assert len(response.json()["results"]) == 50
            sqls = [q["sql"] for q in queries.captured_queries]
            assert len(sqls) <= 6, sqls  # the token, its owner's permissions, the page
            assert not any("COUNT(" in sql.upper() for sql in sqls), sqls
            listing = [sql for sql in sqls if 'FROM "machines_use"' in sql and "ORDER BY" in sql]
            assert len(listing) == 1, sqls
            explained = plan_of(listing[0].replace("%", "%%"), ())
            assert f"INDEX {index}" in explained, (query, page, explained)
            assert "TEMP B-TREE" not in explained, (query, page, explained)
            url = response.json()["next"]


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_swagger_ui_works_within_the_portals_csp(lab: Lab, tmp_path: Path) -> None:
    """Logged into the portal, /api/v1/docs/ draws every endpoint from this host's files, with no CSP violation;
    a request tried from the page goes through (the session, with CSRF). Screenshot: api-docs.png."""
    from .browser import chromium, log_in, screenshot

    password = "a-long-api-docs-password-14"
    admin = Member.objects.create_superuser(email="docs@lab.test", password=password, first_name="Docs")
    assert admin.is_staff
    env = {**server_env(str(connection.settings_dict["NAME"]), redis_url=""), "FABOMATIC_DATA_DIR": str(tmp_path)}
    with daphne(env) as server, chromium() as browser:
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
        log_in(page, server.url, "docs@lab.test", password)
        page.goto(f"{server.url}/api/v1/docs/")
        page.locator(".swagger-ui .info .title").wait_for(timeout=20000)
        assert "Fab-O-Matic API" in page.locator(".swagger-ui .info .title").inner_text()
        for path in ("/api/v1/machines/", "/api/v1/uses/", "/api/v1/authorizations/{id}/renew/"):
            assert page.locator(f'.opblock-summary-path[data-path="{path}"]').count() >= 1, path
        page.locator("#operations-machines-machines_list .opblock-summary").click()
        page.locator("#operations-machines-machines_list .try-out__btn").click()
        page.locator("#operations-machines-machines_list .execute").click()
        status = page.locator("#operations-machines-machines_list .live-responses-table tbody .response-col_status")
        status.first.wait_for(timeout=20000)
        assert status.first.inner_text().strip().startswith("200")
        screenshot(page, "api-docs")
    assert not problems, problems


@pytest.mark.django_db
def test_open_and_flagged_uses_are_read_from_their_partial_indexes(lab: Lab) -> None:
    """The few open or flagged uses among a million: from the partial index that holds them, then sorted (a sort of
    a few rows), never by walking the whole history's time index to find them."""
    if connection.vendor != "sqlite":
        pytest.skip("EXPLAIN QUERY PLAN is SQLite's")
    with connection.cursor() as cursor:
        cursor.execute(FILL, [MILLION, lab.normal.pk, lab.staff.pk, lab.laser.pk, lab.printer.pk])
        cursor.execute("ANALYZE")
    client = Client(headers={"Authorization": f"Bearer {seed(lab)}"})
    cases = {
        "open=true": ("use_open_last_seen", "one_open_use_per_machine"),
        "flagged=true": ("use_flagged",),
        f"machine={lab.laser.pk}&flagged=true": ("use_flagged",),
    }
    for query, indexes in cases.items():
        with CaptureQueriesContext(connection) as queries:
            response = client.get(f"/api/v1/uses/?{query}")
        assert response.status_code == 200 and response.json()["results"], query
        listing = [
            q["sql"] for q in queries.captured_queries if 'FROM "machines_use"' in q["sql"] and "ORDER BY" in q["sql"]
        ]
        explained = plan_of(listing[0].replace("%", "%%"), ())
        assert any(f"INDEX {index}" in explained for index in indexes), (query, explained)
        assert "INDEX use_started" not in explained and "SCAN machines_use" not in explained, (query, explained)
