#!/usr/bin/env bash
# Boot a simulated GPU node under a real systemd and watch the agent work: nodeadm-config renders a
# drifted containerd config, the prepare pass fixes it before containerd's first start, nodeadm-run
# starts the real containerd and kubelet, the run pass finds everything converged (0 restarts),
# `check` says healthy; then a nodeadm.d drop-in makes nodeadm-run render the drift again and the
# agent repairs it with one verified restart of each daemon; last, the boot timeline.
#
#   sudo scripts/demo.sh                       # containerd: the fetched 2.x, else /usr/bin/containerd
#   sudo CONTAINERD=/path/to/containerd scripts/demo.sh
#
# Needs root (systemd boots in private namespaces). First `scripts/setup.sh --demo` installs what the
# demo needs, and only that: the Debian packages of its DEMO_APT_PACKAGES (python3, python3-venv,
# python3-gi, python3-dbus, gir1.2-glib-2.0, ca-certificates, systemd, dbus, util-linux, bsdutils,
# debian-archive-keyring), .venv with the locked Python packages of scripts/lock/py311.txt (the
# agent's libraries, the test, lint and type-check tools: the demo runs the tests' systemd harness
# and loopback API server), and containerd 2.x from Debian's archive into .cache/containerd/
# (scripts/fetch-containerd.sh 2). Nothing else: no Python 3.9, no containerd 1.6 or 1.7, no compiler.
# What each piece is and where its behaviour comes from: scripts/demo_boot.py. The node lives in a
# directory under /var/lib, removed at the end, with the systemd instance.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "demo: needs root (it boots systemd in private namespaces): sudo $0" >&2; exit 1; fi
scripts/setup.sh --demo >/dev/null
exec .venv/bin/python scripts/demo_boot.py "$@"
