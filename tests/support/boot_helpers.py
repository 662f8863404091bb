"""A GPU node booting with the packaged agent, on a real systemd (tests/support/systemd_harness.py).

What boots, and where each piece comes from:

* ``gpu-node-agent-prepare.service``, ``gpu-node-agent.service``, ``gpu-node-agent-check.service``
  and ``.timer``: the unit files the RPM installed into a scratch root, byte for byte. The one
  thing the test has to change, the simulated node's ``--root``, is a drop-in (``DROP_IN``) next
  to them, never an edit.
* ``/usr/bin/gpu-node-agent`` and ``/usr/lib/gpu-node-agent``: the RPM's files, placed at their
  real paths in the instance (the harness overlays them on the host's read-only ``/usr``), so the
  units start the installed launcher, which runs on the host's ``/usr/bin/python3``.
* Stand-ins for the EKS AL2023 units the agent is ordered against. The unit files have the real
  ones' ordering, dependencies, type and command line (amazon-eks-ami
  ``templates/al2023/runtime/rootfs/etc/systemd/system/nodeadm-{config,run}.service``; cloud-init
  22.2.2's ``cloud-{init,config,final}.service`` as rendered for Amazon Linux; AL2023 GPU's
  ``nvidia-kmod-load.service``); the programs they run are stand-ins placed at the real paths
  (``NODEADM``, ``CLOUD_INIT``), doing what nodeadm's ``cmd/nodeadm/init/init.go`` does as far as
  the agent can tell: ``nodeadm init --skip run`` (nodeadm-config) renders
  ``/etc/containerd/config.toml`` from ``imds://user-data`` only and caches what it rendered from;
  ``nodeadm init --skip config`` (nodeadm-run) re-renders only when the current config (user data
  plus ``/etc/eks/nodeadm.d`` drop-ins) differs from that cache, then restarts containerd and
  kubelet over D-Bus (``RestartUnit``, since amazon-eks-ami#2705; ``StartUnit`` before it) and
  waits for each to be active. cloud-final runs the test's user data. containerd and kubelet are
  the harness's ``FakeNodeDaemons`` (they log every start with the digest of the config they
  loaded); as on the AMI, they are not enabled: nodeadm-run starts them.
* ``gpu-node.target``: what ``multi-user.target`` pulls in on a node: the AMI's enabled units plus
  what the RPM's preset enables.

The simulated node (``--root``) is a directory outside ``/tmp`` (the units' ``PrivateTmp=yes``
would hide anything under ``/tmp`` from the agent), bound into the instance at the same path.
"""

import json
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from tests.support.packaging_helpers import built_rpm, install, run, scratch_dir
from tests.support.paths import SAMPLES
from tests.support.systemd_harness import BootedSystemd, FakeNodeDaemons, JobRecord, JobRecorder, free_port

AGENT = "gpu-node-agent.service"
PREPARE = "gpu-node-agent-prepare.service"
CHECK = "gpu-node-agent-check.service"
TIMER = "gpu-node-agent-check.timer"
NODEADM_CONFIG = "nodeadm-config.service"
NODEADM_RUN = "nodeadm-run.service"
KMOD = "nvidia-kmod-load.service"
CONTAINERD = "containerd.service"
KUBELET = "kubelet.service"
TARGET = "gpu-node.target"
JOURNALD = "systemd-journald.service"
CLOUD_INIT_UNITS = ("cloud-init.service", "cloud-config.service", "cloud-final.service")
NODEADM = "/usr/bin/nodeadm"
CLOUD_INIT = "/usr/bin/cloud-init"
NODEADM_D = "/etc/eks/nodeadm.d"
NODEADM_CACHE = "/run/eks/nodeadm/config.json"

HEALTHY = "containerd-v3-nodeadm-nvidia.toml"
DRIFTED = "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml"  # the agent adds SystemdCgroup = true
NVIDIA_DEFAULT = "nvidia-container-runtime-default.toml"

