"""The options every command takes work before and after the command's name."""

from __future__ import annotations

import pytest

from bridge.commands.cli import build_parser

pytestmark = pytest.mark.unit

OPTIONS = ["--config", "prod.toml", "--set", "mqtt.port=8883", "--log-level", "debug", "--debug"]


@pytest.mark.parametrize("argv", [[*OPTIONS, "check"], ["check", *OPTIONS], ["mapping", "import", *OPTIONS, "map.csv"]])
def test_common_options_count_wherever_they_are_given(argv: list[str]) -> None:
    """`fleet-bridge --config FILE run` keeps FILE: a command's defaults do not
    overwrite the options given before its name (a settings file with TLS on
    was silently ignored)."""
    args = build_parser().parse_args(argv)
    assert (args.config, args.overrides, args.log_level, args.debug) == (
        "prod.toml", [("mqtt.port", "8883")], "debug", True,
    )  # fmt: skip


def test_common_options_default_when_not_given() -> None:
    """Without them: no file, no overrides, the configured log level, no tracebacks."""
    args = build_parser().parse_args(["check"])
    assert (args.config, args.overrides, args.log_level, args.debug) == (None, [], None, False)
