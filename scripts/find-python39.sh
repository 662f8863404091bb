#!/usr/bin/env bash
# Print the path of a Python 3.9 (AL2023's interpreter, which the test suite also runs on), or say in
# one line what to install. Looks at $PYTHON39, pyenv's versions, /usr/local, /usr/bin, PATH and
# uv's managed Pythons; failing those, obtains one with `uv python install 3.9` (uv itself from PyPI,
# into .venv). uv downloads its Pythons from github.com (python-build-standalone): where only PyPI
# is reachable, that step fails and pyenv (or the distribution's python3.9) is the way.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

is39() { [ -n "$1" ] && "$1" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 9))' >/dev/null 2>&1; }

for candidate in "${PYTHON39:-}" "${HOME:-/root}"/.pyenv/versions/3.9*/bin/python3.9 /usr/local/bin/python3.9 \
                 /usr/bin/python3.9 "$(command -v python3.9 2>/dev/null)"; do
  if is39 "$candidate"; then echo "$candidate"; exit 0; fi
done

uv=$(command -v uv 2>/dev/null || true)
if [ -z "$uv" ] && [ -x .venv/bin/pip ]; then
  [ -x .venv/bin/uv ] || .venv/bin/pip install -q --disable-pip-version-check uv >/dev/null 2>&1
  [ -x .venv/bin/uv ] && uv=.venv/bin/uv
fi
if [ -n "$uv" ]; then
  found=$("$uv" python find --managed-python 3.9 2>/dev/null)
  if ! is39 "$found"; then
    "$uv" python install 3.9 >/dev/null 2>&1
    found=$("$uv" python find --managed-python 3.9 2>/dev/null)
  fi
  if is39 "$found"; then echo "$found"; exit 0; fi
fi
echo "find-python39: no Python 3.9 found, and \`uv python install 3.9\` could not download one: install one" \
  "(e.g. \`pyenv install 3.9\`, or python3.9 from your distribution) or set PYTHON39=/path/to/python3.9" >&2
exit 1
