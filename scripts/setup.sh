#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian (or Raspberry Pi OS) machine, as root or as a user with sudo.
#   scripts/setup.sh run   -> what the running system needs
#   scripts/setup.sh test  -> that, plus what the test suite needs (Chromium, PostgreSQL server binaries)
# It says what it does before each step and lets apt and pip show their progress (minutes on a Raspberry Pi).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
# As a normal user, apt runs under sudo, which resets the environment: DEBIAN_FRONTEND goes through `env`, or
# debconf tries to ask questions on a closed stdin.
SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo env DEBIAN_FRONTEND=noninteractive)

need=()
# Mosquitto lives in /usr/sbin, which is not on a normal user's PATH: look there too.
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
  if [ ${#SUDO[@]} -gt 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "Missing Debian packages: ${need[*]}. Install them as root (apt-get install ${need[*]}), or install" >&2
    echo "sudo and give this user the right to use it, then run this again." >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  echo "Installing Debian packages: ${need[*]}${SUDO[*]:+ (with sudo)}"
  echo "  apt-get update"
  "${SUDO[@]}" apt-get update -q
  echo "  apt-get install ${need[*]}"
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${need[@]}"
  # Debian starts the packaged services on install; scripts/run.sh starts its own beside them when needed.
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "Creating the Python environment .venv/"
  "$PY" -m venv .venv
fi
REQ=requirements.txt
[ "$MODE" = test ] && REQ=requirements-dev.txt
stamp_of() { echo ".venv/.installed-$(sha1sum "$1" requirements.txt | sha1sum | cut -c1-12)"; }
stamp=$(stamp_of "$REQ")
# What `make test` installed includes everything `make run` needs.
if [ ! -e "$stamp" ] && ! { [ "$MODE" = run ] && [ -e "$(stamp_of requirements-dev.txt)" ]; }; then
  echo "Installing the Python packages of $REQ into .venv/ (pip; a few minutes on a Raspberry Pi)"
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/pip install --disable-pip-version-check -r "$REQ"
  touch "$stamp"
fi
