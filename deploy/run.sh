#!/usr/bin/env bash
# Run one exchange node with a working local configuration.
# First run generates a development PKI, sample agencies and tokens under var/dev/.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
exec .venv/bin/exchange serve --dev "$@"
