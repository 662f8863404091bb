"""Property tests over generated containerd configs (hypothesis).

The generator writes the shapes found on nodes: header tables in any order (sub-tables before their
parents), indented by 0, 2 or 4 spaces per level or flat, blank lines between tables or none, single
or double quotes, LF or CRLF line endings, the nvidia runtime and its options as header tables,
dotted keys or inline tables, each managed key absent, right, wrong, or of the wrong type, with
unrelated keys and comments around them. For every such file the reconcile must be idempotent,
produce TOML that parses, make every effective value the desired one, and change nothing else; and
what it adds must follow the file's own layout: every line indented as the file indents that table
(inserted lines included), no blank line inside a table, a blank line before every header when the
file has them (none when it has none), the file's quote style, the file's line endings.
"""

import difflib
import re
from typing import Any, Dict, List, NamedTuple, Tuple

import tomlkit
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from agent.config.settings import ContainerdSettings
from agent.containerd import config as containerd
from tests.support.containerd_helpers import make_node

MANAGED = ("enable_cdi", "default_runtime_name", "runtime_type", "BinaryName", "SystemdCgroup")
GOOD: Dict[str, Any] = {
    "enable_cdi": True,
    "default_runtime_name": "nvidia",
    "runtime_type": "io.containerd.runc.v2",
    "BinaryName": "/usr/bin/nvidia-container-runtime",
    "SystemdCgroup": True,
}
WRONG: Dict[str, List[Any]] = {
    "enable_cdi": [False, "true", 1],
    "default_runtime_name": ["runc", 7],
    "runtime_type": ["io.containerd.runc.v1", True],
    "BinaryName": ["/usr/bin/nvidia-container-runtime.legacy", ""],
    "SystemdCgroup": [False, "true", 0],
}
EXTRA_NAMES = ["base_runtime_spec", "snapshotter", "max_conf_num", "privileged_without_host_devices", "x_y"]
EXTRA_VALUES = st.one_of(st.booleans(), st.integers(-5, 5), st.sampled_from(["", "a b", "/x/y", "it's"]),
                         st.lists(st.sampled_from(["/etc/cdi", "/var/run/cdi"]), max_size=2))


def key_state(name: str) -> Any:
    return st.one_of(st.just(("absent", None)), st.just(("good", GOOD[name])),
                     st.sampled_from(WRONG[name]).map(lambda v: ("wrong", v)))


def render_value(value: Any, single: bool) -> str:
    if isinstance(value, str) and single and "'" not in value:
        return f"'{value}'"
    if isinstance(value, list):
        return "[" + ", ".join(render_value(v, single) for v in value) + "]"
    return tomlkit.item(value).as_string()


class Generated(NamedTuple):
    text: str
    daemon: int
    single: bool  # strings in single quotes
    indent_step: int  # spaces per nesting level
    gaps: bool  # a blank line between tables
    crlf: bool


def pad(indent_step: int, depth: int) -> str:
    """The generator's indentation of a header with ``depth`` key parts (its keys get one step more)."""
    return " " * (indent_step * max(0, depth - 2))


