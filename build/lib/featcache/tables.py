"""The one table style of every command: rows of dicts (or a polars frame) as a rich table, as text.

    print(render(rows, {"run": "run", "sample_f1": "sample-F1"}, title="runs"))

Floats get 4 decimals unless a column's format says otherwise; None and NaN print as "-".
"""

from __future__ import annotations

import io
import math

from rich import box
from rich.console import Console
from rich.table import Table


def render(rows, columns: dict[str, str] | None = None, title: str | None = None,
           formats: dict[str, str] | None = None, width: int = 220) -> str:
    """`columns`: key -> header, in order (default: every key of the first row)."""
    rows = rows.to_dicts() if hasattr(rows, "to_dicts") else list(rows)
    columns = columns or ({k: k for k in rows[0]} if rows else {})
    formats = formats or {}
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, show_edge=False)
    for key, header in columns.items():
        numeric = any(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for r in rows)
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")
    for r in rows:
        table.add_row(*(_cell(r.get(key), formats.get(key)) for key in columns))
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, highlight=False, soft_wrap=False).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().rstrip("\n").splitlines())


def _cell(value, fmt: str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if fmt:
        return format(value, fmt)
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    return str(value)
