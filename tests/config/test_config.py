"""The agent's configuration file: the documented defaults, and one clear line per mistake (exit 64)."""

from pathlib import Path
from typing import Any

import pytest

from agent.base.errors import ConfigError
from agent.config.load import load_config, parse_config
from agent.config.settings import AgentConfig, config_keys, dump_config

# Every key at its default, as README "Configuration" lists them.
CONTRACT_EXAMPLE = """\
containerd:
  config_path: /etc/containerd/config.toml
  runtime: nvidia                 # runtime table to manage
  binary_name: /usr/bin/nvidia-container-runtime
  systemd_cgroup: true
  enable_cdi: true
  default_runtime: true           # make `runtime` the default_runtime_name
nvidia_runtime:
  config_path: /etc/nvidia-container-runtime/config.toml
  repair: true                    # restore defaults on drift (false: report only)
restart:
  policy: when-needed             # when-needed | never | always
  units: [containerd.service, kubelet.service]   # in this order
  timeout_seconds: 120
efa:
  install: auto                   # auto (only when EFA hardware is present) | always | never
  version: "1.48.0"
  sha256: null                    # a pin is required to install; the installer is never run unverified
  gpg_fingerprint: null           # or (and) the signing key's fingerprint: the .sig is checked with gpgv
  base_url: https://efa-installer.amazonaws.com
  cache_dir: /var/cache/gpu-node-agent
  installer_args: ["-y", "--skip-kmod", "--no-verify"]
  timeout_seconds: 1200
  before_kubelet: true            # install in the prepare pass, before nodeadm-run starts kubelet
report:
  publish: true                   # false: status file and metrics only (AMI bake, no cluster yet)
  annotation_prefix: gpu-node-agent   # keys <prefix>/health and <prefix>/report
  condition: GPUNodeAgentReady        # node condition type; null disables it
  kubeconfig: /var/lib/kubelet/kubeconfig
  node_name: null
  status_file: /run/gpu-node-agent/status.json
  metrics_file: null              # e.g. /var/lib/node_exporter/textfile_collector/gpu_node_agent.prom
  timeout_seconds: 30
  heartbeat_minutes: 30           # refresh the condition's lastHeartbeatTime at most this often (0: every report)
  gpu_ready_budget_seconds: 600   # over this, the GPU-ready Event is GPUReadyLate
imds:
  endpoint: null                  # default http://169.254.169.254; honours AWS_EC2_METADATA_SERVICE_ENDPOINT
  timeout_seconds: 2
gpu:
  instance_type: null             # default: the /run cache, the Node's label, IMDS
  expected_count: null            # default: the instance type's GPU count
  allocatable: true               # false: gpu-allocatable skips
  resource_name: nvidia.com/gpu   # or a MIG resource, e.g. nvidia.com/mig-1g.10gb
  resource_per_gpu: 1             # time-slicing replicas, or MIG instances per GPU
  efa_resource_name: vpc.amazonaws.com/efa   # null: EFA not compared
  allocatable_grace_seconds: 300
  fabricmanager_unit: nvidia-fabricmanager.service
compatibility:
  unknown: warn                   # pass | warn | fail: a combination no known-good row lists
"""


def test_the_contract_example_is_exactly_the_defaults() -> None:
    assert parse_config(CONTRACT_EXAMPLE, "example.yaml").settings() == AgentConfig().settings()


def test_every_key_of_the_contract_is_known() -> None:
    import yaml

    documented = {f"{s}.{k}" for s, keys in yaml.safe_load(CONTRACT_EXAMPLE).items() for k in keys}
    assert documented == set(config_keys())


@pytest.mark.parametrize("text", ["", "# only comments\n", "---\n", "containerd:\n"])
def test_empty_files_and_sections_mean_defaults(text: str) -> None:
    assert parse_config(text, "c.yaml").settings() == AgentConfig().settings()


def test_values_are_typed_and_frozen() -> None:
    config = parse_config("restart:\n  timeout_seconds: 5\n  units: [containerd.service]\nefa:\n"
                          "  sha256: " + "AB" * 32 + "\n", "c.yaml")
    assert config.restart.timeout_seconds == 5.0 and isinstance(config.restart.timeout_seconds, float)
    assert config.restart.units == ("containerd.service",)
    with pytest.raises(AttributeError):
        config.restart.policy = "never"  # type: ignore[misc]


