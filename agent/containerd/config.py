"""containerd's configuration: what it runs with, and minimal fixes.

The files come from ``agent/containerd/files.py`` (``load``: ``config.toml`` and its imports, in
containerd's order). ``effective`` computes the CRI runtime settings containerd ends up with:

* containerd 1.x: a later file's table for a plugin ID **replaces** that plugin's whole table, so
  the last-loaded file that has the CRI plugin table decides everything (and the fix goes there);
* containerd 2.x: plugin tables are **deep-merged**; for each key the last file that sets it wins
  (the fix goes there), and a key no file sets is added to the main file.

``reconcile`` turns the differences into ``FileEdit``s made with tomlkit, so comments, key order,
quoting and blank lines of everything else stay byte-identical. Every edit is verified before it is
offered: the new text parses, the effective values are the desired ones, and no other value changed.
"""


from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from agent.base.errors import NodeFileError
from agent.base.fs import FileEdit
from agent.config.settings import ContainerdSettings
from agent.containerd.files import ConfigFile, ContainerdConfigSet, load
from agent.pipeline.contract import Discovery, Planned, Resource, RestartNeed, read_or_error
from agent.pipeline.health import FAIL, PASS, WARN, CheckResult
from agent.toml.edit import NotFixable, edit_value, parse_toml

if TYPE_CHECKING:
    from agent.base.noderoot import NodeRoot
    from agent.config.settings import AgentConfig
    from agent.pipeline.contract import NodeFacts
    from agent.systemd.errors import SystemdError
    from agent.systemd.state import UnitStates

V3_RUNTIME_PLUGIN = "io.containerd.cri.v1.runtime"
V2_CRI_PLUGIN = "io.containerd.grpc.v1.cri"
CRI_PLUGIN_FOR_LAYOUT = {3: V3_RUNTIME_PLUGIN, 2: V2_CRI_PLUGIN}
RUNC_V2 = "io.containerd.runc.v2"


# --- the effective configuration -------------------------------------------------------------------

_UNSET = object()


class Setting(NamedTuple):
    """One CRI runtime key the agent manages, relative to the CRI runtime plugin table."""

    key: Tuple[str, ...]
    desired: Any
    default: Any  # what containerd uses when no file sets the key (None: nothing)
    why: str

    @property
    def dotted(self) -> str:
        return ".".join(self.key)


def desired_settings(settings: ContainerdSettings, daemon_major: int) -> Tuple[Setting, ...]:
    rt = settings.runtime
    runtime_key = ("containerd", "runtimes", rt)
    out = []
    if settings.enable_cdi:
        # containerd 2.0 turned CDI on by default (containerd/containerd#9621); 1.x defaults to off.
        out.append(Setting(("enable_cdi",), True, daemon_major >= 2, "the toolkit's jit-cdi path needs CDI"))
    if settings.default_runtime:
        out.append(Setting(("containerd", "default_runtime_name"), rt, "runc",
                           f"pods must run with the {rt} runtime by default"))
    out.append(Setting((*runtime_key, "runtime_type"), RUNC_V2, None, f"the {rt} runtime is a runc v2 shim"))
    out.append(Setting((*runtime_key, "options", "BinaryName"), settings.binary_name, None,
                       f"the {rt} runtime must exec {settings.binary_name}"))
    if settings.systemd_cgroup:
        out.append(Setting((*runtime_key, "options", "SystemdCgroup"), True, False,
                           "kubelet uses the systemd cgroup driver; runc must match"))
    return tuple(out)


class EffectiveValue(NamedTuple):
    setting: Setting
    value: Any  # the effective value; the default when ``source`` is None
    source: Optional[ConfigFile]  # the file whose value is effective
    target: ConfigFile  # where a fix goes

    @property
    def ok(self) -> bool:
        desired = self.setting.desired
        return type(self.value) is type(desired) and self.value == desired

    def problem(self) -> str:
        want = _toml_repr(self.setting.desired)
        if self.source is None:
            return f"{self.setting.dotted} is not set (containerd uses {_toml_repr(self.value)}), want {want}"
        return f"{self.setting.dotted} = {_toml_repr(self.value)} in {self.source.node_path}, want {want}"


class EffectiveCri(NamedTuple):
    plugin_id: str
    values: Tuple[EffectiveValue, ...]
    blocking: Tuple[str, ...]  # problems that forbid any edit (mixed versions, unsupported layout)
    warnings: Tuple[str, ...]


def _lookup(table: Optional[Mapping[str, Any]], key: Sequence[str]) -> Any:
    node: Any = table
    for part in key:
        if not isinstance(node, Mapping) or part not in node:
            return _UNSET
        node = node[part]
    return node


