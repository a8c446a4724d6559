#!/usr/bin/env bash
# Start Mosquitto and Redis for `make run` when nothing is listening on their ports yet.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var/log
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! listening "${MQTT_PORT:-1883}"; then
  echo "Starting Mosquitto on ${MQTT_PORT:-1883} (deploy/mosquitto/dev.conf)"
  sed "s/^listener 1883/listener ${MQTT_PORT:-1883}/" deploy/mosquitto/dev.conf > var/mosquitto-dev.conf
  mosquitto -d -c var/mosquitto-dev.conf
fi
if ! listening "${REDIS_PORT:-6379}"; then
  echo "Starting Redis on ${REDIS_PORT:-6379}"
  redis-server --daemonize yes --bind 127.0.0.1 --port "${REDIS_PORT:-6379}" --save "" --appendonly no \
    --dir "$PWD/var" --logfile "$PWD/var/log/redis.log"
fi
for _ in $(seq 50); do listening "${MQTT_PORT:-1883}" && listening "${REDIS_PORT:-6379}" && exit 0; sleep 0.1; done
echo "Mosquitto or Redis did not come up" >&2; exit 1
