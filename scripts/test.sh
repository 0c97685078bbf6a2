#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it (lint + pytest).
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: `rclone serve webdav` for the WebDAV round trips, restic to compare
# the retention policy with `restic forget`, and systemd for `systemd-analyze verify` of
# the user unit `cloudkeep service install` writes (it installs cleanly in a container;
# nothing of it runs there), sqldiff (sqlite3-tools) as the anchor of `cloudkeep diff`,
# and chromium, the browser Playwright drives through the dashboard.
missing=()
command -v rclone >/dev/null 2>&1 || missing+=(rclone)
command -v restic >/dev/null 2>&1 || missing+=(restic)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v sqldiff >/dev/null 2>&1 || missing+=(sqlite3-tools)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

# Azurite, the Azure Blob emulator the store tests run against, from npm into the
# project (keep its version in step with AZURITE_VERSION in tests/conftest.py).
azurite=3.35.0
if ! grep -qs "\"version\": \"$azurite\"" .cache/azurite/node_modules/azurite/package.json; then
  npm install --silent --no-audit --no-fund --prefix .cache/azurite "azurite@$azurite" >/dev/null
fi

.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
# The OS-specific calls are type-checked for every platform we ship to, not only this one.
for platform in linux darwin win32; do
  .venv/bin/mypy --platform "$platform" src
done

.venv/bin/python -m pytest "$@"
# Once more with the portable implementation of every OS call (what macOS and
# Windows fall back to): the engine, the stores and the crash tests. Skipped when
# the arguments name tests of their own.
for arg in "$@"; do
  case "$arg" in -*) ;; *) exit 0 ;; esac
done
CLOUDKEEP_PORTABLE=1 exec .venv/bin/python -m pytest "$@" tests/engine tests/storage \
  tests/faults/test_crash_*.py
