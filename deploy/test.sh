#!/usr/bin/env bash
# Run the test suite against the real RabbitMQ and PostgreSQL.
#   deploy/test.sh             the code gates (deploy/lint.sh: ruff, mypy, the OpenAPI document), the
#                              whole suite, as CI runs it (.ci/run), in two parts: every test not
#                              marked `serial` on $EXCHANGE_TEST_WORKERS pytest-xdist workers (default
#                              4; --dist loadscope: a module's tests, or a class's, stay on one worker),
#                              then the `serial` ones (they stop the shared broker) alone; then the
#                              packaging checks:
#                              the built wheel installed in a fresh environment signs, verifies and
#                              serves (deploy/check-wheel.sh), and the unit suite on the other
#                              supported Pythons this machine has (deploy/test-pythons.sh). A lint
#                              finding fails the run, after the suite has still run to its summary.
#   deploy/test.sh ARGS...     only `pytest ARGS...` (e.g. deploy/test.sh tests/unit -m "not slow")
# EXCHANGE_TEST_PACKAGING=0 skips the packaging checks of the whole-suite run.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh --test
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi

rc=0
# The code gates first (about 15 s): a finding fails the run, but the suite still runs to its summary.
timeout --kill-after=30 600 deploy/lint.sh \
  || { echo "[test] deploy/lint.sh failed (the suite runs anyway; the run fails)" >&2; rc=1; }
# The suite mostly waits (on the broker, timers, retries, subprocesses): on two cores 4 workers took
# 272 s where one took 728 s. loadscope, not loadgroup: each module (or test class) runs whole on one
# worker, so module and class fixtures are built once, and the modules that start RabbitMQ nodes on
# fixed names and ports (test_hubs, test_rabbit_cluster_script) never race themselves; loadgroup
# ignores xdist_group marks under pytest 9.2 (pytest-xdist issue 1386). Each part ends with pytest's
# own summary line; both count for the exit status, and a line after them adds the two up.
workers="${EXCHANGE_TEST_WORKERS:-4}"
logs=$(mktemp -d "${TMPDIR:-/tmp}/exchange-test.XXXXXX")
trap 'rm -rf "$logs"' EXIT
color=(); if [ -t 1 ]; then color=(--color=yes); fi
started=$SECONDS
prc=0
.venv/bin/python -m pytest "${color[@]}" -n "$workers" --dist loadscope -m "not serial" 2>&1 \
  | tee "$logs/parallel.txt" || prc=${PIPESTATUS[0]}
parallel_s=$((SECONDS - started))
echo "[test] the serial part: tests marked serial, alone (they stop the shared RabbitMQ)"
src=0
.venv/bin/python -m pytest "${color[@]}" -m serial 2>&1 | tee "$logs/serial.txt" || src=${PIPESTATUS[0]}
serial_s=$((SECONDS - started - parallel_s))
# Exit status 5 is "no tests selected": none marked serial is left once -k/--deselect (PYTEST_ADDOPTS)
# takes them away; every other test ran in the parallel part.
if [ "$src" -eq 5 ]; then src=0; fi
if [ "$prc" -ne 0 ] || [ "$src" -ne 0 ]; then rc=1; fi
.venv/bin/python - "$logs/parallel.txt" "$logs/serial.txt" "$workers" "$parallel_s" "$serial_s" "$prc" "$src" <<'PY'
import re, sys
parallel, serial, workers, p_s, s_s, prc, src = sys.argv[1:]
order = ("failed", "passed", "skipped", "xfailed", "xpassed", "error", "warning")
total = dict.fromkeys(order, 0)
for path in (parallel, serial):
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in f]
    summary = next((line for line in reversed(lines) if re.match(r"^=+ .* in [0-9.]+s", line)), "")
    for n, kind in re.findall(r"(\d+) ([a-z]+)", summary):
        kind = kind.removesuffix("s") if kind in ("errors", "warnings") else kind
        if kind in total:
            total[kind] += int(n)
counts = ", ".join(f"{n} {k}" + ("s" if k in ("error", "warning") and n > 1 else "") for k, n in total.items() if n)
state = "ok" if prc == src == "0" else f"FAILED (exit status {prc} of the parallel part, {src} of the serial part)"
print(f"[test] pytest, both parts: {counts or 'no summary line'} in {int(p_s) + int(s_s)} s "
      f"(parallel on {workers} workers {p_s} s, serial {s_s} s): {state}")
PY
if [ "${EXCHANGE_TEST_PACKAGING:-1}" != 0 ]; then
  # Bounded: a hung step fails the run instead of stalling CI. The two checks share nothing (the wheel
  # check builds in its own temporary directory and serves on its own vhost), so the wheel check runs
  # beside the other Pythons' unit suites, its output held back and printed when both are done.
  timeout --kill-after=30 600 deploy/check-wheel.sh >"$logs/check-wheel.txt" 2>&1 &
  wheel_pid=$!
  PYTHONS_TIMEOUT=900 timeout --kill-after=30 2000 deploy/test-pythons.sh \
    || { echo "[test] deploy/test-pythons.sh failed" >&2; rc=1; }
  wrc=0
  wait "$wheel_pid" || wrc=$?
  cat "$logs/check-wheel.txt" >&2
  if [ "$wrc" -ne 0 ]; then echo "[test] deploy/check-wheel.sh failed" >&2; rc=1; fi
fi
exit "$rc"
