"""File modes of personal data on real files: the database, the logs and the data directory are nobody else's."""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .services import ROOT

UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))


class _CaseSensitiveParser(configparser.ConfigParser):
    """systemd's keys are case-sensitive (``UMask``): kept as written, not lower-cased."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may pass through (pytest's tmp_path is root's alone, which would hide the point)."""
    path = Path(tempfile.mkdtemp(prefix="fabomatic-modes-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_every_unit_sets_a_umask(unit: Path) -> None:
    parser = _CaseSensitiveParser(strict=False, interpolation=None)
    parser.read(unit)
    assert parser["Service"].get("UMask") == "0027"


def test_the_database_and_the_logs_are_created_for_the_owner_and_group_only(open_dir: Path) -> None:
    """The real code that creates them (migrate writes the SQLite database and its own log file), started with the
    permissive umask of a login shell or sudo, as install.sh runs it."""
    data = open_dir / "data"
    env = {**os.environ, "FABOMATIC_ENV_FILE": "/nonexistent", "FABOMATIC_DATA_DIR": str(data)}
    for default in ("DATABASE_URL", "LOG_DIR"):  # the database and the log files where they are by default
        env.pop(default, None)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    database = data / "fabomatic.sqlite3"
    log = data / "log" / "migrate.log"
    files = [database, log, *data.glob("fabomatic.sqlite3-*")]
    assert database.exists() and log.exists()
    assert {f.name: oct(mode(f) & 0o037) for f in files} == {f.name: "0o0" for f in files}
    for directory in (data, data / "log"):
        assert mode(directory) & 0o027 == 0, oct(mode(directory))


@pytest.mark.skipif(os.geteuid() != 0, reason="changes owners and reads as another user: needs root")
def test_install_locks_down_the_data_directory_of_an_existing_install(open_dir: Path) -> None:
    """deploy/datadir.sh (install.sh's part that sets owners and modes) on the files an older install left 0644;
    then the 'nobody' user tries to read the database, as it did."""
    data = open_dir / "data"
    (data / "log").mkdir(parents=True)
    (data / "mosquitto").mkdir()
    for path, text in [("fabomatic.sqlite3", "SQLite format 3"), ("log/web.log", "x"), ("mosquitto/passwd", "b:h")]:
        (data / path).write_text(text)
        (data / path).chmod(0o644)
    data.chmod(0o751)
    (data / "log").chmod(0o755)
    user, group = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip(), "nogroup"

    subprocess.run([str(ROOT / "deploy" / "datadir.sh"), str(data), user, group], check=True)

    assert oct(mode(data)) == "0o710"
    assert oct(mode(data / "mosquitto")) == "0o2750"
    for path in ("fabomatic.sqlite3", "log/web.log", "mosquitto/passwd"):
        assert mode(data / path) & 0o037 == 0, path
    assert mode(data / "log") & 0o027 == 0
    as_nobody = subprocess.run(
        ["cat", str(data / "fabomatic.sqlite3")], user="nobody", group="nogroup", extra_groups=[], capture_output=True
    )
    assert as_nobody.returncode != 0 and b"Permission denied" in as_nobody.stderr
    listing = subprocess.run(["ls", str(data)], user="nobody", group="nogroup", extra_groups=[], capture_output=True)
    assert listing.returncode != 0
