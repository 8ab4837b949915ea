"""``fleet-bridge config``: the effective settings and where each came from.

Secrets show only whether they are set; the DSN shows with its password masked.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import orjson

from bridge.config import SECTIONS, Dsn, Settings, env_name, redact_dsn
from bridge.redact import redact, secret_values

__all__ = ["cmd_config", "render_json", "render_table", "setting_rows"]


def _shown(value: Any, secret: bool) -> Any:
    if secret:
        return "unset" if value is None else "set"
    return redact_dsn(value.reveal()) if isinstance(value, Dsn) else value


def setting_rows(settings: Settings) -> list[dict[str, Any]]:
    """One row per setting: its key, variable, value (secrets as set/unset) and source."""
    rows = []
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            key = f"{section}.{field.name}"
            value = getattr(getattr(settings, section), field.name)
            origin = settings.provenance.of(key)
            rows.append(
                {
                    "setting": key,
                    "variable": env_name(section, field.name),
                    "value": _shown(value, secret=str(field.type).startswith("Secret")),
                    "source": origin.source,
                    "from": origin.where or None,
                }
            )
    return rows


def render_json(settings: Settings) -> str:
    """``{"config_file": ..., "settings": [rows]}``."""
    doc = {"config_file": settings.provenance.file, "settings": setting_rows(settings)}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


def _cell(value: Any) -> str:
    """``-`` when unset, a string as it is, anything else (and ``""``) as JSON writes it."""
    if value is None:
        return "-"
    return value if isinstance(value, str) and value else orjson.dumps(value).decode()


def render_table(settings: Settings) -> str:
    """Aligned columns: setting, value, source (and which file, variable or flag)."""
    cells = [("setting", "value", "source")]
    for row in setting_rows(settings):
        cells.append((row["setting"], _cell(row["value"]), " ".join(filter(None, (row["source"], row["from"])))))
    widths = [max(len(cell[i]) for cell in cells) for i in range(2)]
    lines = [f"{key:<{widths[0]}}  {value:<{widths[1]}}  {source}" for key, value, source in cells]
    return "\n".join([f"config file: {settings.provenance.file or 'none'}", "", *lines])


async def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    text = render_json(settings) if args.format == "json" else render_table(settings)
    # A second line of defence, as for errors and logs: no known secret leaves.
    print(redact(text, secret_values(settings)))
    return 0
