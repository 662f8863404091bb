#!/usr/bin/env bash
# Boot a simulated GPU node under a real systemd and watch the agent work: nodeadm-config renders a
# drifted containerd config, the prepare pass fixes it before containerd's first start, nodeadm-run
# starts the real containerd and kubelet, the run pass finds everything converged (0 restarts),
# `check` says healthy; then a nodeadm.d drop-in makes nodeadm-run render the drift again and the
# agent repairs it with one verified restart of each daemon; last, the boot timeline.
#
#   sudo scripts/demo.sh                       # containerd: a fetched 2.x if present, else /usr/bin/containerd
#   sudo CONTAINERD=/path/to/containerd scripts/demo.sh
#
# Needs root (systemd boots in private namespaces). What each piece is and where its behaviour comes
# from: scripts/demo_boot.py. Everything happens in a directory under /var/lib, removed at the end,
# with the systemd instance.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "demo: needs root (it boots systemd in private namespaces): sudo $0" >&2; exit 1; fi
scripts/setup.sh >/dev/null  # the test setup: containerd (1.6; 1.7 and 2.x fetched), systemd tools, the venv
exec .venv/bin/python scripts/demo_boot.py "$@"
