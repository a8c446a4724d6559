"""Prometheus metrics: scraped from a running bridge (real Mosquitto, simulated boards) and a running portal (daphne
started by scripts/web.sh), and who may read them: this machine's own clients, or a bearer token."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.db import DatabaseError, connection
from django.test import Client
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pytest_django import Settings

from machines.models import Machine
from telemetry import metrics
from telemetry.models import Board
from telemetry.mqtt import Bridge

from .boards import SimBoard
from .browser import server_env
from .conftest import Lab
from .services import ROOT, Broker, free_port, wait_for_port

TOKEN = "metrics-token-for-the-tests-0123456789"
N, D = "aabbccd3", "aabbccd5"  # Nina (authorized on the laser), Dario (disabled)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    key = (metric, frozenset(labels.items()))
    assert key in samples, f"{metric}{labels} not in {sorted(n for n, _ in samples if n.startswith(metric[:20]))}"
    return samples[key]


def get(url: str, headers: dict[str, str] | None = None, *, insecure_tls: bool = False) -> tuple[int, str]:
    context = ssl._create_unverified_context() if insecure_tls else None  # the portal's self-signed certificate
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def lan_address() -> str | None:
    """An address of this machine that is not loopback, for a client that is "remote" to a server bound to all
    interfaces (no packet is sent: a UDP socket only picks its route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if metrics.is_loopback(address) or address == "0.0.0.0" else address


needs_lan = pytest.mark.skipif(lan_address() is None, reason="this machine has no non-loopback address")


# --- who may read the metrics -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remote", "headers", "expected"),
    [
        ("127.0.0.1", {}, True),
        ("127.8.0.1", {}, True),
        ("::1", {}, True),
        ("::ffff:127.0.0.1", {}, True),
        ("192.168.1.20", {}, False),
        ("", {}, False),
        ("not an address", {}, False),
        # Proxied (deploy/caddy): the peer is the proxy on 127.0.0.1, the client is elsewhere, whatever it claims.
        ("127.0.0.1", {"x-forwarded-for": "203.0.113.9"}, False),
        ("127.0.0.1", {"x-forwarded-for": "127.0.0.1"}, False),
        ("127.0.0.1", {"forwarded": "for=127.0.0.1"}, False),
        ("127.0.0.1", {"x-real-ip": "127.0.0.1"}, False),
        ("127.0.0.1", {"x-forwarded-proto": "https"}, False),
        # A token: from anywhere, proxied or not, with the right one only.
        ("203.0.113.9", {"authorization": f"Bearer {TOKEN}"}, True),
        ("203.0.113.9", {"authorization": f"bearer {TOKEN}"}, True),
        ("127.0.0.1", {"authorization": f"Bearer {TOKEN}", "x-forwarded-for": "203.0.113.9"}, True),
        ("203.0.113.9", {"authorization": f"Bearer {TOKEN}x"}, False),
        ("203.0.113.9", {"authorization": f"Basic {TOKEN}"}, False),
        ("203.0.113.9", {"authorization": "Bearer "}, False),
    ],
)
def test_who_may_read_the_metrics(remote: str, headers: dict[str, str], expected: bool) -> None:
    assert metrics.allowed(remote, headers, TOKEN) is expected


def test_without_a_token_configured_no_bearer_is_accepted() -> None:
    assert metrics.allowed("203.0.113.9", {"authorization": "Bearer "}, "") is False
    assert metrics.allowed("203.0.113.9", {"authorization": "Bearer x"}, "") is False


def test_a_reply_over_the_boards_2_s_is_counted_as_such() -> None:
    registry = CollectorRegistry()
    replies = metrics.ReplyMetrics(registry)
    replies.observe("checkuser", 0.004, ok=True)
    replies.observe("checkuser", 2.0, ok=True)
    replies.observe("checkuser", 2.3, ok=False)
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "fabomatic_bridge_replies_total", action="checkuser", within_2s="true") == 2
    assert value(samples, "fabomatic_bridge_replies_total", action="checkuser", within_2s="false") == 1
    assert value(samples, "fabomatic_bridge_replies_not_ok_total", action="checkuser") == 1
    assert value(samples, "fabomatic_bridge_reply_seconds_bucket", action="checkuser", le="0.005") == 1
    assert value(samples, "fabomatic_bridge_reply_seconds_bucket", action="checkuser", le="2.0") == 2
    assert value(samples, "fabomatic_bridge_reply_seconds_count", action="checkuser") == 3


