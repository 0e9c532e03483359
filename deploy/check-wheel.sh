#!/usr/bin/env bash
# Prove the package works installed as a user installs it, outside the source tree:
#   1. build the sdist and, from it, the wheel, from a copy of the working tree;
#   2. install the wheel (not editable) into a fresh virtual environment, its dependencies resolved
#      from the wheel's metadata and held to the versions of requirements.lock;
#   3. from a scratch directory, with that environment's `exchange` command:
#      pki init + issue, sign an envelope with an attachment, verify it (and refuse a tampered copy),
#      and serve a node (private RabbitMQ vhost, --port 0) whose /healthz, /readyz and OpenAPI
#      document answer; then stop it with SIGTERM and expect a clean exit.
#   deploy/check-wheel.sh [--python PYTHON] [--pip]
# --python: the interpreter of the fresh environment (default python3.11, or $PYTHON).
# --pip: build with `python -m build` and install with pip instead of uv (same result; pip takes
#   about 30 s more here). Either way packages come from the package index through the tool's cache.
# Needs .venv (deploy/setup.sh --test) and RabbitMQ on 127.0.0.1:5672.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

py="${PYTHON:-python3.11}"
tool=uv
while [ $# -gt 0 ]; do
  case "$1" in
    --python) py="$2"; shift 2 ;;
    --pip) tool=pip; shift ;;
    *) echo "usage: deploy/check-wheel.sh [--python PYTHON] [--pip]" >&2; exit 2 ;;
  esac
