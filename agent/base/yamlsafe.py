"""Reading YAML the agent does not trust (its configuration, the kubeconfig): each error as one line
naming the file and line, and a bound on the document's size once aliases are expanded."""


from __future__ import annotations

from typing import Any, Optional

# What PyYAML's safe constructors raise, besides YAMLError, for a scalar its tag cannot read:
# ``!!int x`` and ``!!float abc`` ValueError, ``!!timestamp x`` AttributeError, ``!!bool x`` KeyError.
CONSTRUCTOR_ERRORS = (ValueError, TypeError, AttributeError, KeyError)


def constructor_problem(exc: Exception, tag: Optional[str] = None) -> str:
    """One of ``CONSTRUCTOR_ERRORS`` in words: a ValueError says what it could not convert; the
    others are PyYAML's internals (``'NoneType' object has no attribute 'groupdict'``)."""
    if isinstance(exc, ValueError):
        return str(exc)
    shown = tag.replace("tag:yaml.org,2002:", "!!") if tag else "its tag"
    return f"not a value {shown} can read"


def marked_yaml_error(exc: Exception, source: object, text: str, *, column: bool = False) -> str:
    """``<source>:LINE[:COLUMN]: invalid YAML: <problem>`` on one line, for any error PyYAML raises
    reading ``text``: with its mark when it has one, else with the line of its position (an
    unacceptable character comes as two lines, with a position instead of a line)."""
    import yaml  # already loaded: the error came from it

    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = (f":{mark.line + 1}:{mark.column + 1}" if column else f":{mark.line + 1}") if mark else ""
        return f"{source}{where}: invalid YAML: {exc.problem or exc.context}"
    position = getattr(exc, "position", None)
    character = getattr(exc, "character", None)
    if isinstance(position, int):
        line = text.count("\n", 0, position) + 1
        code = ord(character) if isinstance(character, str) and len(character) == 1 else character
        what = f"#x{code:04x}" if isinstance(code, int) else "character"
        reason = getattr(exc, "reason", "unacceptable character")
        return f"{source}:{line}: invalid YAML: unacceptable character {what} ({reason})"
    from agent.base.text import shorten

    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{source}: invalid YAML: {shorten(first)}"


def yaml_too_big(node: Any, limit: int) -> Optional[str]:
    """Refuse a YAML document with more than ``limit`` nodes once its aliases are expanded (a
    "billion laughs" of a few hundred bytes would otherwise take gigabytes to construct)."""
    count = 0
    stack = [node]
    while stack:
        n = stack.pop()
        count += 1
        if count > limit:
            return (f"too many YAML nodes (more than {limit}, aliases counted each time they are used); "
                    "refusing to read it")
        if n.id == "sequence":
            stack.extend(n.value)
        elif n.id == "mapping":
            for k, v in n.value:
                stack.append(k)
                stack.append(v)
    return None
