"""Shortening text for messages: one line a person reads over SSM, never a wall of output."""


from __future__ import annotations

MAX_SHOWN = 60  # characters of a value quoted in an error message


def clip(text: str, limit: int) -> str:
    """``text``, or its first ``limit - 3`` characters and ``...``."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shorten(value: object, limit: int = MAX_SHOWN) -> str:
    """``repr`` of a value for an error message, never longer than about ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
