#!/usr/bin/env bash
# Consistent backup while everything runs: SQLite through its online backup API, PostgreSQL with pg_dump
# (both via `manage.py backup`). Keeps the last ${BACKUP_KEEP:-14} copies in ${BACKUP_DIR:-$DATA_DIR/backups}.
# Run daily by deploy/systemd/fabomatic-backup.timer; copy the directory off the Pi (rsync, USB disk) too.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${BACKUP_DIR:-${FABOMATIC_DATA_DIR:-var}/backups}"
mkdir -p "$dir"
chmod 700 "$dir"
stamp=$(date +%Y%m%d-%H%M%S)
case "${DATABASE_URL:-sqlite}" in
  postgres*|pgsql*) out="$dir/fabomatic-$stamp.pgdump" ;;
  *) out="$dir/fabomatic-$stamp.sqlite3" ;;
esac
umask 077
.venv/bin/python manage.py backup --output "$out" >/dev/null
[ "${out##*.}" = sqlite3 ] && gzip -f "$out" && out="$out.gz"
# Newest first by modification time (as `ls -t` would list them), NUL-separated so no file name can split.
find "$dir" -maxdepth 1 -type f -name 'fabomatic-*' -printf '%T@\t%p\0' | sort -zrn | cut -zf2- \
  | tail -zn +"$(( ${BACKUP_KEEP:-14} + 1 ))" | xargs -0r rm -f
echo "Backup written to $out"
