#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian (or Raspberry Pi OS) machine.
#   scripts/setup.sh run   -> what the running system needs
#   scripts/setup.sh test  -> that, plus what the test suite needs (Chromium, PostgreSQL server binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "$2" ]; }
have python3 /usr/bin/python3 || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
have mosquitto /usr/sbin/mosquitto || need+=(mosquitto)
have redis-server /usr/bin/redis-server || need+=(redis-server)
have openssl /usr/bin/openssl || need+=(openssl)
if [ "$MODE" = test ]; then
  have chromium /usr/bin/chromium || need+=(chromium)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
  have xgettext /usr/bin/xgettext || need+=(gettext)  # tests/test_i18n.py runs makemessages on a copy
  have shellcheck /usr/bin/shellcheck || need+=(shellcheck)  # make test lints scripts/ and deploy/
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts the packaged services on install; we start our own when needed.
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
REQ=requirements.txt
[ "$MODE" = test ] && REQ=requirements-dev.txt
stamp=".venv/.installed-$(sha1sum "$REQ" requirements.txt | sha1sum | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r "$REQ"
  touch "$stamp"
fi
