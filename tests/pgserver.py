"""A throwaway PostgreSQL cluster on a free port (initdb + pg_ctl), for the tests and the benchmarks.

Its data directory and unix socket live in a new temporary directory, removed on ``stop()``. Works as a normal user
and as root (initdb refuses root: the binaries then run as the ``postgres`` system user through ``runuser``). Never
touches a PostgreSQL service already running on the machine (port 5432 or any other).

    cluster = start({"fsync": "off"})      # raises Unavailable when no server binaries (or no postgres user)
    try:
        url = cluster.url()                # postgres://postgres@127.0.0.1:<port>/postgres, trust authentication
    finally:
        cluster.stop()
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .services import free_port, wait_for_port


class Unavailable(RuntimeError):
    """PostgreSQL cannot be started here (no server binaries, or root without the postgres user)."""


def bindir() -> Path:
    """The newest installed server's binaries (Debian layout: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise Unavailable("PostgreSQL server binaries are not installed (scripts/setup.sh test installs them)")
    return Path(found[-1]).parent


def _runner() -> tuple[list[str], str | None]:
    """How to run the server binaries: as the postgres user when we are root."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable(
            "running PostgreSQL as root needs the postgres system user (the postgresql package adds it)"
        ) from None
    if not shutil.which("runuser"):
        raise Unavailable("running PostgreSQL as root needs runuser")
    return ["runuser", "-u", "postgres", "--"], "postgres"


@dataclass
class Cluster:
    port: int
    dir: Path  # holds data/, the log and the unix socket
    bin: Path
    prefix: list[str]  # runuser … when root

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def log(self) -> Path:
        return self.dir / "log"

    def url(self, database: str = "postgres") -> str:
        """A DATABASE_URL over TCP (as a deployment with its database on another host or port would have)."""
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str = "postgres") -> str:
        """A DATABASE_URL over the unix socket."""
        return f"postgres://postgres@/{database}?host={self.dir}&port={self.port}"

    def run(self, *cmd: str) -> str:
        done = subprocess.run([*self.prefix, *cmd], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{Path(cmd[0]).name} failed ({done.returncode}): {done.stdout}{done.stderr}{log}")
        return done.stdout

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; returns its URL."""
        self.run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (immediate: the cluster is thrown away) and remove its directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                self.run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def start(settings: dict[str, str] | None = None, *, prefix: str = "pg-") -> Cluster:
    """initdb and start a cluster on a free port; ``settings`` are extra server settings (``-c name=value``)."""
    binaries = bindir()
    run_as, owner = _runner()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    if owner:
        shutil.chown(tmp, owner)
        os.chmod(tmp, 0o700)
        parent = tmp.parent
        while parent != parent.parent:  # the postgres user must reach the directory
            if not os.stat(parent).st_mode & 0o001:
                shutil.rmtree(tmp, ignore_errors=True)
                raise Unavailable(f"{parent} is not reachable by the postgres user: set TMPDIR to e.g. /tmp")
            parent = parent.parent
    cluster = Cluster(port=free_port(), dir=tmp, bin=binaries, prefix=run_as)
    try:
        initdb = ["-D", str(cluster.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]
        cluster.run(str(binaries / "initdb"), *initdb)
        options = {"listen_addresses": "127.0.0.1", **(settings or {})}
        opts = f"-p {cluster.port} -k {tmp} " + " ".join(f"-c {k}={v}" for k, v in options.items())
        pg_ctl = ["-D", str(cluster.data), "-l", str(cluster.log), "-w", "-o", opts, "start"]
        cluster.run(str(binaries / "pg_ctl"), *pg_ctl)
        wait_for_port(cluster.port)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextmanager
def postgres(settings: dict[str, str] | None = None, *, prefix: str = "pg-") -> Iterator[Cluster]:
    cluster = start(settings, prefix=prefix)
    try:
        yield cluster
    finally:
        cluster.stop()