INSTALLED_UNIT_DIR = "usr/lib/systemd/system"
PRESET = "usr/lib/systemd/system-preset/50-gpu-node-agent.preset"
LAUNCHER = "/usr/bin/gpu-node-agent"
LIBDIR = "/usr/lib/gpu-node-agent"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
STATUS_FILE = "/run/gpu-node-agent/status.json"  # report.status_file's default (README "Configuration")
DROP_IN = "50-boot-test.conf"
# Enabled on the EKS AL2023 NVIDIA AMI (multi-user.target, cloud-init.target), so part of every boot.
AMI_ENABLED = (NODEADM_CONFIG, NODEADM_RUN, KMOD, *CLOUD_INIT_UNITS)
# Every systemd wait in these tests is bounded by one of these.
TARGET_TIMEOUT = 60.0
RESTART_TIMEOUT = 20  # the agent's restart.timeout_seconds on the simulated node

# The known-good row of the runbook (AMI v20260512): what the agent's version and driver checks
# read on a node. Without them a node reports warnings (exit 2) or a missing driver (exit 1).
DRIVER = "580.159.03"
KNOWN_GOOD_FILES = {
    "/etc/eks/kubelet-version.txt": "Kubernetes v1.35.2-eks-b1e2c3d\n",
    "/etc/eks/containerd-version.txt":
        "containerd github.com/containerd/containerd/v2 2.2.3 1b3c3d9a2fd4d4a4b4c4d4e4f4a4b4c4d4e4f4a4\n",
    "/etc/eks/release": 'BASE_AMI_ID="ami-0a1b2c3d4e5f60718"\nBUILD_TIME="Tue May 12 08:01:02 UTC 2026"\n'
                        'BUILD_KERNEL="6.12.79-101.147.amzn2023.x86_64"\nARCH="x86_64"\n',
    "/etc/eks/kubelet/environment":
        "NODEADM_KUBELET_ARGS=--node-ip=10.0.0.12 --hostname-override=ip-10-0-0-12.us-west-2.compute.internal "
        "--cloud-provider=external --node-labels=nvidia.com/gpu.present=true\n",
    "/proc/driver/nvidia/version":
        f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {DRIVER}  Release Build  "
        "(dvs-builder@U22-I3-B17-02-5)  Tue Apr 14 09:55:41 UTC 2026\n"
        "GCC version:  gcc version 11.5.0 20240719 (Red Hat 11.5.0-5) (GCC) \n",
    "/dev/nvidia0": "",
    "/dev/nvidiactl": "",
    "/dev/nvidia-uvm": "",
}
KNOWN_GOOD_TOOLS = {
    # the agent's one query (agent/nvidia/smi.py) as an A10G answers it
    "/usr/bin/nvidia-smi": f"0, 00000000:00:1E.0, GPU-3f1e2d4c-5b6a-4798-8a9b-0c1d2e3f4a5b, {DRIVER}, "
                           "0, [N/A], No, No, N/A, N/A\n",
    "/usr/bin/nvidia-ctk": "NVIDIA Container Toolkit CLI version 1.19.0\n"
                           "commit: 09ceee5dde66ba9ce25c7cc69b1ebd5e6e3266fa\n",
}


# --- the package ---------------------------------------------------------------------------------


class PackagedAgent:
    """The RPM built by packaging/build-rpm.sh, installed into a scratch root (``rpm -i --root``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def build_and_install(cls) -> "PackagedAgent":
        return cls(install(built_rpm(), scratch_dir("boot") / "pkg"))

    def unit(self, name: str) -> str:
        return (self.root / INSTALLED_UNIT_DIR / name).read_text()

    def preset_enabled(self) -> List[str]:
        """The units the RPM's preset enables (``enable NAME`` lines)."""
        text = (self.root / PRESET).read_text()
        return re.findall(r"^enable\s+(\S+)\s*$", text, re.MULTILINE)

    def default_config(self) -> str:
        return (self.root / "etc/gpu-node-agent/config.yaml").read_text()

    def usr_files(self) -> Dict[str, bytes]:
        """The launcher and the private library directory, by their path on a node."""
        files = {LAUNCHER: (self.root / LAUNCHER.lstrip("/")).read_bytes()}
        libdir = self.root / LIBDIR.lstrip("/")
        for path in sorted(libdir.rglob("*")):
            if path.is_file():
                files["/" + str(path.relative_to(self.root))] = path.read_bytes()
        return files


