#!/usr/bin/env bash
# The second README command: install test needs, then run the whole suite on SQLite and on PostgreSQL.
# KEFU_TEST_POSTGRES_URL overrides the server (default: postgres on 127.0.0.1:5432, trust auth);
# set KEFU_TEST_POSTGRES_URL=skip to run SQLite only. Extra arguments go to pytest.
# The two runs are independent (each makes its own database) and mostly single-threaded, so they run
# side by side; KEFU_TEST_SERIAL=1 runs them one after the other instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test

pg_url="${KEFU_TEST_POSTGRES_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres}"
run() {  # run NAME DATABASE_URL [pytest args]
  local name=$1 url=$2
  shift 2
  KEFU_TEST_DATABASE_URL="$url" .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
}

if [[ "$pg_url" == "skip" ]]; then
  echo "== tests on SQLite"
  run sqlite sqlite "$@"
  exit
fi
if [[ "${KEFU_TEST_SERIAL:-0}" == "1" ]]; then
  echo "== tests on SQLite"
  run sqlite sqlite "$@"
  echo "== tests on PostgreSQL"
  run postgresql "$pg_url" "$@"
  exit
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
echo "== tests on SQLite and on PostgreSQL, side by side"
run sqlite sqlite "$@" >"$logs/sqlite.log" 2>&1 &
sqlite_pid=$!
run postgresql "$pg_url" "$@" >"$logs/postgresql.log" 2>&1 &
pg_pid=$!
status=0
wait "$sqlite_pid" || status=1
echo "== tests on SQLite"
cat "$logs/sqlite.log"
wait "$pg_pid" || status=1
echo "== tests on PostgreSQL"
cat "$logs/postgresql.log"
exit "$status"
