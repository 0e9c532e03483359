#!/usr/bin/env bash
# Run the unit suite on every supported Python this machine has, besides .venv's 3.11:
# one environment per version (.venv-3.12, .venv-3.13) with the locked dev dependencies and the
# project installed editable, then `pytest tests/unit -m "not slow"` in each, on $PYTHONS_WORKERS
# pytest-xdist workers (default 3: the suite waits on timers and subprocesses more than it computes).
#   deploy/test-pythons.sh [VERSION...]          default: 3.12 3.13 (or $PYTHONS)
# A version that is not installed is skipped with a line saying so; one whose suite fails, or takes
# longer than $PYTHONS_TIMEOUT seconds (default 900), fails the script. Extra pytest arguments go
# after `--`, e.g. deploy/test-pythons.sh 3.13 -- -x -q
set -euo pipefail
cd "$(dirname "$0")/.."

versions=()
pytest_args=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; pytest_args=("$@"); break; fi
  versions+=("$1"); shift
done
if [ ${#versions[@]} -eq 0 ]; then read -r -a versions <<<"${PYTHONS:-3.12 3.13}"; fi
limit="${PYTHONS_TIMEOUT:-900}"
workers="${PYTHONS_WORKERS:-3}"
say() { printf '\033[1m[pythons]\033[0m %s\n' "$*" >&2; }

# The interpreter for version V: pyenv's build if there is one, else pythonV on PATH (if it runs).
find_python() {
  local v=$1 candidate
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v"*/bin/python"$v" "$(command -v "python$v" || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

uv=""
if [ -x .venv/bin/uv ]; then uv=.venv/bin/uv; fi
failed=()
ran=0
for v in "${versions[@]}"; do
  if ! py=$(find_python "$v"); then
    say "SKIP Python $v: not installed on this machine (looked in ${PYENV_ROOT:-$HOME/.pyenv}/versions and PATH)"
    continue
  fi
  env=".venv-$v"
  stamp="$env/.installed-$(cat requirements-dev.lock pyproject.toml | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    say "Python $v ($py): preparing $env from requirements-dev.lock"
    rm -rf "$env"
    if [ -n "$uv" ]; then
      "$py" -m venv --without-pip "$env"
      "$uv" pip install --quiet --python "$env/bin/python" --require-hashes -r requirements-dev.lock
      "$uv" pip install --quiet --python "$env/bin/python" --no-deps -e .
      rm -rf exchange_bus.egg-info  # uv's editable build leaves it in the tree (deploy/setup.sh says why it goes)
    else
      "$py" -m venv "$env"
      "$env/bin/python" -m pip install -q --disable-pip-version-check --require-hashes -r requirements-dev.lock
      "$env/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
    fi
    touch "$stamp"
  fi
  say "Python $v: pytest tests/unit -m 'not slow' on $workers workers (at most ${limit} s)"
  ran=$((ran + 1))
  rc=0
  timeout --kill-after=30 "$limit" "$env/bin/python" -m pytest tests/unit -m "not slow" -q -p no:cacheprovider \
    -n "$workers" --dist loadscope "${pytest_args[@]}" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then say "Python $v: the unit suite took longer than ${limit} s"; fi
  if [ "$rc" -ne 0 ]; then failed+=("$v"); fi
done

if [ ${#failed[@]} -gt 0 ]; then say "FAILED on Python ${failed[*]}"; exit 1; fi
say "ok: the unit suite passed on $ran version(s) besides .venv's"