@pytest.mark.parametrize(("text", "message"), [
    ("containerd:\n  runtme: nvidia\n", "c.yaml:2: containerd.runtme: unknown key (did you mean 'runtime'?)"),
    ("containrd:\n  runtime: x\n", "c.yaml:1: containrd: unknown section (did you mean 'containerd'?)"),
    ("efa:\n  zzz: 1\n", "c.yaml:2: efa.zzz: unknown key"),
    ("restart:\n  policy: sometimes\n",
     "c.yaml:2: restart.policy: must be one of when-needed, never, always; got 'sometimes'"),
    ("restart:\n\n  timeout_seconds: fast\n",
     "c.yaml:3: restart.timeout_seconds: expected a number of seconds, got a string 'fast'"),
    ("restart:\n  timeout_seconds: 0\n", "c.yaml:2: restart.timeout_seconds: must be greater than 0, got 0.0"),
    ("restart:\n  timeout_seconds: true\n", "c.yaml:2: restart.timeout_seconds: expected a number of seconds"),
    ("efa:\n  version: 1.48\n",
     "c.yaml:2: efa.version: expected a string, got a number 1.48; quote it: \"1.48.0\""),
    ("efa:\n  sha256: abc\n", "c.yaml:2: efa.sha256: must be 64 hexadecimal characters, got 'abc'"),
    ("efa:\n  before_kubelet: yes please\n",
     "c.yaml:2: efa.before_kubelet: expected true or false, got a string 'yes please'"),
    ("efa:\n  installer_args: -y\n", "c.yaml:2: efa.installer_args: expected a list of strings, got a string '-y'"),
    ("efa:\n  base_url: ftp://x\n", "c.yaml:2: efa.base_url: must be an http:// or https:// URL"),
    ("containerd:\n  systemd_cgroup: 'yes'\n",
     "c.yaml:2: containerd.systemd_cgroup: expected true or false, got a string 'yes'"),
    ("containerd:\n  config_path: etc/containerd/config.toml\n",
     "c.yaml:2: containerd.config_path: must be an absolute path"),
    ("containerd:\n  runtime: null\n", "c.yaml:2: containerd.runtime: must not be null"),
    ("restart:\n  units: [containerd, kubelet.service]\n",
     "c.yaml:2: restart.units: 'containerd' is not a systemd service unit name"),
    ("restart:\n  units: []\n", "c.yaml:2: restart.units: must name at least one unit"),
    ("report:\n  annotation_prefix: GPU_Agent\n", "c.yaml:2: report.annotation_prefix: must be a DNS subdomain"),
    ("report:\n  condition: not a type\n", "c.yaml:2: report.condition: must be a condition type"),
    ("report:\n  node_name: Node_1\n", "c.yaml:2: report.node_name: must be a node name"),
    ("containerd:\n  runtime: a\n  runtime: b\n", "c.yaml:3: containerd.runtime: duplicate key"),
    ("- a\n- b\n", "c.yaml:1: (top level): expected a mapping"),
    ("containerd: [1]\n", "c.yaml:1: containerd: expected a mapping"),
    ("containerd:\n  runtime: [x\n", "c.yaml:3:1: invalid YAML"),
    ("containerd:\n\truntime: x\n", "c.yaml:2:1: invalid YAML"),
])
def test_each_mistake_is_one_line_naming_file_line_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 64


def test_missing_default_file_means_defaults_but_an_explicit_one_is_an_error(tmp_path: Path) -> None:
    assert load_config(None, default_path=tmp_path / "none.yaml") == AgentConfig()  # source "<defaults>"
    with pytest.raises(ConfigError, match="none.yaml: configuration file does not exist"):
        load_config(str(tmp_path / "none.yaml"), default_path=tmp_path / "x.yaml")


