"""The exception root of the bridge: every error it raises on purpose derives from here."""

from __future__ import annotations

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "BridgeError",
    "ConfigError",
    "DatabaseUnavailableError",
    "reason",
]

# The exit codes of every command.
EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime failure: the database or broker, a bad input file
EXIT_USAGE = 2  # bad arguments or settings: the message names the argument or key


class BridgeError(Exception):
    """Base of all errors the bridge raises deliberately (exit code 1)."""


class ConfigError(BridgeError):
    """A setting is missing or invalid; the message names the key (exit code 2)."""


class DatabaseUnavailableError(BridgeError):
    """A command could not connect to PostgreSQL; the message names the address."""


def reason(exc: BaseException) -> str:
    """An exception as a short phrase for a message: its text, or its type when it has none."""
    return str(exc) or type(exc).__name__
