"""``/spaceapi.json``: off by default, then a SpaceAPI v15 document (validated against the part of the official
schema it uses: https://schema.spaceapi.io/15.json), open to any origin, without login, with the machines' states."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import Client
from django.utils import timezone
from jsonschema import Draft202012Validator
from pytest_django import Settings

from integrations import spaceapi
from machines import services

from .conftest import Lab

pytestmark = pytest.mark.django_db

# The subset of the official v15 schema that a document of ours can touch: its required keys and the types of
# every property we publish (location, contact, state, sensors; custom keys start with ext_).
SCHEMA_V15_SUBSET = {
    "type": "object",
    "required": ["api_compatibility", "space", "logo", "url", "contact"],
    "properties": {
        "api_compatibility": {"type": "array", "items": {"type": "string"}, "contains": {"const": "15"}},
        "space": {"type": "string"},
        "logo": {"type": "string"},
        "url": {"type": "string"},
        "location": {
            "type": "object",
            "minProperties": 1,
            "properties": {
                "address": {"type": "string"},
                "lat": {"type": "number"},
                "lon": {"type": "number"},
                "timezone": {"type": "string"},
            },
            "dependentRequired": {"lat": ["lon"], "lon": ["lat"]},
        },
        "contact": {"type": "object", "properties": {"email": {"type": "string"}}},
        "state": {
            "type": "object",
            "properties": {"open": {"type": "boolean"}, "message": {"type": "string"}},
        },
        "sensors": {"type": "object", "propertyNames": {"pattern": "^(ext_|temperature$|people_now_present$)"}},
    },
    "propertyNames": {
        "anyOf": [
            {"enum": ["api_compatibility", "space", "logo", "url", "location", "contact", "state", "sensors"]},
            {"pattern": "^ext_"},
        ]
    },
}


@pytest.fixture(autouse=True)
def lab_details(settings: Settings) -> Iterator[None]:
    settings.SPACEAPI_ENABLED = True
    settings.SPACEAPI_SPACE = "FabLab Test"
    settings.SPACEAPI_LOGO = "https://fablab.test/logo.svg"
    settings.SPACEAPI_URL = "https://fablab.test/"
    settings.SPACEAPI_ADDRESS = "Via Roma 1, Torino, Italy"
    settings.SPACEAPI_LAT, settings.SPACEAPI_LON = 45.07, 7.68
    settings.SPACEAPI_EMAIL = "info@fablab.test"
    settings.SPACEAPI_OPEN_RULE = "in_use"
    spaceapi.forget()
    yield
    spaceapi.forget()


def fetch(client: Client) -> dict:
    response = client.get("/spaceapi.json", headers={"origin": "https://elsewhere.test"})
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "*"
    assert response["Content-Type"] == "application/json"
    return response.json()


def test_off_by_default(client: Client, settings: Settings) -> None:
    settings.SPACEAPI_ENABLED = False
    assert client.get("/spaceapi.json").status_code == 404


def test_a_valid_v15_document_with_the_machines(client: Client, lab: Lab) -> None:
    doc = fetch(client)
    Draft202012Validator(SCHEMA_V15_SUBSET).validate(doc)
    assert doc["api_compatibility"] == ["15"] and doc["space"] == "FabLab Test"
    assert doc["location"]["lat"] == 45.07 and doc["contact"] == {"email": "info@fablab.test"}
    assert doc["state"]["open"] is False
    assert doc["sensors"]["ext_machines"] == [
        {"id": 1, "name": "LASER 1", "state": "offline"},
        {"id": 2, "name": "PRINTER 1", "state": "offline"},
    ]


def test_open_while_a_machine_is_in_use_cached_a_few_seconds(client: Client, lab: Lab) -> None:
    assert fetch(client)["state"]["open"] is False
    services.begin_use(member=lab.normal, machine_id=1, started_at=timezone.now(), last_seen=timezone.now())
    assert fetch(client)["state"]["open"] is False  # the cached document
    spaceapi.forget()
    doc = fetch(client)
    assert doc["state"]["open"] is True and doc["state"]["message"] == "1 of 2 machines in use"
    assert doc["sensors"]["ext_machines"][0]["state"] == "in_use"
    assert "Nina" not in str(doc)  # never who is on a machine
    Draft202012Validator(SCHEMA_V15_SUBSET).validate(doc)


def test_a_manual_flag(client: Client, lab: Lab, settings: Settings) -> None:
    settings.SPACEAPI_OPEN_RULE = "open"
    assert fetch(client)["state"]["open"] is True


def test_the_subset_schema_refuses_what_v15_refuses() -> None:
    validator = Draft202012Validator(SCHEMA_V15_SUBSET)
    good = {"api_compatibility": ["15"], "space": "x", "logo": "", "url": "", "contact": {}}
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, "api_compatibility": ["14"]})
    assert not validator.is_valid({k: v for k, v in good.items() if k != "logo"})
    assert not validator.is_valid({**good, "location": {"lat": 1.0}})
    assert not validator.is_valid({**good, "machines": []})
    assert not validator.is_valid({**good, "state": {"open": "yes"}})
