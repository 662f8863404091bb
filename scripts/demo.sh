#!/usr/bin/env bash
# Set up, build a simulated GPU node from the sample node files, and run the agent's main job on it:
# check (what is wrong), plan (what run would change), run, check again.
# Setup (scripts/setup.sh --demo) installs the Debian packages python3 python3-venv python3-gi
# gir1.2-glib-2.0 ca-certificates when missing, and a venv in ./.venv with the agent's locked libraries.
# Otherwise, the node lives in ./demo-node (recreated each time) and nothing outside it is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --demo >/dev/null
NODE="$PWD/demo-node"
rm -rf "$NODE"
install -D -m 644 tests/samples/containerd-v3-nodeadm-merged.toml "$NODE/etc/containerd/config.toml"
install -D -m 644 tests/samples/containerd-conf.d-99-nvidia.toml "$NODE/etc/containerd/config.d/99-nvidia.toml"
install -D -m 644 tests/samples/nvidia-container-runtime-legacy.toml "$NODE/etc/nvidia-container-runtime/config.toml"
install -D -m 644 /dev/stdin "$NODE/etc/eks/containerd-version.txt" <<<"containerd github.com/containerd/containerd/v2 2.2.3 6f5b9e7"
# The GPU side of the known-good AMI (v20260512): kubelet's version, the loaded driver, one GPU, and
# stand-ins for the two tools the checks run (the real ones need a GPU).
install -D -m 644 /dev/stdin "$NODE/etc/eks/kubelet-version.txt" <<<"Kubernetes v1.35.2-eks-b1e2c3d"
install -D -m 644 /dev/stdin "$NODE/proc/driver/nvidia/version" \
  <<<"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.03  Release Build  (dvs-builder@U22)"
install -D -m 644 /dev/null "$NODE/dev/nvidia0"
# nvidia-smi answers the agent's one query (agent/nvidia/smi.py): index, bus id, uuid, driver, ECC, retired pages,
# remapped rows, fabric state, as an A10G prints them.
install -D -m 755 /dev/stdin "$NODE/usr/bin/nvidia-smi" \
  <<<$'#!/bin/sh\necho "0, 00000000:00:1E.0, GPU-3f1e2d4c-5b6a-4798-8a9b-0c1d2e3f4a5b, 580.159.03, 0, [N/A], No, No, N/A, N/A"'
install -D -m 755 /dev/stdin "$NODE/usr/bin/nvidia-ctk" <<<$'#!/bin/sh\necho "NVIDIA Container Toolkit CLI version 1.19.0"'
# No systemd, cluster or EFA hardware on this simulated node: leave restarts, EFA and publishing out.
# (containerd-running and kubelet-running warn: without a system bus the agent cannot prove them.)
install -D -m 644 /dev/stdin "$NODE/etc/gpu-node-agent/config.yaml" <<'YAML'
restart:
  policy: never
efa:
  install: never
report:
  publish: false
gpu:
  instance_type: g5.xlarge   # a real node's comes from IMDS
YAML
agent() { echo; echo "\$ gpu-node-agent --root demo-node $*"; .venv/bin/gpu-node-agent --root "$NODE" "$@" || echo "(exit $?)"; }
agent check
agent plan
agent --log-format console run
agent check
