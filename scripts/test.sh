#!/usr/bin/env bash
# Runs Tessera's whole test suite: every crate's unit tests, the protocol test vectors, the
# command-line tests, the end-to-end tests (real server on loopback, real device core) on
# SQLite and on PostgreSQL, and the binding tests (the generated Python module and the Kotlin
# wrapper on the JVM against a real server process; bindings/tests/run.sh installs a JRE, JNA and
# the Kotlin compiler when missing), the API contract check (scripts/api-contract.sh) and the
# README's command blocks marked to run (scripts/readme-blocks.sh). Ends with one line:
# "tests: N passed, N failed".
#
# PostgreSQL: uses $DATABASE_URL when set; otherwise starts a local server with
# scripts/start-postgres.sh (installing Debian's package if missing). Set TESSERA_SKIP_POSTGRES=1
# to run the SQLite half only.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DATABASE_URL:-}" ] && [ "${TESSERA_SKIP_POSTGRES:-0}" != "1" ]; then
  DATABASE_URL=$(./scripts/start-postgres.sh)
  export DATABASE_URL
fi
if [ -n "${DATABASE_URL:-}" ]; then
  echo "PostgreSQL tests: on"
  # With a database at hand, the PostgreSQL variants must run, never skip.
  export TESSERA_REQUIRE_POSTGRES=1
else
  echo "PostgreSQL tests: off (TESSERA_SKIP_POSTGRES=1)"
fi

# The QR login page's browser test needs Chromium and playwright-core: fetch the latter when the
# former and Node.js are here (the test is skipped, with a note, when they are not, unless
# TESSERA_REQUIRE_BROWSER=1).
if command -v node >/dev/null 2>&1 && [ -x /usr/bin/chromium ] && [ ! -d tests/browser/node_modules ]; then
  (cd tests/browser && npm ci --no-audit --no-fund) || echo "browser test: npm ci failed; it will be skipped"
fi

# The reverse proxy test runs the server behind Debian's nginx: installed when missing and this
# user may (root, or sudo without a password); otherwise that test is skipped with a note, unless
# TESSERA_REQUIRE_NGINX=1.
if [ ! -x /usr/sbin/nginx ] && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=none
  if [ "$(id -u)" -eq 0 ]; then sudo_cmd=""; elif sudo -n true 2>/dev/null; then sudo_cmd=sudo; fi
  if [ "$sudo_cmd" != none ]; then
    { $sudo_cmd apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends nginx-light; } >/dev/null 2>&1 ||
      echo "reverse proxy test: nginx-light could not be installed; it will be skipped"
  fi
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
{
  cargo test --workspace --all-targets --locked --no-fail-fast &&
  cargo test --workspace --doc --locked
} 2>&1 | tee "$log" || status=$?

# The binding tests print "bindings-python: N passed, N failed" and "bindings-kotlin: …".
bindings/tests/run.sh all 2>&1 | tee -a "$log" || status=1

# The API contract (scripts/api-contract.sh: the OpenAPI document validated, fuzzed with
# schemathesis against a running server, a generated client driven through a whole flow) and
# the README's command blocks marked to run (scripts/readme-blocks.sh). Each prints
# "api-contract: N passed, N failed" / "readme-blocks: N passed, N failed".
./scripts/api-contract.sh 2>&1 | tee -a "$log" || status=1
./scripts/readme-blocks.sh 2>&1 | tee -a "$log" || status=1

awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     /^bindings-(python|kotlin): [0-9]+ passed, [0-9]+ failed$/ { p += $2; f += $4 }
     /^(api-contract|readme-blocks): [0-9]+ passed, [0-9]+ failed$/ { p += $2; f += $4 }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
