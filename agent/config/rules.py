"""What each configuration value must be beyond its type: the rules ``agent/config/settings.py`` keeps next to
its keys (``Annotated[str, Rule(...)]``), and the constants they refuse or accept.

A validator returns a problem description (``must be ..., got ...``), or None when the value is fine;
``agent/config/parse.py`` turns the problem into one line naming the file, line and key.
"""


from __future__ import annotations

import math
import re
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

from agent.base.text import shorten

Validator = Callable[[Any], Optional[str]]  # returns a problem description, or None when fine


class Rule(NamedTuple):
    """A key's rule: its validator, and a hint shown with a type error (``quote it: "1.48.0"``)."""

    check: Validator
    hint: str = ""


def absolute_path(value: Any) -> Optional[str]:
    if not value.startswith("/"):
        return f"must be an absolute path, got {shorten(value)}"
    if "\0" in value:
        return "must not contain NUL"
    return _confined_path(value)


def one_of(*choices: str) -> Validator:
    def check(value: Any) -> Optional[str]:
        if value not in choices:
            return f"must be one of {', '.join(choices)}; got {shorten(value)}"
        return None

    return check


def positive(value: Any) -> Optional[str]:
    if not math.isfinite(value):
        return f"must be a finite number of seconds, got {value!r}"
    if value <= 0:
        return f"must be greater than 0, got {value!r}"
    return None


def not_negative(value: Any) -> Optional[str]:
    if not math.isfinite(value):  # .nan compares false with everything: a nan heartbeat never fires
        return f"must be a finite number, got {value!r}"
    if value < 0:
        return f"must be 0 or more, got {value!r}"
    return None


def regex(pattern: str, what: str) -> Validator:
    def check(value: Any) -> Optional[str]:
        if value is not None and not re.fullmatch(pattern, value):
            return f"must be {what}, got {shorten(value)}"
        return None

    return check


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"(?=.{{1,253}}$){_DNS_LABEL}(\.{_DNS_LABEL})*"
_QUALIFIED_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"


def url(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s]*)?", value):
        return f"must be an http:// or https:// URL, got {shorten(value)}"
    return None


def unit_names(value: Any) -> Optional[str]:
    if not value:
        return "must name at least one unit (containerd first)"
    for unit in value:
        if not re.fullmatch(r"[A-Za-z0-9:_.\\@-]+\.service", unit):
            return f"{shorten(unit)} is not a systemd service unit name (e.g. containerd.service)"
    if len(set(value)) != len(value):
        return "lists a unit twice"
    if value[0] != CONTAINERD_UNIT:
        # the plan restarts the first unit as containerd (stale-daemon check, rollback of its edit)
        return f"the first unit must be {CONTAINERD_UNIT} (restarted first, then the rest), got {value[0]!r}"
    return None


# --- what a run would refuse, refused at load time -------------------------------------------------

CONTAINERD_UNIT = "containerd.service"
# --minimal installs no libfabric (fi_info would never appear, so every run would reinstall);
# --skip-limit-conf removes the AMI's efa-config; -u uninstalls. (The short forms are taken from
# the installer's --help as documented by AWS; unverified against every installer version.)
FORBIDDEN_INSTALLER_ARGS = ("--minimal", "-m", "--skip-limit-conf", "-l", "-u", "--uninstall")
# Condition types with another owner: kubelet's own, and the EKS node monitoring agent's. A strategic
# merge patch of one of them would fight its owner (and a wrong Ready takes pods off the node).
KUBELET_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
NODE_MONITORING_AGENT_CONDITIONS = ("AcceleratedHardwareReady", "ContainerRuntimeReady", "KernelReady",
                                    "NetworkingReady", "StorageReady")


def installer_args(value: Any) -> Optional[str]:
    found = [a for a in value if a in FORBIDDEN_INSTALLER_ARGS]
    if found:
        return (f"{' '.join(found)} not allowed: --minimal installs no libfabric, --skip-limit-conf removes "
                "the AMI's efa-config, -u uninstalls")
    return None


