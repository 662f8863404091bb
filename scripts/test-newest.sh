#!/usr/bin/env bash
# Not part of CI: the whole suite on the newest versions pyproject.toml allows, beside the locked gate
# (scripts/test.sh). It builds .venv-newest (Debian's Python 3.11) and .venv39-newest (Python 3.9),
# prints every version that differs from the locks (scripts/lock/py311.txt, py39.txt), then runs the
# suite on both. Run it before `scripts/lock.sh` to see what a lock refresh would bring.
# Arguments go to pytest (e.g. -x, -k tomledit).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
PY39=$(scripts/find-python39.sh)
quiet=(-q --disable-pip-version-check)
rm -rf .venv-newest .venv39-newest
/usr/bin/python3 -m venv --system-site-packages .venv-newest
.venv-newest/bin/pip install "${quiet[@]}" --upgrade --upgrade-strategy eager -e '.[dev]'
"$PY39" -m venv .venv39-newest
# PyGObject is not the agent's dependency on PyPI (AL2023 provides it); 3.51+ needs girepository-2.0.
.venv39-newest/bin/pip install "${quiet[@]}" --upgrade --upgrade-strategy eager -e '.[test]' 'PyGObject<3.51'

differs() {  # VENV LOCK: "name locked -> newest" for each locked package whose version differs
  "$1/bin/python" - "$2" <<'PY'
import re, sys, importlib.metadata as md
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = dict((norm(n), v) for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", open(sys.argv[1]).read(), re.M))
found = {}
for d in md.distributions():  # in sys.path order: the venv's own before the system's
    found.setdefault(norm(d.metadata["Name"]), d.version)
rows = [f"  {n} {v} -> {found.get(n, 'not installed')}" for n, v in sorted(locked.items()) if found.get(n) != v]
print("\n".join(rows) if rows else "  (none)")
PY
}
echo "== newest vs scripts/lock/py311.txt"; differs .venv-newest scripts/lock/py311.txt
echo "== newest vs scripts/lock/py39.txt"; differs .venv39-newest scripts/lock/py39.txt
export GNA_NO_SKIP=1
# Every test but the one that holds the gate's venvs to their locks.
set -- -k "not this_venv_holds_exactly_its_lock" "$@"
status=0
echo "== Python 3.11, newest"
.venv-newest/bin/python -m pytest -q -p no:cacheprovider "$@" || status=1
echo "== Python 3.9, newest"
.venv39-newest/bin/python -m pytest -q -p no:cacheprovider "$@" || status=1
exit $status
