"""The tables the docs show, rendered from committed result files (``--table FILE``):
one way to write a Markdown table and to name the host its figures come from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def host_line(host: Mapping[str, Any], commit: str | None = None) -> str:
    """``AMD EPYC 9B14 (2 CPUs) @ abc1234``: what the figures were measured on, and which
    commit; ``commit`` defaults to the one the host facts recorded."""
    sha = str(commit or host.get("git_commit") or "?")[:7]
    return f"{host.get('cpu_model', '?')} ({host.get('cpu_count', '?')} CPUs) @ {sha}"


def markdown(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a Markdown table: the header, its rule, then one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines
