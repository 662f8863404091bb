#!/usr/bin/env bash
# Set up everything gpu-node-agent's development and tests need on a Debian/Ubuntu box:
# Debian packages (real systemd and D-Bus, rpmbuild, containerd 1.6 for `config dump`, hyperfine,
# what PyGObject needs to build for Python 3.9), a venv on the system Python (which has python3-gi,
# needed by pydbus) and a venv on Python 3.9, AL2023's /usr/bin/python3 (scripts/find-python39.sh
# finds one, or obtains one with uv, or says what to install).
#   --system-python-only   only the venv on the system Python (what scripts/demo.sh needs)
# Idempotent: a second run only checks. Needs root (or sudo) for the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
only_system=no
[ "${1:-}" = --system-python-only ] && only_system=yes

APT_PACKAGES=(
  python3 python3-venv python3-dev python3-gi gir1.2-glib-2.0
  libgirepository1.0-dev libcairo2-dev libdbus-1-dev libglib2.0-dev pkg-config gcc make
  systemd dbus util-linux bsdutils iproute2
  rpm containerd curl openssl hyperfine ca-certificates
  python3-yaml python3-requests shellcheck jq
  gpg gpg-agent gpgconf gpgv
  prometheus  # promtool: the metrics file and packaging/prometheus/ rules are tested with it
)

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

# The venvs are reinstalled only when pyproject.toml changed since the last setup.
STAMP=$(cat pyproject.toml scripts/al2023-constraints.txt | sha256sum | cut -d' ' -f1)

# Python 3.11 (Debian's): has gi from python3-gi.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$STAMP" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  echo "$STAMP" > .venv/.setup-stamp
fi

# Python 3.9: the interpreter the agent runs on in production (AL2023), with AL2023's requests,
# urllib3 and PyYAML (scripts/al2023-constraints.txt).
if [ "$only_system" = yes ]; then
  echo "setup: ok (.venv: $(.venv/bin/python -V 2>&1))"
  exit 0
fi
PY39=$(scripts/find-python39.sh) || exit 1
if [ ! -x .venv39/bin/python ]; then
  "$PY39" -m venv .venv39
fi
if [ "$(cat .venv39/.setup-stamp 2>/dev/null)" != "$STAMP" ]; then
  .venv39/bin/pip install -q --disable-pip-version-check -c scripts/al2023-constraints.txt \
    'PyGObject<3.51' -e '.[test]'
  echo "$STAMP" > .venv39/.setup-stamp
fi
echo "setup: ok (.venv: $(.venv/bin/python -V 2>&1), .venv39: $(.venv39/bin/python -V 2>&1))"