def exec_start(unit_text: str) -> str:
    """The unit's single ``ExecStart=`` command line."""
    lines = re.findall(r"^ExecStart=(.+)$", unit_text, re.MULTILINE)
    assert len(lines) == 1, f"expected one ExecStart= line, found {lines}"
    return lines[0].strip()


def with_root(command: str, root: Path) -> str:
    """``command`` with ``--root ROOT`` right after the program (a global option of the CLI)."""
    argv = shlex.split(command)
    return shlex.join([argv[0], "--root", str(root), *argv[1:]])


def drop_in(unit_text: str, root: Path) -> str:
    """The test's only change to a shipped agent unit: the same command with ``--root``."""
    return (
        "# Boot test override (the shipped unit file itself is unchanged).\n"
        "# The simulated node's files live under a directory of the test, not at /: the instance's /etc\n"
        "# is the host's, read-only. So the shipped command gets --root; the program is the installed\n"
        "# launcher at its real path. Nothing else needs changing: the agent finds the instance's\n"
        "# system bus at the standard /run/dbus/system_bus_socket (no DBUS_SYSTEM_BUS_ADDRESS), and every\n"
        "# hardening directive of the unit works in the test's namespaces, so none is overridden.\n"
        "[Service]\n"
        "ExecStart=\n"
        f"ExecStart={with_root(exec_start(unit_text), root)}\n"
    )


# --- the simulated node --------------------------------------------------------------------------


def agent_config(packaged_default: str, extra: str = "") -> str:
    """The packaged default configuration (every key commented out) plus what this node sets
    (``extra``: more sections, YAML)."""
    return packaged_default + (
        "\n## Boot test node: no API server or IMDS here; a bounded restart wait.\n"
        "report:\n"
        "  publish: false\n"
        "gpu:\n"
        "  instance_type: g5.xlarge\n"
        "restart:\n"
        f"  timeout_seconds: {RESTART_TIMEOUT}\n"
    ) + extra


def write_file(root: Path, node_path: str, data: Union[str, bytes], mode: int = 0o644) -> Path:
    path = root / node_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def known_good_node(root: Path, containerd_config: str, config_yaml: str) -> Path:
    """A node of the runbook's known-good row whose config.toml currently holds ``containerd_config``
    (a sample name): what the previous boot left there, before nodeadm renders it again. Its boot
    id is the kernel's (this boot's)."""
    write_file(root, "/etc/containerd/config.toml", (SAMPLES / containerd_config).read_bytes())
    write_file(root, BOOT_ID, Path(BOOT_ID).read_text())
    write_file(root, "/etc/nvidia-container-runtime/config.toml", (SAMPLES / NVIDIA_DEFAULT).read_bytes())
    write_file(root, "/etc/gpu-node-agent/config.yaml", config_yaml)
    for node_path, text in KNOWN_GOOD_FILES.items():
        write_file(root, node_path, text)
    for node_path, out in KNOWN_GOOD_TOOLS.items():
        write_file(root, node_path, f"#!/bin/sh\nprintf '%s' {shlex.quote(out)}\n", 0o755)
    return root


# --- stand-ins for the EKS units -----------------------------------------------------------------

