#!/usr/bin/env bash
# Bake gpu-node-agent into an EKS AL2023 NVIDIA AMI. Run as root on the image build instance (a
# Packer shell provisioner, an EC2 Image Builder component), or against an image mounted at DIR.
#
#   ami-bake.sh [--root DIR] [--config FILE] [--skip-install] [--no-efa-fetch] RPM
#
#   1. install the RPM with dnf (which brings python3-requests, python3-pyyaml, ... from the AL2023
#      repositories); --skip-install when an earlier step of the pipeline installed it;
#   2. --config FILE: validate FILE and install it as /etc/gpu-node-agent/config.yaml (pin
#      efa.version and efa.sha256 and/or efa.gpg_fingerprint there);
#   3. download and verify the pinned EFA installer into the agent's cache (`gpu-node-agent efa
#      fetch`), so nodes booted from the image need no network for it. Skipped, with a line saying
#      so, when efa.install is never or nothing is pinned (an image without EFA needs no flag);
#      --no-efa-fetch skips it whatever the configuration says;
#   4. enable gpu-node-agent-prepare.service, gpu-node-agent.service and gpu-node-agent-check.timer
#      (never start them: the agent must not reconcile or report the build instance);
#   5. clear the run-time state a node must not inherit from the image: /run/gpu-node-agent (lock,
#      status file) and the configured status and metrics files.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { echo "ami-bake: $*" >&2; exit 1; }

root=""
config=""
install=yes
efa_fetch=yes
rpm_file=""
while (($#)); do
  case "$1" in
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --config) config=${2:?--config needs a file}; shift 2 ;;
    --skip-install) install=no; shift ;;
    --no-efa-fetch) efa_fetch=no; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option: $1" ;;
    *) [ -z "$rpm_file" ] || die "one RPM only"; rpm_file=$1; shift ;;
  esac
done
[ "$install" = no ] || [ -n "$rpm_file" ] || { usage >&2; die "which RPM? (or --skip-install)"; }
if [ -n "$root" ]; then
  root=$(cd "$root" && pwd) || die "--root $root: not a directory"
fi

# The image's own agent, reading and writing the image's files (like `rpm --root`).
agent() {
  if [ -n "$root" ]; then "$root/usr/bin/gpu-node-agent" --root "$root" "$@"; else gpu-node-agent "$@"; fi
}
systemctl_image() {
  if [ -n "$root" ]; then systemctl --root "$root" "$@"; else systemctl "$@"; fi
}

if [ "$install" = yes ]; then
  echo "ami-bake: installing $rpm_file"
  if [ -n "$root" ]; then
    dnf --installroot "$root" install -y "$rpm_file"
  else
    dnf install -y "$rpm_file"
  fi
fi

if [ -n "$config" ]; then
  agent config validate "$config"
  install -D -m 0644 "$config" "$root/etc/gpu-node-agent/config.yaml"
fi
# The configuration the nodes will boot with must be valid (exit 64 and the key's line otherwise).
agent config validate

effective=$(agent config show)
setting() { sed -n "s/^  $1: //p" <<<"$effective" | head -n 1; }

if [ "$efa_fetch" = yes ]; then
  if [ "$(setting install)" = never ]; then
    echo "ami-bake: efa.install is never: not fetching the EFA installer"
  elif [ "$(setting sha256)" = null ] && [ "$(setting gpg_fingerprint)" = null ]; then
    echo "ami-bake: no EFA pin (efa.sha256 or efa.gpg_fingerprint): not fetching the EFA installer;" \
      "nodes with EFA hardware will refuse to install it (the efa check says so)"
  else
    echo "ami-bake: fetching the pinned EFA installer into the image's cache"
    agent efa fetch
  fi
fi

systemctl_image enable gpu-node-agent-prepare.service gpu-node-agent.service gpu-node-agent-check.timer

# Run-time state from this build (a test run, the lock) would make the first boot report stale
# health. /run is a tmpfs on a booted node, but not in a mounted image.
rm -rf "$root/run/gpu-node-agent"
for file in "$(setting status_file)" "$(setting metrics_file)"; do
  if [ -n "$file" ] && [ "$file" != null ]; then
    rm -f "$root$file"
  fi
done
echo "ami-bake: gpu-node-agent $(agent version | sed 's/^gpu-node-agent //') baked"
