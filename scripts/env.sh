#!/usr/bin/env bash
# Create .env on first run: a random SECRET_KEY (never a shipped default) and the local services.
# On every run, add what an older .env lacks: ALLOWED_HOSTS (this machine's names and addresses, never "*") and
# PUBLIC_URL (the address password-reset links point to). Existing values are never changed.
# deploy/install.sh runs it too, after writing .env from .env.example.
set -euo pipefail
cd "$(dirname "$0")/.."
file="${FABOMATIC_ENV_FILE:-.env}"
if [ ! -e "$file" ]; then
  key=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(50))')
  (
    umask 077
    cat > "$file" <<ENV
# Generated on first run by scripts/env.sh; see .env.example for every setting.
SECRET_KEY=$key
REDIS_URL=redis://127.0.0.1:6379/0
MQTT_BROKER_URL=mqtt://127.0.0.1:1883
ENV
  )
  echo "Wrote $file with a new SECRET_KEY"
fi

# The names and addresses this machine answers to, as the TLS certificate of scripts/tls.sh names them.
host=$(hostname -s 2>/dev/null || hostname)
hosts="localhost,127.0.0.1,[::1]"
[ -n "$host" ] && [ "$host" != localhost ] && hosts="$host,$host.local,$hosts"
for ip in $(hostname -I 2>/dev/null || true); do
  case "$ip" in
    127.*|::1|fe80:*) ;;
    *:*) hosts="$hosts,[$ip]" ;;
    *) hosts="$hosts,$ip" ;;
  esac
done
if [ -n "$host" ] && [ "$host" != localhost ]; then
  url="https://$host.local:${WEB_PORT:-23336}"
else
  url="https://localhost:${WEB_PORT:-23336}"
fi

if ! grep -q '^ALLOWED_HOSTS=' "$file"; then
  {
    echo "# This machine's names and addresses (scripts/env.sh); add a reverse proxy's public name here."
    echo "ALLOWED_HOSTS=$hosts"
  } >> "$file"
  echo "Set ALLOWED_HOSTS=$hosts in $file"
fi
if ! grep -q '^PUBLIC_URL=' "$file"; then
  {
    echo "# The address staff open the portal at: password-reset links point here."
    echo "PUBLIC_URL=$url"
  } >> "$file"
  echo "Set PUBLIC_URL=$url in $file (change it if staff use another address)"
fi
