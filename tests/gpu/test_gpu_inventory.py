"""``gpu-inventory`` and the one nvidia-smi query it shares with ``nvidia-driver``, on simulated nodes.

The nvidia-smi stand-in (tests/support/gpu_node.py ``nvidia_smi``) answers only the queries it knows and
refuses an unknown field the way nvidia-smi does, so the agent's exact query is what is tested.
"""

import json
import time
from pathlib import Path
from typing import List

import pytest

from agent.base.noderoot import NodeRoot
from agent.config.load import parse_config
from agent.config.settings import AgentConfig
from agent.gpu import inventory as gpu
from agent.nvidia import driver, smi
from agent.pipeline.health import FAIL, PASS, SKIP, WARN
from tests.support.gpu_node import DRIVER, csv_rows, gpu_rows, healthy_gpu_node, nvidia_smi, write
from tests.support.imds_server import ImdsServer


def inventory(root: Path, config: AgentConfig = AgentConfig(), **kw: bool) -> gpu.CheckResult:
    facts = driver.discover(NodeRoot(str(root)))
    return gpu.check(facts, gpu.discover_instance(NodeRoot(str(root)), config, **kw))


@pytest.fixture
def p5(tmp_path: Path) -> Path:
    return healthy_gpu_node(tmp_path / "node", gpus=8, instance_type="p5.48xlarge")


# --- the CSV --------------------------------------------------------------------------------------

UUID = "GPU-1b2c3d4e-0000-1111-2222-333344445555"
H100_ROW = f"0, 00000000:53:00.0, {UUID}, 580.159.03, 0, [N/A], No, No, Completed, Success"
T4_ROW = f"0, 00000000:00:1E.0, {UUID}, 580.159.03, 0, No, [N/A], [N/A], N/A, N/A"
NO_ECC_ROW = f"0, 00000000:00:1E.0, {UUID}, 580.159.03, [N/A], [N/A], [Not Supported], [N/A], [N/A], [N/A]"


def test_parse_an_h100_row() -> None:
    (row,) = smi.parse(H100_ROW + "\n").rows
    assert row == smi.GpuRow(0, "00000000:53:00.0", UUID, DRIVER, 0, None,
                             False, False, "Completed", "Success")
    assert row.label() == "GPU 0 (00000000:53:00.0)"


def test_parse_a_gpu_before_row_remapping_and_one_without_ecc() -> None:
    t4, no_ecc = smi.parse(T4_ROW + "\n" + NO_ECC_ROW.replace("0, 0000", "1, 0000", 1) + "\n").rows
    assert (t4.ecc_uncorrected, t4.retired_pages_pending, t4.remapped_rows_pending, t4.fabric_state) == \
        (0, False, None, None)
    assert (no_ecc.ecc_uncorrected, no_ecc.retired_pages_pending, no_ecc.remapped_rows_pending) == (None, None, None)


def test_truncated_csv_keeps_the_whole_rows_and_names_the_cut_line() -> None:
    text = csv_rows(gpu_rows(8), smi.FIELDS)
    cut = text[: text.rindex("\n", 0, len(text) - 1) + 30]  # the last row stops after 29 characters
    table = smi.parse(cut)
    assert len(table.rows) == 7
    assert table.malformed == (f"line 8: 3 values, expected 10: {cut.splitlines()[-1]!r}",)


def test_garbage_values_are_reported_not_raised() -> None:
    table = smi.parse(H100_ROW.replace(", No, No,", ", Maybe, No,") + "\n")
    assert table.rows == () and table.malformed == ("line 1: expected Yes or No, got 'Maybe'",)


def test_a_gpu_nvml_cannot_open() -> None:
    table = smi.parse(H100_ROW + "\nUnable to determine the device handle for GPU0000:64:00.0: Unknown Error\n")
    assert len(table.rows) == 1 and table.unreachable == (("0000:64:00.0", "Unknown Error"),)


# --- one nvidia-smi run per check -------------------------------------------------------------------