# nodeadm's two boot phases, as far as the agent can tell (cmd/nodeadm/init/init.go).
NODEADM_SCRIPT = r"""#!/bin/sh
# nodeadm stand-in (tests/support/boot_helpers.py). `init --skip run`: the config phase; `init --skip config`:
# the run phase. Every run is logged to {run_log}.
set -eu
case "$*" in
  *"--skip run"*) phase=config ;;
  *"--skip config"*) phase=run ;;
  *) echo "nodeadm stand-in: unknown command: $*" >&2; exit 2 ;;
esac
echo "nodeadm-$phase" >> {run_log}
# What the config the phase reads is made of beyond imds://user-data: the nodeadm.d drop-ins (the
# run phase's --config-source file:///etc/eks/nodeadm.d/; the config phase reads IMDS only).
sources() {{ if [ "$phase" = run ] && [ -d {nodeadm_d} ]; then ls -1 {nodeadm_d}; fi; }}
render() {{ cat {rendered} > {config}; }}  # nodeadm writes the file in place, every render
mkdir -p "$(dirname {cache})"
if [ "$phase" = config ]; then
  render
  sources > {cache}
  exit 0
fi
# The run phase re-runs the config phase only when the cached config differs from the current one.
if [ "$(sources)" != "$(cat {cache} 2>/dev/null)" ]; then
  echo nodeadm-rerender >> {run_log}
  render
  sources > {cache}
fi
# EnsureRunning: {method} over D-Bus, then wait until the unit is active (and its job is done).
bus() {{ busctl --no-pager "$@"; }}
unit_property() {{ bus get-property org.freedesktop.systemd1 "$1" org.freedesktop.systemd1.Unit "$2"; }}
for unit in containerd.service kubelet.service; do
  bus call org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager \
    {method} ss "$unit" replace > /dev/null
  path=$(bus call org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager \
    GetUnit s "$unit" | cut -d'"' -f2)
  tries=0
  until [ "$(unit_property "$path" Job)" = '(uo) 0 "/"' ] && [ "$(unit_property "$path" ActiveState)" = 's "active"' ]
  do
    tries=$((tries + 1))
    if [ "$tries" -gt 600 ]; then echo "nodeadm stand-in: $unit not active" >&2; exit 1; fi
    sleep 0.05
  done
done
"""

# cloud-init's stages, as far as the node's boot order goes: the final stage runs the user data.
CLOUD_INIT_SCRIPT = """#!/bin/sh
# cloud-init stand-in (tests/support/boot_helpers.py): logs each stage; `modules --mode=final` runs the
# test's user data script, if there is one.
set -eu
case "$*" in
  "init") echo cloud-init >> {run_log} ;;
  "modules --mode=config") echo cloud-config >> {run_log} ;;
  "modules --mode=final")
    echo cloud-final >> {run_log}
    if [ -x {user_data} ]; then {user_data}; fi ;;
  *) echo "cloud-init stand-in: unknown command: $*" >&2; exit 2 ;;
esac
"""

