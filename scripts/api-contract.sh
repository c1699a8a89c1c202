#!/usr/bin/env bash
# The API contract check: the server's OpenAPI document is what the server does.
#
#  1. validates /openapi.json with openapi-spec-validator;
#  2. runs schemathesis (property-based API fuzzing, every check on: no 5xx, responses and
#     content types conform to the document, status codes documented, ...) against a running
#     server seeded with an application, its API key and a user, with a bounded number of
#     examples per operation;
#  3. generates a Python client with openapi-python-client and drives one whole flow with it:
#     create a user, start a pairing, pair a device built on the real core (the tessera-device
#     example binary), ask for an authentication, approve it on the device, read it approved.
#
# The Python tools live in a virtual environment under target/api-contract/ (made from PyPI on
# the first run). Prints "api-contract: N passed, N failed" (counted by scripts/test.sh) and the
# time taken. Environment: TESSERA_CONTRACT_EXAMPLES (examples per operation, default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
work=target/api-contract
mkdir -p "$work"
passed=0
failed=0
step() { # NAME COMMAND...: runs one step, counts it, keeps going
  local name=$1
  shift
  echo "== api-contract: $name"
  if "$@"; then
    passed=$((passed + 1))
    echo "api-contract step ok: $name"
  else
    failed=$((failed + 1))
    echo "api-contract step FAILED: $name"
  fi
}

venv=$work/venv
if [ ! -x "$venv/bin/st" ] || [ ! -x "$venv/bin/openapi-python-client" ] || [ ! -x "$venv/bin/openapi-spec-validator" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    'openapi-spec-validator>=0.7' 'schemathesis>=4,<5' 'openapi-python-client>=0.21'
fi

cargo build --quiet --locked -p tessera-server --bin tessera-server -p tessera-examples --bin tessera-device
server_bin=target/debug/tessera-server
device_bin=target/debug/tessera-device

run=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$run"
}
trap cleanup EXIT

database="sqlite://$run/tessera.db"
app=$("$server_bin" admin --database "$database" create-app "API contract")
api_key=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])' <<<"$app")
"$server_bin" admin --database "$database" create-user \
  "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["application_id"])' <<<"$app")" alice >/dev/null
"$server_bin" serve --listen 127.0.0.1:0 --database "$database" --ciba-allow-loopback-notifications \
  >"$run/server.log" 2>&1 &
server_pid=$!
base=""
for _ in $(seq 1 100); do
  base=$(sed -n 's/^listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$run/server.log" | head -n 1)
  [ -n "$base" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$base" ]; then
  cat "$run/server.log"
  echo "api-contract: the server did not start"
  echo "api-contract: 0 passed, 1 failed"
  exit 1
fi
curl -sf "$base/openapi.json" -o "$run/openapi.json"

step "openapi-spec-validator" "$venv/bin/openapi-spec-validator" "$run/openapi.json"

# The generated client's flow runs first, on the application as seeded: the fuzzer then
# changes its settings and policy at random.
generated_client() {
  rm -rf "$work/tessera_api_client"
  # The generator warns about the image and metrics answers (not JSON): it leaves them out.
  (cd "$work" && "$PWD/venv/bin/openapi-python-client" generate --path "$run/openapi.json" \
    --output-path tessera_api_client --overwrite --meta none >"$run/generate.log" 2>&1) ||
    { cat "$run/generate.log"; return 1; }
  PYTHONPATH="$work" "$venv/bin/python" tests/api-contract/flow.py \
      --base-url "$base" --api-key "$api_key" --device "$device_bin" --state "$run/device"
}
step "generated client flow" generated_client

schemathesis() {
  # No stateful phase: it would find live resources and hold long-polls (?wait=30) open.
  "$venv/bin/st" --config-file tests/api-contract/schemathesis.toml \
    run "$run/openapi.json" --url "$base" \
    --checks all \
    --phases examples,coverage,fuzzing \
    --max-examples "${TESSERA_CONTRACT_EXAMPLES:-8}" \
    --seed 4711 --generation-deterministic \
    --request-timeout 35 \
    --header "Authorization: Bearer $api_key" \
    --no-color --suppress-health-check all
}
step "schemathesis" schemathesis

kill "$server_pid" 2>/dev/null || true
wait "$server_pid" 2>/dev/null || true
server_pid=""
if grep -q "panicked" "$run/server.log"; then
  echo "api-contract: the server panicked:"
  grep -A5 "panicked" "$run/server.log"
  failed=$((failed + 1))
fi
echo "api-contract: took $(($(date +%s) - started)) s"
echo "api-contract: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
