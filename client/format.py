"""Text for people: sizes, times and aligned tables."""

from __future__ import annotations

from collections.abc import Sequence

DATATYPE_COLUMNS = (("raw", "RAW"), ("micrographs", "MICROGRAPHS"), ("thumbnails", "THUMBNAILS"),
                    ("particles", "PARTICLES"), ("metadata", "METADATA"))
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(nbytes: int | None) -> str:
    if nbytes is None:
        return "-"
    size = float(nbytes)
    for unit in _UNITS:
        if abs(size) < 1024 or unit == _UNITS[-1]:
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def short_time(iso: str | None) -> str:
    """'2026-11-25T18:59:12.006Z' → '2026-11-25 18:59'"""
    if not iso:
        return "-"
    return iso.replace("T", " ")[:16]


def category_cell(category: dict) -> str:
    text = human_size(category.get("size"))
    status = category.get("status")
    return text if status in (None, "active") else f"{text} [{status}]"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)
