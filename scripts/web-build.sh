#!/usr/bin/env bash
# Rebuilds the page's bundle from web/ into ci-server/assets (committed, so
# `cargo build` needs no npm): `npm ci` from the lockfile, then esbuild.
# With --check, builds into a temporary folder and fails when the committed
# bundle differs from a fresh build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=ci-server/assets
if [[ "${1:-}" == "--check" ]]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi

(cd web && npm ci --no-audit --no-fund --loglevel=error >/dev/null && npm test --silent >/dev/null)
esbuild=web/node_modules/.bin/esbuild
"$esbuild" web/src/app.js --bundle --minify --format=iife --target=es2020 \
  --legal-comments=eof --log-level=warning --outfile="$out/app.js"
"$esbuild" web/src/app.css --minify --log-level=warning --outfile="$out/app.css"
cp web/src/index.html "$out/index.html"

if [[ "${1:-}" == "--check" ]]; then
  for f in index.html app.js app.css; do
    if ! cmp -s "$out/$f" "ci-server/assets/$f"; then
      echo "ci-server/assets/$f differs from a fresh build of web/: run scripts/web-build.sh and commit" >&2
      exit 1
    fi
  done
fi
