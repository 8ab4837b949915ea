"""The exception root of the bridge: every error it raises on purpose derives from here."""

from __future__ import annotations

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "BridgeError", "ConfigError"]

# The exit codes of every command.
EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime failure: the database or broker, a bad input file
EXIT_USAGE = 2  # bad arguments or settings: the message names the argument or key


class BridgeError(Exception):
    """Base of all errors the bridge raises deliberately (exit code 1)."""


class ConfigError(BridgeError):
    """A setting is missing or invalid; the message names the key (exit code 2)."""
