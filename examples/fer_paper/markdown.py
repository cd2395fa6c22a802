"""Markdown pieces of the report: percentages and tables."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["markdown_table", "percent"]


def percent(value: float | None) -> str:
    """A fraction in [0, 1] as "12.3 %"; None as "n/a"."""
    return "n/a" if value is None else f"{100 * value:.1f} %"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table with `header` and `rows` of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