def test_an_unreadable_database_gives_database_up_0_and_the_scrape_still_succeeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def unreadable() -> list[Any]:
        calls.append(1)
        raise DatabaseError("database is locked")

    monkeypatch.setattr(metrics, "fleet_metrics", unreadable)
    registry = CollectorRegistry()
    registry.register(metrics.FleetCollector(ttl=60))
    for _ in range(2):
        samples = parse(generate_latest(registry).decode())
        assert value(samples, "fabomatic_database_up") == 0
        assert not any(name.startswith("fabomatic_boards") for name, _ in samples)
    assert calls == [1]  # the second scrape, within the ttl, did not ask the database again


# --- the bridge ---------------------------------------------------------------------------------------------------


@pytest.fixture
def scraped_bridge(lab: Lab, broker: Broker, settings: Settings) -> Iterator[tuple[Bridge, int]]:
    """The real bridge on the session's broker (as tests/test_bridge.py runs it), its metrics served on all
    interfaces of a free port, with a token."""
    settings.MQTT = {**settings.MQTT, "HOST": "127.0.0.1", "PORT": broker.port, "TOPIC": "machine"}
    bridge = Bridge(client_id=f"test-bridge-{uuid.uuid4().hex[:8]}", housekeeping_every=3600)
    server = metrics.serve(metrics.bridge_registry(bridge), 0, "0.0.0.0", TOKEN)
    bridge.start()
    try:
        assert bridge.subscribed.wait(10), "bridge did not subscribe"
        yield bridge, server.server_port
    finally:
        bridge.stop()
        server.shutdown()
        server.server_close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.broker
def test_the_bridge_metrics_count_what_the_boards_asked(
    lab: Lab, broker: Broker, scraped_bridge: tuple[Bridge, int]
) -> None:
    bridge, port = scraped_bridge
    Machine.objects.filter(pk=1).update(hours=10.5)  # the laser's 10 h maintenance is overdue
    laser, printer = SimBoard(broker.port, 1), SimBoard(broker.port, 2)
    try:
        laser.send({"action": "alive", "version": "rev0,v1.0.4", "ip": "10.0.0.5", "serial": "aa", "heap": "201344"})
        printer.send({"action": "alive", "version": "rev0,v1.0.4", "ip": "10.0.0.6", "serial": "bb", "heap": "150000"})
        for board in (laser, printer):
            assert board.ask({"action": "checkmachine"})["request_ok"] is True
        assert laser.ask({"action": "checkuser", "uid": N})["is_valid"] is True
        assert laser.ask({"action": "startuse", "uid": N})["request_ok"] is True
        assert laser.ask({"action": "inuse", "uid": N, "duration": 30})["request_ok"] is True
        assert printer.ask({"action": "startuse", "uid": D})["request_ok"] is False  # disabled: refused
        laser.send(b'{"action": "checkuser"')  # malformed: dropped without a reply
        assert laser.ask({"action": "checkmachine"})["request_ok"] is True  # answered in order: the drop is counted
    finally:
        laser.close()
        printer.close()

    deadline = time.monotonic() + 5
    while bridge.dispatcher.qsize() and time.monotonic() < deadline:  # a job leaves the queue just after its reply
        time.sleep(0.01)
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    samples = parse(text)
    counters = bridge.counters()
    for action, count in {"checkmachine": 3, "checkuser": 1, "startuse": 2, "inuse": 1}.items():
        assert value(samples, "fabomatic_bridge_reply_seconds_count", action=action) == count
        assert value(samples, "fabomatic_bridge_replies_total", action=action, within_2s="true") == count
        assert value(samples, "fabomatic_bridge_reply_seconds_bucket", action=action, le="2.0") == count
    assert ("fabomatic_bridge_reply_seconds_count", frozenset({("action", "alive")})) not in samples  # no reply
    assert value(samples, "fabomatic_bridge_replies_not_ok_total", action="startuse") == 1
    # The bridge's own stats, the same numbers as its stats/<client id> message, not counted a second time.
    assert value(samples, "fabomatic_bridge_replies_sent_total") == counters["Sent"] == 7
    assert value(samples, "fabomatic_bridge_messages_received_total") == counters["Received"] == 10
    assert value(samples, "fabomatic_bridge_dropped_total") == counters["Dropped"] == 1
    assert value(samples, "fabomatic_bridge_late_total") == value(samples, "fabomatic_bridge_errors_total") == 0
    assert value(samples, "fabomatic_bridge_queue_length") == 0
    assert value(samples, "fabomatic_bridge_connected") == 1
    assert value(samples, "fabomatic_bridge_workers") == bridge.workers
    # The fleet, from the database at scrape time.
    assert value(samples, "fabomatic_database_up") == 1
    assert value(samples, "fabomatic_boards_online") == 2
    assert value(samples, "fabomatic_uses_open") == 1
    assert value(samples, "fabomatic_boards_lowest_free_heap_bytes") == 150000
    assert value(samples, "fabomatic_board_free_heap_bytes", machine="1", name="LASER 1") == 201344
    assert value(samples, "fabomatic_machine_online", machine="2", name="PRINTER 1") == 1
    assert value(samples, "fabomatic_machines_maintenance_overdue") == 1
    assert value(samples, "fabomatic_machine_maintenance_overdue_plans", machine="1", name="LASER 1") == 1
    assert value(samples, "fabomatic_machine_maintenance_overdue_plans", machine="2", name="PRINTER 1") == 0
    lab.laser.refresh_from_db()
    assert lab.laser.last_seen is not None
    seen = value(samples, "fabomatic_machine_last_seen_timestamp_seconds", machine="1", name="LASER 1")
    assert abs(seen - lab.laser.last_seen.timestamp()) < 1
    assert value(samples, "process_resident_memory_bytes") > 0


