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
        problem = exc.problem or exc.context
        return f"{source}{where}: invalid YAML: {_tab_problem(problem, text, mark) or problem}"
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


def _tab_problem(problem: Optional[str], text: str, mark: Any) -> Optional[str]:
    """A tab where PyYAML stopped, in words: PyYAML says "found character '\\t' that cannot start any
    token" (libyaml: "... that cannot start any token", "found a tab character that violates indentation")."""
    if not problem or not ("tab" in problem or "cannot start any token" in problem) or mark is None:
        return None
    lines = text.split("\n")
    line = lines[mark.line] if 0 <= mark.line < len(lines) else ""
    if line[mark.column:mark.column + 1] != "\t":
        return None
    if not line[:mark.column].strip(" \t"):
        return "a tab in the indentation: tabs are not allowed in YAML indentation, use spaces"
    return "a tab between tokens: YAML (as PyYAML reads it) needs spaces here"


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


class YamlRefused(Exception):
    """A YAML document that cannot be read: its one-line reason, naming the source."""


def load_budgeted(text: str, source: object, limit: int) -> Any:
    """``yaml.safe_load`` of ``text`` with at most ``limit`` nodes once aliases are expanded (keys
    counted too): every YAML the agent reads from the node goes through here (or through the
    configuration's own loader, which keeps the nodes for its messages). ``YamlRefused`` otherwise."""
    import yaml

    from agent.base.text import shorten

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problem = yaml_too_big(node, limit)
        if problem:
            raise YamlRefused(f"{source}: {problem}")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YamlRefused(marked_yaml_error(exc, source, text)) from None
    except CONSTRUCTOR_ERRORS as exc:  # ``!!float abc``, ``!!timestamp x``: PyYAML's own constructors
        raise YamlRefused(f"{source}: invalid YAML: {shorten(constructor_problem(exc))}") from None
    finally:
        loader.dispose()
