#!/usr/bin/env bash
# The first README command: install, migrate, load demo data and serve kefu on SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export KEFU_DATA_DIR="${KEFU_DATA_DIR:-$PWD/data}"
exec .venv/bin/kefu serve --demo --host "${KEFU_HOST:-127.0.0.1}" --port "${KEFU_PORT:-8000}"
