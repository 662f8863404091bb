"""Operator files in packaging/: the AMI bake script, the SSM document and the fleet views, each run
for real where the machine allows (bash, dash, systemctl --root, jq, the installed agent)."""

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import yaml

from agent.pipeline.health import FAIL, PASS, WARN, CheckResult
from agent.report.document import report_document
from tests.support.packaging_helpers import (
    SYSTEM_PYTHON,
    built_rpm,
    install,
    run,
    simulated_node,
)
from tests.support.paths import REPO, which

PACKAGING = REPO / "packaging"
SSM_DOCUMENT = PACKAGING / "ssm-gpu-node-agent-check.yaml"


def _fake(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("script", ["build-rpm.sh", "ami-bake.sh", "node-health.sh", "node-problems.sh"])
def test_scripts_pass_shellcheck(script: str) -> None:
    proc = run([which("shellcheck"), str(PACKAGING / script)], check=False)
    assert proc.returncode == 0, proc.stdout


# --- AMI bake ----------------------------------------------------------------------------------------


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """An image root with the RPM installed and the leftovers of a build-time run."""
    root = install(built_rpm(), tmp_path / "image")
    for leftover in ("run/gpu-node-agent/status.json", "run/gpu-node-agent/lock",
                     "var/lib/node_exporter/textfile_collector/gpu_node_agent.prom",
                     "var/cache/gpu-node-agent/aws-efa-installer-1.48.0.tar.gz"):
        (root / leftover).parent.mkdir(parents=True, exist_ok=True)
        (root / leftover).write_text("from the build\n")
    return root


def bake(*args: str) -> "subprocess.CompletedProcess[str]":
    which("systemctl")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    return run(["bash", str(PACKAGING / "ami-bake.sh"), *args], check=False, env=env)


def test_bake_installs_the_config_enables_the_units_and_clears_build_state(
    image: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "efa:\n  version: \"1.48.0\"\n  sha256: " + "ab" * 32 + "\n"
        "report:\n  metrics_file: /var/lib/node_exporter/textfile_collector/gpu_node_agent.prom\n"
    )
    proc = bake("--root", str(image), "--skip-install", "--no-efa-fetch", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert (image / "etc/gpu-node-agent/config.yaml").read_text() == config.read_text()
    wants = image / "etc/systemd/system"
    assert (wants / "multi-user.target.wants/gpu-node-agent.service").is_symlink()
    assert (wants / "multi-user.target.wants/gpu-node-agent-prepare.service").is_symlink()
    assert (wants / "timers.target.wants/gpu-node-agent-check.timer").is_symlink()
    assert not (image / "run/gpu-node-agent").exists()
    assert not (image / "var/lib/node_exporter/textfile_collector/gpu_node_agent.prom").exists()
    # The pre-fetched installer is what the bake is for: it stays.
    assert (image / "var/cache/gpu-node-agent/aws-efa-installer-1.48.0.tar.gz").exists()
    assert proc.stdout.rstrip().endswith("ami-bake: gpu-node-agent 0.1.0 baked")


def test_bake_refuses_an_invalid_config_before_touching_the_image(image: Path, tmp_path: Path) -> None:
    shipped = (image / "etc/gpu-node-agent/config.yaml").read_text()
    config = tmp_path / "config.yaml"
    config.write_text("efa:\n  sha256: not-a-checksum\n")
    proc = bake("--root", str(image), "--skip-install", "--no-efa-fetch", "--config", str(config))
    assert proc.returncode == 64
    assert f"{config}:2: efa.sha256: must be 64 hexadecimal characters" in proc.stderr
    assert (image / "etc/gpu-node-agent/config.yaml").read_text() == shipped
    assert not (image / "etc/systemd/system/multi-user.target.wants").exists()
    assert (image / "run/gpu-node-agent/status.json").exists()


@pytest.mark.parametrize(("efa", "said"), [
    ("", "ami-bake: no EFA pin (efa.sha256 or efa.gpg_fingerprint): not fetching the EFA installer;"),
    ("efa:\n  install: never\n  sha256: " + "ab" * 32 + "\n",
     "ami-bake: efa.install is never: not fetching the EFA installer"),
])
def test_bake_with_efa_off_needs_no_flag(image: Path, tmp_path: Path, efa: str, said: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("report:\n  publish: false\n" + efa)
    proc = bake("--root", str(image), "--skip-install", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert said in proc.stdout
    assert proc.stdout.rstrip().endswith("ami-bake: gpu-node-agent 0.1.0 baked")


def test_bake_needs_an_rpm_unless_told_it_is_installed() -> None:
    proc = bake("--no-efa-fetch")
    assert proc.returncode == 1
    assert "ami-bake: which RPM? (or --skip-install)" in proc.stderr


# --- SSM document ------------------------------------------------------------------------------------


def ssm_document() -> Dict[str, Any]:
    return dict(yaml.safe_load(SSM_DOCUMENT.read_text()))


def ssm_script(document: Dict[str, Any], **parameters: str) -> str:
    """The shell the SSM agent runs: runCommand lines, parameters substituted as SSM does."""
    (step,) = document["mainSteps"]
    script = "\n".join(step["inputs"]["runCommand"])
    values = {name: spec.get("default") for name, spec in document["parameters"].items()}
    values.update(parameters)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(values[m.group(1)]), script)


def test_ssm_document_is_a_command_document_running_the_check() -> None:
    document = ssm_document()
    json.loads(json.dumps(document))  # also valid as the JSON form of the document
    assert document["schemaVersion"] == "2.2"  # a string, as SSM requires
    assert isinstance(document["description"], str) and document["description"]
    (step,) = document["mainSteps"]
    assert step["action"] == "aws:runShellScript"
    assert re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", step["name"])
    assert step["precondition"] == {"StringEquals": ["platformType", "Linux"]}
    commands = step["inputs"]["runCommand"]
    assert isinstance(commands, list) and all(isinstance(c, str) for c in commands)
    assert 0 < int(step["inputs"]["timeoutSeconds"]) <= 3600
    script = "\n".join(commands)
    assert "set -- check --format json" in script
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", script))
    assert used == set(document["parameters"])
    for spec in document["parameters"].values():
        assert spec["type"] == "String"
        # Values are pasted into the shell script: only a closed list is safe.
        assert spec["default"] in spec["allowedValues"]
        assert all(re.fullmatch(r"[a-z]+", v) for v in spec["allowedValues"])


@pytest.mark.parametrize("publish", ["no", "yes"])
def test_ssm_script_is_posix_sh(publish: str, tmp_path: Path) -> None:
    script = tmp_path / "_script.sh"
    script.write_text(ssm_script(ssm_document(), Publish=publish))
    proc = run([which("shellcheck"), "--shell=sh", str(script)], check=False)
    assert proc.returncode == 0, proc.stdout


def run_ssm(tmp_path: Path, agent: Optional[str], publish: str = "no") -> "subprocess.CompletedProcess[str]":
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if agent is not None:
        _fake(bin_dir, "gpu-node-agent", agent)
    # dash: the strictest /bin/sh around; the SSM agent runs the commands with sh.
    return run([which("dash"), "-c", ssm_script(ssm_document(), Publish=publish)], check=False,
               env={"PATH": f"{bin_dir}:/usr/bin:/bin"})


@pytest.mark.parametrize(("agent_status", "command_status"), [(0, 0), (2, 0), (1, 1), (64, 64), (75, 75)])
def test_ssm_command_fails_only_where_the_node_needs_attention(
    tmp_path: Path, agent_status: int, command_status: int
) -> None:
    proc = run_ssm(tmp_path, f'echo "$*"; exit {agent_status}')
    assert proc.returncode == command_status
    assert proc.stdout == "check --format json\n"


@pytest.mark.parametrize(("agent_status", "health", "meaning"), [
    (0, "healthy", "healthy"),
    (2, "degraded", "degraded (warnings only)"),
    (1, "unhealthy", "unhealthy"),
    (1, "healthy", "publishing failed (the node is healthy)"),
    (1, "degraded", "publishing failed (the node is degraded)"),
    (64, None, "invalid configuration or usage"),
])
def test_ssm_output_says_what_the_exit_code_means(tmp_path: Path, agent_status: int, health: Optional[str],
                                                  meaning: str) -> None:
    document = json.dumps({"v": 1, "agent": "0.1.0", "health": health, "checks": [
        {"name": "efa", "status": "pass", "message": "x", "details": {"health": "unhealthy"}}]})
    body = f"echo '{document}'" if health else "echo 'gpu-node-agent: c.yaml:1: x: bad' >&2"
    proc = run_ssm(tmp_path, f"{body}; exit {agent_status}", publish="yes")
    assert proc.stderr.splitlines()[-1] == f"gpu-node-agent check: exit {agent_status}: {meaning}"
    if health:
        assert json.loads(proc.stdout)["health"] == health  # stdout is the report, untouched


def test_ssm_publish_parameter_adds_report(tmp_path: Path) -> None:
    assert run_ssm(tmp_path, 'echo "$*"', publish="yes").stdout == "check --format json --report\n"


def test_ssm_command_says_when_the_agent_is_missing(tmp_path: Path) -> None:
    proc = run_ssm(tmp_path, None)
    assert proc.returncode == 127
    assert "gpu-node-agent is not installed" in proc.stderr


def test_ssm_command_returns_the_installed_agents_report(tmp_path: Path) -> None:
    root = install(built_rpm(), tmp_path / "node")
    simulated_node(root, "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml",
                   "nvidia-container-runtime-default.toml")
    proc = run_ssm(tmp_path, f'exec {SYSTEM_PYTHON} -s {root}/usr/bin/gpu-node-agent --root {root} "$@"')
    report = json.loads(proc.stdout)
    assert {c["name"]: c["status"] for c in report["checks"]}["containerd-config"] == "fail"
    assert proc.returncode == (0 if report["health"] in ("healthy", "degraded") else 1)


# --- fleet views -------------------------------------------------------------------------------------


def jsonpath_fields(path: str) -> List[str]:
    """Field names of a simple kubectl JSONPath (.a.b\\.c/d), by kubectl's own rules
    (k8s.io/client-go/util/jsonpath, parseField/advance): a field runs to the next unescaped
    terminator (space . , [ ] $ @ { }), a backslash escapes the next character, and is dropped."""
    assert path.startswith("."), path
    fields, current, i = [], "", 1
    while i < len(path):
        ch = path[i]
        if ch == "\\":
            current += path[i:i + 2]
            i += 2
            continue
        if ch == ".":
            fields.append(current)
            current = ""
        elif ch in " ,[]$@{}":
            raise AssertionError(f"{path!r}: {ch!r} needs a quoted key or escaping")
        else:
            current += ch
        i += 1
    fields.append(current)
    return [f.replace("\\", "") for f in fields]


def custom_columns(spec: str, items: List[Dict[str, Any]]) -> List[List[str]]:
    """``kubectl get -o custom-columns=SPEC`` for simple field paths; ``<none>`` when missing."""
    columns = [column.split(":", 1) for column in spec.split(",")]
    rows = [[header for header, _ in columns]]
    for item in items:
        row = []
        for _, path in columns:
            value: Any = item
            for name in jsonpath_fields(path):
                value = value.get(name) if isinstance(value, dict) else None
            row.append("<none>" if value is None else str(value))
        rows.append(row)
    return rows


def annotation(results: List[CheckResult]) -> str:
    """The <prefix>/report annotation: the report without details, compact JSON."""
    return json.dumps(report_document(results, with_details=False), separators=(",", ":"))


BROKEN = [CheckResult("containerd-config", FAIL, "enable_cdi = false, want true"),
          CheckResult("nvidia-runtime-config", WARN, "accept-nvidia-visible-devices set explicitly"),
          CheckResult("kubelet-running", PASS, "active")]


def node(name: str, annotations: Dict[str, str]) -> Dict[str, Any]:
    labels = {"node.kubernetes.io/instance-type": "p5.48xlarge", "topology.kubernetes.io/zone": "us-west-2a"}
    return {"kind": "Node", "metadata": {"name": name, "labels": labels, "annotations": annotations}}


def fleet(prefix: str) -> List[Dict[str, Any]]:
    return [
        node("ip-10-0-1-1.ec2.internal", {f"{prefix}/health": "healthy",
                                          f"{prefix}/report": annotation([BROKEN[2]])}),
        node("ip-10-0-1-2.ec2.internal", {f"{prefix}/health": "unhealthy",
                                          f"{prefix}/report": annotation(BROKEN), "gpu/health": "decoy"}),
        node("ip-10-0-1-3.ec2.internal", {}),
    ]


@pytest.mark.parametrize("prefix", ["gpu-node-agent", "gpu.example.com"])
def test_node_health_columns_read_the_health_annotation(tmp_path: Path, prefix: str) -> None:
    argv = tmp_path / "argv"
    kubectl = _fake(tmp_path / "bin", "kubectl", f'for a in "$@"; do printf "%s\\n" "$a"; done > {argv}')
    env = {"PATH": f"{kubectl.parent}:/usr/bin:/bin", "GNA_ANNOTATION_PREFIX": prefix}
    run(["sh", str(PACKAGING / "node-health.sh"), "-l", "nvidia.com/gpu.present=true"], env=env)
    args = argv.read_text().splitlines()
    assert args[:3] == ["get", "nodes", "-o"] and args[-2:] == ["-l", "nvidia.com/gpu.present=true"]
    assert args[3].startswith("custom-columns=")
    table = custom_columns(args[3].removeprefix("custom-columns="), fleet(prefix))
    assert [row[:2] for row in table] == [
        ["NODE", "HEALTH"],
        ["ip-10-0-1-1.ec2.internal", "healthy"],
        ["ip-10-0-1-2.ec2.internal", "unhealthy"],
        ["ip-10-0-1-3.ec2.internal", "<none>"],
    ]
    assert table[1][2:] == ["p5.48xlarge", "us-west-2a"]


def test_the_documented_one_liner_is_the_scripts_column() -> None:
    script = (PACKAGING / "node-health.sh").read_text()
    one_liner = re.search(r"kubectl get nodes -o custom-columns='([^']+)'", script)
    assert one_liner
    docs = (REPO / "docs" / "operations.md").read_text()
    assert one_liner.group(0) in docs
    assert [r[1] for r in custom_columns(one_liner.group(1), fleet("gpu-node-agent"))] == [
        "HEALTH", "healthy", "unhealthy", "<none>"]


@pytest.mark.parametrize("prefix", ["gpu-node-agent", "gpu.example.com"])
def test_node_problems_lists_unhealthy_nodes_with_their_failing_checks(tmp_path: Path, prefix: str) -> None:
    which("jq")
    node_list = tmp_path / "nodes.json"
    node_list.write_text(json.dumps({"kind": "NodeList", "apiVersion": "v1", "items": fleet(prefix)}))
    kubectl = _fake(tmp_path / "bin", "kubectl", f'[ "$*" = "get nodes -o json" ] && cat {node_list}')
    env = {"PATH": f"{kubectl.parent}:/usr/bin:/bin", "GNA_ANNOTATION_PREFIX": prefix}
    proc = run(["bash", str(PACKAGING / "node-problems.sh")], env=env)
    assert proc.stdout.splitlines() == [
        "ip-10-0-1-2.ec2.internal\tunhealthy\tcontainerd-config: enable_cdi = false, want true; "
        "nvidia-runtime-config: accept-nvidia-visible-devices set explicitly",
        "ip-10-0-1-3.ec2.internal\tno report\t",
    ]


def test_node_problems_fails_when_kubectl_does(tmp_path: Path) -> None:
    kubectl = _fake(tmp_path / "bin", "kubectl", "echo 'error: You must be logged in' >&2; exit 1")
    proc = run(["bash", str(PACKAGING / "node-problems.sh")], env={"PATH": f"{kubectl.parent}:/usr/bin:/bin"},
               check=False)
    assert proc.returncode == 1
    assert "You must be logged in" in proc.stderr



def test_the_documented_ssm_summary_fits_the_console(tmp_path: Path) -> None:
    """docs/operations.md: the jq summary for AWS-RunShellScript, run on an installed agent's report."""
    which("jq")
    text = (REPO / "docs" / "operations.md").read_text()
    (block,) = re.findall(r"^cat > summary\.json <<'EOF'\n(.*?)\nEOF$", text, re.MULTILINE | re.DOTALL)
    (command,) = json.loads(block)["commands"]
    root = install(built_rpm(), tmp_path / "node")
    simulated_node(root, "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml", "nvidia-container-runtime-legacy.toml")
    full = run([SYSTEM_PYTHON, "-s", f"{root}/usr/bin/gpu-node-agent", "--root", str(root), "check", "--format",
                "json"], check=False).stdout
    assert len(full) > 2500  # why the summary exists
    bin_dir = tmp_path / "bin"
    _fake(bin_dir, "gpu-node-agent", f'exec {SYSTEM_PYTHON} -s {root}/usr/bin/gpu-node-agent --root {root} "$@"')
    proc = run([which("dash"), "-c", command], env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    (line,) = proc.stdout.splitlines()
    summary = json.loads(line)
    assert summary["health"] == "unhealthy" and len(line) < 2500
    assert {p["name"] for p in summary["problems"]} >= {"containerd-config", "nvidia-runtime-config"}
    assert all(p["status"] in ("fail", "warn") for p in summary["problems"])
