"""Printing rows for people (aligned table) or programs (JSON)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, TextIO


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: TextIO,
                headers: dict[str, str] | None = None) -> None:
    headers = headers or {}
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    names = [headers.get(c, c) for c in columns]
    widths = [max([len(n), *(len(row[i]) for row in cells)]) for i, n in enumerate(names)]
    numeric = [all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    print(line(names), file=out)
    print(line(["-" * w for w in widths]), file=out)
    for row in cells:
        print(line(row), file=out)


def print_json(rows: Sequence[dict[str, Any]], out: TextIO) -> None:
    json.dump(list(rows), out, indent=2, ensure_ascii=False)
    out.write("\n")
