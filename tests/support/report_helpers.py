"""Helpers for the reporting tests: check results as ``check`` makes them."""

from typing import List, Tuple

from agent.pipeline.health import PASS, CheckResult
from agent.pipeline.resources import CHECK_NAMES


def results(**overrides: Tuple[str, str]) -> List[CheckResult]:
    """Every check passing with a fixed message, except those given as (status, message)."""
    out = []
    for name in CHECK_NAMES:
        status, message = overrides.get(name.replace("-", "_"), (PASS, f"{name} is fine"))
        out.append(CheckResult(name, status, message))
    return out
