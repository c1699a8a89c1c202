#!/usr/bin/env bash
# Installs (if missing) and starts a local PostgreSQL with a `tessera` role and database, then
# prints the DATABASE_URL to use. Debian/Ubuntu only; needs root (or sudo).
set -euo pipefail

DB_USER=${TESSERA_PG_USER:-tessera}
DB_PASS=${TESSERA_PG_PASSWORD:-tessera}
DB_NAME=${TESSERA_PG_DB:-tessera}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
  echo "installing PostgreSQL from Debian's packages" >&2
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >&2
fi

version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -q "^$version main$"; then
  $SUDO pg_createcluster "$version" main >&2
fi
$SUDO pg_ctlcluster "$version" main start >&2 || true
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 1
done
pg_isready -h 127.0.0.1 -p 5432 >&2

as_postgres() { if [ "$(id -u)" -eq 0 ]; then su postgres -c "$1"; else sudo -u postgres sh -c "$1"; fi; }
as_postgres "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='$DB_USER'\"" | grep -q 1 ||
  as_postgres "psql -qc \"CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASS'\"" >&2
as_postgres "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='$DB_NAME'\"" | grep -q 1 ||
  as_postgres "createdb -O $DB_USER $DB_NAME" >&2
# The outage test creates (and cuts off) a database of its own.
as_postgres "psql -qc 'ALTER ROLE $DB_USER CREATEDB'" >&2
# Tests run many connections in parallel.
as_postgres "psql -qc 'ALTER SYSTEM SET max_connections = 300'" >&2
$SUDO pg_ctlcluster "$version" main restart >&2
for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done

echo "postgres://$DB_USER:$DB_PASS@127.0.0.1:5432/$DB_NAME"
