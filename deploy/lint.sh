#!/usr/bin/env bash
# The code gates, configured in pyproject.toml ([tool.ruff], [tool.mypy]); fails on any finding.
#   deploy/lint.sh          ruff check, ruff format --check, mypy exchange, and the OpenAPI document
#   deploy/lint.sh --fix    let ruff fix what it can and reformat first (then check as above)
# Needs .venv with the dev extra (deploy/setup.sh --test).
set -uo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m[lint]\033[0m %s\n' "$*" >&2; }
for tool in ruff mypy; do
  [ -x ".venv/bin/$tool" ] || { say "$tool is not in .venv: run deploy/setup.sh --test"; exit 1; }
done
paths=(exchange tests benchmarks)

if [ "${1:-}" = "--fix" ]; then
  say "ruff check --fix / ruff format ${paths[*]}"
  .venv/bin/ruff check --fix --quiet "${paths[@]}"
  .venv/bin/ruff format --quiet "${paths[@]}"
fi

failed=()
say "ruff check ${paths[*]}"
.venv/bin/ruff check "${paths[@]}" || failed+=("ruff check")
say "ruff format --check ${paths[*]}"
.venv/bin/ruff format --check --output-format concise "${paths[@]}" || failed+=("ruff format")
say "mypy exchange"
.venv/bin/mypy exchange || failed+=("mypy")
# The OpenAPI document the gateway serves must be a valid OpenAPI 3 document: exchange/gateway/openapi.yaml
# with the metadata JSON Schema's definitions as components (gateway.app.load_openapi), as a dict and in
# the YAML form /v1/openapi.yaml answers. The file alone is not: its $refs to AgencyCode, DocumentSubmission...
# resolve only once the schema is merged in, which keeps that schema in one place.
say "openapi-spec-validator: the served document (exchange/gateway/openapi.yaml + the metadata schema)"
# (its messages quote whole schema objects: cut to a readable width)
.venv/bin/python - <<'PY' 2>&1 | cut -c1-400
import sys

import yaml
from openapi_spec_validator import validate

from exchange.gateway.app import _yaml_text, load_openapi

served = load_openapi()
try:
    validate(served)
    validate(yaml.safe_load(_yaml_text(served)))
except Exception as exc:
    sys.exit(f"the served OpenAPI document is invalid: {type(exc).__name__}: {exc}")
print("the served OpenAPI document is valid OpenAPI 3")
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("openapi-spec-validator")

if [ ${#failed[@]} -gt 0 ]; then say "FAILED: ${failed[*]}"; exit 1; fi
say "ok: no findings"
