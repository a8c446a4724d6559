#!/usr/bin/env bash
# `make run`: the whole system in the foreground, until Ctrl-C.
#  1. Checks that the portal's port is free, before anything starts (a busy port: a message and exit status 1).
#  2. Installs what is missing (scripts/setup.sh run), completes .env (scripts/env.sh), migrates, runs bootstrap.
#  3. Starts Mosquitto (deploy/mosquitto/dev.conf: the boards' listener on every interface, with a password) and
#     Redis as its own children, unless they already run: services already running are used and left alone.
#  4. Runs the portal and the bridge (honcho, Procfile), and prints the portal's addresses, the first administrator's
#     one-time password and what the boards need.
#  5. Ctrl-C (SIGINT), SIGTERM or SIGHUP: stops the portal and the bridge, then exactly the services it started, and
#     exits 0.
# Ports, from the environment or else .env: WEB_PORT (23336, the portal), MQTT_PORT (1883, the boards'),
# MQTT_BACKEND_PORT (1884, this host's own processes), REDIS_PORT (6379). Pid files, the broker's configuration and
# password file are in $FABOMATIC_DATA_DIR/run/ (default var/run/), the services' logs in $FABOMATIC_DATA_DIR/log/.
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"

# Field $2 of /proc/<pid>/stat, counted after the command name: state=1, ppid=2, pgrp=3, ..., starttime=20.
proc_field() {
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  read -r -a fields <<<"${stat##*) }"
  echo "${fields[$2 - 1]}"
}

# bash cannot trap a signal that was ignored when it started, as SIGINT is in a background job of a script (or of a
# CI runner): Ctrl-C or kill -INT would then stop nothing. Start again with SIGINT and SIGTERM at their defaults.
if [ -n "$(trap -p INT TERM)" ] && [ -z "${FABOMATIC_RUN_SIGNALS:-}" ] && env --default-signal=INT true 2>/dev/null; then
  FABOMATIC_RUN_SIGNALS=1 exec env --default-signal=INT,TERM "$self" "$@"
fi

# Ctrl-C on a terminal interrupts the terminal's foreground process group. Under `make run` that is make's, and
# make dies of SIGINT ("Error 130") whatever its recipe does. So on a terminal this script runs itself again as a
# job with its own process group, which job control makes the terminal's foreground: Ctrl-C reaches that copy only.
# Only with a controlling terminal (/dev/tty opens): under `su - user -c 'make run'` (a new session, stdin still a
# terminal) Ctrl-C reaches su, which sends SIGTERM to make, and make to this copy: a job copy would be left running.
if [ -t 0 ] && [ -t 2 ] && { : >/dev/tty; } 2>/dev/null && [ -z "${FABOMATIC_RUN_JOB:-}" ] && [ "$(proc_field $$ 3 || true)" != "$$" ]; then
  set -m
  status=0
  FABOMATIC_RUN_JOB=1 "$self" "$@" || status=$?
  exit "$status"
fi

cd "$(dirname "$self")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"  # Mosquitto is in /usr/sbin, not on a normal user's PATH
ENV_FILE=${FABOMATIC_ENV_FILE:-.env}
DATA=${FABOMATIC_DATA_DIR:-var}
RUN=$DATA/run
LOGS=$DATA/log
case $RUN in /*) run_path=$RUN ;; *) run_path=$PWD/$RUN ;; esac
begin=$SECONDS
if [ -t 1 ]; then bold=$'\e[1m' plain=$'\e[0m'; else bold="" plain=""; fi
step() { printf '%s[%3d s] %s%s\n' "$bold" "$((SECONDS - begin))" "$*" "$plain"; }
fail() { printf 'make run: %s\n' "$@" >&2; exit 1; }

# A setting as the portal reads it: the environment first, else the first VAR= line of .env; empty when unset.
setting() {
  local name=$1 line value
  if [ -n "${!name+set}" ]; then printf '%s' "${!name}"; return; fi
  [ -f "$ENV_FILE" ] || return 0
  line=$(grep -m1 -E "^[[:space:]]*(export[[:space:]]+)?$name=" "$ENV_FILE") || return 0
  value=${line#*=}
  value=${value%$'\r'}
  case $value in \"*\" | \'*\') value=${value:1:${#value}-2} ;; esac
  printf '%s' "$value"
}
# Give an empty or missing setting of .env a value (the line that is there, else a new one at the end).
write_setting() {
  if grep -q -E "^$1=" "$ENV_FILE"; then
    sed -i "0,/^$1=.*/s//$1=$2/" "$ENV_FILE"
  else
    echo "$1=$2" >> "$ENV_FILE"
  fi
}
is_set() { [ -n "${!1+set}" ] || { [ -f "$ENV_FILE" ] && grep -q -E "^[[:space:]]*(export[[:space:]]+)?$1=" "$ENV_FILE"; }; }
port_setting() {
  local value
  value=$(setting "$1")
  value=${value:-$2}
  if ! [[ $value =~ ^[0-9]+$ ]] || [ "$value" -lt 1 ] || [ "$value" -gt 65535 ]; then
    fail "$1=$value is not a port number"
  fi
  echo "$value"
}

