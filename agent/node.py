"""Discovery: read the node (under ``--root``) into plain, frozen facts. No decisions here.

A file that cannot be read is kept as the ``NodeFileError`` it raised, so ``check`` can report it
as one failing check while the other checks still run.
"""


from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Optional, Union

from agent.config import AgentConfig
from agent.containerd import ContainerdConfigSet
from agent.errors import NodeFileError
from agent.fs import NodeRoot
from agent.nvidia import NvidiaRuntimeConfig

if TYPE_CHECKING:
    from agent.efa import EfaFacts


class NodeFacts(NamedTuple):
    root: NodeRoot
    containerd: Union[ContainerdConfigSet, NodeFileError]
    nvidia_runtime: Union[NvidiaRuntimeConfig, NodeFileError, None]
    efa: Optional[EfaFacts] = None


def discover(root: NodeRoot, config: AgentConfig) -> NodeFacts:
    from agent import containerd, efa, nvidia

    containerd_facts: Union[ContainerdConfigSet, NodeFileError]
    try:
        containerd_facts = containerd.load(root, config.containerd)
    except NodeFileError as exc:
        containerd_facts = exc
    nvidia_facts: Optional[Union[NvidiaRuntimeConfig, NodeFileError]]
    try:
        nvidia_facts = nvidia.load(root, config.nvidia_runtime)
    except NodeFileError as exc:
        nvidia_facts = exc
    return NodeFacts(root=root, containerd=containerd_facts, nvidia_runtime=nvidia_facts,
                     efa=efa.discover(root, config.efa))
