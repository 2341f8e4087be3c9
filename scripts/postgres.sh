#!/usr/bin/env bash
# Makes a throwaway PostgreSQL server available on 127.0.0.1 for tests: installs
# Debian's server when missing, initialises a cluster as the unprivileged
# `postgres` user in a scratch folder, starts it, and prints a database URL whose
# database the tests may create schemas and databases in. Quick when it already runs.
set -euo pipefail

port=${CI_TEST_PG_PORT:-55432}
root=${CI_TEST_PG_ROOT:-/tmp/ci-test-postgres}
url="postgres://ci:ci@127.0.0.1:$port/ci"

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  echo "postgres: installing Debian's postgresql" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi
bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n 1)")
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if ! "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
  if [ ! -f "$root/PG_VERSION" ]; then
    mkdir -p "$root"
    [ "$(id -u)" = 0 ] && chown postgres "$root"
    as_pg "$bin/initdb" -D "$root" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  as_pg "$bin/pg_ctl" -D "$root" -l "$root/server.log" -w -o "-h 127.0.0.1 -p $port -k /tmp -c fsync=off -c max_connections=400" start >/dev/null
fi
psql() { "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
psql -c "SELECT 1 FROM pg_roles WHERE rolname = 'ci'" | grep -q 1 || psql -c "CREATE ROLE ci LOGIN SUPERUSER PASSWORD 'ci'"
psql -c "SELECT 1 FROM pg_database WHERE datname = 'ci'" | grep -q 1 || psql -c "CREATE DATABASE ci OWNER ci"
echo "$url"
