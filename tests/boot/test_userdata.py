"""Launch-template user data in packaging/userdata: MIME multipart as cloud-init and nodeadm read
it, a valid NodeConfig, shell that shellcheck accepts, and never the boot-order deadlock (waiting
from cloud-final for a unit ordered after cloud-final)."""

import base64
import email
import email.message
import email.policy
import ipaddress
import re
import shlex
import subprocess
from pathlib import Path
from typing import List

import pytest
import yaml

from agent.config.load import parse_config
from agent.config.settings import AgentConfig
from tests.support.paths import REPO, which

USERDATA = REPO / "packaging" / "userdata"
EXPLICIT = "nodeadm-init-then-agent.mime"
NO_BLOCK = "start-agent-no-block.mime"

# Units that cannot start before cloud-final (which runs user data) has finished.
AFTER_CLOUD_FINAL = re.compile(
    r"^(gpu-node-agent(-check)?|nodeadm-run|cloud-final)(\.service)?$|^(multi-user|graphical|default)\.target$"
)
# Words before the command itself: shell keywords and wrappers.
PREFIXES = {"if", "then", "else", "elif", "while", "until", "do", "!", "time", "sudo", "env", "nohup",
            "exec", "command"}
JOB_VERBS = {"start", "restart", "try-restart", "reload-or-restart", "try-reload-or-restart", "reload",
             "isolate", "enable", "reenable"}


def boot_order_deadlocks(script: str) -> List[str]:
    """The commands of a user-data shell script that would wait for the boot to get past cloud-final."""
    found = []
    lexer = shlex.shlex(script.replace("\\\n", " "), posix=True, punctuation_chars=";&|()\n")
    lexer.whitespace = " \t"
    lexer.commenters = "#"
    command: List[str] = []
    for token in [*lexer, "\n"]:
        if token and set(token) <= set(";&|()\n"):
            if command and _waits(command):
                found.append(" ".join(command))
            command = []
        else:
            command.append(token)
    return found


