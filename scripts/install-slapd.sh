#!/usr/bin/env bash
# Installs OpenLDAP's server and tools (Debian's slapd and ldap-utils) for the LDAP tests.
# Idempotent: does nothing when slapd and slapadd are already there (an existing slapd, and the
# service it may run, are left alone).  Needs root (or sudo) only when slapd is missing.
#
# The tests never use the system's slapd instance: they start their own with a private config
# directory on a free loopback port.  Debian's postinst would start a system slapd on port 389;
# this script keeps the freshly installed one from running, since nothing here needs it.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

if have slapd && have slapadd; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
  else
    echo "install-slapd: slapd is missing; run as root (or with password-less sudo):" >&2
    echo "  sudo apt-get install slapd ldap-utils" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-slapd: no apt-get here; install OpenLDAP's slapd and its tools yourself" >&2
  exit 1
fi

echo "install-slapd: installing slapd ldap-utils"
export DEBIAN_FRONTEND=noninteractive
# Keep the system instance from starting during the installation (invoke-rc.d and
# deb-systemd-invoke honour policy-rc.d); it is stopped below anyway.
policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  policy=/usr/sbin/policy-rc.d
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
fi
cleanup() { if [ -n "$policy" ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends slapd ldap-utils >/dev/null

# The test instances need no system slapd: stop the one just installed, and keep it from
# starting at boot.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now slapd >/dev/null 2>&1 || true
elif [ -x /etc/init.d/slapd ]; then
  $SUDO /etc/init.d/slapd stop >/dev/null 2>&1 || true
fi
echo "install-slapd: done ($(/usr/sbin/slapd -VV 2>&1 | head -n 1))"
