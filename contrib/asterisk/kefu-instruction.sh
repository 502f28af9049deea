#!/bin/sh
# What kefu wants done with a call, for an Asterisk dialplan (SHELL() or System()):
#
#   kefu-instruction.sh <call_id>      prints one line: <action> <extension|queue|-> <timeout_seconds|->
#                                      e.g. "ring 8001 20", "queue cn-phone -", "none - -"
#
# Environment: KEFU_URL (https://kefu.example.cn), KEFU_CTI_SECRET, KEFU_PBX (default "default").
# Needs curl, openssl and python3 (to read the JSON answer). The request is signed as
# docs/integrations/cti-api.md describes: HMAC-SHA256 over "<timestamp>.<path>".
set -eu
call_id=${1:?usage: kefu-instruction.sh <call_id>}
case $call_id in
  *[!A-Za-z0-9._:-]*) echo "error - -"; exit 2 ;;
esac
path="/api/v1/cti/calls/$call_id/instruction"
ts=$(date +%s)
sig=$(printf '%s' "$ts.$path" | openssl dgst -sha256 -hmac "$KEFU_CTI_SECRET" | sed 's/^.*= //')
answer=$(curl -sS --max-time 5 "${KEFU_URL%/}$path" \
  -H "X-Kefu-Timestamp: $ts" -H "X-Kefu-Signature: sha256=$sig" -H "X-Kefu-Pbx: ${KEFU_PBX:-default}") || {
  echo "error - -"; exit 1; }
printf '%s' "$answer" | python3 -c '
import json, sys
try:
    i = json.load(sys.stdin)["instruction"]
except Exception:
    print("error - -"); sys.exit(1)
target = i.get("extension") or i.get("queue") or i.get("number") or "-"
print(i.get("action", "none"), target, i.get("timeout_seconds") or "-")
'
