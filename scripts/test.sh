#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it (lint + pytest).
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# The WebDAV round trips run against a real `rclone serve webdav`, and the retention
# policy is compared with `restic forget` (Debian packages).
missing=()
command -v rclone >/dev/null 2>&1 || missing+=(rclone)
command -v restic >/dev/null 2>&1 || missing+=(restic)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

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
