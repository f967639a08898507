"""Prefect artifact helpers shared by the tasks (keys, number formatting)."""

from __future__ import annotations

import math
from typing import Mapping


def artifact_key(kind: str, name: str) -> str:
    """A valid Prefect artifact key (lowercase letters, digits and dashes) from ``kind`` and ``name``.

    Artifacts with the same key form one history in the dashboard (e.g. every evaluation of
    one registered model).
    """
    slug = "".join(c if c.isalnum() else "-" for c in f"{kind}-{name}".lower())
    slug = "-".join(part for part in slug.split("-") if part)
    return slug[:100] or "cvflow"


def fmt(value: float) -> str:
    """A metric for a table: 4 decimals, an em dash for NaN (no ground truth)."""
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def markdown_table(rows: Mapping[str, float], *, header: tuple[str, str] = ("metric", "value")) -> str:
    """A two-column markdown table of named numbers."""
    lines = [f"| {header[0]} | {header[1]} |", "| --- | ---: |"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in rows.items()]
    return "\n".join(lines)
