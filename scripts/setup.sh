#!/usr/bin/env bash
# Set up everything gpu-node-agent's development and tests need on a Debian/Ubuntu box: Debian
# packages, a venv on the system Python (.venv, Python 3.11 with Debian's python3-gi, which pydbus
# needs) and a venv on Python 3.9 (.venv39), AL2023's /usr/bin/python3 (scripts/find-python39.sh finds
# one, or obtains one with uv, or says what to install).
# The venvs hold exactly the locked versions of scripts/lock/ (hash-checked): the bundled libraries at
# the RPM's pins, AL2023's distribution libraries in .venv39, the test and lint tools; scripts/lock.sh
# refreshes the locks. A release on PyPI never changes what is installed here.
#   --demo   only what scripts/demo.sh needs: DEMO_APT_PACKAGES below, .venv (the same lock: the
#            demo runs the tests' systemd harness and loopback API server) and the containerd 2.x
#            daemon (scripts/fetch-containerd.sh 2); no .venv39, no 1.7 daemon, no build tools
# Idempotent: a second run only checks. Needs root (or sudo) for the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=no
[ "${1:-}" = --demo ] && demo=yes

# What the demo needs: Python with PyGObject (pydbus) and dbus-python (the lock takes Debian's, so
# nothing builds), venv; a real systemd and D-Bus booted in private namespaces (systemd, dbus;
# unshare, nsenter and mount from util-linux, script from bsdutils); Debian's archive key, which
# scripts/fetch-containerd.sh verifies the 2.x daemon's package with.
DEMO_APT_PACKAGES=(
  python3 python3-venv python3-gi python3-dbus gir1.2-glib-2.0 ca-certificates
  systemd dbus util-linux bsdutils debian-archive-keyring
)
# What the tests need besides: rpmbuild; Debian 12's containerd 1.6 (the 1.7 daemon comes from
# scripts/fetch-containerd.sh too); gpg for the EFA signature; shellcheck and jq; iproute2; what
# PyGObject, pycairo and dbus-python need to build for Python 3.9.
TEST_APT_PACKAGES=(
  python3-dev libgirepository1.0-dev libcairo2-dev libdbus-1-dev libglib2.0-dev pkg-config gcc make
  iproute2
  rpm containerd curl openssl
  python3-yaml python3-requests shellcheck jq
  gpg gpg-agent gpgconf gpgv
  prometheus  # promtool: the metrics file and packaging/prometheus/ rules are tested with it
)
# Benchmarks only (bench/README.md), not the tests: hyperfine.
APT_PACKAGES=("${DEMO_APT_PACKAGES[@]}")
[ "$demo" = yes ] || APT_PACKAGES+=("${TEST_APT_PACKAGES[@]}")

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

pip_quiet=(-q --disable-pip-version-check)
# A venv is reinstalled when its lock changed since the last setup (or it holds something else).
install_locked() {  # VENV LOCK
  local venv=$1 lock=$2 stamp
  stamp=$(cat "$lock" pyproject.toml | sha256sum | cut -d' ' -f1)
  [ "$(cat "$venv/.setup-stamp" 2>/dev/null)" = "$stamp" ] && return 0
  "$venv/bin/pip" install "${pip_quiet[@]}" --require-hashes -r "$lock"
  "$venv/bin/pip" install "${pip_quiet[@]}" --no-deps --no-build-isolation -e .
  echo "$stamp" > "$venv/.setup-stamp"
}

# Python 3.11 (Debian's): gi and dbus from Debian's python3-gi and python3-dbus (scripts/lock/debian.txt).
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
install_locked .venv scripts/lock/py311.txt
if [ "$demo" = yes ]; then
  scripts/fetch-containerd.sh 2  # the daemon the demo boots: the 2.x of the known-good AMI rows
  echo "setup: ok (.venv: $(.venv/bin/python -V 2>&1); containerd 2.x in .cache/containerd/)"
  exit 0
fi

# containerd 1.7 (trixie) and 2.x (forky) for the real-daemon tests, from Debian's archive through a
# private apt configuration, extracted into .cache/containerd/ (scripts/containerd-versions.txt).
scripts/fetch-containerd.sh

# Python 3.9: the interpreter the agent runs on in production (AL2023), with AL2023's requests,
# urllib3, PyYAML and PyGObject (scripts/lock/al2023.txt). PyGObject, pycairo and dbus-python build
# from source, with the build backends of scripts/lock/build-py39.txt.
PY39=$(scripts/find-python39.sh) || exit 1
if [ ! -x .venv39/bin/python ]; then
  "$PY39" -m venv .venv39
fi
PIP_CONSTRAINT="$PWD/scripts/lock/build-py39.txt" install_locked .venv39 scripts/lock/py39.txt
echo "setup: ok (.venv: $(.venv/bin/python -V 2>&1), .venv39: $(.venv39/bin/python -V 2>&1))"