def test_non_utf8_config(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_bytes(b"containerd:\n  runtime: \xff\n")
    with pytest.raises(ConfigError, match="c.yaml: not UTF-8"):
        load_config(str(p), default_path=p)


def test_show_prints_a_config_that_loads_back_to_the_same_values() -> None:
    config = parse_config("efa:\n  install: never\nreport:\n  node_name: ip-10-0-0-1.ec2.internal\n", "c.yaml")
    shown = dump_config(config)
    assert shown.startswith("# effective configuration (source: c.yaml)\n")
    assert parse_config(shown, "shown.yaml").settings() == config.settings()


def test_the_packaged_config_is_read_without_loading_yaml() -> None:
    """The RPM ships every key commented out: `check` should not pay for a YAML parser to learn that."""
    import subprocess
    import sys

    from tests.support.paths import REPO

    code = (
        "import sys\nfrom agent.config.load import parse_config\nfrom agent.config.settings import AgentConfig\n"
        f"c = parse_config(open({str(REPO / 'packaging' / 'config.yaml')!r}).read(), 'config.yaml')\n"
        "assert c.settings() == AgentConfig().settings()\nprint('yaml' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# Exactly what the user reads, for mistakes whose wording the table above checks only in part.
@pytest.mark.parametrize(("text", "message"), [
    ('containerd:\n  config_path: "/etc/\\0x"\n', "c.yaml:2: containerd.config_path: must not contain NUL"),
    ("report:\n  condition: Bad_Prefix/Ready\n",
     "c.yaml:2: report.condition: prefix 'Bad_Prefix' is not a DNS subdomain"),
    ("efa:\n  version: 2024-01-01\n",
     'c.yaml:2: efa.version: expected a string, got date datetime.date(2024, 1, 1); quote it: "1.48.0"'),
    ("efa:\n  version: true\n", 'c.yaml:2: efa.version: expected a string, got a boolean True; quote it: "1.48.0"'),
    ("containerd:\n  runtime: 5\n", "c.yaml:2: containerd.runtime: expected a string, got an integer 5"),
    ("efa:\n  sha256: 5\n", "c.yaml:2: efa.sha256: expected a string, got an integer 5"),
    ("restart:\n  units: {a: b}\n", "c.yaml:2: restart.units: expected a list of strings, got a mapping {'a': 'b'}"),
    ("containerd:\n  systemd_cgroup: [x]\n",
     "c.yaml:2: containerd.systemd_cgroup: expected true or false, got a list ['x']"),
    ("restart:\n  units: [kubelet.service, kubelet.service]\n", "c.yaml:2: restart.units: lists a unit twice"),
    ("efa:\n  zzz: 1\n", "c.yaml:2: efa.zzz: unknown key"),
    ("1: x\n", "c.yaml:1: 1: keys must be strings"),
    ("containerd: {}\ncontainerd: {}\n", "c.yaml:2: containerd: duplicate key"),
    ("a: b: c\n", "c.yaml:1:5: invalid YAML: mapping values are not allowed in this context"),
    ("containerd:\n  runtime: [x\n", "c.yaml:3:1: invalid YAML: did not find expected ',' or ']'"),
])
def test_mistakes_read_exactly(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    assert str(caught.value) == message


def test_a_character_yaml_cannot_read_names_the_file() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("containerd:\n  runtime: a\x07\n", "c.yaml")
    message = str(caught.value)
    assert message.startswith("c.yaml:") and "invalid YAML: unacceptable character #x0007" in message
    assert "\n" not in message


@pytest.mark.parametrize(("text", "expected"), [
    ("report:\n  condition: gpu.example.com/Ready\n", ("report", "condition", "gpu.example.com/Ready")),
    ("restart:\n  timeout_seconds: 0.5\n", ("restart", "timeout_seconds", 0.5)),
    ("restart:\n  units: [containerd.service, Kubelet-GPU@1.service]\n",
     ("restart", "units", ("containerd.service", "Kubelet-GPU@1.service"))),
])
def test_valid_values_near_the_limits_are_accepted(text: str, expected: tuple) -> None:
    section, key, value = expected
    assert getattr(getattr(parse_config(text, "c.yaml"), section), key) == value


@pytest.mark.parametrize("text", ["", "# only comments\n", "null\n", "~\n", "---\n# x\n...\n"])
def test_a_file_that_sets_nothing_is_still_named_as_the_source(text: str) -> None:
    config = parse_config(text, "c.yaml")
    assert config.settings() == AgentConfig().settings()
    assert dump_config(config).startswith("# effective configuration (source: c.yaml)\n")


def test_a_config_directory_instead_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path), default_path=tmp_path / "x.yaml")
    assert str(caught.value) == f"{tmp_path}: is a directory, expected a YAML file"


@pytest.mark.parametrize("text", [
    "# comment\n\n   # indented comment\n",
    "---\n# a document of comments\n...\n",
    "  \n\t\n#x\n",
    "---   \n# trailing blanks after the marker\n",
])
def test_comments_blank_lines_and_document_markers_need_no_yaml_parser(text: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.paths import REPO

    path = tmp_path / "config.yaml"
    path.write_text(text)
    code = (
        "import sys\nfrom agent.config.load import parse_config\nfrom agent.config.settings import AgentConfig\n"
        f"c = parse_config(open({str(path)!r}).read(), 'config.yaml')\n"
        "assert c.settings() == AgentConfig().settings()\nprint('yaml' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_an_unreadable_config_file(fs: Any) -> None:
    from pyfakefs.helpers import set_uid

    fs.create_file("/etc/gpu-node-agent/config.yaml", contents="restart:\n  policy: never\n", st_mode=0o100000)
    set_uid(1000)  # pyfakefs enforces permissions for a non-root user (the agent itself runs as root)
    try:
        with pytest.raises(ConfigError) as caught:
            load_config("/etc/gpu-node-agent/config.yaml", default_path=Path("/x.yaml"))
    finally:
        set_uid(0)
    assert str(caught.value) == "/etc/gpu-node-agent/config.yaml: permission denied"
