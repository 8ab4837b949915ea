"""The exception root of the bridge: every error it raises on purpose derives from here."""

from __future__ import annotations

__all__ = ["BridgeError", "ConfigError"]


class BridgeError(Exception):
    """Base of all errors the bridge raises deliberately (exit code 1)."""


class ConfigError(BridgeError):
    """A setting is missing or invalid; the message names the key (exit code 2)."""
