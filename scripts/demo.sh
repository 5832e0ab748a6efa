#!/usr/bin/env bash
# Install, then run the whole flow on synthesised songs on embedded local Ray.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/genres demo "$@"