def _owned_condition(value: Any) -> Optional[str]:
    if value in KUBELET_CONDITIONS:
        return f"{value} is kubelet's own condition; choose another type, e.g. GPUNodeAgentReady"
    if value in NODE_MONITORING_AGENT_CONDITIONS:
        return (f"{value} is published by the EKS node monitoring agent; choose another type, "
                "e.g. GPUNodeAgentReady")
    return None


def gpg_fingerprint(value: str) -> str:
    """A fingerprint as written (spaces allowed, as gpg prints it), normalized: upper-case hex."""
    return "".join(value.split()).upper()


def fingerprint(value: Any) -> Optional[str]:
    if value is not None and not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", gpg_fingerprint(value)):
        return ("must be the signing key's full fingerprint (40 hexadecimal characters, spaces allowed), "
                f"got {value!r}")
    return None


def condition_type(value: Any) -> Optional[str]:
    if value is None:
        return None
    prefix, _, name = value.rpartition("/")
    if prefix and not re.fullmatch(DNS_SUBDOMAIN, prefix):
        return f"prefix {shorten(prefix)} is not a DNS subdomain"
    if not re.fullmatch(_QUALIFIED_NAME, name):
        return f"must be a condition type such as GPUNodeAgentReady, got {shorten(value)}"
    return _owned_condition(value)


# --- outputs and confinement ---------------------------------------------------------------------
# Output paths live in the directories documented for them (README, "Confinement"), never on a file
# the agent manages or reads; node paths never contain "..".

OUTPUT_DIRS: Dict[str, Tuple[str, ...]] = {
    "report.status_file": ("/run/gpu-node-agent/", "/var/lib/gpu-node-agent/"),
    "report.metrics_file": ("/var/lib/node_exporter/", "/run/node_exporter/",
                            "/var/lib/prometheus/node-exporter/", "/run/gpu-node-agent/",
                            "/var/lib/gpu-node-agent/"),
    "efa.cache_dir": ("/var/cache/", "/var/lib/gpu-node-agent/", "/opt/gpu-node-agent/"),
}


def _confined_path(value: str) -> Optional[str]:
    if any(part == ".." for part in value.split("/")):
        return f"must not contain '..' (node paths resolve under --root), got {shorten(value)}"
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in value):
        return "must not contain control characters"
    return None


def _output_path(value: str, key: str) -> Optional[str]:
    dirs = OUTPUT_DIRS[key]
    normal = re.sub(r"/+", "/", value).rstrip("/") + ("/" if key == "efa.cache_dir" else "")
    if not any(normal.startswith(d) and len(normal) > len(d) for d in dirs):
        return f"must be inside {' or '.join(dirs)}, got {shorten(value)}"
    if key == "report.metrics_file" and not value.endswith(".prom"):
        return f"must end in .prom (what the node_exporter textfile collector reads), got {shorten(value)}"
    return None


def resolved_output(root: Any, node_path: str, key: str) -> Any:
    """Where the output ``key`` names really is, its directories' symlinks followed inside the tree
    (``NodeRoot.resolve``); a ``NodeFileError`` when that is outside its documented directories (a
    symlinked directory must not turn the status file into containerd's config.toml). The check of
    the configured value is lexical; this one is done right before each write."""
    import posixpath

    from agent.base.errors import NodeFileError

    parent, name = posixpath.split(node_path)
    real = posixpath.join(root.node_path(root.resolve(parent or "/")), name)
    if _output_path(real, key) is not None:
        raise NodeFileError(root.path(node_path), f"resolves to {real}, outside {' or '.join(OUTPUT_DIRS[key])} "
                            f"where {key} must be; not written")
    return root.path(node_path)


def output_path(key: str, *, optional: bool = False) -> Validator:
    """The rule of the output ``key`` names: an absolute path inside its documented directories
    (``OUTPUT_DIRS[key]``); with ``optional``, an empty value means "none"."""
    if key not in OUTPUT_DIRS:  # a mistake in agent/config/settings.py, found when its section is read
        raise KeyError(f"{key} has no documented output directories")

    def check(value: Any) -> Optional[str]:
        if optional and not value:
            return None
        return absolute_path(value) or _output_path(value, key)

    return check
