#!/usr/bin/env bash
# Installs the OpenID provider the auth_oidc tests start (the npm package oidc-provider, pinned by
# tests/backends/oidc_provider/package-lock.json) into tests/backends/oidc_provider/node_modules.
# Idempotent: does nothing when node_modules was installed from the same lock file.  Needs Node.js
# (20.19 or later) and npm, and the npm registry the first time; no root.
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests/backends/oidc_provider" && pwd)"
STAMP="$DIR/node_modules/.plugit-lock.sha256"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "install-oidc-provider: $tool is missing: install Node.js 20.19 or later (with npm)" >&2
    exit 1
  fi
done
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number);
              process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  echo "install-oidc-provider: Node.js $(node --version) is too old: 20.19 or later is needed" >&2
  exit 1
fi

want="$(sha256sum "$DIR/package-lock.json" | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -d "$DIR/node_modules/oidc-provider" ]; then
  exit 0
fi

echo "install-oidc-provider: npm ci in $DIR"
(cd "$DIR" && npm ci --omit=dev --no-audit --no-fund --loglevel=error)
echo "$want" > "$STAMP"
echo "install-oidc-provider: done (oidc-provider $(node -p "require('$DIR/node_modules/oidc-provider/package.json').version"))"