# The unit files: ordering, dependencies, type and command line of the real ones.
NODEADM_CONFIG_UNIT = f"""[Unit]
Description=EKS Nodeadm Config (test stand-in)
Before=cloud-init.service
After=systemd-networkd-wait-online.service
[Service]
Type=oneshot
ExecStart={NODEADM} init --skip run --config-source imds://user-data --config-cache {NODEADM_CACHE}
StandardError=journal+console
[Install]
WantedBy=multi-user.target
"""
NODEADM_RUN_UNIT = f"""[Unit]
Description=EKS Nodeadm Run (test stand-in)
After=nodeadm-config.service cloud-final.service
Requires=nodeadm-config.service
[Service]
Type=oneshot
ExecStart={NODEADM} init --skip config --config-source imds://user-data --config-source file://{NODEADM_D}/ \
--config-cache {NODEADM_CACHE}
StandardError=journal+console
[Install]
WantedBy=multi-user.target
"""
CLOUD_UNITS = {
    "cloud-init.service": f"""[Unit]
Description=Initial cloud-init job (metadata service crawler) (test stand-in)
DefaultDependencies=no
Wants=cloud-init-local.service sshd-keygen.service sshd.service
After=cloud-init-local.service systemd-networkd-wait-online.service
Before=network-online.target sshd-keygen.service sshd.service systemd-user-sessions.service
[Service]
Type=oneshot
ExecStart={CLOUD_INIT} init
RemainAfterExit=yes
TimeoutSec=0
StandardOutput=journal+console
""",
    "cloud-config.service": f"""[Unit]
Description=Apply the settings specified in cloud-config (test stand-in)
After=network-online.target cloud-config.target
Wants=network-online.target cloud-config.target
[Service]
Type=oneshot
ExecStart={CLOUD_INIT} modules --mode=config
RemainAfterExit=yes
TimeoutSec=0
StandardOutput=journal+console
""",
    "cloud-final.service": f"""[Unit]
Description=Execute cloud user/final scripts (test stand-in)
After=network-online.target cloud-config.service rc-local.service
Wants=network-online.target cloud-config.service
[Service]
Type=oneshot
ExecStart={CLOUD_INIT} modules --mode=final
RemainAfterExit=yes
TimeoutSec=0
KillMode=process
TasksMax=infinity
StandardOutput=journal+console
""",
    "network-online.target": "[Unit]\\nDescription=Network is Online (test stand-in)\\n",
    "cloud-config.target": "[Unit]\\nDescription=Cloud-config availability (test stand-in)\\n",
}


def kmod_unit(run_log: Path) -> str:
    # amazon-eks-ami (AL2023 GPU) nvidia-kmod-load.service: oneshot, RemainAfterExit=true, ordered
    # after the network only (not against nodeadm).
    return (
        "[Unit]\nDescription=Loading NVIDIA kernel modules (test stand-in)\n"
        "After=network-online.target\nWants=network-online.target\n"
        "[Service]\nType=oneshot\nRemainAfterExit=true\n"
        f"ExecStart=/bin/sh -c 'echo nvidia-kmod-load >> {run_log}'\n"
    )


# --- hardening probes ----------------------------------------------------------------------------

# Prints what a unit's sandbox allows, as name=value lines, into $1. Compared between a unit with
# none of the hardening and one with the shipped unit's hardening lines, it shows that systemd
# really applied each directive here (systemd skips some sandboxing silently, e.g. a mount
# namespace it cannot set up in a container).
PROBE_SCRIPT = r"""#!/bin/sh
flag() { if "$@" >/dev/null 2>&1; then echo yes; else echo no; fi; }
capbnd=$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)
cgroupfs=$(findmnt -n -o TARGET -t cgroup2,cgroup | head -n 1)
{
  echo "uts_namespace=$(flag test "$(readlink /proc/self/ns/uts)" != "$(readlink /proc/1/ns/uts)")"
  echo "private_tmp=$(flag test "$(stat -c %d:%i /tmp)" != "$(stat -c %d:%i /proc/1/root/tmp)")"
  echo "root_home_writable=$(flag test -w /root)"
  echo "cgroupfs_writable=$(flag test -w "$cgroupfs")"
  echo "sysctl_writable=$(flag test -w /proc/sys/vm/drop_caches)"
  echo "etc_writable=$(flag test -w {etc_probe})"
  echo "cap_sys_module=$(( (0x$capbnd >> 16) & 1 ))"
  echo "no_new_privs=$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' /proc/self/status)"
  echo "seccomp=$(sed -n 's/^Seccomp:[[:space:]]*//p' /proc/self/status)"
  echo "personality_change=$(flag setarch "$(uname -m)" -R true)"
  echo "realtime=$(flag chrt -f 1 true)"
} > "$1"
"""
# A directory under /etc that is writable in the instance (a tmpfs mounted on it after boot), so
# that ProtectSystem= has something to make read-only: the instance's /usr and /etc are read-only.
ETC_PROBE = "/etc/gna-boot-probe"
# Each hardening directive the units ship -> (what the probe reports, without it, with it).
PROBES = {
    "PrivateTmp=yes": ("private_tmp", "no", "yes"),
    "ProtectHome=read-only": ("root_home_writable", "yes", "no"),
    "ProtectControlGroups=yes": ("cgroupfs_writable", "yes", "no"),
    "ProtectHostname=yes": ("uts_namespace", "no", "yes"),
    "RestrictRealtime=yes": ("realtime", "yes", "no"),
    "LockPersonality=yes": ("personality_change", "yes", "no"),
    "SystemCallArchitectures=native": ("seccomp", "0", "2"),  # a seccomp filter is installed
    "ProtectSystem=full": ("etc_writable", "yes", "no"),
    "NoNewPrivileges=yes": ("no_new_privs", "0", "1"),
    "ProtectKernelTunables=yes": ("sysctl_writable", "yes", "no"),
    "ProtectKernelModules=yes": ("cap_sys_module", "1", "0"),
}
# [Service] settings that are not sandboxing (everything else in the shipped units must be probed).
NOT_HARDENING = ("Type", "RemainAfterExit", "ExecStart", "SuccessExitStatus", "TimeoutStartSec",
                 "StandardOutput", "StandardError")


