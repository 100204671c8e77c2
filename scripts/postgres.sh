#!/usr/bin/env bash
# Start a private PostgreSQL instance for the tests (Debian's packages) and
# print its database URL. Idempotent: reuses a running instance.
#   PGDATA dir: $FUNCTIONS_PG_DIR (default /var/tmp/functions-pg), port $FUNCTIONS_PG_PORT (55432).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-deps.sh postgres
dir=${FUNCTIONS_PG_DIR:-/var/tmp/functions-pg}
port=${FUNCTIONS_PG_PORT:-55432}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ ! -f "$dir/PG_VERSION" ]; then
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  as_pg "$bin/initdb" -D "$dir" -U postgres --auth=trust --locale=C.UTF-8 -E UTF8 >/dev/null
fi
if ! as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
  as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=off" start >/dev/null
fi
as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='functions_test'" | grep -q 1 \
  || as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres functions_test
echo "postgresql://postgres@127.0.0.1:$port/functions_test"
