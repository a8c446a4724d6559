"""`make run` for real (scripts/run.sh): on free ports, with a PATH that lacks /usr/sbin (a normal user's), in a
terminal. The portal answers, a board on another host of a test network reaches the broker with the board account
and gets the bridge's reply, and one Ctrl-C stops exactly what `make run` started and exits 0; a service that was
already running is left alone. A busy portal port stops everything before it starts."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .services import ROOT, free_port, redis_server

RUN = ROOT / "scripts" / "run.sh"
PATH_WITHOUT_SBIN = "/usr/local/bin:/usr/bin:/bin"
RUNNING = "Fab-O-Matic is running"

# A board, as the firmware behaves (MQTT 3.1.1, clean session, its account): connect, subscribe to its reply topic,
# ask checkmachine, print what happened as JSON. Run with this project's Python, also inside a network namespace.
BOARD = r"""
import json, queue, sys
import paho.mqtt.client as mqtt

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
events = queue.Queue()
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="BOARD7", clean_session=True)
if user:
    client.username_pw_set(user, password)
client.on_connect = lambda c, u, flags, rc, props: events.put(("connect", str(rc)))
client.on_subscribe = lambda *args: events.put(("subscribed", ""))
client.on_message = lambda c, u, msg: events.put(("message", msg.payload.decode()))
client.connect(host, port, keepalive=10)
client.loop_start()
result = {"connect": events.get(timeout=10)[1]}
if result["connect"] == "Success":
    client.subscribe("machine/999/reply")
    events.get(timeout=5)
    client.publish("machine/999", json.dumps({"action": "checkmachine"}))
    result["reply"] = json.loads(events.get(timeout=5)[1])