def counting_smi(root: Path) -> Path:
    """Wrap the node's nvidia-smi stand-in so that each run appends a line to a log."""
    real = root / "usr/bin/nvidia-smi"
    real.rename(root / "usr/bin/nvidia-smi.real")
    log = root / "smi-calls.log"
    script = f'#!/bin/sh\necho "$@" >> {log}\nexec {root}/usr/bin/nvidia-smi.real "$@"\n'
    write(root, "/usr/bin/nvidia-smi", script, 0o755)
    return log


def test_check_runs_nvidia_smi_once_for_every_gpu_check(p5: Path, capsys: pytest.CaptureFixture) -> None:
    from agent import cli

    log = counting_smi(p5)
    cli.main(["--root", str(p5), "check", "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert log.read_text().splitlines() == [" ".join(smi.query_args())]
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["nvidia-driver"]["status"] == PASS and checks["gpu-inventory"]["status"] == PASS
    assert checks["gpu-errors"]["status"] == PASS


def test_an_older_driver_gets_the_base_query(tmp_path: Path) -> None:
    root = healthy_gpu_node(tmp_path / "node", gpus=4)
    nvidia_smi(root, gpu_rows(4), known_fields=smi.BASE_FIELDS)  # predates row remapping and fabric fields
    log = counting_smi(root)
    facts = driver.discover(NodeRoot(str(root)))
    assert len(log.read_text().splitlines()) == 2
    assert driver.check(facts).status == PASS
    assert [r.remapped_rows_pending for r in facts.smi.table.rows] == [None] * 4  # type: ignore[union-attr]
    assert inventory(root).status == PASS


# --- gpu-inventory ------------------------------------------------------------------------------------


def test_eight_of_eight_on_a_p5(p5: Path) -> None:
    r = inventory(p5)
    assert r.status == PASS
    assert r.message == "8 GPUs visible to nvidia-smi, as expected (p5.48xlarge has 8)"
    assert r.details["instance_type_source"] == "/run/gpu-node-agent/instance-type"
    assert r.details["event_reason"] == "GPUsPresent"


def test_seven_of_eight_fails_naming_the_missing_gpu(p5: Path) -> None:
    rows = gpu_rows(8, fabric="Completed")
    nvidia_smi(p5, rows[:3] + rows[4:],
               extra="Unable to determine the device handle for GPU0000:86:00.0: Unknown Error\n", exit_code=15)
    r = inventory(p5)
    assert r.status == FAIL
    assert r.message == ("7 of 8 GPUs visible: 1 missing (p5.48xlarge has 8); 0000:86:00.0: Unknown Error")
    assert r.details["missing"] == 1 and r.details["event_reason"] == "GPUMissing"


def test_unknown_instance_type_skips_the_comparison_and_says_so(tmp_path: Path) -> None:
    root = healthy_gpu_node(tmp_path / "node", instance_type="x9.metal")
    r = inventory(root)
    assert r.status == PASS
    assert r.message == "4 GPUs visible to nvidia-smi; not compared: x9.metal is not in the agent's instance data"


def test_no_instance_type_at_all_in_plain_check_is_a_warning(tmp_path: Path) -> None:
    root = healthy_gpu_node(tmp_path / "node", instance_type="")
    r = inventory(root)
    assert r.status == WARN and r.details["event_reason"] == "InstanceTypeUnknown"
    assert "not compared: instance type unknown (not configured, not in /sys/devices/virtual/dmi/id/product_name, " \
        "not cached" in r.message


def test_configured_type_and_count(tmp_path: Path) -> None:
    root = healthy_gpu_node(tmp_path / "node", instance_type="")
    assert inventory(root, parse_config("gpu:\n  instance_type: g5.48xlarge\n", "c")).message == \
        "4 of 8 GPUs visible: 4 missing (g5.48xlarge has 8)"
    r = inventory(root, parse_config("gpu:\n  expected_count: 4\n", "c"))
    assert r.status == PASS and r.message.endswith("as expected (gpu.expected_count)")


def test_more_gpus_than_the_type_has_is_a_warning(tmp_path: Path) -> None:
    root = healthy_gpu_node(tmp_path / "node", instance_type="g5.xlarge")
    r = inventory(root)
    assert r.status == WARN and "more than expected (g5.xlarge has 1)" in r.message


def test_amd_instances_are_not_counted(tmp_path: Path) -> None:
    root = healthy_gpu_node(tmp_path / "node", instance_type="g4ad.16xlarge")
    assert inventory(root).status == SKIP


def test_driver_not_loaded_on_a_gpu_instance_fails(p5: Path) -> None:
    (p5 / "proc/driver/nvidia/version").unlink()
    for dev in (p5 / "dev").glob("nvidia[0-9]*"):
        dev.unlink()
    nvidia_smi(p5, [], extra="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
               exit_code=9)
    r = inventory(p5)
    assert r.status == WARN and r.message.startswith("GPUs not counted: nvidia-smi exited with 9")
    (p5 / "usr/bin/nvidia-smi").unlink()
    r = inventory(p5)
    assert r.status == FAIL and r.message.startswith("0 of 8 GPUs visible: 8 missing")


def test_not_a_gpu_node(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert inventory(tmp_path / "empty").status == SKIP


def test_a_hanging_nvidia_smi_is_one_bounded_warning(p5: Path) -> None:
    nvidia_smi(p5, gpu_rows(8), sleep=30)
    started = time.monotonic()
    facts = driver.discover(NodeRoot(str(p5)), smi_timeout=0.3)
    assert time.monotonic() - started < 5
    r = gpu.check(facts, gpu.discover_instance(NodeRoot(str(p5)), AgentConfig()))
    assert r.status == WARN and r.message == "GPUs not counted: nvidia-smi did not finish within 0.3s"


def test_truncated_output_is_a_failure_naming_the_missing_gpu(p5: Path) -> None:
    text = csv_rows(gpu_rows(8, fabric="Completed"), smi.FIELDS)
    write(p5, "/usr/bin/nvidia-smi", f"#!/bin/sh\nprintf '%s' '{text[:-60]}'\n", 0o755)
    r = inventory(p5)
    assert r.status == FAIL
    assert r.message.startswith("7 of 8 GPUs visible: 1 missing (p5.48xlarge has 8); nvidia-smi output not "
                                "understood: line 8: ")
    assert r.details["malformed"][0].startswith("line 8: ")


# --- where the instance type comes from -------------------------------------------------------------


def test_imds_is_asked_only_when_allowed_and_the_answer_is_kept(tmp_path: Path, imds: ImdsServer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    root = healthy_gpu_node(tmp_path / "node", gpus=8, instance_type="")
    config = parse_config(f"imds:\n  endpoint: {imds.url}\n", "c")
    assert gpu.discover_instance(NodeRoot(str(root)), config).instance_type is None
    assert imds.requests == []  # plain check never asks
    facts = gpu.discover_instance(NodeRoot(str(root)), config, imds=True)
    assert (facts.instance_type, facts.source, facts.expected) == ("p5.48xlarge", "IMDS instance-type", 8)
    assert (root / "run/gpu-node-agent/instance-type").read_text() == "p5.48xlarge\n"
    asked = len(imds.requests)
    assert gpu.discover_instance(NodeRoot(str(root)), config, imds=True).source == "/run/gpu-node-agent/instance-type"
    assert len(imds.requests) == asked


def test_imds_unavailable_is_said(tmp_path: Path, imds: ImdsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    imds.disabled = True
    root = healthy_gpu_node(tmp_path / "node", instance_type="")
    facts = gpu.discover_instance(NodeRoot(str(root)), parse_config(f"imds:\n  endpoint: {imds.url}\n", "c"),
                                  imds=True)
    assert facts.instance_type is None and "403 Forbidden" in facts.source
    assert not (root / "run/gpu-node-agent/instance-type").exists()


def test_the_nodes_label_is_a_source(tmp_path: Path) -> None:
    root = healthy_gpu_node(tmp_path / "node", instance_type="")
    facts = gpu.discover_instance(NodeRoot(str(root)), AgentConfig(), node_label="g6e.12xlarge")
    assert (facts.instance_type, facts.expected) == ("g6e.12xlarge", 4)


# --- the data file ------------------------------------------------------------------------------------

REQUIRED_FAMILIES = ("p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200", "g4dn", "g5", "g6", "g6e", "g5g",
                     "gr6", "g4ad")


def test_instance_data_names_its_source_and_covers_the_families() -> None:
    data = gpu.instance_types()
    assert data["source"].startswith("Amazon EC2 instance type specifications, Accelerated computing")
    assert "docs.aws.amazon.com/ec2/latest/instancetypes/ac.html" in data["source"]
    families = {name.split(".")[0] for name in data["types"]}
    assert set(REQUIRED_FAMILIES) <= families
    for name, spec in data["types"].items():
        assert isinstance(spec["gpus"], int) and spec["gpus"] >= 1, name
        assert isinstance(spec["nvswitch"], bool), name
    nvswitch: List[str] = sorted(n for n, s in data["types"].items() if s["nvswitch"])
    assert nvswitch == ["p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "p5e.48xlarge", "p5en.48xlarge",
                        "p6-b200.48xlarge"]


# --- the instance type from the node itself: DMI --------------------------------------------------


def test_p5_showing_7_gpus_fails_in_plain_check_from_the_dmi_name_alone(
        tmp_path: Path, imds: ImdsServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """No gpu.instance_type, no cache, no Node label, IMDS reachable: the DMI product name says p5.48xlarge
    and plain ``check`` compares against it, asking no metadata service (not even for the node name)."""
    from agent import cli

    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
    root = healthy_gpu_node(tmp_path / "node", gpus=7, instance_type=None)
    write(root, gpu.DMI_PRODUCT_NAME, "p5.48xlarge\n")
    write(root, "/etc/eks/kubelet/environment", "NODEADM_KUBELET_ARGS=--node-ip=10.0.0.12\n")  # no override
    assert cli.main(["--root", str(root), "check", "--format", "json"]) == 1
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    inventory_check = checks["gpu-inventory"]
    assert (inventory_check["status"], inventory_check["details"]["event_reason"]) == (FAIL, "GPUMissing")
    assert inventory_check["message"].startswith("7 of 8 GPUs visible: 1 missing (p5.48xlarge has 8)")
    assert inventory_check["details"]["instance_type_source"] == gpu.DMI_PRODUCT_NAME
    assert imds.requests == []
    assert not (root / "run/gpu-node-agent/instance-type").exists()


@pytest.mark.parametrize("product, found", [("p5.48xlarge", "p5.48xlarge"), ("HVM domU", None),
                                            ("x9.metal", None), ("", None)])
def test_the_dmi_name_counts_only_when_it_is_a_known_type(tmp_path: Path, product: str, found: str) -> None:
    root = healthy_gpu_node(tmp_path / "node", gpus=8, instance_type=None)
    write(root, gpu.DMI_PRODUCT_NAME, product + "\n")
    facts = gpu.discover_instance(NodeRoot(str(root)), AgentConfig())
    assert facts.instance_type == found
    if found:
        assert facts.source == gpu.DMI_PRODUCT_NAME


def test_the_order_configuration_then_dmi_then_cache(tmp_path: Path) -> None:
    root = healthy_gpu_node(tmp_path / "node", gpus=8, instance_type="g5.12xlarge")  # the cache
    write(root, gpu.DMI_PRODUCT_NAME, "p5.48xlarge\n")
    assert gpu.discover_instance(NodeRoot(str(root)), AgentConfig()).source == gpu.DMI_PRODUCT_NAME
    configured = parse_config("gpu:\n  instance_type: p4d.24xlarge\n", "c")
    assert gpu.discover_instance(NodeRoot(str(root)), configured).instance_type == "p4d.24xlarge"
    (root / gpu.DMI_PRODUCT_NAME.lstrip("/")).unlink()
    assert gpu.discover_instance(NodeRoot(str(root)), AgentConfig()).source == gpu.CACHE
