"""Effects: carry out a ``Plan`` in order. The only module that changes the node.

Each edit is written atomically, and only if the file still holds the text the plan was made from
(nodeadm may rewrite it meanwhile). What was written is kept so a later step can roll it back.
"""


from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from agent.errors import AgentError, NodeFileError
from agent.fs import FileEdit, atomic_write, read_text
from agent.log import get_logger
from agent.plan import Plan

log = get_logger("apply")


@dataclass
class ApplyResult:
    written: List[FileEdit] = field(default_factory=list)
    actions: List[str] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)


def write_edit(edit: FileEdit) -> None:
    current = read_text(edit.path)
    if current != edit.old_text:
        raise NodeFileError(edit.path, "changed while the agent was planning; nothing written")
    atomic_write(edit.path, edit.new_text.encode("utf-8"))


def rollback(edits: List[FileEdit]) -> List[str]:
    """Put back the previous contents of files this run wrote; returns failures (empty: all restored)."""
    failures = []
    for edit in reversed(edits):
        try:
            atomic_write(edit.path, edit.old_text.encode("utf-8"))
            log.warning("rolled back", path=str(edit.path))
        except NodeFileError as exc:
            failures.append(str(exc))
    return failures


def apply(plan: Plan) -> ApplyResult:
    result = ApplyResult()
    for edit in plan.edits:
        try:
            write_edit(edit)
        except NodeFileError as exc:
            log.error("edit failed", path=str(edit.path), error=exc.problem)
            result.failures.append(str(exc))
            continue
        result.written.append(edit)
        for reason in edit.reasons:
            result.actions.append(f"{edit.path}: {reason}")
        log.info("file updated", path=str(edit.path), changes=list(edit.reasons))
    if plan.efa is not None and plan.efa.install:
        from agent import efa

        try:
            result.actions.append(efa.execute(plan.efa))
        except AgentError as exc:
            log.error("EFA userspace not installed", error=str(exc))
            result.failures.append(str(exc))
    return result
