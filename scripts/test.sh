#!/usr/bin/env bash
# The second README command: install test needs, then run the whole suite on SQLite and on PostgreSQL.
# KEFU_TEST_POSTGRES_URL overrides the server (default: postgres on 127.0.0.1:5432, trust auth);
# set KEFU_TEST_POSTGRES_URL=skip to run SQLite only. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test

pg_url="${KEFU_TEST_POSTGRES_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres}"
echo "== tests on SQLite"
KEFU_TEST_DATABASE_URL=sqlite .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
if [[ "$pg_url" != "skip" ]]; then
  echo "== tests on PostgreSQL"
  KEFU_TEST_DATABASE_URL="$pg_url" .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
fi
