"""The NVIDIA Container Toolkit's runtime config (``/etc/nvidia-container-runtime/config.toml``).

The stack works at the toolkit's defaults: ``mode = "auto"`` (jit-cdi on NVML platforms) and no
legacy-era knobs. Drift is judged by *effective* value (a missing key means the built-in default):

* ``mode = "legacy"`` (or any invalid mode) -> repaired to ``"auto"``, the value the package ships;
* an explicit ``accept-nvidia-visible-devices-envvar-when-unprivileged``: the built-in default is
  ``true``; an explicit ``false`` breaks unprivileged GPU pods (NVIDIA/nvidia-container-toolkit#1089)
  and an explicit ``true`` does nothing under jit-cdi. Repair comments the line out, back to the
  commented default the package ships; it never writes ``false``;
* ``mode = "cdi"`` / ``"csv"`` are valid choices someone made on purpose: reported, never changed.
"""


from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from agent.base.errors import NodeFileError, NodeFileMissing
from agent.base.fs import FileEdit, read_text
from agent.base.noderoot import NodeRoot
from agent.config.settings import NvidiaRuntimeSettings
from agent.pipeline.contract import Discovery, Planned, Resource, read_or_error
from agent.pipeline.health import FAIL, PASS, WARN, CheckResult
from agent.toml.cache import toml_values
from agent.toml.edit import NotFixable, comment_out, parse_toml, set_value

if TYPE_CHECKING:
    from agent.config.settings import AgentConfig
    from agent.pipeline.contract import NodeFacts

MODES = ("auto", "jit-cdi", "cdi", "csv", "legacy")
DEFAULT_MODE = "auto"
MODE_KEY = ("nvidia-container-runtime", "mode")
ENVVAR_KNOB = "accept-nvidia-visible-devices-envvar-when-unprivileged"
# The line the toolkit package ships for the knob (nvidia-ctk config default).
ENVVAR_KNOB_DEFAULT_LINE = f"#{ENVVAR_KNOB} = true"


class NvidiaRuntimeConfig(NamedTuple):
    path: Path
    text: str
    data: Mapping[str, Any]


class Drift(NamedTuple):
    key: str
    value: Any  # the effective value found
    status: str  # FAIL or WARN
    problem: str
    repairable: bool


def load(root: NodeRoot, settings: NvidiaRuntimeSettings) -> Optional[NvidiaRuntimeConfig]:
    """The parsed file, or None when it does not exist (the toolkit then uses built-in defaults)."""
    path = root.path(settings.config_path)
    if path.is_symlink():
        raise NodeFileError(path, "is a symlink; the toolkit package installs a regular file here")
    try:
        text = read_text(path)
    except NodeFileMissing:
        return None
    return NvidiaRuntimeConfig(path, text, toml_values(root, path, text))


def drift(cfg: NvidiaRuntimeConfig) -> List[Drift]:
    found: List[Drift] = []
    section = cfg.data.get(MODE_KEY[0], {})
    mode = section.get(MODE_KEY[1], DEFAULT_MODE) if isinstance(section, Mapping) else DEFAULT_MODE
    if mode == "legacy":
        found.append(Drift("mode", mode, FAIL, 'mode = "legacy": the deprecated prestart-hook flow; '
                           "non-privileged pods lose their GPUs", True))
    elif not isinstance(mode, str) or mode not in MODES:
        found.append(Drift("mode", mode, FAIL, f"mode = {mode!r} is not a mode the toolkit knows; "
                           "container creation fails with 'invalid mode'", True))
    elif mode in ("cdi", "csv"):
        found.append(Drift("mode", mode, WARN, f'mode = "{mode}" is not the default "auto" (jit-cdi)', False))
    knob = cfg.data.get(ENVVAR_KNOB)
    if knob is False:
        found.append(Drift(ENVVAR_KNOB, knob, FAIL, f"{ENVVAR_KNOB} = false: unprivileged pods cannot get GPUs "
                           "through NVIDIA_VISIBLE_DEVICES (built-in default: true)", True))
    elif ENVVAR_KNOB in cfg.data:
        found.append(Drift(ENVVAR_KNOB, knob, WARN, f"{ENVVAR_KNOB} is set explicitly: a legacy-era knob with "
                           "no effect under jit-cdi (default: commented out)", True))
    return found


