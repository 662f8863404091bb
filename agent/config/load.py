"""Loading the agent's configuration: the base file (explicit, or the default path) and the drop-ins
``config.d/*.yaml`` beside it, merged in lexical order -> ``AgentConfig``.

The one place a configuration is read: a missing default file means all defaults, files of only
comments (the packaged one) are read without importing a YAML parser, anything else is merged by
``agent/config/layers.py`` and checked by ``agent/config/parse.py``. Every problem is one
``ConfigError`` line naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple

from agent.base.errors import ConfigError
from agent.config.settings import DROP_IN_DIR, AgentConfig

MAX_DROP_INS = 100


def load_config(path: Optional[str], *, default_path: Path, drop_in_dir: Optional[Path] = None) -> AgentConfig:
    """Load ``path`` (explicit: must exist) or ``default_path`` (missing: all defaults), then the
    drop-ins ``*.yaml`` of ``drop_in_dir`` (default: ``config.d`` beside the file) in lexical order."""
    target = default_path if path is None else Path(path)
    layers: List[Tuple[str, str]] = []
    if path is not None or target.exists():
        layers.append((_read_config_file(target, "configuration file"), str(target)))
    directory = drop_in_dir if drop_in_dir is not None else target.parent / DROP_IN_DIR
    for drop_in in _drop_ins(directory):
        layers.append((_read_config_file(drop_in, "drop-in"), str(drop_in)))
    return parse_layers(layers, source=str(target) if layers and layers[0][1] == str(target) else "<defaults>")


def _drop_ins(directory: Path) -> List[Path]:
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".yaml") and not n.startswith("."))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise ConfigError(f"{directory}: not a directory (drop-ins go in {DROP_IN_DIR}/*.yaml)") from None
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot list the drop-ins: {exc.strerror}") from None
    if len(names) > MAX_DROP_INS:
        raise ConfigError(f"{directory}: {len(names)} drop-ins, more than {MAX_DROP_INS}; refusing to read them")
    return [directory / n for n in names]


def _read_config_file(target: Path, what: str) -> str:
    from agent.base.errors import NodeFileError, NodeFileMissing
    from agent.base.fs import MAX_CONFIG_FILE, read_bytes

    try:
        return read_bytes(target, limit=MAX_CONFIG_FILE).decode("utf-8")
    except NodeFileMissing:
        raise ConfigError(f"{target}: {what} does not exist") from None
    except NodeFileError as exc:
        if exc.problem.startswith("is a directory"):
            raise ConfigError(f"{target}: is a directory, expected a YAML file") from None
        raise ConfigError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{target}: not UTF-8 (byte offset {exc.start})") from None


def _only_comments(text: str) -> bool:
    """True for a file with nothing but comments, blank lines and document markers (the packaged one)."""
    return all(not line.strip() or line.lstrip().startswith("#") or line.rstrip() in ("---", "...")
               for line in text.splitlines())


def parse_config(text: str, source: str) -> AgentConfig:
    return parse_layers([(text, source)], source=source)


def parse_layers(layers: List[Tuple[str, str]], *, source: str) -> AgentConfig:
    """``layers``: (text, file) in order, each merged over the ones before it."""
    files = tuple(name for _, name in layers)
    if all(_only_comments(text) for text, _ in layers):
        return AgentConfig(source=source, files=files)  # as YAML would say, without paying for its import
    from agent.config.parse import parse_yaml  # only paid for when a configuration file sets something

    return parse_yaml([(t, name) for t, name in layers if not _only_comments(t)], source, files)