def _waits(command: List[str]) -> bool:
    words = [w for w in command if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", w)]
    while words and words[0] in PREFIXES:
        words = words[1:]
    if not words:
        return False
    program, args = words[0].rsplit("/", 1)[-1], words[1:]
    if program == "gpu-node-agent":  # status --wait waits for gpu-node-agent.service's run
        return "status" in args and "--wait" in args
    if program == "cloud-init":
        return "status" in args and ("--wait" in args or "-w" in args)
    if program != "systemctl":
        return False
    verbs = [a for a in args if not a.startswith("-")]
    units = [u for u in verbs[1:] if AFTER_CLOUD_FINAL.match(u)]
    if not verbs:
        return False
    if verbs[0] == "is-system-running":
        return "--wait" in args
    if verbs[0] in ("is-active", "is-failed", "status", "show"):
        return bool(units)  # polling a unit that cannot have run yet
    if verbs[0] in ("enable", "reenable"):
        return bool(units) and "--now" in args and "--no-block" not in args
    return verbs[0] in JOB_VERBS and bool(units) and "--no-block" not in args


def parse(name: str) -> email.message.Message:
    return email.message_from_bytes((USERDATA / name).read_bytes(), policy=email.policy.compat32)


def parts(name: str) -> List[email.message.Message]:
    return [p for p in parse(name).walk() if not p.is_multipart()]


def shell_part(name: str) -> str:
    (shell,) = [p for p in parts(name) if p.get_content_type() == "text/x-shellscript"]
    return str(shell.get_payload(decode=True).decode("us-ascii"))


@pytest.mark.parametrize("name", [EXPLICIT, NO_BLOCK])
def test_userdata_is_mime_multipart_with_a_nodeconfig_then_a_shell_part(name: str) -> None:
    message = parse(name)
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/mixed"
    assert message.defects == []  # e.g. a missing closing boundary
    assert [p.get_content_type() for p in parts(name)] == ["application/node.eks.aws", "text/x-shellscript"]
    assert all(p.defects == [] for p in parts(name))


@pytest.mark.parametrize("name", [EXPLICIT, NO_BLOCK])
def test_nodeconfig_part_is_a_nodeadm_nodeconfig(name: str) -> None:
    nodeconfig = parts(name)[0].get_payload(decode=True).decode()
    documents = list(yaml.safe_load_all(nodeconfig))
    assert len(documents) == 1
    (doc,) = documents
    assert (doc["apiVersion"], doc["kind"]) == ("node.eks.aws/v1alpha1", "NodeConfig")
    cluster = doc["spec"]["cluster"]
    assert set(cluster) == {"name", "apiServerEndpoint", "certificateAuthority", "cidr"}
    assert cluster["apiServerEndpoint"].startswith("https://")
    assert base64.b64decode(cluster["certificateAuthority"], validate=True)
    ipaddress.ip_network(cluster["cidr"])


@pytest.mark.parametrize("name", [EXPLICIT, NO_BLOCK])
def test_shell_part_passes_shellcheck(name: str, tmp_path: Path) -> None:
    script = tmp_path / "part.sh"
    script.write_text(shell_part(name))
    assert script.read_text().startswith("#!/bin/bash\n")
    subprocess.run(["bash", "-n", str(script)], check=True)
    proc = subprocess.run([which("shellcheck"), str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("name", [EXPLICIT, NO_BLOCK])
def test_shell_part_never_waits_for_a_unit_ordered_after_cloud_final(name: str) -> None:
    assert boot_order_deadlocks(shell_part(name)) == []


@pytest.mark.parametrize(
    "script",
    [
        "systemctl start gpu-node-agent.service",
        "systemctl start gpu-node-agent",
        "nodeadm init && systemctl restart gpu-node-agent.service",
        "sudo systemctl start nodeadm-run.service",
        "/usr/bin/systemctl --quiet start gpu-node-agent-check.service",
        "systemctl enable --now gpu-node-agent.service",
        "until systemctl is-active gpu-node-agent.service; do sleep 5; done",
        "systemctl is-system-running --wait",
        "cloud-init status --wait",
        "gpu-node-agent status --wait --timeout 600",
        "x=1; systemctl start \\\n  gpu-node-agent.service",
    ],
)
def test_deadlock_detector_catches_the_trap(script: str) -> None:
    assert boot_order_deadlocks(script) != []


@pytest.mark.parametrize(
    "script",
    [
        "systemctl start --no-block gpu-node-agent.service",
        "systemctl --no-block restart gpu-node-agent.service nodeadm-run.service",
        "systemctl restart containerd kubelet",
        "# systemctl start gpu-node-agent.service",
        "echo 'systemctl start gpu-node-agent.service'",
        "nodeadm init\ngpu-node-agent run",
        "gpu-node-agent status",
    ],
)
def test_deadlock_detector_lets_safe_commands_through(script: str) -> None:
    assert boot_order_deadlocks(script) == []


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.mark.parametrize(("agent_status", "script_status"), [(0, 0), (2, 0), (1, 1), (64, 64)])
def test_explicit_pattern_runs_nodeadm_then_the_agent_and_fails_only_when_unhealthy(
    tmp_path: Path, agent_status: int, script_status: int
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    _fake(bin_dir, "nodeadm", f'echo "nodeadm $*" >> {calls}')
    _fake(bin_dir, "gpu-node-agent", f'echo "gpu-node-agent $*" >> {calls}; exit {agent_status}')
    _fake(bin_dir, "systemctl", f'echo "systemctl $*" >> {calls}; exit 99')
    script = tmp_path / "part.sh"
    script.write_text(shell_part(EXPLICIT))
    proc = subprocess.run(["bash", str(script)], env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert proc.returncode == script_status, proc.stderr
    assert calls.read_text().splitlines() == ["nodeadm init", "gpu-node-agent run"]
    if script_status:
        assert f"gpu-node-agent run exited with status {agent_status}" in proc.stderr


def test_no_block_pattern_queues_the_unit_with_a_valid_configuration() -> None:
    script = shell_part(NO_BLOCK)
    assert re.search(r"^systemctl start --no-block gpu-node-agent\.service$", script, re.MULTILINE)
    assert re.search(r"^cat > /etc/gpu-node-agent/config\.d/50-userdata\.yaml <<'CONFIG'$", script, re.MULTILINE)
    heredoc = re.search(r"<<'CONFIG'\n(.*?)^CONFIG$", script, re.DOTALL | re.MULTILINE)
    assert heredoc, "the launch template's agent settings"
    config = parse_config(heredoc.group(1), "user data")
    assert config != AgentConfig() and config.report.metrics_file
    # The script validates what it wrote before queueing the unit.
    assert script.index("gpu-node-agent config validate") < script.index("systemctl start --no-block")


@pytest.mark.parametrize("name", [EXPLICIT, NO_BLOCK])
def test_no_example_overwrites_the_base_configuration(name: str) -> None:
    """The base file is the image's (with its pins): user data writes a drop-in, never config.yaml."""
    assert "/etc/gpu-node-agent/config.yaml" not in shell_part(name).replace("# /etc/gpu-node-agent/config.yaml", "")
    assert not re.search(r">\s*/etc/gpu-node-agent/config\.yaml", shell_part(name))


def test_the_user_data_drop_in_keeps_the_pin_baked_into_the_image(tmp_path: Path) -> None:
    """Apply the shell part to a node tree whose config.yaml carries the AMI's EFA pin: the script
    (its node paths moved under the tree, ``gpu-node-agent`` the real CLI with ``--root``) writes its
    drop-in and validates the merged result; the pin is still in effect and the base file unchanged."""
    import json
    import sys

    root = tmp_path / "node"
    base = root / "etc/gpu-node-agent/config.yaml"
    base.parent.mkdir(parents=True)
    pin = "9f" * 32
    baked = f'efa:\n  version: "1.48.0"\n  sha256: {pin}\n  install: always\n'
    base.write_text(baked)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "gpu-node-agent", f'exec {sys.executable} -m agent --root {root} "$@"')
    _fake(bin_dir, "systemctl", f'echo "systemctl $*" >> {tmp_path / "calls"}')
    script = tmp_path / "part.sh"
    script.write_text(shell_part(NO_BLOCK).replace("/etc/gpu-node-agent", f"{root}/etc/gpu-node-agent"))
    proc = subprocess.run(["bash", str(script)], env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    drop_in = root / "etc/gpu-node-agent/config.d/50-userdata.yaml"
    assert proc.stdout == f"{base}, {drop_in}: valid\n"
    assert base.read_text() == baked
    shown = subprocess.run([sys.executable, "-m", "agent", "--root", str(root), "config", "show", "--format", "json",
                            "--origins"], capture_output=True, text=True, check=True, cwd=REPO)
    doc = json.loads(shown.stdout)
    assert doc["config"]["efa"]["sha256"] == pin and doc["origins"]["efa.sha256"] == str(base)
    assert doc["origins"]["report.metrics_file"] == str(drop_in)
    assert (tmp_path / "calls").read_text() == "systemctl start --no-block gpu-node-agent.service\n"