# This machine's LAN addresses (no loopback, no link-local: a board cannot use those).
addresses=()
for ip in $(hostname -I 2>/dev/null || true); do
  case $ip in 127.* | ::1 | fe80:* | FE80:*) ;; *) addresses+=("$ip") ;; esac
done
host=$(hostname -s 2>/dev/null || hostname)
# Does something accept connections on address $1, port $2? (A connection to one of this machine's own addresses
# is answered at once, accepted or refused.)
accepts() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
accepts_lan() {  # port -> true, and the first LAN address that accepts on it in $lan_address
  local ip
  for ip in "${addresses[@]}"; do
    if accepts "$ip" "$1"; then
      lan_address=$ip
      return 0
    fi
  done
  return 1
}
join() {
  local IFS=, all
  all="$*"
  echo "${all//,/, }"
}
who_listens() {
  if command -v ss >/dev/null; then ss -Hltnp "( sport = :$1 )" 2>/dev/null | sed 's/^/    /' || true; fi
}

# --- One make run per folder; what an earlier one left running (killed with SIGKILL, its terminal gone) -----------
mkdir -p "$RUN" "$LOGS"
chmod 700 "$RUN"
chmod 750 "$LOGS"
# A pid file holds "pid start-time": a pid alone could name an unrelated process by now.
running() {  # pid file -> true when the process it names still runs
  local pid since
  [ -f "$1" ] || return 1
  read -r pid since < "$1" || true
  [ -n "${pid:-}" ] && [ "$(proc_field "$pid" 20 || true)" = "${since:-}" ]
}
if running "$RUN/run.pid"; then
  fail "make run already runs in this folder (pid $(cut -d' ' -f1 "$RUN/run.pid")): Ctrl-C in its terminal stops it."
fi
echo "$$ $(proc_field $$ 20)" > "$RUN/run.pid"
trap 'rm -f "$RUN/run.pid"' EXIT
for name in honcho mosquitto redis; do
  file=$RUN/$name.pid
  if running "$file"; then
    read -r pid _ < "$file"
    step "Stopping the $name an earlier make run left running (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$file"
done

# --- 1. Ports ------------------------------------------------------------------------------------------------------
WEB_PORT=$(port_setting WEB_PORT 23336)
export WEB_PORT  # scripts/env.sh writes PUBLIC_URL with it, scripts/web.sh serves on it
MQTT_PORT=$(port_setting MQTT_PORT 1883)
MQTT_BACKEND_PORT=$(port_setting MQTT_BACKEND_PORT 1884)
REDIS_PORT=$(port_setting REDIS_PORT 6379)
step "Checking the portal's port $WEB_PORT"
if accepts 127.0.0.1 "$WEB_PORT" || accepts_lan "$WEB_PORT"; then
  {
    echo "make run: port $WEB_PORT, the portal's, is already in use on this machine:"
    who_listens "$WEB_PORT"
    echo "Stop what listens there (the old FabOMatic backend?), or give the portal another port, e.g."
    echo "  WEB_PORT=23337 make run      (or WEB_PORT=23337 in $ENV_FILE; then change PUBLIC_URL there too)"
    echo "Nothing was started."
  } >&2
  exit 1
fi

