#!/usr/bin/env bash
# Make the portal's self-signed TLS certificate on first run: $DATA_DIR/tls/{cert,key}.pem (valid 10 years).
# It names this host, host.local, localhost and the host's IP addresses, so https://HOST:23336/ works.
# To use a real certificate instead, set TLS_CERT_FILE and TLS_KEY_FILE (then this script does nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${TLS_CERT_FILE:-}" ] && [ -n "${TLS_KEY_FILE:-}" ] && exit 0
dir="${FABOMATIC_DATA_DIR:-var}/tls"
[ -s "$dir/cert.pem" ] && [ -s "$dir/key.pem" ] && exit 0
mkdir -p "$dir"
chmod 700 "$dir"
host=$(hostname -s 2>/dev/null || hostname)
san="DNS:localhost,IP:127.0.0.1,IP:::1"
[ -n "$host" ] && [ "$host" != localhost ] && san="DNS:$host,DNS:$host.local,$san"
for ip in $(hostname -I 2>/dev/null || true); do
  case "$ip" in 127.*|::1) ;; *) san="$san,IP:$ip" ;; esac
done
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
  -subj "/CN=${host:-localhost}/O=Fab-O-Matic" -addext "subjectAltName=$san" \
  -keyout "$dir/key.pem.tmp" -out "$dir/cert.pem.tmp" 2>/dev/null
mv "$dir/key.pem.tmp" "$dir/key.pem"
mv "$dir/cert.pem.tmp" "$dir/cert.pem"
chmod 644 "$dir/cert.pem"
echo "Made a self-signed certificate for ${host:-localhost} in $dir (browsers will ask to accept it once)"
