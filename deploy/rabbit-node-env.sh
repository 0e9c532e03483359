# shellcheck shell=bash
# Sourced, not run: the per-node environment and lifecycle shared by deploy/cluster/rabbit-cluster.sh
# and deploy/hubs/rabbit-hubs.sh, which run extra local RabbitMQ nodes as the calling user straight
# from Debian's /usr/lib/rabbitmq/bin (the /usr/sbin wrappers would switch to the rabbitmq user and
# its HOME), isolated from /etc/rabbitmq, the default node (5672) and the shared epmd.
#
# The sourcing script sets, before calling anything here:
#   TAG            its name in messages ("rabbit-cluster")
#   BASE           absolute base dir; node N lives in $BASE/$NAME$N
#   NAME NODES     node N is $NAME$N@localhost, N in 1..$NODES
#   PORT_BASE DIST_BASE CTL_PORT_MIN    AMQP $((PORT_BASE+N)), distribution $((DIST_BASE+N)), CLI
#                  distribution ports CTL_PORT_MIN + 10(N-1) .. +9
#   TIMEOUT        seconds a node may take to start
#   SHARED         "cluster": the nodes share one Erlang cookie and plugins file under $BASE;
#                  "separate": each node has its own under its dir, as separate installations do
# and may define node_ports N (extra words for the "starting" line, e.g. the management port).

say() { printf '[%s] %s\n' "$TAG" "$*" >&2; }
node_name() { echo "$NAME$1@localhost"; }
node_dir() { echo "$BASE/$NAME$1"; }

check_n() {
  case "${1:-}" in [1-9]) [ "$1" -le "$NODES" ] && return 0 ;; esac
  echo "$TAG: node must be 1 to $NODES (got '${1:-}')" >&2
  exit 2
}

find_bindir() {  # find_bindir FILE…: the dir of Debian's RabbitMQ scripts that also holds FILE…
  local d f ok
  for d in /usr/lib/rabbitmq/bin "$(dirname "$(readlink -f "$(command -v rabbitmq-server 2>/dev/null || echo /nonexistent)")")"; do
    ok=yes
    for f in rabbitmq-server rabbitmqctl "$@"; do [ -e "$d/$f" ] || ok=""; done
    if [ -n "$ok" ] && [ -x "$d/rabbitmq-server" ] && [ -x "$d/rabbitmqctl" ]; then echo "$d"; return; fi
  done
  echo "$TAG: RabbitMQ scripts not found; install Debian's rabbitmq-server (apt-get install rabbitmq-server)" >&2
  exit 1
}

node_home() {  # HOME of node N (and of the CLI tools talking to it): where its Erlang cookie is
  if [ "$SHARED" = cluster ]; then echo "$BASE/home"; else echo "$(node_dir "$1")/home"; fi
}

node_plugins_file() {
  if [ "$SHARED" = cluster ]; then echo "$BASE/enabled_plugins"; else echo "$(node_dir "$1")/enabled_plugins"; fi
}

make_cookie() {  # make_cookie HOME: an Erlang cookie there unless one exists; readable by its owner only
  mkdir -p "$1"
  if [ ! -s "$1/.erlang.cookie" ]; then
    local cookie
    cookie="$(head -c 4096 /dev/urandom | LC_ALL=C tr -dc 'A-Z')"
    (umask 077; printf '%s' "${cookie:0:32}" >"$1/.erlang.cookie")
  fi
  chmod 400 "$1/.erlang.cookie"
}

# Everything a node (and rabbitmqctl / rabbitmq-plugins talking to it) needs, isolated from /etc/rabbitmq.
node_env() {
  local n="$1" d
  d="$(node_dir "$n")"
  export HOME; HOME="$(node_home "$n")"          # the cookie: $HOME/.erlang.cookie
  export RABBITMQ_NODENAME; RABBITMQ_NODENAME="$(node_name "$n")"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT=$((PORT_BASE + n))
  export RABBITMQ_DIST_PORT=$((DIST_BASE + n))
  # A path that does not exist: never source /etc/rabbitmq/rabbitmq-env.conf (it pins rabbit@localhost).
  export RABBITMQ_CONF_ENV_FILE="$BASE/no-rabbitmq-env.conf"
  export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE; RABBITMQ_ENABLED_PLUGINS_FILE="$(node_plugins_file "$n")"
  export RABBITMQ_MNESIA_BASE="$d/mnesia"
  export RABBITMQ_LOG_BASE="$d/log"
  export RABBITMQ_PID_FILE="$d/rabbitmq.pid"
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_DIST_PORT_MIN=$((CTL_PORT_MIN + 10 * (n - 1)))
  export RABBITMQ_CTL_DIST_PORT_MAX=$((CTL_PORT_MIN + 10 * (n - 1) + 9))
  export ERL_EPMD_ADDRESS=127.0.0.1
  export ERL_CRASH_DUMP="$d/log/erl_crash.dump"
}

node_dirs() {  # the dirs node N writes to (its data, logs, and HOME)
  mkdir -p "$(node_dir "$1")/mnesia" "$(node_dir "$1")/log" "$(node_home "$1")"
}

ctl() {  # ctl N args…  (in a subshell so the environment does not leak between nodes)
  local n="$1"; shift
  ( node_env "$n"; exec "$BIN/rabbitmqctl" -n "$(node_name "$n")" "$@" )
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
  local n="$1" d extra=""
  d="$(node_dir "$n")"
  if pid_of "$n" >/dev/null || running "$n"; then say "$(node_name "$n") already running"; return 0; fi
  if declare -F node_ports >/dev/null; then extra=", $(node_ports "$n")"; fi
  say "starting $(node_name "$n") (AMQP 127.0.0.1:$((PORT_BASE + n))$extra, dist $((DIST_BASE + n)))"
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
  # await_startup needs a reachable node: first wait for the VM to register and answer a ping.
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
  # Belt and braces: whatever is still ours (beam, wrapper shell) is signalled by pid, never by name.
  for p in "$pid" "$(cat "$d/launcher.pid" 2>/dev/null || true)"; do
    [ -n "$p" ] || continue
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$p" 2>/dev/null; then say "pid $p still alive; sending KILL"; kill -KILL "$p" 2>/dev/null || true; fi
  done
  rm -f "$d/launcher.pid" "$d/rabbitmq.pid"
}

stop_all() {  # highest node first: node 1 (a cluster's join target) is the last to leave
  local n
  for n in $(seq "$NODES" -1 1); do stop_one "$n"; done
}

running_list() {
  local n out=""
  for n in $(seq 1 "$NODES"); do running "$n" && out="$out $(node_name "$n")"; done
  echo "${out# }"
}

dispatch() {  # dispatch ACTION ARGS…: the commands both scripts take (they define prepare, cmd_start, cmd_status, usage,
# and may define cmd_stop)
  local action="${1:-}" n
  case "$action" in
    start) cmd_start ;;
    stop) if declare -F cmd_stop >/dev/null; then cmd_stop; else stop_all; say "all nodes stopped"; fi ;;
    status) cmd_status ;;
    stop-node) check_n "${2:-}"; stop_one "$2" ;;
    start-node) check_n "${2:-}"; prepare; launch "$2"; await "$2"; say "$(node_name "$2") up" ;;
    ctl) check_n "${2:-}"; n="$2"; shift 2; ctl "$n" "$@" ;;
    purge) if declare -F cmd_stop >/dev/null; then cmd_stop; else stop_all; fi; rm -rf "$BASE"; say "removed $BASE" ;;
    *) usage; exit 2 ;;
  esac
}
