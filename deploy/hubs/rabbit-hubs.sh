#!/usr/bin/env bash
# Three INDEPENDENT local RabbitMQ nodes on THIS machine (not a cluster): one per hub, as separate
# installations with their own operators would be, for trying and testing hub links (shovels).
#
#   deploy/hubs/rabbit-hubs.sh [--base DIR] start            start every hub node (idempotent)
#   deploy/hubs/rabbit-hubs.sh [--base DIR] stop             stop every hub node; no process is left behind
#   deploy/hubs/rabbit-hubs.sh [--base DIR] status           which hub nodes run, with their URLs
#   deploy/hubs/rabbit-hubs.sh [--base DIR] stop-node N      stop hub node N (1-3): a WAN or hub outage
#   deploy/hubs/rabbit-hubs.sh [--base DIR] start-node N     start hub node N again (its shovels resume)
#   deploy/hubs/rabbit-hubs.sh [--base DIR] ctl N ARGS…      rabbitmqctl against hub node N
#   deploy/hubs/rabbit-hubs.sh [--base DIR] purge            stop, then delete the base dir
#
# Node N is hubN@localhost with AMQP on 127.0.0.1:$((5700+N)), the management HTTP API (which
# `exchange hub link` and `exchange hub status` talk to) on 127.0.0.1:$((15700+N)) and Erlang
# distribution on $((25700+N)); override with RABBIT_HUBS_NAME (the "hub" prefix), RABBIT_HUBS_PORT_BASE,
# RABBIT_HUBS_MGMT_BASE, RABBIT_HUBS_DIST_BASE, RABBIT_HUBS_CTL_PORT_MIN. These ports stay clear of the
# default node (5672), deploy/cluster/rabbit-cluster.sh (5681-5683) and its test (5691-5693).
# Each node has its own data dir, logs, Erlang cookie and enabled-plugins file under the base dir
# (default var/hubs, or RABBIT_HUBS_BASE); the script enables rabbitmq_shovel,
# rabbitmq_shovel_management and rabbitmq_management on the nodes it starts (rabbitmq-plugins
# --offline) and on no other. The nodes run as the calling user straight from Debian's
# /usr/lib/rabbitmq/bin; the default node and the shared epmd are never touched.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BASE="${RABBIT_HUBS_BASE:-$ROOT/var/hubs}"
if [ "${1:-}" = "--base" ]; then BASE="$2"; shift 2; fi
case "$BASE" in /*) ;; *) BASE="$PWD/$BASE" ;; esac   # absolute: the nodes run from their own dirs
NODES=3
NAME="${RABBIT_HUBS_NAME:-hub}"
PORT_BASE="${RABBIT_HUBS_PORT_BASE:-5700}"
MGMT_BASE="${RABBIT_HUBS_MGMT_BASE:-15700}"
DIST_BASE="${RABBIT_HUBS_DIST_BASE:-25700}"
# CLI tools open a distribution port too; keep ours off the default node's and the cluster script's ranges.
CTL_PORT_MIN="${RABBIT_HUBS_CTL_PORT_MIN:-35800}"
TIMEOUT="${RABBIT_HUBS_TIMEOUT:-120}"
# TLS (amqps) for the links: with RABBIT_HUBS_TLS_DIR holding ca.pem and, for each node N that
# should have a TLS listener, node$N.pem and node$N.key, node N also listens on 127.0.0.1 port
# RABBIT_HUBS_TLS_BASE+N (default PORT_BASE+20: 5721-5723), verifying clients' certificates
# against ca.pem (verify_peer, a certificate required).
TLS_DIR="${RABBIT_HUBS_TLS_DIR:-}"
TLS_BASE="${RABBIT_HUBS_TLS_BASE:-$((PORT_BASE + 20))}"
PLUGINS="rabbitmq_management rabbitmq_shovel rabbitmq_shovel_management"

bindir() {
  local d
  for d in /usr/lib/rabbitmq/bin "$(dirname "$(readlink -f "$(command -v rabbitmq-server 2>/dev/null || echo /nonexistent)")")"; do
    if [ -x "$d/rabbitmq-server" ] && [ -x "$d/rabbitmqctl" ] && [ -x "$d/rabbitmq-plugins" ]; then echo "$d"; return; fi
  done
  echo "rabbit-hubs: RabbitMQ scripts not found; install Debian's rabbitmq-server (apt-get install rabbitmq-server)" >&2
  exit 1
}
BIN="$(bindir)"

say() { printf '[rabbit-hubs] %s\n' "$*" >&2; }
node_name() { echo "$NAME$1@localhost"; }
node_dir() { echo "$BASE/$NAME$1"; }

check_n() {
  case "${1:-}" in 1|2|3) ;; *) echo "rabbit-hubs: node must be 1, 2 or 3 (got '${1:-}')" >&2; exit 2 ;; esac
}

# Everything a node (and rabbitmqctl / rabbitmq-plugins talking to it) needs, isolated from /etc/rabbitmq.
node_env() {
  local n="$1" d
  d="$(node_dir "$n")"
  export HOME="$d/home"                          # this hub's own cookie: $HOME/.erlang.cookie
  export RABBITMQ_NODENAME; RABBITMQ_NODENAME="$(node_name "$n")"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT=$((PORT_BASE + n))
  export RABBITMQ_DIST_PORT=$((DIST_BASE + n))
  # A path that does not exist: never source /etc/rabbitmq/rabbitmq-env.conf (it pins rabbit@localhost).
  export RABBITMQ_CONF_ENV_FILE="$BASE/no-rabbitmq-env.conf"
  export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
  export RABBITMQ_MNESIA_BASE="$d/mnesia"
  export RABBITMQ_LOG_BASE="$d/log"
  export RABBITMQ_PID_FILE="$d/rabbitmq.pid"
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_DIST_PORT_MIN=$((CTL_PORT_MIN + 10 * (n - 1)))
  export RABBITMQ_CTL_DIST_PORT_MAX=$((CTL_PORT_MIN + 10 * (n - 1) + 9))
  export ERL_EPMD_ADDRESS=127.0.0.1
  export ERL_CRASH_DUMP="$d/log/erl_crash.dump"
}

ctl() {  # ctl N args…  (in a subshell so the environment does not leak between nodes)
  local n="$1"; shift
  ( node_env "$n"; exec "$BIN/rabbitmqctl" -n "$(node_name "$n")" "$@" )
}

prepare() {
  local n d cookie pids=() p rc=0
  for n in $(seq 1 "$NODES"); do
    d="$(node_dir "$n")"
    mkdir -p "$d/mnesia" "$d/log" "$d/home"
    if [ ! -s "$d/home/.erlang.cookie" ]; then
      # One cookie per hub: separate installations do not share Erlang distribution.
      cookie="$(head -c 4096 /dev/urandom | LC_ALL=C tr -dc 'A-Z')"
      (umask 077; printf '%s' "${cookie:0:32}" >"$d/home/.erlang.cookie")
    fi
    chmod 400 "$d/home/.erlang.cookie"
    cat >"$d/rabbitmq.conf" <<CONF
# Generated by deploy/hubs/rabbit-hubs.sh for $(node_name "$n"); edits are overwritten.
listeners.tcp.default = 127.0.0.1:$((PORT_BASE + n))
management.tcp.ip = 127.0.0.1
management.tcp.port = $((MGMT_BASE + n))
management.rates_mode = none
# Queue figures every second (default 5 s): \`exchange hub status\` and the tests read them.
collect_statistics_interval = 1000
log.file.level = info
log.console = false
CONF
    if [ -n "$TLS_DIR" ] && [ -s "$TLS_DIR/node$n.pem" ]; then
      cat >>"$d/rabbitmq.conf" <<CONF
listeners.ssl.default = 127.0.0.1:$((TLS_BASE + n))
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/node$n.pem
ssl_options.keyfile = $TLS_DIR/node$n.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
CONF
    fi
    if [ ! -s "$d/enabled_plugins" ] || ! grep -q rabbitmq_shovel_management "$d/enabled_plugins"; then
      enable_plugins "$n" & pids+=($!)   # side by side: each is a CLI start-up of a few seconds
    fi
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  [ "$rc" = 0 ] || exit 1
}

enable_plugins() {
  local n="$1" d
  d="$(node_dir "$n")"
  # The project's own set-up enables the plugins, for this node only (its own plugins file).
  ( node_env "$n"; "$BIN/rabbitmq-plugins" --offline enable $PLUGINS >"$d/log/plugins.log" 2>&1 ) || {
    say "rabbitmq-plugins enable failed for $(node_name "$n"):"; cat "$d/log/plugins.log" >&2; return 1; }
}

pid_of() {  # the beam pid of node N if it is alive, else nothing
  local f pid
  f="$(node_dir "$1")/rabbitmq.pid"
  [ -s "$f" ] || return 1
  pid="$(tr -dc '0-9' <"$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

running() { ctl "$1" ping >/dev/null 2>&1; }

launch() {  # start node N in the background (no wait)
  local n="$1" d
  d="$(node_dir "$n")"
  if pid_of "$n" >/dev/null || running "$n"; then say "$(node_name "$n") already running"; return 0; fi
  say "starting $(node_name "$n") (AMQP 127.0.0.1:$((PORT_BASE + n)), management $((MGMT_BASE + n)), dist $((DIST_BASE + n)))"
  rm -f "$d/rabbitmq.pid"
  (
    node_env "$n"
    cd "$d"
    # Foreground mode in its own session: the wrapper traps TERM and stops the node cleanly.
    exec setsid "$BIN/rabbitmq-server" >"$d/log/startup.log" 2>&1 </dev/null
  ) &
  echo $! >"$d/launcher.pid"
}

await() {
  local n="$1" deadline launcher
  deadline=$((SECONDS + TIMEOUT))
  launcher="$(cat "$(node_dir "$n")/launcher.pid" 2>/dev/null || true)"
  until running "$n"; do
    if [ -n "$launcher" ] && ! kill -0 "$launcher" 2>/dev/null; then SECONDS=$deadline; fi
    if [ "$SECONDS" -ge "$deadline" ]; then break; fi
    sleep 0.5
  done
  if ! ctl "$n" await_startup --timeout "$TIMEOUT" >/dev/null 2>&1; then
    say "$(node_name "$n") did not start; last lines of $(node_dir "$n")/log:"
    tail -n 20 "$(node_dir "$n")/log/startup.log" >&2 || true
    grep -h -E '\[(error|critical)\]' "$(node_dir "$n")/log/$(node_name "$n").log" 2>/dev/null | tail -n 20 >&2 || true
    return 1
  fi
}

stop_one() {
  local n="$1" pid d p
  d="$(node_dir "$n")"
  pid="$(pid_of "$n" || true)"
  if [ -z "$pid" ] && ! running "$n"; then
    rm -f "$d/launcher.pid"
    return 0
  fi
  say "stopping $(node_name "$n")"
  if [ -n "$pid" ]; then
    ctl "$n" stop "$d/rabbitmq.pid" >/dev/null 2>&1 || true   # returns once the OS process is gone
  else
    ctl "$n" stop >/dev/null 2>&1 || true
  fi
  # Whatever is still ours (beam, wrapper shell) is signalled by pid, never by name.
  for p in "$pid" "$(cat "$d/launcher.pid" 2>/dev/null || true)"; do
    [ -n "$p" ] || continue
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$p" 2>/dev/null; then say "pid $p still alive; sending KILL"; kill -KILL "$p" 2>/dev/null || true; fi
  done
  rm -f "$d/launcher.pid" "$d/rabbitmq.pid"
}

cmd_start() {
  prepare
  local n
  local pids=() rc=0 p
  for n in $(seq 1 "$NODES"); do launch "$n"; done
  # Waited for side by side: each wait is mostly rabbitmqctl's own start-up (a second or more).
  for n in $(seq 1 "$NODES"); do await "$n" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  [ "$rc" = 0 ] || exit 1
  say "hubs up: $(running_list)"
}

cmd_stop() {
  local n pids=() p rc=0
  # Side by side: a node takes about 9 s to stop (3 in a row were 26 s, 2 cores); they share nothing.
  for n in $(seq "$NODES" -1 1); do stop_one "$n" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  [ "$rc" = 0 ] || exit 1
  say "all hub nodes stopped"
}

running_list() {
  local n out=""
  for n in $(seq 1 "$NODES"); do running "$n" && out="$out $(node_name "$n")"; done
  echo "${out# }"
}

cmd_status() {
  local n any=""
  for n in $(seq 1 "$NODES"); do
    if running "$n"; then
      echo "$(node_name "$n")  running  amqp://127.0.0.1:$((PORT_BASE + n))  http://127.0.0.1:$((MGMT_BASE + n))  pid $(pid_of "$n" || echo '?')"
      any="$n"
    else
      echo "$(node_name "$n")  stopped"
    fi
  done
  [ -n "$any" ] || return 3
}

action="${1:-}"
case "$action" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  stop-node) check_n "${2:-}"; stop_one "$2" ;;
  start-node) check_n "${2:-}"; prepare; launch "$2"; await "$2"; say "$(node_name "$2") up" ;;
  ctl) check_n "${2:-}"; n="$2"; shift 2; ctl "$n" "$@" ;;
  purge) cmd_stop; rm -rf "$BASE"; say "removed $BASE" ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
