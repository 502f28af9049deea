#!/usr/bin/env bash
# Installs everything kefu needs, idempotently: the Python package in .venv, front-end packages from
# npm copied into static/vendor, and (with --test) what the tests need (Chromium from Debian).
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1
PYTHON="${PYTHON:-python3}"

if [[ $want_test == 1 ]] && ! command -v chromium >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]]; then
    echo "== installing Chromium and CJK fonts (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-noto-cjk >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-noto-cjk >/dev/null; }
  else
    echo "Chromium is missing: run 'sudo apt-get install chromium fonts-noto-cjk' (browser tests need it)" >&2
    exit 1
  fi
fi
# The email channel's IMAP tests run their own dovecot on loopback (Debian's dovecot-imapd).
if [[ $want_test == 1 ]]; then bash scripts/dovecot.sh; fi

if [[ ! -x .venv/bin/python ]]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "== installing kefu (pip)"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>/dev/null || true
if [[ $want_test == 1 ]]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,embeddings]' 2>&1 | grep -v -E '^WARNING: Location' || true
else
  .venv/bin/python -m pip install -q --disable-pip-version-check -e . 2>&1 | grep -v -E '^WARNING: Location' || true
fi
.venv/bin/python -c "import kefu" # fail here, clearly, if the install did not work

echo "== installing front-end packages (npm)"
if [[ -f package-lock.json ]]; then npm ci --no-audit --no-fund --silent; else npm install --no-audit --no-fund --silent; fi
vendor=src/kefu/web/static/vendor
rm -rf "$vendor"
mkdir -p "$vendor"/{htmx,alpinejs,echarts,swagger-ui}
cp node_modules/htmx.org/dist/htmx.min.js "$vendor/htmx/"
cp node_modules/alpinejs/dist/cdn.min.js "$vendor/alpinejs/alpine.min.js"
cp node_modules/echarts/dist/echarts.min.js "$vendor/echarts/"
cp node_modules/swagger-ui-dist/swagger-ui-bundle.js node_modules/swagger-ui-dist/swagger-ui.css "$vendor/swagger-ui/"
# Each package's licence travels with its files.
for pair in htmx.org:htmx alpinejs:alpinejs echarts:echarts swagger-ui-dist:swagger-ui; do
  cp node_modules/"${pair%%:*}"/LICENSE* "$vendor/${pair##*:}/" 2>/dev/null || true
done
echo "== setup done"
