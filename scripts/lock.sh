#!/usr/bin/env bash
# Refresh the test venvs' locks (scripts/lock/*.txt) from their sources, with uv (a pinned release, in a
# throw-away venv): the bundled libraries' pins (packaging/bundled-requirements.txt), AL2023's
# distribution libraries (scripts/lock/al2023.txt), Debian's (scripts/lock/debian.txt) and the ranges
# of pyproject.toml's test and dev extras. Every pin is exact and hash-checked when scripts/setup.sh
# installs it, so no release on PyPI changes what the README's test command does until this runs again.
# Needs the package index; commit the result after `sudo scripts/test.sh` passes with it.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
python3 -m venv "$tool/venv"
"$tool/venv/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
compile() { "$tool/venv/bin/uv" pip compile -q --no-header --generate-hashes "$@"; }
bundled=(-c packaging/bundled-requirements.txt)
# setuptools: `pip install -e .` builds the agent's editable install with it (no build isolation).
echo setuptools > "$tool/setuptools.in"
compile pyproject.toml "$tool/setuptools.in" --extra dev "${bundled[@]}" -c scripts/lock/debian.txt \
  --python-version 3.11 -o scripts/lock/py311.txt
compile pyproject.toml "$tool/setuptools.in" scripts/lock/al2023.txt --extra test "${bundled[@]}" \
  --python-version 3.9 -o scripts/lock/py39.txt
# Constraints only (pip refuses hashes there): the versions build isolation may install.
"$tool/venv/bin/uv" pip compile -q --no-header --no-annotate scripts/lock/build.in -c scripts/lock/py39.txt \
  -c scripts/lock/al2023.txt --python-version 3.9 -o scripts/lock/build-py39.txt
echo "lock: scripts/lock/py311.txt, py39.txt, build-py39.txt refreshed; run sudo scripts/test.sh, then commit"
