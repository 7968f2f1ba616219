#!/usr/bin/env bash
# Installs what this project needs and the machine lacks: Debian packages (as root) and the Python package.
# Safe to run repeatedly; it does nothing when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v wrk >/dev/null || need+=(wrk)
command -v npm >/dev/null || need+=(nodejs npm)  # builds the GraphQL explorer's assets (below)
command -v chromium >/dev/null || need+=(chromium)  # tests/graphql/test_explorer.py opens the explorer in it
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${need[*]} (run as root or install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts the packaged servers; this project runs its own on other ports.
  (service redis-server stop || true; service postgresql stop || true) >/dev/null 2>&1
fi

stamp=.data/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ] || ! python3 -c "import agent, aiohttp, redis, asyncpg, pytest" 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check -e '.[test,load]'
  mkdir -p .data && touch "$stamp"
fi

# The GraphQL explorer's assets: GraphiQL, React and graphql-js at the versions pinned in package-lock.json,
# bundled by esbuild into agent/graphql/explorer/static/ (not committed: built here and in the Dockerfile).
# Rebuilt when the lockfile or the sources change; node_modules is removed again once the bundle is built.
explorer=agent/graphql/explorer
explorer_stamp=$(cat "$explorer/package.json" "$explorer/package-lock.json" "$explorer"/src/* | sha1sum | cut -c1-12)
if [ "$(cat "$explorer/static/.built" 2>/dev/null)" != "$explorer_stamp" ] \
    || [ ! -f "$explorer/static/explorer.js" ] || [ ! -f "$explorer/static/explorer.css" ]; then
  rm -rf "$explorer/static"
  (cd "$explorer" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && npm run --silent build)
  rm -rf "$explorer/node_modules"
  echo "$explorer_stamp" > "$explorer/static/.built"
fi
