#!/usr/bin/env bash
# Installs Debian's Dovecot IMAP and POP3 servers (dovecot-imapd, dovecot-pop3d) for the mail
# tests.  Idempotent: does nothing when dovecot and doveadm are already there.  Needs root (or
# password-less sudo) only when something is missing.
#
# The tests never use the system's Dovecot instance: they start their own with a private
# configuration file, as the current user, on free loopback ports.  Debian's postinst starts a
# system instance on ports 110/143/993/995; this script stops and disables it, since nothing here
# needs it.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

if have dovecot && have doveadm && [ -e /usr/lib/dovecot/imap ] && [ -e /usr/lib/dovecot/pop3 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
  else
    echo "install-dovecot: dovecot is missing; run as root (or with password-less sudo):" >&2
    echo "  sudo apt-get install dovecot-imapd dovecot-pop3d" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-dovecot: no apt-get here; install Dovecot (IMAP and POP3) yourself" >&2
  exit 1
fi

echo "install-dovecot: installing dovecot-core dovecot-imapd dovecot-pop3d"
export DEBIAN_FRONTEND=noninteractive
# Keep the system instance from starting during the installation where policy-rc.d is honoured
# (containers without systemd); it is stopped below anyway.
policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  policy=/usr/sbin/policy-rc.d
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
fi
cleanup() { if [ -n "$policy" ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends dovecot-core dovecot-imapd dovecot-pop3d \
  >/dev/null

# The test instances need no system Dovecot: stop it and keep it from starting at boot.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now dovecot >/dev/null 2>&1 || true
elif [ -x /etc/init.d/dovecot ]; then
  $SUDO /etc/init.d/dovecot stop >/dev/null 2>&1 || true
fi
echo "install-dovecot: done (dovecot $(dovecot --version 2>/dev/null || echo '?'))"