def reconcile(cfg: Optional[NvidiaRuntimeConfig], settings: NvidiaRuntimeSettings) -> Tuple[
    Optional[FileEdit], Tuple[str, ...]
]:
    """Pure: the edit restoring the defaults (when ``repair``), and problems it cannot fix."""
    if cfg is None or not settings.repair:
        return None, ()
    to_fix = [d for d in drift(cfg) if d.repairable]
    if not to_fix:
        return None, ()
    text = cfg.text
    reasons = []
    try:
        for d in to_fix:
            if d.key == "mode":
                doc = parse_toml(text, cfg.path)
                set_value(doc, MODE_KEY, DEFAULT_MODE)
                text = doc.as_string()
                reasons.append(f'mode = "{DEFAULT_MODE}" (was {d.value!r}): the toolkit default, jit-cdi')
            else:
                text = comment_out(text, (d.key,), ENVVAR_KNOB_DEFAULT_LINE)
                reasons.append(f"{d.key} commented out: the built-in default (true) applies")
    except NotFixable as exc:
        return None, (f"{cfg.path}: {exc}",)
    after = NvidiaRuntimeConfig(cfg.path, text, parse_toml(text, cfg.path).unwrap())
    if [d for d in drift(after) if d.repairable] or _without_managed(after.data) != _without_managed(cfg.data):
        return None, (f"{cfg.path}: a safe minimal edit is not possible, nothing written",)
    return FileEdit(cfg.path, cfg.text, text, tuple(reasons), "nvidia-runtime"), ()


def _without_managed(data: Mapping[str, Any]) -> Any:
    out = {k: v for k, v in data.items() if k != ENVVAR_KNOB}
    section = out.get(MODE_KEY[0])
    if isinstance(section, Mapping):
        out[MODE_KEY[0]] = {k: v for k, v in section.items() if k != MODE_KEY[1]}
    return out


def check(cfg: Optional[NvidiaRuntimeConfig], settings: NvidiaRuntimeSettings, path: Path) -> CheckResult:
    name = "nvidia-runtime-config"
    if cfg is None:
        return CheckResult(name, WARN, f"{path} not found: the toolkit's built-in defaults apply "
                           "(is nvidia-container-toolkit installed?)")
    found = drift(cfg)
    if not found:
        return CheckResult(name, PASS, 'mode "auto" (jit-cdi), no legacy-era overrides', {"path": str(path)})
    status = FAIL if any(d.status == FAIL for d in found) else WARN
    suffix = "" if settings.repair else " (repair: false, reported only)"
    return CheckResult(name, status, "; ".join(d.problem for d in found) + suffix,
                       {"path": str(path), "drift": [d.key for d in found]})


def check_unreadable(error: NodeFileError) -> CheckResult:
    return CheckResult("nvidia-runtime-config", FAIL, str(error))


class NvidiaRuntime(Resource):
    """``nvidia_runtime``: the toolkit's config (None: not installed); ``nvidia-runtime-config``; its edit."""

    checks = ("nvidia-runtime-config",)

    def discover(self, node: Discovery) -> Dict[str, Any]:
        return {"nvidia_runtime": read_or_error(lambda: load(node.root, node.config.nvidia_runtime))}

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        found = facts.nvidia_runtime
        if isinstance(found, NodeFileError):
            return [check_unreadable(found)]
        return [check(found, config.nvidia_runtime, facts.root.path(config.nvidia_runtime.config_path))]

    def plan(self, facts: NodeFacts, config: AgentConfig) -> Planned:
        if isinstance(facts.nvidia_runtime, NodeFileError):
            return Planned(problems=(str(facts.nvidia_runtime),))
        edit, problems = reconcile(facts.nvidia_runtime, config.nvidia_runtime)
        return Planned((edit,) if edit else (), problems)


RESOURCE = NvidiaRuntime()
