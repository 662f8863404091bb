"""Loading the agent's configuration: the file (explicit, or the default path) -> ``AgentConfig``.

The one place a configuration is read: a missing default file means all defaults, a file of only
comments (the packaged one) is read without importing a YAML parser, anything else is parsed and
checked by ``agent/config/parse.py``. Every problem is one ``ConfigError`` line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from agent.base.errors import ConfigError
from agent.config.settings import AgentConfig


def load_config(path: Optional[str], *, default_path: Path) -> AgentConfig:
    """Load ``path`` (explicit: must exist) or ``default_path`` (missing: all defaults)."""
    from agent.base.errors import NodeFileError, NodeFileMissing
    from agent.base.fs import MAX_CONFIG_FILE, read_bytes

    if path is None:
        target = default_path
        if not target.exists():
            return AgentConfig(source="<defaults>")
    else:
        target = Path(path)
    try:
        text = read_bytes(target, limit=MAX_CONFIG_FILE).decode("utf-8")
    except NodeFileMissing:
        raise ConfigError(f"{target}: configuration file does not exist") from None
    except NodeFileError as exc:
        if exc.problem.startswith("is a directory"):
            raise ConfigError(f"{target}: is a directory, expected a YAML file") from None
        raise ConfigError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{target}: not UTF-8 (byte offset {exc.start})") from None
    return parse_config(text, str(target))


def _only_comments(text: str) -> bool:
    """True for a file with nothing but comments, blank lines and document markers (the packaged one)."""
    return all(not line.strip() or line.lstrip().startswith("#") or line.rstrip() in ("---", "...")
               for line in text.splitlines())


def parse_config(text: str, source: str) -> AgentConfig:
    if _only_comments(text):
        return AgentConfig(source=source)  # as YAML would say, without paying for its import
    from agent.config.parse import parse_yaml  # only paid for when a configuration file sets something

    return parse_yaml(text, source)