# --- Stopping: exactly what this script started, newest first ------------------------------------------------------
declare -A pids=()
started_names=()
up=0
stop_one() {
  local name=$1 pid=${pids[$1]:-} wait_for=$2
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((wait_for * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  rm -f "$RUN/$name.pid"
  unset "pids[$name]"
}
stop_all() {
  local i
  for ((i = ${#started_names[@]} - 1; i >= 0; i--)); do
    case ${started_names[i]} in honcho) stop_one honcho 15 ;; *) stop_one "${started_names[i]}" 10 ;; esac
  done
}
# shellcheck disable=SC2317  # called by the trap
on_signal() {
  trap '' INT TERM HUP
  echo
  step "Stopping what make run started"
  stop_all
  if [ "$up" = 1 ]; then
    step "Stopped everything make run started"
    exit 0
  fi
  step "Interrupted during start-up"
  exit 130
}
trap on_signal INT TERM HUP
trap 'stop_all; rm -f "$RUN/run.pid"' EXIT  # also when a step fails

# A child in a process group of its own (job control): Ctrl-C on the terminal does not reach it, this script stops
# it in order. Its pid and start time go to $RUN/<name>.pid, so a later run can recognise it if it is orphaned.
spawn() {
  local name=$1 log=$2
  shift 2
  set -m
  if [ "$log" = - ]; then "$@" </dev/null & else "$@" </dev/null >>"$log" 2>&1 & fi
  local pid=$!
  set +m
  pids[$name]=$pid
  started_names+=("$name")
  echo "$pid $(proc_field "$pid" 20 || true)" > "$RUN/$name.pid"
}
alive() { [ -n "${pids[$1]:-}" ] && kill -0 "${pids[$1]}" 2>/dev/null; }
await() {  # name, address, port: until the service accepts connections (20 s)
  local _
  for _ in $(seq 200); do
    accepts "$2" "$3" && return 0
    alive "$1" || break
    sleep 0.1
  done
  echo "make run: $1 did not come up on $2:$3; the end of its log:" >&2
  tail -n 20 "$LOGS/$1.log" >&2 2>/dev/null || true
  on_failure
}
on_failure() {
  trap '' INT TERM HUP
  stop_all
  exit 1
}

# --- 2. Set-up -----------------------------------------------------------------------------------------------------
step "Installing what is missing (scripts/setup.sh run)"
scripts/setup.sh run
step "Settings in $ENV_FILE (scripts/env.sh)"
scripts/env.sh
# From here on, what is written is nobody else's (the data directory holds personal data; the systemd units set
# UMask=0027 too). Not earlier: .venv/ stays readable.
umask 027
step "Database: applying migrations"
.venv/bin/python manage.py migrate --noinput
step "Default roles and the first administrator (manage.py bootstrap)"
bootstrap=$(.venv/bin/python manage.py bootstrap)
printf '%s\n' "$bootstrap"
step "Static files"
.venv/bin/python manage.py collectstatic --noinput -v0

# --- 3. Services ---------------------------------------------------------------------------------------------------
left_alone=()
boards=""
# The broker: unless MQTT_BROKER_URL names another one, the bridge uses this machine's on the default port.
bridge_url=$(setting MQTT_BROKER_URL)
lan_address=""
case ${bridge_url%/} in
  "" | mqtt://127.0.0.1:1883 | mqtt://localhost:1883 | mqtt://127.0.0.1 | mqtt://localhost) own_broker=1 ;;
  *) own_broker=0 ;;
esac
if [ "$own_broker" = 0 ]; then
  boards="own"
  step "MQTT: the broker of MQTT_BROKER_URL (not started by make run)"
elif accepts_lan "$MQTT_PORT" || { [ ${#addresses[@]} -eq 0 ] && accepts 127.0.0.1 "$MQTT_PORT"; }; then
  # A broker already serves the LAN on this port (a lab's own Mosquitto): boards keep using it, with its accounts.
  boards="existing"
  left_alone+=("Mosquitto on $MQTT_PORT")
  # The bridge connects where the boards do (127.0.0.1 may be another broker, e.g. Debian's, on loopback only).
  case ${lan_address:-} in
    "") bridge_url=mqtt://127.0.0.1:$MQTT_PORT ;;
    *:*) bridge_url=mqtt://[$lan_address]:$MQTT_PORT ;;
    *) bridge_url=mqtt://$lan_address:$MQTT_PORT ;;
  esac
  step "MQTT: a broker already listens on port $MQTT_PORT: used as it is, and left alone"
else
  binds=("")  # every interface
  if accepts 127.0.0.1 "$MQTT_PORT"; then
    # Debian's packaged Mosquitto holds 127.0.0.1:1883 only: boards reach ours on each LAN address instead.
    binds=("${addresses[@]}")
    left_alone+=("the broker on 127.0.0.1:$MQTT_PORT")
  fi
  if accepts 127.0.0.1 "$MQTT_BACKEND_PORT"; then
    is_set MQTT_BACKEND_PORT && fail "port $MQTT_BACKEND_PORT (MQTT_BACKEND_PORT) is in use: choose another one"
    MQTT_BACKEND_PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  fi
  board_user=$(setting MQTT_BOARD_USER)
  board_password=$(setting MQTT_BOARD_PASSWORD)
  if [ -z "$board_user" ] || [ -z "$board_password" ]; then
    step "Making the boards' broker account (MQTT_BOARD_USER, MQTT_BOARD_PASSWORD in $ENV_FILE)"
    grep -q "^# The boards' broker account" "$ENV_FILE" || {
      echo "# The boards' broker account of make run (scripts/run.sh), for each board's conf/secrets.hpp (mqtt_user,"
      echo "# mqtt_password). A lab moving from FabOMatic: set the user and password its boards already have."
    } >> "$ENV_FILE"
    if [ -z "$board_user" ]; then
      board_user=board
      write_setting MQTT_BOARD_USER "$board_user"
    fi
    if [ -z "$board_password" ]; then
      board_password=$(.venv/bin/python -c 'import secrets
alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"  # fits the board configuration portal
print("".join(secrets.choice(alphabet) for _ in range(20)))')
      write_setting MQTT_BOARD_PASSWORD "$board_password"
    fi
  fi
  case $board_user in *:* | *" "*) fail "MQTT_BOARD_USER may contain neither ':' nor spaces" ;; esac
  # The password file: Mosquitto's $7$ PBKDF2-SHA512 hash, as mosquitto_passwd and telemetry/credentials.py write it.
  (
    umask 077
    # shellcheck disable=SC2016  # Python, not shell, in single quotes
    BOARD_USER=$board_user BOARD_PASSWORD=$board_password .venv/bin/python -c 'import base64, hashlib, os, secrets
salt = secrets.token_bytes(12)
digest = hashlib.pbkdf2_hmac("sha512", os.environ["BOARD_PASSWORD"].encode(), salt, 101, dklen=64)
user = os.environ["BOARD_USER"]
print(f"{user}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}")' \
      > "$RUN/board-passwd"
  )
  # The configuration: dev.conf's own settings and loopback listener, then its boards' listener once per address.
  conf=$RUN/mosquitto.conf
  {
    echo "# Written by scripts/run.sh from deploy/mosquitto/dev.conf on each start."
    # As root, Mosquitto would switch to the mosquitto user before reading the password file, which is root's alone.
    [ "$(id -u)" -ne 0 ] || echo "user root"
    sed -n '/^# --- The boards/q; s/^listener 1884 127\.0\.0\.1$/listener '"$MQTT_BACKEND_PORT"' 127.0.0.1/; p' \
      deploy/mosquitto/dev.conf
    for bind in "${binds[@]}"; do
      sed -n '/^# --- The boards/,$ { /^#/d; s/^listener 1883$/listener '"$MQTT_PORT${bind:+ $bind}"'/;
        s|^password_file .*|password_file '"$run_path/board-passwd"'|; p }' deploy/mosquitto/dev.conf
    done
  } > "$conf"
  step "Starting Mosquitto: boards on port $MQTT_PORT (${binds[*]:-every interface}), this host on 127.0.0.1:$MQTT_BACKEND_PORT"
  spawn mosquitto "$LOGS/mosquitto.log" mosquitto -c "$conf"
  await mosquitto 127.0.0.1 "$MQTT_BACKEND_PORT"
  boards="ours"
  bridge_url=mqtt://127.0.0.1:$MQTT_BACKEND_PORT
fi

# Redis carries the bridge's live events to the portal. REDIS_URL= (empty) in .env: none, single process.
redis_url=$(setting REDIS_URL)
if is_set REDIS_URL && [ -z "$redis_url" ]; then
  step "Redis: none (REDIS_URL is empty)"
else
  case ${redis_url%/} in
    "" | redis://127.0.0.1:6379/0 | redis://localhost:6379/0 | redis://127.0.0.1:6379 | redis://localhost:6379)
      redis_url=redis://127.0.0.1:$REDIS_PORT/0
      if accepts 127.0.0.1 "$REDIS_PORT"; then
        left_alone+=("Redis on $REDIS_PORT")
        step "Redis: already running on $REDIS_PORT: used as it is, and left alone"
      else
        step "Starting Redis on 127.0.0.1:$REDIS_PORT"
        mkdir -p "$RUN/redis"
        spawn redis "$LOGS/redis.log" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
          --daemonize no --dir "$run_path/redis"
        await redis 127.0.0.1 "$REDIS_PORT"
      fi
      ;;
    *) step "Redis: the one of REDIS_URL (not started by make run)" ;;
  esac
