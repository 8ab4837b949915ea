"""The shared terminal table (bridge/commands/table.py)."""

from __future__ import annotations

import pytest

from bridge.commands.table import aligned

pytestmark = pytest.mark.unit


def test_numbers_align_right_text_left_and_no_line_ends_in_blanks() -> None:
    """Each column is as wide as its widest cell; the numeric ones are right-aligned."""
    lines = aligned(("name", "count", "note"), [("a", "1", "x"), ("longer", "1000", "")], numeric={1})
    assert lines == [
        "name    count  note",
        "a           1  x",
        "longer   1000",
    ]


def test_a_rule_under_the_header_spans_each_column() -> None:
    """With ``rule`` the header is underlined column by column."""
    assert aligned(("id", "kwh"), [("EV-1", "0.5")], numeric={1}, rule=True) == [
        "id    kwh",
        "----  ---",
        "EV-1  0.5",
    ]
