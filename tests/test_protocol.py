"""The board protocol parser and reply builders (docs/protocol.md §2, M7, M8, M10, S24)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import protocol as p


def test_it_parses_every_request_the_firmware_sends() -> None:
    assert p.parse_payload(b'{"action":"checkmachine"}') == p.CheckMachine()
    assert p.parse_payload(b'{"action":"checkuser","uid":"aabbccd1"}') == p.CheckUser("aabbccd1")
    assert p.parse_payload(b'{"action":"startuse", "uid":"aabbccd1"}') == p.StartUse("aabbccd1", replay=False)
    assert p.parse_payload(b'{"action":"startuse", "uid":"aabbccd1", "replay":true}') == p.StartUse("aabbccd1", True)
    assert p.parse_payload(b'{"action":"inuse", "uid":"aabbccd1","duration":30}') == p.InUse("aabbccd1", 30)
    assert p.parse_payload(b'{"action":"stopuse", "uid":"aabbccd1","duration":42, "replay":true}') == p.StopUse(
        "aabbccd1", 42, True
    )
    assert p.parse_payload(b'{"action":"maintenance", "uid":"aabbccd2"}') == p.Maintenance("aabbccd2")
    alive = p.parse_payload(
        b'{"action":"alive","version":"hardware-rev0-it_IT,v1.0.4","ip":"192.168.1.50",'
        b'"serial":"dcda0c419794","heap":"201344"}'
    )
    assert alive == p.Alive(version="hardware-rev0-it_IT,v1.0.4", ip="192.168.1.50", serial="dcda0c419794", heap=201344)
    assert p.parse_payload(b'{"action":"synccache"}') == p.SyncCache(offset=0)


def test_it_normalizes_upper_case_uids() -> None:
    assert p.parse_payload(b'{"action":"checkuser","uid":"AABBCCD1"}') == p.CheckUser("aabbccd1")


def test_it_accepts_heap_as_a_number_and_tolerates_odd_alive_fields() -> None:
    alive = p.parse_payload(b'{"action":"alive","version":"v1","ip":"not an ip","heap":1234}')
    assert alive == p.Alive(version="v1", ip=None, serial="", heap=1234)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"action":"checkuser", "uid":',
        b'{"action":"reboot"}',
        b'{"action":"checkuser"}',
        b"not json",
        b"\xff\xfe{}",
        b"[]",
        b'"checkmachine"',
        b'{"action": 3}',
        b'{"action":"checkuser","uid":12345678}',
        b'{"action":"checkuser","uid":"xyz"}',
        b'{"action":"inuse","uid":"aabbccd1"}',
        b'{"action":"inuse","uid":"aabbccd1","duration":"30"}',
        b'{"action":"inuse","uid":"aabbccd1","duration":true}',
        b'{"action":"stopuse","uid":"aabbccd1","duration":-3}',
        b'{"action":"stopuse","uid":"aabbccd1","duration":1.5}',
        b'{"action":"startuse","uid":"aabbccd1","replay":"yes"}',
        b'{"action":"alive","ip":"1.2.3.4"}',
        b'{"action":"checkmachine","pad":"' + b"x" * 2000 + b'"}',
        b"[" * 100000,
    ],
)
def test_it_rejects_malformed_payloads_with_a_reason(payload: bytes) -> None:
    with pytest.raises(p.Malformed) as exc:
        p.parse_payload(payload)
    assert str(exc.value)


@pytest.mark.parametrize(
    "topic", ["machine/abc", "machine/1/reply", "other/1", "machine/0", "machine/65536", "machine/"]
)
def test_it_rejects_topics_that_are_not_a_machine_id(topic: str) -> None:
    with pytest.raises(p.Malformed):
        p.parse_machine_id(topic, "machine")


def test_it_reads_the_machine_id_from_the_topic() -> None:
    assert p.parse_machine_id("machine/42", "machine") == 42
    assert p.parse_machine_id("lab/machine/7", "lab/machine") == 7


def test_replies_have_the_field_types_the_board_parses() -> None:
    reply = p.machine_reply(
        name="A very long machine name indeed",
        maintenance=True,
        allowed=True,
        logoff=1440,
        type_id=1,
        grace=2,
        description="pulire lente e specchi",
    )
    assert reply["name"] == "A very long mach" and reply["description"] == "pulire lente e s"
    assert [type(reply[k]) for k in ("request_ok", "is_valid", "maintenance", "allowed")] == [bool] * 4
    assert [type(reply[k]) for k in ("logoff", "type", "grace")] == [int] * 3
    user = p.user_reply(is_valid=False, name="", level=2)
    assert user == {"request_ok": True, "is_valid": False, "name": "", "missing_auth": False, "level": 0}


@given(name=st.text(max_size=200), description=st.text(max_size=600))
def test_replies_fit_the_board_buffer_whatever_the_names(name: str, description: str) -> None:
    reply = p.machine_reply(
        name=name, maintenance=True, allowed=False, logoff=65535, type_id=255, grace=65535, description=description
    )
    assert len(p.encode(reply)) <= p.MAX_REPLY_BYTES
    assert len(p.encode(p.user_reply(is_valid=True, name=name, level=2, missing_auth=True))) <= p.MAX_REPLY_BYTES


def test_synccache_replies_are_paged_under_the_limit() -> None:
    cards = [(f"{i:08x}", 1 + i % 2) for i in range(30)]
    reply = p.cards_reply(cards, offset=60, more=True)
    assert len(p.encode(reply)) <= p.MAX_REPLY_BYTES
    assert 0 < len(reply["cards"]) < 30
    assert reply["next"] == 60 + len(reply["cards"])
    last = p.cards_reply(cards[:2], offset=0, more=False)
    assert last["next"] is None and len(last["cards"]) == 2


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
actions = st.sampled_from(["checkmachine", "checkuser", "startuse", "inuse", "stopuse", "maintenance", "alive", "x"])


@settings(max_examples=400, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=400),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"action": actions},
            optional={
                "uid": st.one_of(st.text(max_size=12), st.integers(), st.sampled_from(["aabbccd1", "AABBCCD1"])),
                "duration": json_values,
                "replay": json_values,
                "version": json_values,
                "ip": json_values,
                "heap": json_values,
            },
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_fuzz_the_parser_only_ever_returns_a_request_or_raises_malformed(data: bytes) -> None:
    try:
        request = p.parse_payload(data)
    except p.Malformed:
        return
    assert request.action in {"checkmachine", "checkuser", "startuse", "inuse", "stopuse", "maintenance", "alive"} | {
        "synccache"
    }
    if hasattr(request, "uid"):
        assert p.UID_RE.match(request.uid)
    if hasattr(request, "duration"):
        assert isinstance(request.duration, int) and request.duration >= 0
