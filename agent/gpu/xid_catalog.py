"""What each XID means for a node, from NVIDIA's Xid catalog.

Source: NVIDIA, "Analyzing Xid Errors with the Xid Catalog"
(https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html), the catalog spreadsheet for
Ampere and newer GPUs as published on 2025-10-29 (XIDs 1 to 172), its "Resolution Bucket (Immediate
Action)" column. The class of each XID follows that column:

* ``fatal`` (``fail``): the node must go. ``RESTART_BM`` (79: the GPU fell off the bus, only a reboot
  brings it back), ``RESTART_VM`` (151: key rotation error in confidential computing) and
  ``CHECK_MECHANICALS`` (54: auxiliary power not connected, which no software fixes on EC2).
* ``reset`` (``fail``): ``RESET_GPU``, the GPU cannot be trusted until it is reset (or the node
  rebooted); and the two workflows that end in a reset, ``WORKFLOW_XID_48`` (double-bit ECC error)
  and ``WORKFLOW_NVLINK_ERR`` (74).
* ``application`` (``warn``): ``RESTART_APP``, the workload's fault (or its victim); and
  ``WORKFLOW_XID_45`` (45, preemptive cleanup: it follows another error, or a killed workload, and
  alone it is the application's; NVIDIA/NVSentinel#1629 is what treating it as fatal does to a fleet).
* ``ignore`` (``pass``, listed in the details): ``IGNORE``, no action (63, a row remapping *event*,
  is one: ``remapped_rows.pending`` from nvidia-smi, a ``reset`` finding, says when the GPU needs it).

Not in the table, so a ``warn`` naming the XID: the catalog's ``CONTACT_SUPPORT`` rows (unused XIDs,
and 142), 78 (``UPDATE_SWFW``, vGPU), 144 to 150 (``WORKFLOW_NVLINK5_ERR``: fatal or not depends on
the interrupt info the agent does not decode), 154 (informational, about another XID), 159
(``CHECK_UVM``) and 162 to 172 (no bucket in this version of the catalog).

Compared with the EKS node monitoring agent's fatal list (46, 48, 54, 62, 63, 64, 74, 79, 95, 109,
110, 119, 120, 136, 140, 142, 143, 151, 155, 156, 158): the same XIDs fail here, but 63 (``IGNORE``)
and 142 (``CONTACT_SUPPORT``). Operators move an XID to another class, or make it count only when it
repeats, with ``xid.<number>`` (``agent/config/settings.py``).
"""


from __future__ import annotations

from typing import Dict, NamedTuple

FATAL, RESET, APPLICATION, IGNORE = "fatal", "reset", "application", "ignore"
CATALOG = "NVIDIA Xid Catalog (Ampere and newer), 2025-10-29"


class XidClass(NamedTuple):
    cls: str
    meaning: str
    action: str  # the catalog's immediate action
    reason: str  # the Kubernetes Event reason when it is the check's worst finding


def _table() -> Dict[int, XidClass]:
    t: Dict[int, XidClass] = {
        79: XidClass(FATAL, "GPU has fallen off the bus", "RESTART_BM", "GPUFellOffBus"),
        151: XidClass(FATAL, "Key rotation error", "RESTART_VM", "GPUKeyRotationError"),
        54: XidClass(FATAL, "Auxiliary power is not connected to the GPU board", "CHECK_MECHANICALS",
                     "GPUAuxPowerMissing"),
        46: XidClass(RESET, "GPU stopped processing", "RESET_GPU", "GPUStoppedProcessing"),
        48: XidClass(RESET, "Double Bit ECC Error", "WORKFLOW_XID_48", "GPUDoubleBitECCError"),
        62: XidClass(RESET, "Internal micro-controller halt", "RESET_GPU", "GPUMicrocontrollerError"),
        64: XidClass(RESET, "GPU memory remapping failure", "RESET_GPU", "GPURowRemapFailure"),
        74: XidClass(RESET, "NVLink Error", "WORKFLOW_NVLINK_ERR", "GPUNVLinkError"),
        95: XidClass(RESET, "Uncontained memory error", "RESET_GPU", "GPUUncontainedECCError"),
        109: XidClass(RESET, "Context Switch Timeout Error", "RESET_GPU", "GPUContextSwitchTimeout"),
        110: XidClass(RESET, "Security Fault Error", "RESET_GPU", "GPUSecurityFault"),
        119: XidClass(RESET, "GSP RPC Timeout", "RESET_GPU", "GPUSystemProcessorTimeout"),
        120: XidClass(RESET, "GSP Error", "RESET_GPU", "GPUSystemProcessorError"),
        136: XidClass(RESET, "Link Training Failed", "RESET_GPU", "GPULinkTrainingFailed"),
        140: XidClass(RESET, "ECC Unrecovered Error", "RESET_GPU", "GPUUncorrectableECCError"),
        143: XidClass(RESET, "GPU Initialization Error", "RESET_GPU", "GPUInitializationError"),
        155: XidClass(RESET, "NVLink SW Defined Error", "RESET_GPU", "GPUNVLinkError"),
        156: XidClass(RESET, "Resource Retirement Event", "RESET_GPU", "GPUResourceRetirement"),
        158: XidClass(RESET, "GPU Fatal Timeout", "RESET_GPU", "GPUFatalTimeout"),
        45: XidClass(APPLICATION, "Preemptive cleanup, due to previous errors", "WORKFLOW_XID_45",
                     "GPUApplicationError"),
    }
    application = {
        8: "GPU stopped processing", 11: "Invalid or corrupted push buffer stream",
        13: "Graphics Engine Exception", 25: "Invalid or illegal push buffer stream", 31: "GPU memory page fault",
        32: "Invalid or corrupted push buffer stream", 60: "Video processor exception", 68: "NVDEC0 Exception",
        69: "Graphics Engine class error", 80: "Corrupted data sent to GPU", 86: "OFA Exception",
        94: "Contained memory error", 139: "OFA1 Error",
    }
    application.update({x: "Copy Engine Exception" for x in (39, 40, 41, 70, 71, 72, 75, 76, 77, 85,
                                                              *range(126, 136))})
    application.update({x: "NVDEC Error" for x in (83, 84, 88, 89, 96, 97, 98)})
    application.update({x: "NVJPG Error" for x in (82, *range(99, 106))})
    for xid, meaning in application.items():
        t[xid] = XidClass(APPLICATION, meaning, "RESTART_APP", "GPUApplicationError")
    ignore = {
        14: "Unused", 37: "Driver firmware error", 38: "Driver firmware error", 43: "GPU stopped processing",
        44: "Graphics Engine fault during context switch", 63: "GPU memory remapping event",
        66: "Illegal access by driver", 67: "Illegal access by driver", 92: "High single-bit ECC error rate",
        93: "Non-fatal violation of provisioned InfoROM wear limit", 106: "SMBPBI Test Message",
        107: "SMBPBI Test Message Silent", 108: "NVLink remote translation error", 121: "C2C Error",
        137: "NVLink Privilege Error", 141: "CUDA Fast Path Error", 152: "DLA SMMU Error", 153: "DLA timeout Error",
        157: "Resource Retirement Failure", 160: "Channel Retirement Event", 161: "Channel Retirement Failure",
    }
    for xid, meaning in ignore.items():
        t[xid] = XidClass(IGNORE, meaning, "IGNORE", "GPUXidInformational")
    return dict(sorted(t.items()))


XIDS: Dict[int, XidClass] = _table()