fi

# --- 4. The portal and the bridge ----------------------------------------------------------------------------------
# honcho gets no .env of its own (-e /dev/null): the settings read .env themselves, after the environment, so the
# URLs chosen above win; scripts/web.sh reads its variables from the environment, so they are passed here.
export MQTT_BROKER_URL=$bridge_url REDIS_URL=$redis_url WEB_PORT PYTHONUNBUFFERED=1
for name in BIND TLS_CERT_FILE TLS_KEY_FILE PROXY_HEADERS; do
  value=$(setting "$name")
  [ -z "$value" ] || export "$name=$value"
done
step "Starting the portal (https, port $WEB_PORT), the bridge and the webhook worker (honcho, Procfile)"
# No prefix: honcho's would add a second clock (UTC) to lines that carry the portal's own (TIME_ZONE).
spawn honcho - .venv/bin/honcho start --no-prefix -f Procfile -e /dev/null
probe=$(setting BIND)
case $probe in "" | 0.0.0.0 | :: | "[::]") probe=127.0.0.1 ;; esac
until accepts "$probe" "$WEB_PORT"; do
  if ! alive honcho; then
    echo "make run: the portal stopped before it answered (see above)" >&2
    on_failure
  fi
  sleep 0.2
done
up=1

# --- What to open, and what the boards need -------------------------------------------------------------------------
urls=()
[ -z "$host" ] || [ "$host" = localhost ] || urls+=("https://$host.local:$WEB_PORT/")
for ip in "${addresses[@]}"; do
  case $ip in *:*) urls+=("https://[$ip]:$WEB_PORT/") ;; *) urls+=("https://$ip:$WEB_PORT/") ;; esac
