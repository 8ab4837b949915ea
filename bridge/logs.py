"""The one place that configures logging: structlog, JSON lines or console."""

from __future__ import annotations

import logging
import sys

import structlog

from bridge.redact import redacting_processor

__all__ = ["configure_logging"]


def configure_logging(level: str = "info", fmt: str | None = None, secrets: tuple[str, ...] = ()) -> None:
    """JSON lines by default; human-readable console output on a TTY. Any of
    ``secrets`` in a log line is masked."""
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redacting_processor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library; keep their noise at warning.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
