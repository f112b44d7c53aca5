#!/usr/bin/env bash
# A throwaway PostgreSQL server (Debian's `postgresql` package) for trying the app or its tests on
# PostgreSQL: a fresh cluster in a temp folder, listening only on a unix socket there, trust auth.
#   eval "$(bash scripts/postgres.sh start)"   # prints: export DATABASE_URL=...; export PLAYGROUND_PG_DIR=...
#   bash scripts/postgres.sh stop "$PLAYGROUND_PG_DIR"
# As root it runs the server as the `postgres` user (initdb refuses root).
set -euo pipefail
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$BIN" ]; then
  echo "PostgreSQL is not installed: apt-get install postgresql (or see README 'Deploy')" >&2
  exit 3
fi
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "${1:-}" in
  start)
    DIR=${2:-$(mktemp -d /tmp/playground-pg.XXXXXX)}
    mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres "$DIR"
    as_owner "$BIN/initdb" -D "$DIR/data" -A trust -U postgres --no-sync >/dev/null
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
      -o "-k $DIR -c listen_addresses='' -c fsync=off" start >/dev/null
    as_owner "$BIN/createdb" -h "$DIR" -U postgres playground
    echo "export DATABASE_URL='postgresql+psycopg://postgres@/playground?host=$DIR'"
    echo "export PLAYGROUND_PG_DIR='$DIR'"
    ;;
  stop)
    DIR=${2:?usage: postgres.sh stop DIR}
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null || true
    rm -rf "$DIR"
    ;;
  *)
    echo "usage: bash scripts/postgres.sh start [DIR] | stop DIR" >&2
    exit 2
    ;;
esac
