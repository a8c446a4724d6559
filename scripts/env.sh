#!/usr/bin/env bash
# Create .env on first run: a random SECRET_KEY (never a shipped default) and the local services.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -e .env ]; then
  key=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(50))')
  cat > .env <<ENV
# Generated on first run by scripts/env.sh; see .env.example for every setting.
SECRET_KEY=$key
REDIS_URL=redis://127.0.0.1:6379/0
MQTT_BROKER_URL=mqtt://127.0.0.1:1883
ENV
  chmod 600 .env
  echo "Wrote .env with a new SECRET_KEY"
fi
