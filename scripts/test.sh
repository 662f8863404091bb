#!/usr/bin/env bash
# The test command: set up (idempotent), lint and type-check, then run the whole suite on the
# system Python (3.11) and on Python 3.9. Run as root: the real-systemd and packaging tests need it,
# and a skipped test counts as a failure here (GNA_NO_SKIP=1). Without a Python 3.9 on the machine,
# setup obtains one (uv) or stops with one line saying what to install.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check agent tests bench
.venv/bin/mypy
export GNA_NO_SKIP=1
echo "== Python 3.11"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
echo "== Python 3.9"
.venv39/bin/python -m pytest -q -p no:cacheprovider "$@"