def service_directives(unit_text: str) -> List[str]:
    """The ``Key=value`` lines of the ``[Service]`` section, comments left out."""
    section, out = "", []
    for line in unit_text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith(("#", ";")):
            out.append(line)
    return out


def hardening(unit_text: str) -> List[str]:
    return [d for d in service_directives(unit_text) if d.split("=", 1)[0] not in NOT_HARDENING]


def probe_unit(script: Path, out: Path, directives: List[str]) -> str:
    return "[Service]\nType=oneshot\n" + "".join(f"{d}\n" for d in directives) + f"ExecStart={script} {out}\n"


def parse_probe(text: str) -> Dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


# A journal, so StandardOutput=journal+console of the agent's unit behaves as on a node (without
# journald, systemd connects the stream to /dev/null and the console shows nothing).
JOURNALD_SOCKET = """\
[Unit]
Description=Journal Socket (test)
DefaultDependencies=no
[Socket]
ListenDatagram=/run/systemd/journal/socket
ListenStream=/run/systemd/journal/stdout
PassCredentials=yes
PassSecurity=yes
SocketMode=0666
Service=systemd-journald.service
"""
JOURNALD_SERVICE = """\
[Unit]
Description=Journal Service (test)
DefaultDependencies=no
Requires=systemd-journald.socket
After=systemd-journald.socket
[Service]
Type=notify
ExecStart=/usr/lib/systemd/systemd-journald
Sockets=systemd-journald.socket
StandardOutput=null
"""


# --- one booted node -----------------------------------------------------------------------------


