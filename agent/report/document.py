"""The report document and how it is shown: what ``check --format json`` prints and the status file
holds, and ``check``'s table. Checks are shown in the order of ``agent/pipeline/resources.py``'s list.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from agent import __version__
from agent.base.timestamps import rfc3339
from agent.pipeline.health import DEGRADED, FAIL, HEALTHY, PASS, SKIP, UNHEALTHY, WARN, CheckResult, overall_health

REPORT_SCHEMA_VERSION = 1


def ordered(results: Iterable[CheckResult]) -> List[CheckResult]:
    from agent.pipeline.resources import CHECK_NAMES  # every resource: not for `status`, which only renders

    rank = {name: i for i, name in enumerate(CHECK_NAMES)}
    return sorted(results, key=lambda r: rank.get(r.name, len(rank)))


def report_document(
    results: Sequence[CheckResult],
    actions: Sequence[str] = (),
    *,
    now: Optional[datetime] = None,
    with_details: bool = True,
) -> Dict[str, Any]:
    """The report: what ``check --format json`` prints and the status file holds (with details)."""
    now = now or datetime.now(timezone.utc)
    results = ordered(results)
    return {
        "v": REPORT_SCHEMA_VERSION,
        "agent": __version__,
        "time": rfc3339(now),
        "health": overall_health(results),
        "checks": [r.as_dict(with_details=with_details) for r in results],
        "actions": list(actions),
    }


def render_json(document: Mapping[str, Any], *, pretty: bool = True) -> str:
    """The document as JSON: indented, or one compact line (``check --format json``: an SSM console
    shows 2,500 characters of output)."""
    if pretty:
        return json.dumps(document, indent=2, sort_keys=False) + "\n"
    return json.dumps(document, separators=(",", ":"), sort_keys=False) + "\n"


NO_TTY_WIDTH = 120  # table lines without a terminal (SSM, pipes)


def output_width(stream: Any) -> int:
    """The terminal's width, or ``NO_TTY_WIDTH`` when ``stream`` is not a terminal."""
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else NO_TTY_WIDTH
    except (OSError, ValueError, AttributeError):
        return NO_TTY_WIDTH


_COLORS = {PASS: "\033[32m", WARN: "\033[33m", FAIL: "\033[31m", SKIP: "\033[2m"}
_HEALTH_STATUS = {HEALTHY: PASS, DEGRADED: WARN, UNHEALTHY: FAIL}
_RESET = "\033[0m"


def render_table(results: Sequence[CheckResult], actions: Sequence[str] = (), *, color: bool = False,
                 columns: Optional[int] = None) -> str:
    """One line per check; messages and actions cut to ``columns`` (the full text is in the JSON)."""
    from agent.base.text import clip

    results = ordered(results)
    width = max([len("CHECK")] + [len(r.name) for r in results])

    def cut(text: str, used: int) -> str:
        return clip(text, max(20, columns - used)) if columns else text

    def paint(status: str, text: str) -> str:
        return f"{_COLORS[status]}{text}{_RESET}" if color and status in _COLORS else text

    lines = [f"{'CHECK':<{width}}  STATUS  MESSAGE"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {paint(r.status, f'{r.status:<6}')}  {cut(r.message, width + 10)}")
    for action in actions:
        lines.append(f"action: {cut(action, 8)}")
    health = overall_health(results)
    lines.append(f"health: {paint(_HEALTH_STATUS[health], health)}")
    return "\n".join(lines) + "\n"
