#!/usr/bin/env bash
# Install, then run the whole test suite (fast unit tests and the slow end-to-end ones).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Headless Chromium from Debian's packages: tests open the catalog report in a real browser.
# Not fatal: without it only that test fails, and says why.
if ! command -v chromium >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo "sudo -n")
    { $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends \
             chromium >/dev/null; }; } || echo "warning: could not install chromium" >&2
fi
# Two workers, a module at a time each (tests/conftest.py): the tests wait on Ray, jobs and
# nodes about a third of the time, which the other worker's tests fill.
exec .venv/bin/python -m pytest -n 2 "$@"