print(json.dumps(result))
"""


def clean_env(tmp: Path, **ports: int) -> dict[str, str]:
    """A fresh login's environment (none of the tests' settings), the run's own data and .env, and its ports."""
    env = {
        "PATH": PATH_WITHOUT_SBIN,
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "TERM": "xterm",
        "FABOMATIC_DATA_DIR": str(tmp / "data"),
        "FABOMATIC_ENV_FILE": str(tmp / "env"),
    }
    return env | {name: str(port) for name, port in ports.items()}


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_everything(pids: dict[str, int]) -> None:
    """After a failure: SIGTERM to what a run left (honcho then stops the portal and the bridge), SIGKILL later."""
    for pid in pids.values():
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(pid_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids.values():
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def lan_addresses() -> list[str]:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return [a for a in out if ":" not in a and not a.startswith("127.")]


def env_value(env_file: Path, name: str) -> str:
    found = re.search(rf"^{name}=(.*)$", env_file.read_text(), re.M)
    assert found, f"{name} missing from {env_file}"
    return found.group(1)


@dataclass
class Terminal:
    """A command on a terminal of its own (a pseudo-terminal), as a person runs `make run`."""

    pid: int
    fd: int
    raw: bytearray = field(default_factory=bytearray)
    status: int | None = None

    @classmethod
    def start(cls, argv: list[str], env: dict[str, str]) -> Terminal:
        pid, fd = pty.fork()
        if pid == 0:  # the child: a new session whose controlling terminal is the pty
            try:
                os.chdir(ROOT)
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        terminal = cls(pid=pid, fd=fd)
        threading.Thread(target=terminal._read, daemon=True).start()
        return terminal

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: every process holding the terminal is gone
                return
            if not chunk:
                return
            self.raw.extend(chunk)

    @property
    def text(self) -> str:
        return bytes(self.raw).decode(errors="replace").replace("\r\n", "\n")

    def poll(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text:
            if self.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{text!r} not printed (exit status {self.poll()}):\n{self.text[-6000:]}")
            time.sleep(0.1)

    def ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.status


@dataclass
class Run:
    terminal: Terminal
    tmp: Path
    web_port: int
    mqtt_port: int
    backend_port: int
    redis_port: int

    @property
    def env_file(self) -> Path:
        return self.tmp / "env"

    @property
    def run_dir(self) -> Path:
        return self.tmp / "data" / "run"

    def started_pids(self) -> dict[str, int]:
        return started_pids(self.tmp)

    def board(self, host: str, *, user: str | None = None, password: str | None = None, netns: str = "") -> dict:
        user = env_value(self.env_file, "MQTT_BOARD_USER") if user is None else user
        password = env_value(self.env_file, "MQTT_BOARD_PASSWORD") if password is None else password
        argv = [sys.executable, "-c", BOARD, host, str(self.mqtt_port), user, password]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """`make run` in a terminal, with a Redis that was running before it (REDIS_PORT) and its own Mosquitto."""
    tmp = tmp_path_factory.mktemp("make-run")
    with redis_server() as redis:
        ports = {
            "WEB_PORT": free_port(),
            "MQTT_PORT": free_port(),
            "MQTT_BACKEND_PORT": free_port(),
            "REDIS_PORT": redis.port,
        }
        terminal = Terminal.start(["make", "--no-print-directory", "run"], clean_env(tmp, **ports))
        running = Run(terminal, tmp, ports["WEB_PORT"], ports["MQTT_PORT"], ports["MQTT_BACKEND_PORT"], redis.port)
        try:
            terminal.wait_for(RUNNING, timeout=300)
            yield running
        finally:
            if terminal.poll() is None:
                terminal.ctrl_c()
                if terminal.wait(30) is None:
                    stop_everything(running.started_pids())
                    os.kill(terminal.pid, signal.SIGKILL)
                    terminal.wait(10)


def test_it_prints_the_portal_addresses_and_what_the_boards_need(run: Run) -> None:
    out = run.terminal.text
    host = socket.gethostname().split(".")[0]
    assert f"https://{host}.local:{run.web_port}/" in out
    for address in lan_addresses():
        assert f"https://{address}:{run.web_port}/" in out
    user, password = env_value(run.env_file, "MQTT_BOARD_USER"), env_value(run.env_file, "MQTT_BOARD_PASSWORD")
    assert len(password) >= 20
    assert f'mqtt_user "{user}", mqtt_password "{password}"' in out
    # The first administrator's one-time password, repeated after everything else came up.
    banner = out[out.index("  Portal:") :]
    assert re.search(r"password: \S{12,}", banner) and "bootstrap --new-password" in banner
    assert f"Already running, left alone: Redis on {run.redis_port}" in banner


def test_the_portal_answers_at_once_and_its_access_log_is_live(run: Run) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    path = f"/admin/login/?probe={uuid.uuid4().hex}"
    with urllib.request.urlopen(f"https://127.0.0.1:{run.web_port}{path}", context=context, timeout=10) as response:
        assert response.status == 200
        hsts = response.headers["Strict-Transport-Security"]
    assert "max-age=" in hsts and "preload" not in hsts  # no LAN host belongs on the browsers' preload list
    deadline = time.monotonic() + 5
    while path not in run.terminal.text:  # daphne's access log, not held back in a buffer until Ctrl-C
        assert time.monotonic() < deadline, run.terminal.text[-3000:]
        time.sleep(0.1)
    line = next(line for line in run.terminal.text.splitlines() if path in line)
    assert not re.match(r"\d\d:\d\d:\d\d ", line), "one clock per line: honcho's is not added"


@pytest.fixture
def network_namespace() -> Iterator[tuple[str, str]]:
    """Another host on a test network: a network namespace joined to this one by a veth pair (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root (CI runs as root)")
    tag = uuid.uuid4().hex[:6]
    name, outside, inside = f"fab-{tag}", f"fabo{tag}", f"fabi{tag}"
    net = f"198.18.{int(tag[:2], 16)}"  # the benchmarking range (RFC 2544): no real network uses it
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no network namespaces here: {getattr(e, 'stderr', b'') or e!r}")
    try:
        for argv in (
            ["ip", "link", "add", outside, "type", "veth", "peer", "name", inside],
            ["ip", "link", "set", inside, "netns", name],
            ["ip", "addr", "add", f"{net}.1/30", "dev", outside],
            ["ip", "link", "set", outside, "up"],
            ["ip", "-n", name, "addr", "add", f"{net}.2/30", "dev", inside],
            ["ip", "-n", name, "link", "set", inside, "up"],
            ["ip", "-n", name, "link", "set", "lo", "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True)
        yield name, f"{net}.1"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)  # takes the veth pair with it
        subprocess.run(["ip", "link", "del", outside], capture_output=True)


def test_a_board_on_another_host_reaches_the_broker_with_the_board_account(
    run: Run, network_namespace: tuple[str, str]
) -> None:
    netns, address = network_namespace
    result = run.board(address, netns=netns)
    assert result["connect"] == "Success"
    assert "request_ok" in result["reply"]  # the bridge answered through the broker
    # No anonymous access from the network, and no wrong password.
    assert run.board(address, user="", password="", netns=netns)["connect"] != "Success"
    assert run.board(address, password="wrong", netns=netns)["connect"] != "Success"
    # The listener of Fab-O-Matic's own processes is not reachable from there.
    probe = f"import socket; socket.create_connection(('{address}', {run.backend_port}), timeout=2)"
    inside = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", probe], capture_output=True)
    assert inside.returncode != 0


def test_a_board_reaches_the_broker_on_a_lan_address_of_this_machine(run: Run) -> None:
    addresses = lan_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address")
    result = run.board(addresses[0])
    assert result["connect"] == "Success" and "request_ok" in result["reply"]
    assert run.board(addresses[0], user="", password="")["connect"] != "Success"


def test_ctrl_c_stops_what_make_run_started_leaves_the_rest_and_exits_0(run: Run) -> None:
    started = run.started_pids()
    assert set(started) == {"honcho", "mosquitto"}  # Redis was already running
    run.terminal.ctrl_c()
    assert run.terminal.wait(60) == 0, run.terminal.text[-3000:]
    assert "make: ***" not in run.terminal.text  # make saw its recipe succeed, and was not interrupted itself
    assert not [name for name, pid in started.items() if pid_alive(pid)]
    for port in (run.web_port, run.mqtt_port, run.backend_port):
        assert not accepts("127.0.0.1", port), f"port {port} still open"
    assert accepts("127.0.0.1", run.redis_port), "the Redis that was already running must be left alone"
    assert not list(run.run_dir.glob("*.pid"))


@dataclass
class Piped:
    """scripts/run.sh without a terminal (a service manager, CI): output through a pipe."""

    process: subprocess.Popen
    output: bytearray = field(default_factory=bytearray)

    @classmethod
    def start(cls, env: dict[str, str]) -> Piped:
        process = subprocess.Popen(
            [str(RUN)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        piped = cls(process)
        threading.Thread(target=piped._read, daemon=True).start()
        return piped

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in iter(self.process.stdout.readline, b""):
            self.output.extend(line)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def wait_until_running(self, count: int = 1) -> None:
        deadline = time.monotonic() + 300
        while self.text.count(RUNNING) < count:
            assert self.process.poll() is None and time.monotonic() < deadline, self.text[-6000:]
            time.sleep(0.2)


def started_pids(tmp: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text().split()[0]) for p in (tmp / "data" / "run").glob("*.pid") if p.stem != "run"}


def test_without_a_terminal_orphans_a_labs_own_account_and_a_broker_on_loopback(tmp_path: Path) -> None:
    """Without a terminal: a run killed with SIGKILL leaves its services, the next run stops them first; a lab
    moving from FabOMatic keeps its boards' account (.env); a broker already on 127.0.0.1:MQTT_PORT (Debian's own)
    is left alone and the boards get a listener on each LAN address; SIGINT stops everything and exits 0."""
    ports = {name: free_port() for name in ("WEB_PORT", "MQTT_PORT", "MQTT_BACKEND_PORT", "REDIS_PORT")}
    env = clean_env(tmp_path, **ports)
    (tmp_path / "env").write_text(
        "SECRET_KEY=a-lab-s-own-long-random-key-for-this-test-only\nMQTT_BOARD_USER=fablab\nMQTT_BOARD_PASSWORD='s3cret!'\n"
    )
    addresses = lan_addresses()
    lab = Run(Terminal(pid=0, fd=-1), tmp_path, ports["WEB_PORT"], ports["MQTT_PORT"], 0, 0)
    with socket.socket() as loopback_broker:
        if addresses:  # stands for Debian's packaged Mosquitto, which listens on 127.0.0.1:1883 only
            loopback_broker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            loopback_broker.bind(("127.0.0.1", ports["MQTT_PORT"]))
            loopback_broker.listen()
        first = Piped.start(env)
        second: Piped | None = None
        try:
            first.wait_until_running()
            orphans = started_pids(tmp_path)
            assert set(orphans) == {"honcho", "mosquitto", "redis"}
            # A second make run in the same folder is refused while the first runs.
            refused = subprocess.run([str(RUN)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True)
            assert refused.returncode == 1 and b"already runs in this folder" in refused.stderr
            first.process.kill()
            first.process.wait(10)
            assert all(pid_alive(pid) for pid in orphans.values())  # in process groups of their own

            second = Piped.start(env)
            second.wait_until_running()
            assert "an earlier make run left running" in second.text
            assert not [name for name, pid in orphans.items() if pid_alive(pid)]
            host = addresses[0] if addresses else "127.0.0.1"
            if addresses:
                assert f"left alone: the broker on 127.0.0.1:{ports['MQTT_PORT']}" in second.text
            assert "request_ok" in lab.board(host, user="fablab", password="s3cret!")["reply"]
            assert lab.board(host, user="board", password="")["connect"] != "Success"
            assert "MQTT_BOARD_PASSWORD='s3cret!'" in (tmp_path / "env").read_text()  # kept as the lab wrote it

            started = started_pids(tmp_path)
            second.process.send_signal(signal.SIGINT)
            assert second.process.wait(60) == 0, second.text[-3000:]
            assert not [name for name, pid in started.items() if pid_alive(pid)]
            ours = [port for name, port in ports.items() if not (addresses and name == "MQTT_PORT")]
            assert not [port for port in ours if accepts("127.0.0.1", port)]
            assert not started_pids(tmp_path) and not (tmp_path / "data" / "run" / "run.pid").exists()
        finally:
            for run in (first, second):
                if run and run.process.poll() is None:
                    run.process.terminate()
                    try:
                        run.process.wait(30)
                    except subprocess.TimeoutExpired:
                        run.process.kill()
            stop_everything(started_pids(tmp_path))


def test_a_busy_portal_port_stops_everything_before_it_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        began = time.monotonic()
        done = subprocess.run(
            [str(RUN)],
            cwd=ROOT,
            env=clean_env(tmp_path, WEB_PORT=port),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert time.monotonic() - began < 10
    assert f"port {port}, the portal's, is already in use" in done.stderr
    assert "WEB_PORT=" in done.stderr and "Nothing was started" in done.stderr
    assert "Installing" not in done.stdout and not (tmp_path / "env").exists()
