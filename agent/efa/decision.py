"""What ``run`` does about the EFA userspace (``decide``, called by ``plan``) and how healthy it is
(``check``): pure functions of the facts and the settings.

Install when EFA applies (EFA hardware, or ``efa.install: always``) and the pinned version is not
installed, and only with a pin (``efa.sha256`` and/or ``efa.gpg_fingerprint``) and without an
installer argument that would break the userspace.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

from agent.base.noderoot import NodeRoot
from agent.config.rules import FORBIDDEN_INSTALLER_ARGS, gpg_fingerprint
from agent.config.settings import EfaSettings
from agent.efa.facts import FI_INFO, INFINIBAND_CLASS, EfaFacts, cache_file, installer_url, tarball_name
from agent.pipeline.health import FAIL, PASS, SKIP, WARN, CheckResult


class EfaAction(NamedTuple):
    """What ``run`` does about the EFA userspace, and why. Carries everything ``execute`` needs."""

    install: bool
    reason: str
    settings: EfaSettings
    root: NodeRoot
    cached: bool = False
    applicable: bool = True  # False: no EFA hardware and efa.install is not always; plan stays quiet

    def describe(self) -> str:
        if not self.install:
            return f"no action: {self.reason}"
        s = self.settings
        if self.cached:
            cached = self.root.node_path(cache_file(self.root, s))
            source = f"from the cache {cached} (re-verified before use)"
        else:
            source = f"download {installer_url(s)} ({pinned_by(s)})"
        return f"install aws-efa-installer {s.version}: {self.reason}; {source}"


def missing_pin(settings: EfaSettings) -> str:
    from agent.efa import signature

    return signature.missing_pin(settings, installer_url(settings), tarball_name(settings.version))


def pinned_by(settings: EfaSettings) -> str:
    parts = [f"sha256 {settings.sha256}"] if settings.sha256 else []
    if settings.gpg_fingerprint:
        parts.append(f"signed by {gpg_fingerprint(settings.gpg_fingerprint)}")
    return ", ".join(parts)


def why_install(facts: EfaFacts, version: str) -> str:
    if facts.installer_version is None:
        return "EFA userspace not installed (no installer version in /opt/amazon/efa_installed_packages)"
    if facts.installer_version != version:
        return f"installed {facts.installer_version}, pinned {version}"
    return (f"installer version {version} recorded but {FI_INFO} is missing "
            "(the AMI's --minimal install has no libfabric)")


def decide(facts: EfaFacts, settings: EfaSettings, root: NodeRoot) -> Tuple[EfaAction, Tuple[str, ...]]:
    """Pure: install when EFA applies and the pinned version is not installed; else nothing."""

    applicable = facts.hardware or settings.install == "always"

    def nothing(reason: str, problems: Tuple[str, ...] = ()) -> Tuple[EfaAction, Tuple[str, ...]]:
        return EfaAction(False, reason, settings, root, applicable=applicable), problems

    if settings.install == "never":
        return nothing("efa.install is never")
    if not applicable:
        return nothing(f"no EFA device under {INFINIBAND_CLASS} (not applicable on this instance)")
    if facts.installed_at(settings.version):
        libfabric = f", libfabric {facts.libfabric_version}" if facts.libfabric_version else ""
        return nothing(f"EFA userspace {settings.version} installed{libfabric}")
    why = why_install(facts, settings.version)
    forbidden = _forbidden_args(settings)
    if forbidden:
        return nothing(f"{why}; not installing", (forbidden,))
    if not (settings.sha256 or settings.gpg_fingerprint):
        return nothing(f"{why}; refused, no efa.sha256 or efa.gpg_fingerprint", (missing_pin(settings),))
    return EfaAction(True, why, settings, root, cached=facts.cached), ()


def _forbidden_args(settings: EfaSettings) -> str:
    found = [a for a in settings.installer_args if a in FORBIDDEN_INSTALLER_ARGS]
    if not found:
        return ""
    return (f"efa.installer_args has {' '.join(found)}: --minimal installs no libfabric, "
            "--skip-limit-conf removes the AMI's efa-config, -u uninstalls; remove it")


def check(facts: EfaFacts, settings: EfaSettings) -> CheckResult:
    name = "efa"
    details = {
        "devices": list(facts.devices),
        "installer_version": facts.installer_version,
        "fi_info": facts.fi_info,
        "libfabric": facts.libfabric_version,
        "pinned": settings.version,
        "install": settings.install,
    }
    notes = "; ".join(facts.problems)
    if not facts.hardware and settings.install != "always":
        return CheckResult(name, SKIP, f"no EFA device under {INFINIBAND_CLASS}: not applicable", details)
    devices = ", ".join(facts.devices) or "no EFA device, efa.install is always"
    libfabric = f", libfabric {facts.libfabric_version}" if facts.libfabric_version else ""
    if settings.install == "never":
        if facts.fi_info:
            return CheckResult(name, WARN if notes else PASS,
                               f"EFA userspace {facts.installer_version or '?'}{libfabric} present, "
                               f"not managed (efa.install: never) ({devices}){'; ' + notes if notes else ''}",
                               details)
        return CheckResult(name, WARN, f"EFA device present ({devices}) but no EFA userspace ({FI_INFO} "
                           "missing); efa.install is never", details)
    if facts.installed_at(settings.version):
        if notes:
            return CheckResult(name, WARN, f"EFA userspace {settings.version} installed but {notes}", details)
        return CheckResult(name, PASS, f"EFA userspace {settings.version}{libfabric} ({devices})", details)
    why = why_install(facts, settings.version)
    fix = _forbidden_args(settings) or (
        missing_pin(settings) if not (settings.sha256 or settings.gpg_fingerprint)
        else "`gpu-node-agent run` installs it")
    return CheckResult(name, FAIL, f"{why} ({devices}); {fix}{'; ' + notes if notes else ''}", details)
