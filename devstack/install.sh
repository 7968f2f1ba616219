#!/usr/bin/env bash
# Installs what this project needs and the machine lacks: Debian packages (as root) and the Python package.
# Safe to run repeatedly; it does nothing when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v wrk >/dev/null || need+=(wrk)
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