done
started=$SECONDS
say() { printf '\033[1m[check-wheel]\033[0m %3ds %s\n' "$((SECONDS - started))" "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
[ -x .venv/bin/python ] || fail ".venv is missing: run deploy/setup.sh --test first"
if [ "$tool" = uv ] && [ ! -x .venv/bin/uv ]; then say "no uv in .venv (deploy/setup.sh --test brings it): using pip"; tool=pip; fi
if [ "$tool" = pip ]; then .venv/bin/python -c "import build" 2>/dev/null || fail "'build' is not in .venv: run deploy/setup.sh --test"; fi
command -v "$py" >/dev/null 2>&1 || fail "$py not found (give --python)"

work=$(mktemp -d "${TMPDIR:-/tmp}/exchange-wheel.XXXXXX")
vhost="exchange-wheel-$(od -An -N5 -tx1 /dev/urandom | tr -d ' \n')"
vhost_created=""
node_pid=""
cleanup() {
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
  if [ -n "$vhost_created" ]; then rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1. build, from a copy so the source tree gets no build/ or *.egg-info -------------------------
say "copying the working tree (tracked and new files, .gitignore respected) to $work/src"
mkdir -p "$work/src"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$work/src"
say "building the sdist and, from it, the wheel ($tool)"
if [ "$tool" = uv ]; then build=(.venv/bin/uv build --quiet --out-dir "$work/dist" "$work/src")
else build=(.venv/bin/python -m build --outdir "$work/dist" "$work/src"); fi
"${build[@]}" >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; fail "building the wheel"; }
wheel=$(ls "$work"/dist/*.whl)
say "built $(basename "$wheel") and $(basename "$(ls "$work"/dist/*.tar.gz)")"
# Every data file the code opens at run time (pyproject.toml [tool.setuptools.package-data]).
for f in exchange/schemas/envelope-1.0.xsd exchange/gateway/openapi.yaml exchange/py.typed; do
  .venv/bin/python -c "import sys, zipfile; sys.exit(0 if sys.argv[2] in zipfile.ZipFile(sys.argv[1]).namelist() else 1)" \
    "$wheel" "$f" || fail "the wheel lacks $f: add it to [tool.setuptools.package-data]"
done

# --- 2. a fresh environment with the wheel -------------------------------------------------------
say "installing the wheel into a fresh $("$py" -V) environment"
if [ "$tool" = uv ]; then
  "$py" -m venv --without-pip "$work/venv"
  install=(.venv/bin/uv pip install --quiet --python "$work/venv/bin/python")
else
  "$py" -m venv "$work/venv"
  install=("$work/venv/bin/python" -m pip install -q --disable-pip-version-check)
fi
"${install[@]}" "$wheel" -c requirements.lock >"$work/install.log" 2>&1 \
  || { tail -30 "$work/install.log" >&2; fail "installing the wheel"; }
if [ "$tool" = uv ]; then check=(.venv/bin/uv pip check --quiet --python "$work/venv/bin/python")
else check=("$work/venv/bin/python" -m pip check --disable-pip-version-check); fi
"${check[@]}" >&2 || fail "the fresh environment's dependencies do not fit together"

# --- 3. use it from a scratch directory ----------------------------------------------------------
mkdir -p "$work/run"
cd "$work/run"
ex="$work/venv/bin/exchange"
where=$("$work/venv/bin/python" -c "import exchange; print(exchange.__file__)")
case "$where" in
  "$work/venv/"*) ;;
  *) fail "import exchange resolved to $where, not the installed wheel" ;;
esac

say "exchange pki init / issue"
# ECDSA P-256 keys: generated in milliseconds (RSA-3072 is the default; the unit suite covers both).
"$ex" pki init --dir pki --ec >/dev/null
"$ex" pki issue --dir pki --ec --code 000.00.00.G22 --name "Văn phòng Chính phủ" >/dev/null

say "exchange sign (validates against the packaged XSD)"
printf 'Quyết định số 12\n' > qd.txt
cat > meta.toml <<'EOF'
from = { code = "000.00.00.G22", name = "Văn phòng Chính phủ" }
to = [ { code = "000.00.00.H41", name = "UBND tỉnh Nghệ An" } ]
[document]
code = { number = "12", notation = "CT-TTg" }
subject = "Chỉ thị về chuyển đổi số"
EOF
"$ex" sign --key pki/agencies/000.00.00.G22.key --cert pki/agencies/000.00.00.G22.pem \
  --meta meta.toml --attach qd.txt --out signed.xml >/dev/null
say "signed; exchange verify"
"$ex" verify signed.xml --ca pki/ca.pem --crl pki/crl.pem >verify.out || { cat verify.out >&2; fail "exchange verify"; }
say "verified; a tampered copy must be refused"
# A tampered copy must be refused: the check above is only worth something if verify can say no.
sed 's/Chỉ thị về chuyển đổi số/Chỉ thị đã bị sửa/' signed.xml > tampered.xml
mkdir -p tampered.attachments && cp signed.attachments/* tampered.attachments/
if "$ex" verify tampered.xml --ca pki/ca.pem --crl pki/crl.pem >/dev/null 2>&1; then fail "a tampered envelope verified"; fi

say "exchange serve (private vhost $vhost, --port 0)"
rabbitmqctl -q add_vhost "$vhost" >/dev/null && vhost_created=1
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
# A node TOML as an operator writes one (docs/OPERATIONS.md), for the agency issued above.
cat > directory.toml <<'EOF'
[[agency]]
code = "000.00.00.G22"
name = "Văn phòng Chính phủ"
node = "wheel"
cert = "pki/agencies/000.00.00.G22.pem"
EOF
cat > node.toml <<EOF
[node]
name = "wheel"
data_dir = "data"
[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/$vhost"
prefix = "wheel"
[store]
url = "sqlite:///data/exchange.db"
[http]
host = "127.0.0.1"
port = 8080
[pki]
ca_files = ["pki/ca.pem"]
crl_files = ["pki/crl.pem"]
[directory]
file = "directory.toml"
[[agencies]]
code = "000.00.00.G22"
name = "Văn phòng Chính phủ"
key = "pki/agencies/000.00.00.G22.key"
cert = "pki/agencies/000.00.00.G22.pem"
adapter = "pull"
EOF
mkdir -p data
: >serve.out; : >serve.err  # exist before the background shell opens them: the loop below reads them at once
"$ex" serve --config node.toml --port 0 >serve.out 2>serve.err &
node_pid=$!
# Generous bounds: on a loaded 2-core machine a cold start takes tens of seconds; a healthy one, about 2.
url=""
deadline=$((SECONDS + 120))
while [ $SECONDS -lt $deadline ]; do
  url=$(sed -n 's/^  gateway  \(http:[^ ]*\).*/\1/p' serve.out)
  [ -n "$url" ] && break
  kill -0 "$node_pid" 2>/dev/null || { cat serve.out serve.err >&2; fail "exchange serve exited early"; }
  sleep 0.2
done
[ -n "$url" ] || { cat serve.out serve.err >&2; fail "exchange serve did not report its gateway in 120 s"; }
probe() {
  "$work/venv/bin/python" - "$1" <<'EOF'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    body = json.load(r)
print(json.dumps(body)[:200])
EOF
}
say "node serving at $url; probing /healthz, /readyz, /v1/openapi.json"
probe "$url/healthz" | grep -q '"status": "ok"' || fail "/healthz did not answer ok"
ready=""
deadline=$((SECONDS + 60))
while [ $SECONDS -lt $deadline ]; do
  if probe "$url/readyz" 2>/dev/null | grep -q '"ready": true'; then ready=1; break; fi
  sleep 0.2
done
[ -n "$ready" ] || { probe "$url/readyz" >&2 || true; fail "/readyz did not become ready in 60 s"; }
probe "$url/v1/openapi.json" | grep -q '"openapi"' || fail "/v1/openapi.json (packaged openapi.yaml) did not answer"
say "stopping the node (SIGTERM)"
kill -TERM "$node_pid"
rc=0; wait "$node_pid" || rc=$?
node_pid=""
[ "$rc" -eq 0 ] || { cat serve.err >&2; fail "exchange serve exited $rc on SIGTERM"; }

say "ok: the wheel builds, installs, signs, verifies and serves ($((SECONDS - started)) s)"
