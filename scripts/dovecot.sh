#!/usr/bin/env bash
# Installs Debian's IMAP server (dovecot-imapd) for the email channel's tests, idempotently.
# Only the binaries are needed: the tests start their own private dovecot on a loopback port with a
# configuration under a temporary directory, so the system service is stopped and left disabled.
set -euo pipefail

dovecot_bin() { command -v dovecot 2>/dev/null || { [[ -x /usr/sbin/dovecot ]] && echo /usr/sbin/dovecot; }; }

if [[ -n "$(dovecot_bin || true)" ]]; then
  exit 0
fi
if [[ $(id -u) != 0 ]]; then
  echo "dovecot is missing: run 'sudo apt-get install dovecot-imapd' (the IMAP tests skip without it)" >&2
  exit 0
fi
echo "== installing dovecot-imapd (apt) for the IMAP tests"
# No service start during installation (containers have no init; a host keeps its port 143 free).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  created_policy=1
fi
install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dovecot-imapd >/dev/null; }
install || { apt-get update -q >/dev/null && install; } || status=$?
[[ $created_policy == 1 ]] && rm -f "$policy"
if [[ -n "${status:-}" ]]; then
  echo "dovecot-imapd could not be installed (status $status); the IMAP tests will skip" >&2
  exit 0
fi
# A system service that did start (hosts with systemd) is not what the tests use.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet dovecot 2>/dev/null; then
  systemctl stop dovecot || true
  systemctl disable dovecot >/dev/null 2>&1 || true
fi
echo "== dovecot $("$(dovecot_bin)" --version 2>/dev/null || echo '?') installed"