@needs_lan
@pytest.mark.django_db(transaction=True)
@pytest.mark.broker
def test_the_bridge_metrics_refuse_a_remote_client_without_the_token(
    lab: Lab, scraped_bridge: tuple[Bridge, int]
) -> None:
    _bridge, port = scraped_bridge
    url = f"http://{lan_address()}:{port}/metrics"
    assert get(url)[0] == 403
    assert get(url, {"X-Forwarded-For": "127.0.0.1"})[0] == 403  # a forged header does not make it local
    assert get(url, {"Authorization": "Bearer wrong-token-wrong-token-wrong"})[0] == 403
    status, text = get(url, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and "fabomatic_bridge_replies_sent_total" in text


def test_the_bridge_metrics_server_refuses_a_remote_peer() -> None:
    """The WSGI guard, whatever interfaces this machine has."""
    app = metrics.guarded(lambda environ, start: [b"metrics"], TOKEN)
    statuses: list[str] = []

    def start(status: str, headers: list[Any]) -> None:
        statuses.append(status)

    assert app({"REMOTE_ADDR": "192.168.1.20"}, start) != [b"metrics"]
    assert app({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "127.0.0.1"}, start) != [b"metrics"]
    assert statuses == ["403 Forbidden", "403 Forbidden"]
    assert app({"REMOTE_ADDR": "192.168.1.20", "HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}, start) == [b"metrics"]
    assert app({"REMOTE_ADDR": "127.0.0.1"}, start) == [b"metrics"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.broker
def test_mqtt_listen_serves_its_metrics_on_metrics_port(lab: Lab, broker: Broker) -> None:
    """``manage.py mqtt_listen`` as systemd runs it, with METRICS_PORT: a board's request shows in its metrics."""
    port = free_port()
    env = {
        **server_env(str(connection.settings_dict["NAME"]), redis_url="", broker_url=broker.url),
        "FABOMATIC_PROCESS": "bridge",
        "METRICS_PORT": str(port),
        "MQTT_CLIENT_ID": f"metrics-{uuid.uuid4().hex[:8]}",
    }
    process = subprocess.Popen(
        [".venv/bin/python", "manage.py", "mqtt_listen"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    board = SimBoard(broker.port, 1)
    try:
        wait_for_port(port, timeout=30)
        for _ in range(40):  # until the bridge has subscribed: the board's 30 s network tick, faster
            board.send({"action": "checkmachine"})
            try:
                reply = json.loads(board.replies.get(timeout=0.5))
                break
            except Exception:
                continue
        else:
            raise AssertionError("the bridge never answered")
        assert reply["name"] == "LASER 1"
        status, text = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200, text
        samples = parse(text)
        assert value(samples, "fabomatic_bridge_reply_seconds_count", action="checkmachine") >= 1
        assert value(samples, "fabomatic_boards_online") == 1
        with socket.socket() as probe:  # bound to 127.0.0.1 only, by default
            assert probe.connect_ex(("127.0.0.1", port)) == 0
        address = lan_address()
        if address is not None:
            with socket.socket() as probe:
                assert probe.connect_ex((address, port)) != 0
    finally:
        board.close()
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert f"Metrics on http://127.0.0.1:{port}/metrics" in output
    assert process.returncode == 0, output


def test_the_bridge_without_metrics_port_does_not_load_prometheus_client() -> None:
    """3 MB the bridge on a Raspberry Pi does not carry unless METRICS_PORT asks for it."""
    code = (
        "import sys, django; django.setup()\n"
        "import telemetry.mqtt, telemetry.management.commands.mqtt_listen\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    env = {**os.environ, "FABOMATIC_PROCESS": "bridge", "DJANGO_SETTINGS_MODULE": "fabomatic.settings"}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "False", run.stdout + run.stderr


# --- the portal ---------------------------------------------------------------------------------------------------


@pytest.fixture
def metrics_token(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> str:
    """The token set, and the fleet read afresh at each scrape (each test has its own database)."""
    from fabomatic.metrics import fleet

    monkeypatch.setattr(fleet(), "ttl", 0.0)
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


@pytest.mark.django_db
def test_the_portal_counts_requests_per_view_and_status(lab: Lab, metrics_token: str) -> None:
    client = Client()
    before = parse(client.get("/metrics").content.decode())
    login = (
        "fabomatic_http_requests_total",
        frozenset({"view": "admin:login", "method": "GET", "status": "2xx"}.items()),
    )
    assert client.get("/admin/login/").status_code == 200
    assert client.get("/admin/").status_code == 302
    assert client.get("/no-such-page/").status_code == 404
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = parse(response.content.decode())
    assert samples[login] == before.get(login, 0) + 1
    assert value(samples, "fabomatic_http_requests_total", view="admin:index", method="GET", status="3xx") >= 1
    assert value(samples, "fabomatic_http_requests_total", view="unresolved", method="GET", status="4xx") >= 1
    assert value(samples, "fabomatic_http_request_seconds_count", view="admin:login") >= 1
    # The fleet gauges, as the bridge serves them.
    assert value(samples, "fabomatic_machines") == 2
    assert value(samples, "fabomatic_uses_open") == 0
    assert value(samples, "fabomatic_machine_online", machine="1", name="LASER 1") == 0


@pytest.mark.django_db
def test_the_portal_serves_metrics_only_to_local_clients_or_the_token(lab: Lab, metrics_token: str) -> None:
    assert Client().get("/metrics").status_code == 200  # the test client's REMOTE_ADDR is 127.0.0.1
    remote = Client(REMOTE_ADDR="203.0.113.9")
    assert remote.get("/metrics").status_code == 403
    assert remote.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert remote.get("/metrics", headers={"authorization": "Bearer not-the-token-at-all-no"}).status_code == 403
    # Through the reverse proxy the peer is 127.0.0.1: a forwarded request is never local.
    assert Client().get("/metrics", headers={"x-forwarded-for": "127.0.0.1"}).status_code == 403


@pytest.fixture
def web(tmp_path: Path, lab: Lab) -> Iterator[Any]:
    """scripts/web.sh (daphne over TLS, as systemd starts it) on all interfaces; ``web(proxy_headers)``."""
    processes: list[subprocess.Popen] = []

    def start(*, proxy_headers: bool) -> str:
        port = free_port()
        env = {
            **server_env(str(connection.settings_dict["NAME"]), redis_url=""),
            "FABOMATIC_DATA_DIR": str(tmp_path),
            "LOG_DIR": "",
            "WEB_PORT": str(port),
            "BIND": "0.0.0.0",
            "PROXY_HEADERS": "1" if proxy_headers else "0",
            "ALLOWED_HOSTS": f"localhost,127.0.0.1,{lan_address() or 'localhost'}",
            "METRICS_TOKEN": TOKEN,
        }
        process = subprocess.Popen(
            [str(ROOT / "scripts" / "web.sh")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        processes.append(process)
        wait_for_port(port, timeout=30)
        return f"{port}"

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.django_db(transaction=True)
def test_a_running_portal_behind_the_proxy_never_takes_a_forwarded_request_for_a_local_one(web: Any) -> None:
    """PROXY_HEADERS=1, as behind deploy/caddy: daphne takes the client address from X-Forwarded-For."""
    port = web(proxy_headers=True)
    url = f"https://127.0.0.1:{port}/metrics"
    status, text = get(url, insecure_tls=True)  # Prometheus on this machine, straight to daphne
    assert status == 200 and "fabomatic_boards_online" in text
    # What Caddy sends for a client on the internet; and for one that forged the header (older proxies append).
    for forwarded in ("203.0.113.9", "127.0.0.1", "127.0.0.1, 203.0.113.9"):
        assert get(url, {"X-Forwarded-For": forwarded}, insecure_tls=True)[0] == 403, forwarded
    status, text = get(url, {"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {TOKEN}"}, insecure_tls=True)
    assert status == 200 and "fabomatic_http_requests_total" in text


@needs_lan
@pytest.mark.django_db(transaction=True)
def test_a_running_portal_refuses_a_remote_client_without_the_token(web: Any) -> None:
    port = web(proxy_headers=False)
    url = f"https://{lan_address()}:{port}/metrics"
    assert get(url, insecure_tls=True)[0] == 403
    assert get(url, {"X-Forwarded-For": "127.0.0.1"}, insecure_tls=True)[0] == 403
    status, text = get(url, {"Authorization": f"Bearer {TOKEN}"}, insecure_tls=True)
    assert status == 200 and "fabomatic_machines 2.0" in text
    samples = parse(text)
    assert value(samples, "fabomatic_http_requests_total", view="fabomatic_metrics", method="GET", status="4xx") == 2


# --- deploy/: the alert rules, the scrape config and the Grafana dashboard ----------------------------------------

DEPLOY = ROOT / "deploy"
PROMTOOL = os.environ.get("PROMTOOL") or shutil.which("promtool")


def referenced_metrics() -> dict[str, set[str]]:
    """The fabomatic_* names each deploy file queries."""
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    dashboard = json.loads((DEPLOY / "grafana" / "fabomatic.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    return {
        name: set(re.findall(r"\bfabomatic_[a-z0-9_]+", text))
        for name, text in (("alerts", alerts), ("grafana", exprs))
    }


def test_the_alert_rules_say_what_the_issue_asks() -> None:
    rules = {
        rule["alert"]: rule
        for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    within = rules["FabomaticRepliesWithin2sLow"]["expr"]
    assert 'within_2s="true"' in within and "[10m]" in within and "< 0.999" in within
    assert "> 300" in rules["FabomaticBoardOffline"]["expr"]
    assert "fabomatic_machine_last_seen_timestamp_seconds" in rules["FabomaticBoardOffline"]["expr"]
    assert "fabomatic_machine_maintenance_overdue_plans" in rules["FabomaticMaintenanceOverdue"]["expr"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["fabomatic-bridge"]["static_configs"][0]["targets"] == ["127.0.0.1:23337"]
    assert jobs["fabomatic-portal"]["scheme"] == "https"


def test_the_grafana_dashboard_shows_what_the_issue_asks() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "fabomatic.json").read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Replies within 2 s (10 min)", "Reply latency per action", "Queue length", "Boards online"} <= titles
    assert {"Open uses", "Lowest free heap", "Portal latency per view (p95)"} <= titles
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]


@pytest.mark.django_db
def test_every_metric_the_deploy_files_query_is_exported(lab: Lab, metrics_token: str, settings: Settings) -> None:
    """A renamed metric would leave an alert that never fires: every name queried is in a real scrape."""
    Board.objects.create(machine=lab.laser, free_heap=123456)
    Machine.objects.filter(pk=1).update(last_seen=timezone.now(), hours=10.5)
    bridge = Bridge(client_id=f"test-bridge-{uuid.uuid4().hex[:8]}")
    registry = metrics.bridge_registry(bridge)
    assert bridge.reply_metrics is not None
    bridge.reply_metrics.observe("checkuser", 0.01, ok=False)
    client = Client()
    client.get("/admin/login/")
    exported = {
        sample.name
        for text in (generate_latest(registry).decode(), client.get("/metrics").content.decode())
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    for source, names in referenced_metrics().items():
        assert names and names <= exported, f"{source} queries {sorted(names - exported)}, not exported"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus; see README)")
def test_promtool_accepts_the_rules_and_the_config_and_the_alerts_fire_when_they_should() -> None:
    assert PROMTOOL is not None
    for args in (
        ["check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        ["test", "rules", str(ROOT / "tests" / "data" / "prometheus" / "alerts_test.yml")],
    ):
        run = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
