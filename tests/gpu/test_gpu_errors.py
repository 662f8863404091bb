"""``gpu-errors``: XID events from the kernel log and ECC / row-remapping state from nvidia-smi.

Kernel log fixtures are /dev/kmsg records (``PRI,SEQ,USEC,FLAGS;MESSAGE``) with the NVRM lines the
driver prints (the messages are those of real XID reports: the XID number, then pid and text), in a
regular file at ``/dev/kmsg`` under the simulated node's root. One test reads the machine's own
/dev/kmsg to show the read ends (EAGAIN) instead of blocking.
"""

import json
import os
import time
from pathlib import Path
from typing import List

import pytest

from agent import cli
from agent.base.noderoot import NodeRoot
from agent.config.load import parse_config
from agent.gpu import kmsg, xid
from agent.nvidia import driver
from agent.pipeline.health import FAIL, PASS, SKIP, WARN
from tests.support.gpu_node import BOOT_KMSG, gpu_rows, healthy_gpu_node, kmsg_record, nvidia_smi, write

# Real XID reports (NVIDIA's catalog and public bug reports): the kernel names the GPU without a function.
XID_LINES = {
    13: "NVRM: Xid (PCI:0000:53:00): 13, pid=40112, name=python3, Graphics SM Warp Exception on (GPC 1, TPC 2, SM 0): "
        "Out Of Range Address",
    31: "NVRM: Xid (PCI:0000:64:00): 31, pid=40112, name=python3, Ch 00000008, intr 10000000. MMU Fault: ENGINE "
        "GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f1a_00000000. Fault is of type FAULT_PDE ACCESS_TYPE_READ",
    48: "NVRM: Xid (PCI:0000:75:00): 48, pid=40112, name=python3, An uncorrectable double bit error (DBE) has been "
        "detected on GPU in the framebuffer at partition 6, subpartition 0.",
    63: "NVRM: Xid (PCI:0000:86:00): 63, pid=1896, Row Remapper: New row marked for remapping, reset gpu to activate.",
    79: "NVRM: Xid (PCI:0000:97:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.",
    94: "NVRM: Xid (PCI:0000:a8:00): 94, pid=12345, name=python3, Contained: SM (0x1). RST: No, D-RST: No",
    119: "NVRM: Xid (PCI:0000:b9:00): 119, pid='<unknown>', name=<unknown>, Timeout after 6s of waiting for RPC "
         "response from GPU7 GSP! Expected function 76 (GSP_RM_CONTROL) (0x20802a02 0x8).",
}
EXPECTED = {
    13: (WARN, "GPU 0 (00000000:53:00.0): XID 13 Graphics Engine Exception (usually the workload's fault)",
         "GPUApplicationError"),
    31: (WARN, "GPU 1 (00000000:64:00.0): XID 31 GPU memory page fault (usually the workload's fault)",
         "GPUApplicationError"),
    48: (FAIL, "GPU 2 (00000000:75:00.0): XID 48 Double Bit ECC Error (reset the GPU or reboot the node)",
         "GPUDoubleBitECCError"),
    63: (PASS, "no XID event that needs action since boot (5 kernel log records), no ECC or row-remapping problem "
         "on 8 GPUs; 1 to ignore (details.ignored)", "NoGPUErrors"),
    79: (FAIL, "GPU 4 (00000000:97:00.0): XID 79 GPU has fallen off the bus (reboot the node; replace the GPU if it "
         "recurs)", "GPUFellOffBus"),
    94: (WARN, "GPU 5 (00000000:A8:00.0): XID 94 Contained memory error (usually the workload's fault)",
         "GPUApplicationError"),
    119: (FAIL, "GPU 6 (00000000:B9:00.0): XID 119 GSP RPC Timeout (reset the GPU or reboot the node)",
          "GPUSystemProcessorTimeout"),
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return healthy_gpu_node(tmp_path / "node", gpus=8, instance_type="p5.48xlarge")


def log_with(root: Path, *messages: str, start: int = 1000) -> None:
    records = "".join(kmsg_record(start + i, 7_200_000_000 + i * 1000, m, level=3) for i, m in enumerate(messages))
    write(root, "/dev/kmsg", BOOT_KMSG + records)


def gpu_errors(root: Path, policy: str = "") -> xid.CheckResult:
    """The check, with the ``xid`` section of a configuration when ``policy`` is given."""
    node = NodeRoot(str(root))
    facts = driver.discover(node)
    rows = facts.smi.table.rows if facts.smi is not None and facts.smi.table is not None else None
    return xid.check(xid.discover(node), rows, policy=parse_config(policy, "config.yaml").xid)


def test_a_clean_boot(root: Path) -> None:
    r = gpu_errors(root)
    assert r.status == PASS
    assert r.message == "no XID events since boot (4 kernel log records), no ECC or row-remapping problem on 8 GPUs"
    assert r.details["event_reason"] == "NoGPUErrors"


@pytest.mark.parametrize("number", sorted(XID_LINES))
def test_each_xid_is_classified_by_the_table(root: Path, number: int) -> None:
    log_with(root, XID_LINES[number])
    r = gpu_errors(root)
    status, message, reason = EXPECTED[number]
    assert (r.status, r.message, r.details["event_reason"]) == (status, message, reason)
    assert r.details["xid_events"][0]["xid"] == number


def test_the_worst_comes_first_and_repeats_are_counted(root: Path) -> None:
    log_with(root, XID_LINES[13], XID_LINES[13], XID_LINES[79], XID_LINES[31])
    r = gpu_errors(root)
    assert r.status == FAIL and r.details["event_reason"] == "GPUFellOffBus"
    assert r.message == EXPECTED[79][1] + "; +2 more"
    assert r.details["findings"][1:] == [EXPECTED[13][1] + " (x2)", EXPECTED[31][1]]


XID_45 = "NVRM: Xid (PCI:0000:53:00): 45, pid=40112, name=python3, Ch 00000010"


def log_at(root: Path, *events: "tuple[int, str]") -> None:
    """Records at the given minutes since boot."""
    records = "".join(kmsg_record(1000 + i, 3_600_000_000 + int(minute * 60e6), m, level=3)
                      for i, (minute, m) in enumerate(events))
    write(root, "/dev/kmsg", BOOT_KMSG + records)


def test_an_xid_under_its_repeat_threshold_is_held_back_then_counts_as_its_class(root: Path) -> None:
    policy = "xid:\n  45: {class: fatal, repeat: 3, window_minutes: 60}\n"
    log_at(root, (0, XID_45), (40, XID_45))
    r = gpu_errors(root, policy)
    assert r.status == WARN and r.details["event_reason"] == "GPUXidBelowThreshold"
    assert r.message == ("GPU 0 (00000000:53:00.0): XID 45 Preemptive cleanup, due to previous errors x2: held back "
                         "by xid.45.repeat (3 within 60 min make it fatal)")
    log_at(root, (0, XID_45), (40, XID_45), (55, XID_45))
    r = gpu_errors(root, policy)
    assert r.status == FAIL and r.details["event_reason"] == "GPUApplicationError"
    assert r.message == ("GPU 0 (00000000:53:00.0): XID 45 Preemptive cleanup, due to previous errors x3, 3 within 60 "
                         "min (reboot the node; replace the GPU if it recurs)")


def test_a_repeat_counts_only_within_its_window_and_on_one_gpu(root: Path) -> None:
    policy = "xid:\n  45: {class: reset, repeat: 3, window_minutes: 60}\n"
    other_gpu = XID_45.replace("0000:53:00", "0000:64:00")
    log_at(root, (0, XID_45), (50, XID_45), (61, XID_45), (62, other_gpu))  # never 3 within an hour on GPU 0
    r = gpu_errors(root, policy)
    assert r.status == WARN
    assert r.details["findings"] == [
        "GPU 0 (00000000:53:00.0): XID 45 Preemptive cleanup, due to previous errors x3: held back by xid.45.repeat "
        "(3 within 60 min make it reset)",
        "GPU 1 (00000000:64:00.0): XID 45 Preemptive cleanup, due to previous errors x1: held back by xid.45.repeat "
        "(3 within 60 min make it reset)",
    ]
    log_at(root, (0, XID_45), (50, XID_45), (61, XID_45), (62, other_gpu), (62.5, XID_45))
    r = gpu_errors(root, policy)
    assert r.status == FAIL and ", 3 within 60 min" in r.message  # 50, 61, 62.5: three within an hour


def test_the_configuration_moves_an_xid_to_another_class(root: Path) -> None:
    log_with(root, XID_LINES[79], XID_LINES[13])
    r = gpu_errors(root, "xid:\n  79: {class: application}\n  13: {class: ignore}\n")
    assert r.status == WARN
    assert r.message == "GPU 4 (00000000:97:00.0): XID 79 GPU has fallen off the bus (usually the workload's fault)"
    assert r.details["ignored"] == ["GPU 0 (00000000:53:00.0): XID 13 Graphics Engine Exception (no action needed)"]
    log_with(root, XID_LINES[63])
    assert gpu_errors(root, "xid:\n  63: {class: reset}\n").status == FAIL


def test_the_catalog_fails_what_the_eks_node_monitoring_agent_calls_fatal_but_63_and_142() -> None:
    from agent.gpu.xid_catalog import APPLICATION, FATAL, IGNORE, RESET, XIDS

    eks_fatal = {46, 48, 54, 62, 63, 64, 74, 79, 95, 109, 110, 119, 120, 136, 140, 142, 143, 151, 155, 156, 158}
    failing = {x for x, c in XIDS.items() if c.cls in (FATAL, RESET)}
    assert eks_fatal - failing == {63, 142} and failing - eks_fatal == set()
    assert XIDS[63].cls == IGNORE and 142 not in XIDS  # IGNORE and CONTACT_SUPPORT in NVIDIA's catalog
    assert {x for x, c in XIDS.items() if c.cls == FATAL} == {54, 79, 151}
    assert XIDS[45].cls == APPLICATION and XIDS[43].cls == IGNORE and XIDS[94].cls == APPLICATION
    assert all(c.action in ("RESTART_BM", "RESTART_VM", "CHECK_MECHANICALS") for c in XIDS.values() if c.cls == FATAL)
    assert all(c.action == "IGNORE" for c in XIDS.values() if c.cls == IGNORE)


def test_an_xid_not_in_the_table_warns_naming_it(root: Path) -> None:
    log_with(root, "NVRM: Xid (PCI:0000:53:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset "
                   "Required)")
    r = gpu_errors(root)
    assert r.status == WARN and r.message.startswith("GPU 0 (00000000:53:00.0): XID 154 not in the agent's XID table: "
                                                     "GPU recovery action changed")


def test_garbage_and_continuation_lines_are_skipped(root: Path) -> None:
    write(root, "/dev/kmsg", BOOT_KMSG + "this is not a record\n6,xx,1,-;NVRM: Xid (PCI:0000:53:00): 79, bogus\n"
          "\x00\x01binary\n" + kmsg_record(2000, 9_000_000, XID_LINES[13]) + " DEVICE=+pci:0000:53:00.0\n"
          "6,2001,9000100,-;NVRM: Xid (PCI:0000:53:00): 13")  # the last record without its newline
    r = gpu_errors(root)
    assert r.status == WARN and r.details["xid_events_total"] == 2
    assert r.details["kmsg"]["unreadable"] == 1 and r.details["kmsg"]["last_seq"] == 2001


def test_ecc_and_row_remapping_from_nvidia_smi(root: Path) -> None:
    rows = gpu_rows(8, fabric="Completed")
    rows[2]["ecc.errors.uncorrected.volatile.total"] = "3"
    rows[5]["remapped_rows.pending"] = "Yes"
    rows[7]["remapped_rows.failure"] = "Yes"
    nvidia_smi(root, rows)
    r = gpu_errors(root)
    assert r.status == FAIL and r.details["event_reason"] == "GPURowRemapFailure"
    assert r.message == "GPU 7 (00000000:CA:00.0): row remapping failed (replace the GPU); +2 more"
    assert r.details["findings"][1:] == [
        "GPU 2 (00000000:75:00.0): 3 uncorrected ECC errors since the driver loaded",
        "GPU 5 (00000000:A8:00.0): remapped rows pending (reset the GPU)",
    ]


def test_retired_pages_pending_on_a_gpu_without_row_remapping(tmp_path: Path) -> None:
    root = healthy_gpu_node(tmp_path / "node", gpus=1, instance_type="g4dn.xlarge")
    rows = gpu_rows(1, remap=False)
    rows[0]["retired_pages.pending"] = "Yes"
    nvidia_smi(root, rows)
    r = gpu_errors(root)
    assert r.status == FAIL and r.details["event_reason"] == "GPUPageRetirementPending"


def test_gpus_without_ecc_reporting_are_fine(tmp_path: Path) -> None:
    root = healthy_gpu_node(tmp_path / "node", gpus=4)
    nvidia_smi(root, gpu_rows(4, ecc=False, remap=False))
    assert gpu_errors(root).status == PASS


def test_new_events_are_reported_once_and_the_summary_stays(root: Path) -> None:
    node = NodeRoot(str(root))
    log_with(root, XID_LINES[13])
    first = xid.discover(node)
    assert [e.xid for e in first.new_events] == [13]
    assert [e.xid for e in xid.discover(node).new_events] == [13]  # plain check: still new
    xid.acknowledge(node, first)  # a report carried it
    again = xid.discover(node)
    assert again.new_events == () and [e.xid for e in again.events] == [13]
    log_with(root, XID_LINES[13], XID_LINES[79])
    later = xid.discover(node)
    assert [e.xid for e in later.new_events] == [79] and [e.xid for e in later.events] == [13, 79]


def test_the_summary_survives_the_ring_buffer_wrapping(root: Path) -> None:
    node = NodeRoot(str(root))
    log_with(root, XID_LINES[79], start=1000)
    xid.discover(node)
    # Later the ring holds only newer records: the XID 79 record is gone from /dev/kmsg.
    write(root, "/dev/kmsg", kmsg_record(50_000, 9_900_000_000, "systemd[1]: Started session-4.scope."))
    facts = xid.discover(node)
    assert [e.xid for e in facts.events] == [79] and facts.last_seq == 50_000
    assert xid.check(facts, None).details["event_reason"] == "GPUFellOffBus"


def test_a_new_boot_starts_over(root: Path) -> None:
    node = NodeRoot(str(root))
    log_with(root, XID_LINES[79])
    xid.discover(node)
    write(root, "/proc/sys/kernel/random/boot_id", "00000000-1111-2222-3333-444444444444\n")
    write(root, "/dev/kmsg", BOOT_KMSG)
    assert xid.discover(node).events == ()


def test_a_new_boot_with_higher_sequence_numbers_starts_over_too(root: Path) -> None:
    """The new boot's kernel log happens to number its records above the old state's last one: only
    the boot id tells the old boot's XID 79 from this boot's."""
    node = NodeRoot(str(root))
    log_with(root, XID_LINES[79], start=1000)
    assert [e.xid for e in xid.discover(node).events] == [79]
    write(root, "/proc/sys/kernel/random/boot_id", "00000000-1111-2222-3333-444444444444\n")
    write(root, "/dev/kmsg", kmsg_record(60_000, 1_000_000, "systemd[1]: Started session-1.scope."))
    facts = xid.discover(node)
    assert facts.events == () and facts.new_events == ()


def test_the_state_file_keeps_this_boots_events_and_what_was_reported(root: Path) -> None:
    """The state as the next check reads it: this boot's id, its events, the last record seen and the
    last one a report carried."""
    node = NodeRoot(str(root))
    state_file = root / xid.STATE.lstrip("/")
    boot = "11111111-2222-3333-4444-555555555555"
    write(root, "/proc/sys/kernel/random/boot_id", boot + "\n")
    xid.acknowledge(node, None)
    assert not state_file.exists()  # nothing read: nothing to acknowledge
    write(root, "/dev/kmsg", BOOT_KMSG)
    quiet = xid.discover(node)
    xid.acknowledge(node, quiet)  # a report of a quiet log: the records seen are acknowledged
    saved = json.loads(state_file.read_text())
    assert {k: saved[k] for k in ("boot_id", "events", "last_seq", "reported_seq")} == {
        "boot_id": boot, "events": [], "last_seq": quiet.last_seq, "reported_seq": quiet.last_seq}
    log_with(root, XID_LINES[79], XID_LINES[13], start=1000)
    first = xid.discover(node)
    saved = json.loads(state_file.read_text())
    assert saved["boot_id"] == boot and saved["last_seq"] == 1001 and saved["reported_seq"] == quiet.last_seq
    assert len(saved["events"]) == 2
    xid.acknowledge(node, first)
    saved = json.loads(state_file.read_text())
    assert (saved["reported_seq"], saved["last_seq"], len(saved["events"])) == (1001, 1001, 2)
    assert xid.discover(node).new_events == ()
    # a log that started over (lower sequence numbers) in the same boot: the old state is not this log's
    write(root, "/dev/kmsg", kmsg_record(5, 1_000, "NVRM: Xid (PCI:0000:00:1e): 48, pid=1, DBE"))
    again = xid.discover(node)
    assert [e.xid for e in again.events] == [48] and [e.xid for e in again.new_events] == [48]


def test_an_acknowledged_report_keeps_the_events_of_a_state_written_by_nothing(root: Path) -> None:
    """The first report of the boot acknowledges events no check stored yet (a state file that was
    removed): they are kept as known, and the last sequence number never goes back."""
    node = NodeRoot(str(root))
    state_file = root / xid.STATE.lstrip("/")
    log_with(root, XID_LINES[79], start=1000)
    facts = xid.discover(node)
    state_file.unlink()
    xid.acknowledge(node, facts)
    saved = json.loads(state_file.read_text())
    assert len(saved["events"]) == 1 and saved["last_seq"] == 1000 and saved["reported_seq"] == 1000
    older = facts._replace(last_seq=900)
    xid.acknowledge(node, older)
    assert json.loads(state_file.read_text())["last_seq"] == 1000


def test_run_and_check_report_acknowledge_check_does_not(root: Path, capsys: pytest.CaptureFixture) -> None:
    log_with(root, XID_LINES[13])
    write(root, "/etc/gpu-node-agent/config.yaml", "report:\n  publish: false\nrestart:\n  policy: never\n")

    def new_events(*args: str) -> List[int]:
        cli.main(["--root", str(root), "check", "--format", "json", *args])
        doc = json.loads(capsys.readouterr().out)
        (entry,) = [c for c in doc["checks"] if c["name"] == "gpu-errors"]
        return [e["xid"] for e in entry["details"]["new_events"]]

    assert new_events() == [13] and new_events() == [13]
    assert new_events("--report") == [13]
    assert new_events() == []
    status = json.loads((root / "run/gpu-node-agent/status.json").read_text())
    (entry,) = [c for c in status["checks"] if c["name"] == "gpu-errors"]
    assert entry["status"] == WARN and entry["details"]["xid_events"][0]["xid"] == 13  # the since-boot summary


def test_kernel_log_unreadable_is_a_warning(root: Path) -> None:
    (root / "dev/kmsg").unlink()
    (root / "dev/kmsg").mkdir()
    r = gpu_errors(root)
    assert r.status == WARN and r.message.startswith("XIDs not read: ")


def test_no_kernel_log_device_in_an_image(root: Path) -> None:
    (root / "dev/kmsg").unlink()
    r = gpu_errors(root)
    assert r.status == PASS and "no kernel log to read" in r.message


def test_not_a_gpu_node(tmp_path: Path) -> None:
    (tmp_path / "n").mkdir()
    assert xid.check(xid.discover(NodeRoot(str(tmp_path / "n"))), None, gpu_node=False).status == SKIP


def test_the_read_is_bounded(root: Path) -> None:
    many = "".join(kmsg_record(10 + i, i, f"noise {i}") for i in range(5000))
    write(root, "/dev/kmsg", many)
    got = kmsg.read(root / "dev/kmsg", b"NVRM: Xid", max_records=1000)
    assert got.truncated and got.total == 1000


@pytest.mark.skipif(not os.access("/dev/kmsg", os.R_OK), reason="needs read access to /dev/kmsg (root)")
def test_the_real_dev_kmsg_ends_instead_of_blocking() -> None:
    started = time.monotonic()
    got = kmsg.read(Path("/dev/kmsg"), b"NVRM: Xid")
    assert time.monotonic() - started < 5
    assert got.problem is None and got.total > 0 and got.last_seq is not None and got.last_seq >= got.total - 1


def test_a_failed_publish_keeps_the_events_new(root: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.support.kube_helpers import write_node_file

    log_with(root, XID_LINES[79])
    # a kubeconfig whose API server does not answer: the report is not published
    write_node_file(root, "/var/lib/kubelet/kubeconfig", {
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}, 0o600)
    write(root, "/etc/gpu-node-agent/config.yaml", "report:\n  timeout_seconds: 1\n")
    assert cli.main(["--root", str(root), "check", "--report"]) == 1
    assert "not published" in capsys.readouterr().out
    assert [e.xid for e in xid.discover(NodeRoot(str(root))).new_events] == [79]