class BootedNode:
    """A simulated node directory, the units of a GPU node with the packaged agent, and (after
    ``boot()``) the systemd running them."""

    def __init__(self, packaged: PackagedAgent, boot_systemd: Callable[..., BootedSystemd]) -> None:
        self.packaged = packaged
        self.boot_systemd = boot_systemd
        # Not under /tmp: the agent's units have PrivateTmp=yes. Removed by cleanup().
        self.work = Path(tempfile.mkdtemp(prefix="gna-boot-", dir="/var/lib"))
        self.root = self.work / "node"
        self.daemons = FakeNodeDaemons(self.work / "daemons").install()
        self.healthz_port = free_port()  # the kubelet stand-in's healthz
        self.run_log = self.work / "runs.log"
        self.rendered = self.work / "nodeadm-rendered.toml"
        self.sd: Optional[BootedSystemd] = None
        self.jobs: List[JobRecord] = []
        self.target_started = 0.0  # realtime µs, when the target's start was requested

    @property
    def config_toml(self) -> Path:
        return self.root / "etc/containerd/config.toml"

    @property
    def status_file(self) -> Path:
        return self.root / STATUS_FILE.lstrip("/")

    def cleanup(self) -> None:
        if self.sd is not None:
            self.sd.shutdown()
        shutil.rmtree(self.work, ignore_errors=True)

    @property
    def user_data(self) -> Path:
        """The user data script cloud-final runs (none unless a test writes one)."""
        return self.work / "user-data.sh"

    def programs(self, nodeadm_method: str) -> Dict[str, str]:
        """The stand-in programs, at the paths the units run them from."""
        return {
            NODEADM: NODEADM_SCRIPT.format(run_log=self.run_log, rendered=self.rendered, config=self.config_toml,
                                           nodeadm_d=self.root / NODEADM_D.lstrip("/"), cache=NODEADM_CACHE,
                                           method=nodeadm_method),
            CLOUD_INIT: CLOUD_INIT_SCRIPT.format(run_log=self.run_log, user_data=self.user_data),
        }

    def units(self) -> Dict[str, str]:
        units = {
            JOURNALD: JOURNALD_SERVICE,
            "systemd-journald.socket": JOURNALD_SOCKET,
            NODEADM_CONFIG: NODEADM_CONFIG_UNIT,
            NODEADM_RUN: NODEADM_RUN_UNIT,
            KMOD: kmod_unit(self.run_log),
            CONTAINERD: self.daemons.containerd_unit(self.config_toml,
                                                     socket=self.root / "run/containerd/containerd.sock"),
            KUBELET: self.daemons.kubelet_unit(self.healthz_port),
            **CLOUD_UNITS,
        }
        for name in (PREPARE, AGENT, CHECK, TIMER):
            units[name] = self.packaged.unit(name)
        wants = [*AMI_ENABLED, *self.packaged.preset_enabled()]
        units[TARGET] = (
            "[Unit]\nDescription=GPU node boot: what multi-user.target pulls in on a node (test)\n"
            f"Wants={' '.join(wants)}\n"
        )
        return units

    def drop_ins(self) -> Dict[str, str]:
        """``/run/test-units/UNIT.d/NAME.conf`` files: ``--root`` for the agent's three services."""
        return {
            f"/run/test-units/{unit}.d/{DROP_IN}": drop_in(self.packaged.unit(unit), self.root)
            for unit in (PREPARE, AGENT, CHECK)
        }

    def boot(
        self,
        *,
        previous: str,
        rendered: str,
        nodeadm_method: str = "RestartUnit",
        config_extra: str = "",
        extra_files: Optional[Mapping[str, Union[str, bytes]]] = None,
    ) -> BootedSystemd:
        """Boot systemd (bus and journal only), ready to start ``TARGET``. ``previous``: the
        sample config.toml holds before the boot; ``rendered``: the sample nodeadm writes;
        ``nodeadm_method``: how nodeadm-run starts the daemons (``RestartUnit`` since
        amazon-eks-ami#2705, ``StartUnit`` before)."""
        known_good_node(self.root, previous, agent_config(self.packaged.default_config(), config_extra))
        self.daemons.install_ctr(self.root)  # answers for the containerd stand-in as the real ctr does
        self.daemons.node_kubelet_config(self.root, self.healthz_port)
        shutil.copyfile(SAMPLES / rendered, self.rendered)
        files: Dict[str, Union[str, bytes]] = {**self.packaged.usr_files(), **self.drop_ins(),
                                               **self.programs(nodeadm_method)}
        files.update(extra_files or {})
        self.sd = self.boot_systemd(
            self.units(),
            files,
            wants=[JOURNALD, "systemd-journald.socket"],
            binds=[self.work],
        )
        return self.sd

    def start_target(self) -> List[JobRecord]:
        """Start ``TARGET`` (the boot transaction of the node's units) and wait for it; returns
        every ``JobRemoved`` systemd emitted meanwhile."""
        sd = self.instance
        with sd.record_jobs() as recorder:
            self.target_started = time.time() * 1e6
            proc = sd.systemctl("start", TARGET, timeout=TARGET_TIMEOUT, check=False)
            assert proc.returncode == 0, f"systemctl start {TARGET}: {proc.stderr}\n{self.diagnostics()}"
            wait_for_job(recorder, TARGET)
        self.jobs = recorder.jobs
        return self.jobs

    def systemctl_recording(self, verb: str, unit: str) -> Tuple["subprocess.CompletedProcess[str]", List[JobRecord]]:
        """``systemctl VERB UNIT`` in the instance (it waits for the job), and every job that
        finished meanwhile, the unit's own included."""
        sd = self.instance
        with sd.record_jobs() as recorder:
            proc = sd.systemctl(verb, unit, timeout=TARGET_TIMEOUT, check=False)
            if proc.returncode == 0:
                wait_for_job(recorder, unit)
        return proc, recorder.jobs

    def props(self, unit: str) -> Dict[str, Any]:
        return self.instance.properties(unit)

    def timer_property(self, timer: str, name: str) -> int:
        """A numeric property of the ``org.freedesktop.systemd1.Timer`` interface."""
        sd = self.instance
        bus = ["busctl", f"--address={sd.bus_address}"]
        path = run([*bus, "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                    "org.freedesktop.systemd1.Manager", "LoadUnit", "s", timer], timeout=10).stdout.split()[1]
        value = run([*bus, "get-property", "org.freedesktop.systemd1", json.loads(path),
                     "org.freedesktop.systemd1.Timer", name], timeout=10).stdout.split()
        assert value[0] in ("t", "u"), value
        return int(value[1])

    def runs(self) -> List[str]:
        """The stand-ins' runs, in order (nodeadm-config, nodeadm-run, nodeadm-rerender, cloud-init,
        cloud-config, cloud-final, nvidia-kmod-load)."""
        return self.run_log.read_text().splitlines() if self.run_log.exists() else []

    def journal(self, unit: str, *, containing: str = "", timeout: float = 5.0) -> str:
        """The unit's journal; with ``containing``, once it contains that text (journald reads a
        unit's output stream asynchronously, so the last lines can land after the unit exited)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.instance.nsenter("journalctl", "--no-pager", "-o", "cat", "-u", unit, check=False).stdout
            if containing in text or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    def diagnostics(self) -> str:
        """What to show when an assertion fails: units, journal, console."""
        sd = self.instance
        parts = [sd.systemctl("list-units", "--all", "--no-legend", check=False).stdout]
        parts.append(sd.nsenter("journalctl", "--no-pager", "-o", "short-monotonic", check=False).stdout[-6000:])
        parts.append(sd.console_log()[-3000:])
        return "\n".join(parts)

    @property
    def instance(self) -> BootedSystemd:
        assert self.sd is not None, "boot() first"
        return self.sd

    def console(self, *, containing: str = "", timeout: float = 5.0) -> str:
        """The instance's console (what EC2's "Get system log" would show); with ``containing``,
        once it contains that text (journald forwards to the console as it reads the stream)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.instance.console_log()
            if containing in text or time.monotonic() > deadline:
                return text
            time.sleep(0.05)


def units_of(jobs: List[JobRecord]) -> List[Tuple[str, str]]:
    return [(j.unit, j.result) for j in jobs]


def index_of(jobs: List[JobRecord], unit: str) -> int:
    """Position of the (single) job of ``unit`` in ``jobs``."""
    found = [i for i, j in enumerate(jobs) if j.unit == unit]
    assert len(found) == 1, f"{unit}: expected one job, got {units_of(jobs)}"
    return found[0]


def wait_for_job(recorder: JobRecorder, unit: str, timeout: float = 5.0) -> None:
    """Until the recorder has seen ``unit``'s JobRemoved. systemctl learns that its job finished
    on systemd's private socket; the same signal can reach the bus (and the recorder) a moment
    later, after the recorder's own barrier."""
    deadline = time.monotonic() + timeout
    while not recorder.for_unit(unit):
        assert time.monotonic() < deadline, f"no JobRemoved for {unit} within {timeout}s: {units_of(recorder.jobs)}"
        time.sleep(0.01)