done
urls+=("https://localhost:$WEB_PORT/")
names=()
[ -z "$host" ] || [ "$host" = localhost ] || names+=("$host.local")
names+=("${addresses[@]}")
broker_hosts=$(join "${names[@]}")
broker_hosts=${broker_hosts:-this machine}
[ ${#names[@]} -lt 2 ] || broker_hosts="${broker_hosts%, *} or ${names[-1]}"
{
  echo
  echo "  Portal:  ${urls[0]}"
  for url in "${urls[@]:1}"; do echo "           $url"; done
  echo "           (a self-signed certificate: the browser asks to accept it once)"
  if grep -q "password:" <<<"$bootstrap"; then
    echo "  First administrator (this first start only):"
    grep -E "e-mail:|password:" <<<"$bootstrap" | sed 's/^ */    /'
  fi
  echo "  Administrator's password lost, or locked out: .venv/bin/python manage.py bootstrap --new-password"
  case $boards in
    ours)
      echo "  Boards: broker host $broker_hosts, port $MQTT_PORT (in each board's configuration portal);"
      echo "          conf/secrets.hpp: mqtt_user \"$board_user\", mqtt_password \"$board_password\""
      echo "          (MQTT_BOARD_USER and MQTT_BOARD_PASSWORD in $ENV_FILE: a lab moving from FabOMatic sets its own)"
      [ "$MQTT_PORT" = 1883 ] || echo "          Boards have port 1883 compiled in: MQTT_PORT=$MQTT_PORT suits simulators only."
      ;;
    existing)
      echo "  Boards: the broker already on port $MQTT_PORT serves them, with its own accounts. The bridge connects"
      echo "          to $bridge_url; if that broker wants an account, set MQTT_BROKER_URL=mqtt://USER:PASSWORD@... in $ENV_FILE"
      ;;
    own) echo "  Boards: the broker of MQTT_BROKER_URL serves them." ;;
  esac
  started=()
  for name in "${started_names[@]}"; do [ "$name" = honcho ] || started+=("$name (pid ${pids[$name]})"); done
  [ ${#started[@]} -eq 0 ] || echo "  Started here: $(join "${started[@]}"); their logs: $LOGS/"
  [ ${#left_alone[@]} -eq 0 ] || echo "  Already running, left alone: $(join "${left_alone[@]}")"
  step "Fab-O-Matic is running. Ctrl-C stops it, and everything make run started."
  echo
}

status=0
wait "${pids[honcho]}" || status=$?
trap '' INT TERM HUP
echo "make run: the portal or the bridge stopped (status $status): stopping the rest" >&2
stop_all
exit "$status"
