#!/usr/bin/env bash
# Runs Tessera's whole test suite: every crate's unit tests, the protocol test vectors, and the
# end-to-end tests (real server on loopback, real device core) on SQLite and on PostgreSQL.
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
  echo "PostgreSQL tests: on (${DATABASE_URL%%:*}://…)"
else
  echo "PostgreSQL tests: off (TESSERA_SKIP_POSTGRES=1)"
fi

cargo test --workspace --all-targets --locked
# Doc tests (not part of --all-targets).
cargo test --workspace --doc --locked
