#!/usr/bin/env bash
# The portal: daphne serving HTTPS on ${WEB_PORT:-23336} (honcho sets PORT for every process, so not PORT),
# TLS_CERT_FILE/TLS_KEY_FILE if given, else a self-signed certificate made on first run (scripts/tls.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
umask 027  # the database and logs hold personal data (the systemd units set UMask=0027 too)
export PYTHONUNBUFFERED=1  # the access log goes to stdout: each line at once, not when a buffer fills
scripts/tls.sh
dir="${FABOMATIC_DATA_DIR:-var}/tls"
cert="${TLS_CERT_FILE:-$dir/cert.pem}"
key="${TLS_KEY_FILE:-$dir/key.pem}"
# Twisted endpoint syntax: colons and backslashes in paths must be escaped.
esc() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/:/\\:/g'; }
# Behind a reverse proxy (deploy/caddy/Caddyfile) set PROXY_HEADERS=1 so the client IP (login lockout, rate
# limits) comes from X-Forwarded-For; never set it when the portal is reachable directly, or clients could forge it.
proxy=()
[ "${PROXY_HEADERS:-0}" = 1 ] && proxy=(--proxy-headers)
exec .venv/bin/daphne -e "ssl:${WEB_PORT:-23336}:interface=${BIND:-0.0.0.0}:privateKey=$(esc "$key"):certKey=$(esc "$cert")" \
  "${proxy[@]}" fabomatic.asgi:application
