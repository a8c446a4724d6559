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
from django.utils import timezone

from api import tokens
from api.models import ApiToken
from machines.models import Intervention, Use
from members.models import Member, Role, UnknownCard

from .browser import daphne, server_env
from .conftest import Lab
from .services import ROOT


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
    the schema says (status, content type, body), auth enforced. Bounded: 8 examples per operation."""
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
                "examples,coverage,fuzzing",
                "--request-timeout",
                "20",
                "--no-color",
                "--generation-database",
                "none",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
