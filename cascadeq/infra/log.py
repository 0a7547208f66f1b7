"""structlog set-up: JSON lines for machines, a console renderer on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


_configured = {"level": logging.INFO}


def configure(level: str = "info", fmt: str = "auto", **bind: Any) -> None:
    """Configure once per process; ``bind`` adds fields to every event (role, consumer)."""
    if level.lower() not in _LEVELS:
        raise ValueError(f"log level {level!r} is unknown; use one of {sorted(_LEVELS)}")
    _configured["level"] = _LEVELS[level.lower()]
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level.lower()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    if bind:
        structlog.contextvars.bind_contextvars(**bind)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def debug_enabled() -> bool:
    """Whether debug lines are written: per-request lines (traced hops) are only then made."""
    return _configured["level"] <= logging.DEBUG