@st.composite
def containerd_configs(draw: Any) -> Generated:
    layout = draw(st.sampled_from([3, 2]))
    daemon = 2 if layout == 3 else draw(st.sampled_from([1, 2]))
    single = draw(st.booleans())
    indent_step = draw(st.sampled_from([0, 2, 4]))
    gaps = draw(st.booleans())
    crlf = draw(st.booleans())
    plugin = containerd.CRI_PLUGIN_FOR_LAYOUT[layout]
    pid = f"'{plugin}'" if draw(st.booleans()) else f'"{plugin}"'
    states = {name: draw(key_state(name)) for name in MANAGED}
    shape = draw(st.sampled_from(["tables", "dotted-options", "inline-options", "inline-runtime", "no-runtime"]))

    def kv(name: str) -> List[Tuple[str, Any]]:
        state, value = states[name]
        return [] if state == "absent" else [(name, value)]

    def extras() -> List[Tuple[str, Any]]:
        names = draw(st.lists(st.sampled_from(EXTRA_NAMES), unique=True, max_size=2))
        return [(n, draw(EXTRA_VALUES)) for n in names]

    def inline(pairs: List[Tuple[str, Any]]) -> str:
        return "{ " + ", ".join(f"{k} = {v if isinstance(v, str) and v.startswith('{') else render_value(v, single)}"
                                for k, v in pairs) + " }" if pairs else "{}"

    options = kv("BinaryName") + kv("SystemdCgroup") + extras()
    runtime = kv("runtime_type") + extras()
    containerd_keys = kv("default_runtime_name") + extras()
    tables: List[Tuple[Tuple[str, ...], List[Tuple[str, Any]]]] = []
    base = ("plugins", pid)
    if shape == "tables":
        tables.append(((*base, "containerd", "runtimes", "nvidia"), runtime))
        tables.append(((*base, "containerd", "runtimes", "nvidia", "options"), options))
    elif shape == "dotted-options":
        tables.append(((*base, "containerd", "runtimes", "nvidia"),
                       runtime + [(f"options.{k}", v) for k, v in options]))
    elif shape == "inline-options":
        tables.append(((*base, "containerd", "runtimes", "nvidia"), [*runtime, ("options", inline(options))]))
    elif shape == "inline-runtime":
        containerd_keys.append(("runtimes.nvidia", inline([*runtime, ("options", inline(options))])))
    tables.append(((*base, "containerd"), containerd_keys))
    tables.append(((*base,), kv("enable_cdi") + extras()))
    tables.append(((*base, "cni"), [("bin_dir", "/opt/cni/bin"), *extras()]))
    tables.append((("grpc",), [("address", "/run/containerd/containerd.sock")]))
    order = draw(st.permutations(range(len(tables))))

    lines = [f"version = {layout}", f"root = {render_value('/var/lib/containerd', single)}"]
    for i in order:
        path, pairs = tables[i]
        if not pairs and draw(st.booleans()):
            continue  # a table with nothing in it may just not be written
        header_pad = pad(indent_step, len(path))
        if gaps:
            lines.append("")
        if draw(st.booleans()):
            lines.append(f"{header_pad}# {path[-1]} settings")
        lines.append(f"{header_pad}[{'.'.join(path)}]")
        for k, v in pairs:
            rendered = v if isinstance(v, str) and v.startswith("{") else render_value(v, single)
            comment = "  # keep" if draw(st.booleans()) else ""
            lines.append(f"{header_pad}{' ' * indent_step}{k} = {rendered}{comment}")
    text = "\n".join(lines) + "\n"
    return Generated(text.replace("\n", "\r\n") if crlf else text, daemon, single, indent_step, gaps, crlf)


def without_managed(data: Any, plugin: str) -> Any:
    """Everything but the managed keys, and no empty tables (they mean nothing to containerd)."""
    def walk(node: Any, path: Tuple[str, ...]) -> Any:
        if not isinstance(node, dict):
            return node
        out = {}
        for k, v in node.items():
            if k in MANAGED and plugin in path:
                continue
            w = walk(v, (*path, k))
            if isinstance(v, dict) and w == {}:
                continue
            out[k] = w
        return out

    return walk(data, ())


_KEY_PART = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")


def header_depth(line: str) -> int:
    return len(_KEY_PART.findall(line.strip()[1:-1]))


