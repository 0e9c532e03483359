#!/usr/bin/env bash
# Run the whole test suite against the real RabbitMQ and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh --test
exec .venv/bin/python -m pytest "$@"
