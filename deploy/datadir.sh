#!/usr/bin/env bash
# Owners and modes of the data directory (deploy/install.sh runs it on every install and upgrade).
#   deploy/datadir.sh DATA [USER] [BROKER_GROUP]      (defaults: fabomatic, mosquitto)
# The database (e-mails, card UIDs, password hashes), logs and backups are for USER alone: DATA is 0710 with
# group BROKER_GROUP, so Mosquitto may pass through it to read DATA/mosquitto/ (2750) and list or read nothing
# else; files are 0640 or tighter. The units' UMask=0027 keeps new files that way.
set -euo pipefail
DATA=$1
OWNER=${2:-fabomatic}
BROKER=${3:-mosquitto}
install -d -o "$OWNER" -g "$BROKER" -m 710 "$DATA"
install -d -o "$OWNER" -g "$BROKER" -m 2750 "$DATA/mosquitto"
# Files made before the units set a umask (0644 databases and logs): nothing for others, nothing group-writable.
chmod -R g-w,o-rwx "$DATA"