def _toml_repr(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def effective(config_set: ContainerdConfigSet, settings: ContainerdSettings) -> EffectiveCri:
    main = config_set.main
    daemon = config_set.daemon
    blocking: List[str] = []
    warnings: List[str] = []
    layout = main.version if main.version in CRI_PLUGIN_FOR_LAYOUT else None
    if layout is None:
        blocking.append(
            f"{main.node_path}: 'version = {main.version}' is not a layout nodeadm writes (2 or 3)"
        )
        layout = 3 if daemon.major >= 2 else 2
    elif daemon.major == 1 and layout == 3:
        blocking.append(
            f"{main.node_path}: 'version = 3' needs containerd 2.x, but containerd {daemon.version} is installed"
        )
    plugin_id = CRI_PLUGIN_FOR_LAYOUT[layout]
    for f in config_set.files[1:]:
        if f.has_plugins and f.version != main.version:
            shown = f"'version = {f.version}'" if f.version else "no 'version' key (read as version 1)"
            blocking.append(
                f"{f.node_path} has {shown} but {main.node_path} has 'version = {main.version}': "
                "containerd drops settings from mixed-version drop-ins; align their versions"
            )
    wanted = desired_settings(settings, daemon.major)
    tables = [(f, f.cri_table(plugin_id)) for f in config_set.files]
    with_cri = [(f, t) for f, t in tables if t is not None]
    values = []
    if daemon.major == 1:
        decider: ConfigFile = with_cri[-1][0] if with_cri else main
        table: Optional[Mapping[str, Any]] = with_cri[-1][1] if with_cri else None
        for s in wanted:
            v = _lookup(table, s.key)
            values.append(EffectiveValue(s, s.default if v is _UNSET else v,
                                         None if v is _UNSET else decider, decider))
        for f, t in with_cri[:-1]:
            lost = sorted(k for k in _leaf_keys(t) if _lookup(table, k.split(".")) is _UNSET)
            if lost:
                shown = ", ".join(lost[:6]) + (", ..." if len(lost) > 6 else "")
                warnings.append(
                    f"containerd 1.x uses only the [plugins.\"{plugin_id}\"] table of {decider.node_path}; "
                    f"settings in {f.node_path} are ignored: {shown}"
                )
    else:
        for s in wanted:
            source, value = None, s.default
            for candidate, cri in tables:
                v = _lookup(cri, s.key)
                if v is not _UNSET:
                    source, value = candidate, v
            values.append(EffectiveValue(s, value, source, source or main))
    return EffectiveCri(plugin_id, tuple(values), tuple(blocking), tuple(warnings))


def _leaf_keys(table: Mapping[str, Any], prefix: str = "") -> List[str]:
    out = []
    for k, v in table.items():
        dotted = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.extend(_leaf_keys(v, dotted + "."))
        else:
            out.append(dotted)
    return out


# --- minimal edits ------------------------------------------------------------------------------------


class ContainerdReconcile(NamedTuple):
    effective: EffectiveCri
    edits: Tuple[FileEdit, ...]
    problems: Tuple[str, ...]  # drift the agent cannot fix safely


def reconcile(config_set: ContainerdConfigSet, settings: ContainerdSettings) -> ContainerdReconcile:
    """Pure: the minimal, verified edits that make the effective settings the desired ones."""
    eff = effective(config_set, settings)
    wrong = [v for v in eff.values if not v.ok]
    if eff.blocking or not wrong:
        return ContainerdReconcile(eff, (), eff.blocking)
    by_file: Dict[str, List[EffectiveValue]] = {}
    for v in wrong:
        by_file.setdefault(v.target.node_path, []).append(v)
    edits: List[FileEdit] = []
    problems: List[str] = []
    new_texts: Dict[str, str] = {}
    for node_path, values in by_file.items():
        target = values[0].target
        if target.is_symlink:
            problems.append(f"{node_path} decides {values[0].setting.dotted} but is a symlink; fix it by hand")
            continue
        try:
            new_texts[node_path] = _edit_text(target, eff.plugin_id, values)
        except NotFixable as exc:
            problems.append(f"{node_path}: {exc}")
            continue
        reasons = tuple(
            f"{v.setting.dotted} = {_toml_repr(v.setting.desired)} "
            f"(was {_toml_repr(v.value) if v.source else 'not set'}): {v.setting.why}"
            for v in values
        )
        edits.append(FileEdit(target.path, target.text, new_texts[node_path], reasons, "containerd"))
    if edits and not problems:
        problems.extend(_verify(config_set, settings, new_texts))
        if problems:
            edits = []
    return ContainerdReconcile(eff, tuple(edits), tuple(problems))


# A new key goes right after these siblings when its table has them (as nodeadm and nvidia-ctk write it).
_PLACE_AFTER: Dict[str, Tuple[str, ...]] = {"SystemdCgroup": ("BinaryName",)}


def _edit_text(target: ConfigFile, plugin_id: str, values: Sequence[EffectiveValue]) -> str:
    """The target file's text with each value set, one edit after another (each one verified)."""
    text = target.text
    try:
        for v in values:
            key = ("plugins", plugin_id, *v.setting.key)
            text = edit_value(text, key, v.setting.desired, after=_PLACE_AFTER.get(key[-1], ()), path=target.path)
    except NotFixable:
        raise
    except Exception as exc:  # a structure tomlkit cannot edit: leave the file alone, say so
        raise NotFixable(f"cannot edit this structure safely ({type(exc).__name__}: {exc})") from exc
    return text


def _verify(config_set: ContainerdConfigSet, settings: ContainerdSettings, new_texts: Mapping[str, str]) -> List[str]:
    """Re-read the edited files in memory: every desired value in effect, nothing else changed."""
    files = []
    problems = []
    managed = {("plugins", *s.key) for s in desired_settings(settings, config_set.daemon.major)}
    plugin = effective(config_set, settings).plugin_id
    for f in config_set.files:
        if f.node_path not in new_texts:
            files.append(f)
            continue
        try:
            data = parse_toml(new_texts[f.node_path], f.path).unwrap()
        except NodeFileError as exc:
            return [f"internal edit error, nothing written: {exc}"]
        if _strip(f.data, managed, plugin) != _strip(data, managed, plugin):
            problems.append(f"{f.node_path}: a safe minimal edit is not possible, nothing written")
        files.append(ConfigFile(f.path, f.node_path, new_texts[f.node_path], f.version, f.imports,
                                f.mtime, f.is_symlink, data))
    after = effective(ContainerdConfigSet(tuple(files), config_set.daemon), settings)
    problems.extend(f"{v.target.node_path}: edit did not take effect for {v.setting.dotted}"
                    for v in after.values if not v.ok)
    return problems


def _strip(data: Mapping[str, Any], managed: Any, plugin: str) -> Any:
    """``data`` without the managed keys and without empty tables."""
    def walk(node: Any, path: Tuple[str, ...]) -> Any:
        if not isinstance(node, Mapping):
            return node
        out = {}
        for k, v in node.items():
            p = (*path, k)
            if (p[0], *p[2:]) in managed and len(p) > 1 and p[1] == plugin:
                continue
            w = walk(v, p)
            if isinstance(v, Mapping) and w == {}:
                continue  # an empty table means nothing to containerd
            out[k] = w
        return out

    return walk(data, ())


# --- the check ----------------------------------------------------------------------------------------


def check(config_set: ContainerdConfigSet, settings: ContainerdSettings) -> CheckResult:
    eff = effective(config_set, settings)
    wrong = [v for v in eff.values if not v.ok]
    details = {
        "files": [f.node_path for f in config_set.files],
        "containerd": config_set.daemon.version or f"{config_set.daemon.major}.x",
        "effective": {v.setting.dotted: v.value for v in eff.values},
    }
    if eff.blocking or wrong:
        parts = list(eff.blocking) + [v.problem() for v in wrong]
        return CheckResult("containerd-config", FAIL, "; ".join(parts), details)
    if eff.warnings:
        return CheckResult("containerd-config", WARN, "; ".join(eff.warnings), details)
    shown = ", ".join(f"{v.setting.key[-1]}={_toml_repr(v.value)}" for v in eff.values)
    files = len(config_set.files)
    return CheckResult("containerd-config", PASS, f"{shown} ({files} file{'s' if files > 1 else ''})", details)


def check_unreadable(error: NodeFileError) -> CheckResult:
    return CheckResult("containerd-config", FAIL, str(error))


# --- the resource (agent/pipeline/contract.py) ------------------------------------------------------------------


def restart_needs(
    units: Union[UnitStates, SystemdError, None], config_set: Optional[ContainerdConfigSet],
    edits: Sequence[FileEdit], unit: str, root: NodeRoot,
) -> List[RestartNeed]:
    """containerd restarts when this run changes its configuration, or when the running daemon is older
    than its configuration (the pre-awslabs/amazon-eks-ami#2705 nodeadm case)."""
    from agent.daemons.units import stale_daemon
    from agent.systemd.state import UnitStates

    needs: List[RestartNeed] = []
    changed = sorted({root.node_path(e.path) for e in edits if e.resource == "containerd"})
    if changed:
        needs.append(RestartNeed(f"this run changes its configuration ({', '.join(changed)})", from_edit=True))
    stale = stale_daemon(units.get(unit) if isinstance(units, UnitStates) else None, config_set)
    if stale is not None:
        needs.append(RestartNeed(stale.describe()))
    return needs


class Containerd(Resource):
    """``containerd``: the loaded files (or why they cannot be read); ``containerd-config``; the edits."""

    checks = ("containerd-config",)

    def discover(self, node: Discovery) -> Dict[str, Any]:
        return {"containerd": read_or_error(lambda: load(node.root, node.config.containerd))}

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        found = facts.containerd
        return [check_unreadable(found) if isinstance(found, NodeFileError) else check(found, config.containerd)]

    def plan(self, facts: NodeFacts, config: AgentConfig) -> Planned:
        if isinstance(facts.containerd, NodeFileError):
            return Planned(problems=(str(facts.containerd),))
        result = reconcile(facts.containerd, config.containerd)
        return Planned(result.edits, result.problems)

    def restart_needs(self, facts: NodeFacts, edits: Sequence[FileEdit], config: AgentConfig) -> List[RestartNeed]:
        config_set = facts.containerd if isinstance(facts.containerd, ContainerdConfigSet) else None
        return restart_needs(facts.units, config_set, edits, config.restart.units[0], facts.root)


RESOURCE = Containerd()
