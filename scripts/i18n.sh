#!/usr/bin/env bash
# Re-extracts the user-facing messages (Python sources and Jinja2 templates) and updates the zh_CN and
# en catalogues in src/kefu/locales. Run it after adding or changing a _("...") string, then translate
# the new or fuzzy entries in zh_CN (tests/web/test_i18n.py fails until every message is translated).
#
#   scripts/i18n.sh          extract + update both catalogues
#   scripts/i18n.sh --check  only report whether the catalogues are in step with the sources (exit 1 if not)
#
# No .mo compile step: kefu reads the .po files directly (src/kefu/core/i18n.py).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=.venv/bin/python
PYBABEL=.venv/bin/pybabel
LOCALES=src/kefu/locales
POT=$(mktemp --suffix=.pot)
trap 'rm -f "$POT"' EXIT

VERSION=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("kefu"))')

"$PYBABEL" -q extract -F babel.cfg -k _ --project kefu --version "$VERSION" \
  --copyright-holder "kefu contributors" --sort-by-file --no-wrap -o "$POT" src/kefu

# Messages that reach _() as variables, which extraction cannot see: role names and navigation labels.
"$PYTHON" - "$POT" <<'PY'
import inspect
import sys

from babel.messages.pofile import read_po, write_po

from kefu.identity.models import Role
from kefu.web import pages
from kefu.web.pages import NAV

path = sys.argv[1]
with open(path, "rb") as handle:
    catalog = read_po(handle)
role_line = inspect.getsourcelines(Role)[1]
nav_line = next(n for n, line in enumerate(inspect.getsource(pages).splitlines(), 1) if line.startswith("NAV ="))
extra = [(role.value, "src/kefu/identity/models.py", role_line, "role name (Role)") for role in Role]
extra += [(label, "src/kefu/web/pages.py", nav_line, "navigation label (NAV)") for _p, label, _o, _a in NAV]
for msgid, filename, lineno, comment in extra:
    message = catalog.get(msgid)
    if message is None:
        catalog.add(msgid, locations=[(filename, lineno)], auto_comments=[comment])
    else:
        message.locations.append((filename, lineno))
with open(path, "wb") as handle:
    write_po(handle, catalog, width=0, sort_by_file=True)
PY

if [[ "${1:-}" == "--check" ]]; then
  exec "$PYTHON" - "$POT" "$LOCALES" <<'PY'
import sys
from pathlib import Path

from babel.messages.pofile import read_po

pot, locales = sys.argv[1], Path(sys.argv[2])
with open(pot, "rb") as handle:
    wanted = {m.id for m in read_po(handle) if m.id}
status = 0
for locale in ("zh_CN", "en"):
    with open(locales / locale / "LC_MESSAGES" / "messages.po", "rb") as handle:
        have = {m.id for m in read_po(handle, locale=locale) if m.id}
    for msgid in sorted(wanted - have, key=str):
        print(f"{locale}: missing {msgid!r}")
        status = 1
    for msgid in sorted(have - wanted, key=str):
        print(f"{locale}: no longer used {msgid!r}")
        status = 1
print("catalogues are up to date" if status == 0 else "run scripts/i18n.sh and translate the new messages")
sys.exit(status)
PY
fi

for locale in zh_CN en; do
  po="$LOCALES/$locale/LC_MESSAGES/messages.po"
  if [[ -f "$po" ]]; then
    "$PYBABEL" -q update -i "$POT" -d "$LOCALES" -l "$locale" --no-wrap --ignore-obsolete --previous --ignore-pot-creation-date
  else
    "$PYBABEL" -q init -i "$POT" -d "$LOCALES" -l "$locale" --no-wrap
  fi
done

# Untranslated or fuzzy zh_CN entries fall back to English on the page: list them for the translator.
"$PYTHON" - "$LOCALES/zh_CN/LC_MESSAGES/messages.po" <<'PY'
import sys

from babel.messages.pofile import read_po

with open(sys.argv[1], "rb") as handle:
    todo = [m.id for m in read_po(handle, locale="zh_CN") if m.id and (not m.string or m.fuzzy)]
for msgid in todo:
    print(f"zh_CN needs a translation: {msgid!r}")
print(f"{len(todo)} zh_CN message(s) to translate" if todo else "zh_CN: every message is translated")
PY
