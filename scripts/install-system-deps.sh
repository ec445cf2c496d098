#!/usr/bin/env bash
# Installs what the tests drive besides Python packages: Debian's chromium and chromedriver for the
# browser tests, then each server the tests start (scripts/install-*.sh: slapd, dovecot, the
# OpenID provider).  Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# initdb and pg_ctl: tests/backends/test_outages_postgres.py runs a PostgreSQL of its own.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)

if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      SUDO="sudo"
    else
      echo "install-system-deps: need root to install: ${missing[*]}" >&2
      exit 1
    fi
  fi
  echo "install-system-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for script in "$here"/install-slapd.sh "$here"/install-dovecot.sh "$here"/install-oidc-provider.sh; do
  if [ -f "$script" ]; then
    bash "$script"
  fi
done
