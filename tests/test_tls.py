"""The portal answers HTTPS: daphne started by scripts/web.sh with the self-signed certificate of scripts/tls.sh."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

from .services import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


def test_the_portal_answers_https_with_its_self_signed_certificate(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "FABOMATIC_DATA_DIR": str(tmp_path),
        "WEB_PORT": str(port),
        "BIND": "127.0.0.1",
        "SECURE_SSL": "1",  # production security headers (HSTS, secure cookies)
        "ALLOWED_HOSTS": "localhost,127.0.0.1",
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
    }
    env.pop("TLS_CERT_FILE", None)
    env.pop("TLS_KEY_FILE", None)
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "web.sh")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port(port, timeout=30)
        cert = tmp_path / "tls" / "cert.pem"
        assert cert.exists() and oct((tmp_path / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
        context = ssl.create_default_context(cafile=str(cert))  # verification on, against that certificate only
        with urllib.request.urlopen(f"https://localhost:{port}/admin/login/", context=context, timeout=10) as r:
            assert r.status == 200
            assert b'name="username"' in r.read()
            assert "max-age=" in r.headers["Strict-Transport-Security"]
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # TLS only: no plain HTTP on the port
            urllib.request.urlopen(f"http://localhost:{port}/admin/login/", timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_tls_sh_keeps_an_existing_certificate(tmp_path: Path) -> None:
    env = {**os.environ, "FABOMATIC_DATA_DIR": str(tmp_path)}
    subprocess.run([str(ROOT / "scripts" / "tls.sh")], cwd=ROOT, env=env, check=True, capture_output=True)
    first = (tmp_path / "tls" / "cert.pem").read_bytes()
    subprocess.run([str(ROOT / "scripts" / "tls.sh")], cwd=ROOT, env=env, check=True, capture_output=True)
    assert (tmp_path / "tls" / "cert.pem").read_bytes() == first
