#!/usr/bin/env bash
# Regenerate the lock files that deploy/setup.sh installs from, after a change to the
# dependencies in pyproject.toml (or to take newer releases).
#   deploy/lock.sh                       keep every pin that still fits pyproject.toml, add what is new
#   deploy/lock.sh --upgrade             take the newest release of everything that fits
#   deploy/lock.sh --upgrade-package X   take the newest release of X only (repeatable)
# Writes requirements-dev.lock (runtime + the dev extra) and requirements.lock (runtime only,
# constrained to the same versions), both with hashes and environment markers valid for every
# supported Python (uv pip compile --universal). Needs uv (in the dev extra) and the package index.
set -euo pipefail
cd "$(dirname "$0")/.."

uv="${UV:-}"
if [ -z "$uv" ]; then
  if [ -x .venv/bin/uv ]; then uv=.venv/bin/uv; elif command -v uv >/dev/null 2>&1; then uv=uv; else
    echo "[lock] uv is missing: run deploy/setup.sh --test (the dev extra brings it) or pip install uv" >&2
    exit 1
  fi
fi
say() { printf '\033[1m[lock]\033[0m %s\n' "$*" >&2; }

# The oldest supported Python; --universal adds markers so the same lock installs on the newer ones.
common=(--universal --python-version 3.11 --generate-hashes --quiet
        --custom-compile-command "deploy/lock.sh" "$@")

say "requirements-dev.lock: runtime dependencies and the dev extra"
"$uv" pip compile pyproject.toml --extra dev "${common[@]}" -o requirements-dev.lock
say "requirements.lock: runtime dependencies only, at the versions of requirements-dev.lock"
"$uv" pip compile pyproject.toml -c requirements-dev.lock "${common[@]}" -o requirements.lock
say "done; commit both files together with the pyproject.toml change"
