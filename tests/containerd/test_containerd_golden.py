"""Golden edits: for each real layout, the exact text the agent writes, reviewed line by line.

Each layout in tests/samples comes in two forms: the sample as it is ("runtime present, a value
wrong or missing"), and the sample after a runc-only rendering ("runtime absent": its `nvidia`
runtime tables renamed to `runc` and `default_runtime_name` set to runc, as in issue 16), where the
agent has to create the runtime. The expected files in tests/samples/golden are what a careful
person would have written: the file's own indentation, blank lines, quotes and order.
"""

from pathlib import Path

import pytest

from tests.support.containerd_helpers import GOLDEN_CASES as CASES
from tests.support.containerd_helpers import converge, make_node
from tests.support.paths import sample

CONFIG = "/etc/containerd/config.toml"
LAYOUTS = {
    "v2": "containerd-v2-nodeadm-nvidia.toml",
    "v3": "containerd-v3-nodeadm-nvidia.toml",
    "merged": "containerd-v3-nodeadm-merged.toml",
    "migrated": "containerd-v3-migrated.toml",
    "nvidia-ctk": "containerd-conf.d-99-nvidia.toml",  # the layout nvidia-ctk writes, loaded as the config
}


def without_nvidia_runtime(text: str) -> str:
    """A runc-only rendering of a sample: the nvidia runtime tables renamed to runc, runc the default."""
    return (text.replace("runtimes.nvidia", "runtimes.runc")
            .replace("default_runtime_name = 'nvidia'", "default_runtime_name = 'runc'")
            .replace('default_runtime_name = "nvidia"', 'default_runtime_name = "runc"'))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("crlf", [False, True], ids=["LF", "CRLF"])
def test_the_agent_writes_exactly_the_reviewed_text(tmp_path: Path, name: str, crlf: bool) -> None:
    given, expected = (sample(f) for f in CASES[name])
    if crlf:
        given, expected = given.replace("\n", "\r\n"), expected.replace("\n", "\r\n")
    daemons = [1, 2] if name.startswith("v2") else [2]
    for daemon in daemons:
        root = make_node(tmp_path / f"containerd-{daemon}", {CONFIG: given}, daemon_major=daemon)
        converge(root)  # and a second reconcile changes nothing
        assert root.path(CONFIG).read_bytes().decode() == expected


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_runtime_absent_inputs_are_the_samples_rendered_without_the_nvidia_runtime(layout: str) -> None:
    assert sample(f"golden/{layout}.runtime-absent.input.toml") == without_nvidia_runtime(sample(LAYOUTS[layout]))
    assert "runtimes.nvidia" not in sample(f"golden/{layout}.runtime-absent.input.toml")
