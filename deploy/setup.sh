#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: RabbitMQ up, Python env ready.
#   deploy/setup.sh          what `deploy/run.sh` needs
#   deploy/setup.sh --test   plus what the test suite needs (PostgreSQL, xmlsec1, promtool, Chromium)
# Every step says what it does; nothing is downloaded at run time beyond the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-run}"
say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then say "apt-get update"; as_root apt-get update -qq; apt_updated=1; fi
  say "installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# --- RabbitMQ ---------------------------------------------------------------------
if port_open 127.0.0.1 5672; then
  say "RabbitMQ answers on 127.0.0.1:5672"
else
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    apt_install rabbitmq-server
  fi
  say "starting RabbitMQ (rabbitmq-server -detached)"
  as_root rabbitmq-server -detached || true
  say "waiting for RabbitMQ (rabbitmqctl await_startup)"
  as_root timeout 120 rabbitmqctl await_startup >/dev/null
  for _ in $(seq 1 60); do port_open 127.0.0.1 5672 && break; sleep 1; done
  port_open 127.0.0.1 5672 || { say "RabbitMQ did not open port 5672; see /var/log/rabbitmq"; exit 1; }
  say "RabbitMQ is up"
fi

# --- RabbitMQ capacity: its open-files limit against the directory it will carry -------
# Each exchange node costs 3 quorum queues (about 3 file handles each) and a connection; the
# DLQ and retry queues are shared. Past its limit RabbitMQ wedges rather than fails
# (docs/OPERATIONS.md#exchangebrokerfiledescriptors). EXCHANGE_DIRECTORY names the directory
# TOML to size for (default: the dev world's, if any).
directory="${EXCHANGE_DIRECTORY:-.dev/directory.toml}"
fd_limit="$(as_root rabbitmqctl status --formatter json 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["file_descriptors"]["total_limit"])' 2>/dev/null || true)"
if [ -n "$fd_limit" ]; then
  need=""
  if [ -f "$directory" ]; then
    read -r agencies nodes need < <(python3 - "$directory" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
nodes = set(re.findall(r'^node\s*=\s*"([^"]+)"', text, re.M))
queues = 3 * len(nodes) + 1 + 5
print(len(re.findall(r"^\[\[agency\]\]", text, re.M)), len(nodes), 3 * queues + 4 * len(nodes) + 200)
PY
    )
  fi
  if [ -n "$need" ] && [ "$fd_limit" -lt "$need" ]; then
    say "WARNING: RabbitMQ may hold $fd_limit files; $directory ($agencies agencies on $nodes nodes) needs about $need."
    say "  raise it: deploy/rabbitmq/rabbitmq-server.service.d/limits.conf (systemd) or deploy/rabbitmq/rabbitmq-env.conf"
  elif [ "$fd_limit" -le 1024 ]; then
    say "note: RabbitMQ may hold only $fd_limit files (Debian's default); enough here${need:+ (needs ~$need)}, too few for production"
    say "  (deploy/rabbitmq/rabbitmq-server.service.d/limits.conf raises it)"
  else
    say "RabbitMQ may hold $fd_limit files${need:+; $directory needs about $need}"
  fi
fi

# --- test-only services and tools ----------------------------------------------------
if [ "$mode" = "--test" ]; then
  if ! port_open 127.0.0.1 5432; then
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then apt_install postgresql; fi
    say "starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
    for _ in $(seq 1 30); do port_open 127.0.0.1 5432 && break; sleep 1; done
  fi
  command -v xmlsec1 >/dev/null 2>&1 || apt_install xmlsec1
  command -v promtool >/dev/null 2>&1 || apt_install prometheus
  # The console's browser tests (tests/integration/test_console_browser.py) drive Debian's Chromium
  # through Playwright (the dev extra): the browser comes from apt, never from a download at run time.
  [ -x /usr/bin/chromium ] || apt_install chromium
fi

# --- Python environment ------------------------------------------------------------
# Dependencies come from the lock files (exact versions, hash-checked), so every machine gets the
# same ones; then the project itself, editable, without resolving anything (--no-deps).
# deploy/lock.sh regenerates the locks after a dependency change (CONTRIBUTING.md).
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $py"
  "$py" -m venv .venv 2>/dev/null || { apt_install python3-venv; "$py" -m venv .venv; }
fi
lock=requirements.lock
if [ "$mode" = "--test" ]; then lock=requirements-dev.lock; fi
stamp_for() { echo ".venv/.installed-$1-$(cat "$1" pyproject.toml | sha256sum | cut -c1-16)"; }
# The dev lock holds the runtime lock's versions and more: a .venv set up for tests also serves run.sh.
if [ ! -f "$(stamp_for "$lock")" ] && [ ! -f "$(stamp_for requirements-dev.lock)" ]; then
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  "${pip[@]}" --upgrade pip >/dev/null
  # The dev lock pins uv: pip installs that one package (hash-checked) and uv the rest, the same
  # pins and hashes in about 10 s instead of pip's 60-80 s. The runtime lock has no uv: pip does it all.
  uv_pin=$(awk '/^uv==/ { on = 1 } on { print; if ($0 !~ /\\$/) exit }' "$lock")
  if [ -n "$uv_pin" ]; then
    say "installing uv from $lock (pip), then the locked dependencies (uv pip install --require-hashes -r $lock)"
    "${pip[@]}" --require-hashes --no-deps -r <(printf '%s\n' "$uv_pin")
    install=(.venv/bin/uv pip install --quiet --python .venv/bin/python)
  else
    say "installing the locked dependencies into .venv (pip install --require-hashes -r $lock)"
    install=("${pip[@]}")
  fi
  "${install[@]}" --require-hashes -r "$lock"
  # Before 0.1.0 was renamed the distribution was called "exchange": a .venv made then still holds it,
  # and its duplicate entry points would register every adapter twice.
  if .venv/bin/python -m pip show -q exchange >/dev/null 2>&1; then
    say "removing the old 'exchange' distribution from .venv (now exchange-bus)"
    .venv/bin/python -m pip uninstall -q -y exchange
  fi
  # ... and its editable install left exchange.egg-info in the source tree, which importlib.metadata
  # still finds (the tree is on sys.path): the same duplicate entry points.
  rm -rf exchange.egg-info
  say "installing exchange into .venv (--no-deps -e .)"
  "${install[@]}" --no-deps -e .
  # uv's editable build leaves exchange_bus.egg-info in the tree (pip's does not): a second copy of
  # the metadata that importlib.metadata would find from the tree and that goes stale; the
  # installed .dist-info is the one.
  rm -rf exchange_bus.egg-info
  # A dependency added to pyproject.toml but not to the lock shows up here, not at run time.
  if ! problems=$(.venv/bin/python -m pip check --disable-pip-version-check 2>&1); then
    printf '%s\n' "$problems" >&2
    say "$lock does not satisfy pyproject.toml: run deploy/lock.sh and commit the lock files"
    exit 1
  fi
  rm -f .venv/.installed-*; touch "$(stamp_for "$lock")"
fi
say "ready"