def assert_layout_followed(generated: Generated, new_text: str) -> None:
    """What the agent wrote follows the generated file's own conventions."""
    step, single = generated.indent_step, generated.single
    if generated.crlf:
        assert new_text.count("\n") == new_text.count("\r\n"), "a line lost its CRLF"
    else:
        assert "\r" not in new_text
    lines = new_text.replace("\r\n", "\n").split("\n")[:-1]
    key_indent = ""  # the root table's keys
    for n, line in enumerate(lines):
        stripped = line.lstrip(" ")
        indent = line[: len(line) - len(stripped)]
        if stripped.startswith("["):
            header_indent = pad(step, header_depth(line))
            assert indent == header_indent, f"line {n + 1}: header indented {len(indent)}, not {len(header_indent)}"
            key_indent = header_indent + " " * step
            above = n - 1 if n > 0 and lines[n - 1].lstrip().startswith("#") else n
            if generated.gaps:
                assert lines[above - 1] == "", f"line {n + 1}: no blank line before this header"
            else:
                assert lines[above - 1] != "", f"line {n + 1}: a blank line this file does not use"
        elif stripped and not stripped.startswith("#"):
            assert indent == key_indent, f"line {n + 1}: key indented {len(indent)}, its table's keys {len(key_indent)}"
        elif not stripped:
            assert n + 1 < len(lines) and (lines[n + 1].lstrip().startswith(("[", "#"))), (
                f"line {n + 1}: a blank line inside a table")
    for line in difflib.ndiff(generated.text.splitlines(), new_text.splitlines()):
        if line.startswith("+ ") and " = " in line:
            value = line.split(" = ", 1)[1]
            if value[:1] in "\"'" and "'" not in value[1:-1]:
                assert value[0] == ("'" if single else '"'), f"quote style not kept: {line}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(containerd_configs())
@example(Generated(  # tomlkit rejects [plugins."...cri"] where the rules put it: the nearest readable place
    'version = 2\nroot = "/var/lib/containerd"\n'
    '[plugins."io.containerd.grpc.v1.cri".cni]\nbin_dir = "/opt/cni/bin"\n'
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]\n'
    'BinaryName = "/usr/bin/nvidia-container-runtime"\nSystemdCgroup = true\n'
    '[plugins."io.containerd.grpc.v1.cri".containerd]\n'
    '[grpc]\naddress = "/run/containerd/containerd.sock"\n'
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]\n',
    daemon=1, single=False, indent_step=0, gaps=False, crlf=False))
def test_reconcile_is_idempotent_valid_complete_and_minimal(tmp_path_factory: Any, generated: Generated) -> None:
    text, daemon = generated.text, generated.daemon
    try:
        before = tomlkit.parse(text).unwrap()
    except Exception:
        # valid TOML tomlkit cannot represent (indented out-of-order headers): the agent reports
        # it and changes nothing (test_containerd_bad_input covers that), so nothing to check here
        assume(False)
    root = make_node(tmp_path_factory.mktemp("node"), {"/etc/containerd/config.toml": text}, daemon_major=daemon)
    config_path = root.path("/etc/containerd/config.toml")
    settings_ = ContainerdSettings()
    result = containerd.reconcile(containerd.load(root, settings_), settings_)
    assert result.problems == ()
    for edit in result.edits:
        edit.path.write_bytes(edit.new_text.encode())
    new_text = config_path.read_bytes().decode()
    after = tomlkit.parse(new_text).unwrap()

    # complete: containerd now runs with every desired value
    second = containerd.reconcile(containerd.load(root, settings_), settings_)
    assert all(v.ok for v in second.effective.values), [v.problem() for v in second.effective.values if not v.ok]
    # idempotent
    assert second.edits == () and second.problems == ()
    # nothing outside the managed keys changed
    plugin = second.effective.plugin_id
    assert without_managed(before, plugin) == without_managed(after, plugin)
    # minimal: a removed line always carried a managed key (or an inline table holding them)
    for line in difflib.ndiff(text.splitlines(), new_text.splitlines()):
        if line.startswith("- "):
            assert any(k in line for k in MANAGED) or "{" in line, line
        if line.startswith("+ ") and line[2:].strip():
            added = line[2:].strip()
            assert added.startswith("[") or any(k in added for k in MANAGED) or "{" in added, line
    if not result.edits:
        assert new_text == text
    assert_layout_followed(generated, new_text)
    diff = list(difflib.ndiff(text.splitlines(), new_text.splitlines()))
    added = [line[2:] for line in diff if line.startswith("+ ")]
    removed = [line for line in diff if line.startswith("- ")]
    event("a table created" if any(a.lstrip().startswith("[") for a in added) else
          "a key added" if len(added) > len(removed) else "values replaced only")  # what the examples cover
