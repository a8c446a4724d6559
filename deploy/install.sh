#!/usr/bin/env bash
# One-time production set-up on a Raspberry Pi (Raspberry Pi OS / Debian), as root, from a checkout in /opt/fabomatic:
#   sudo git clone <repo> /opt/fabomatic && sudo /opt/fabomatic/deploy/install.sh
# Idempotent: run it again after an upgrade to refresh the units.
set -euo pipefail
APP=/opt/fabomatic
DATA=/var/lib/fabomatic
cd "$APP"
id fabomatic >/dev/null 2>&1 || useradd --system --home-dir "$DATA" --shell /usr/sbin/nologin fabomatic
scripts/setup.sh run
# The data directory: the fabomatic user's alone (the broker's group may only pass through to mosquitto/).
deploy/datadir.sh "$DATA" fabomatic mosquitto
if [ ! -e .env ]; then
  key=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(50))')
  pw=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')
  sed -e "s|^SECRET_KEY=.*|SECRET_KEY=$key|" -e "s|^DEBUG=.*|DEBUG=0|" \
      -e "s|^MQTT_BROKER_URL=.*|MQTT_BROKER_URL=mqtt://fabomatic-backend:$pw@127.0.0.1:1884|" \
      -e "s|^REDIS_URL=.*|REDIS_URL=redis://127.0.0.1:6379/0|" .env.example > .env
  chown root:fabomatic .env
  chmod 640 .env
  echo "Wrote $APP/.env: review ALLOWED_HOSTS, PUBLIC_URL, EMAIL_URL and DEFAULT_ADMIN_EMAIL"
fi
scripts/env.sh  # ALLOWED_HOSTS (this machine's names and addresses) and PUBLIC_URL, when .env lacks them
chown -R fabomatic:fabomatic "$APP/var" 2>/dev/null || true
chmod -R g-w,o-rwx "$APP/var" 2>/dev/null || true
cp deploy/mosquitto/fabomatic.conf /etc/mosquitto/conf.d/fabomatic.conf
cp deploy/systemd/*.service deploy/systemd/*.timer deploy/systemd/*.path /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now redis-server
sudo -u fabomatic env FABOMATIC_DATA_DIR="$DATA" .venv/bin/python manage.py migrate --noinput
sudo -u fabomatic env FABOMATIC_DATA_DIR="$DATA" .venv/bin/python manage.py bootstrap
sudo -u fabomatic env FABOMATIC_DATA_DIR="$DATA" .venv/bin/python manage.py mosquitto_credentials
systemctl enable --now mosquitto fabomatic-mosquitto-reload.path
systemctl restart mosquitto
systemctl enable --now fabomatic-web fabomatic-bridge fabomatic-webhooks fabomatic-ota.path
systemctl enable --now fabomatic-purge.timer fabomatic-weekly-summary.timer fabomatic-training-reminders.timer \
  fabomatic-backup.timer
echo "Portal: https://$(hostname).local:23336/"
