"""Aligned text tables for a terminal: every command that prints rows prints them
through here, so they all look alike."""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["aligned"]


def aligned(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Collection[int], rule: bool = False
) -> list[str]:
    """The header and rows as lines of columns two spaces apart: the columns named in
    ``numeric`` (by position) right-aligned so digits line up, the others left-aligned.
    ``rule`` puts a line of dashes under the header. Trailing blanks are cut."""
    widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]

    def render(line: Sequence[str]) -> str:
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rules = [render(["-" * width for width in widths])] if rule else []
    return [render(header), *rules, *(render(line) for line in rows)]
