"""The second line of defence for secrets: every known password is masked in the
text that leaves the process (error messages, log lines).

The settings never show a secret themselves (``bridge.config.Secret``), but a
library's exception text may quote what it was given; this catches that.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import structlog

from bridge.config import Settings

__all__ = ["MASK", "redact", "redacting_processor", "secret_values"]

MASK = "**********"


def secret_values(settings: Settings) -> tuple[str, ...]:
    """Every password the settings hold, longest first (so none is masked half)."""
    dsn = urlsplit(settings.db.dsn.reveal())
    in_dsn = [dsn.password, *parse_qs(dsn.query).get("password", [])]
    found = {settings.db_password(), settings.mqtt_password(), *in_dsn, *(unquote(p) for p in in_dsn if p)}
    return tuple(sorted((value for value in found if value), key=len, reverse=True))


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def redacting_processor(secrets: tuple[str, ...]) -> structlog.types.Processor:
    """A structlog processor that masks ``secrets`` in every string value of an event."""

    def processor(_logger: object, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = redact(value, secrets)
        return event

    return processor
