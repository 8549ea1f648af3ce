"""Text for people: sizes, times and aligned tables."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

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


class Times:
    """Times for people, to the minute: in UTC as livedmd stores them, or with `local` in this machine's time
    zone. Whichever it is, it is said: in table headers (`CREATED (UTC)`) or after a lone time (`stamped`)."""

    def __init__(self, local: bool = False) -> None:
        self.local = local

    @property
    def zone(self) -> str:
        return (datetime.now().astimezone().strftime("%Z") or "local") if self.local else "UTC"

    def short(self, iso: str | None, *, seconds: bool = False) -> str:
        """'2026-11-25T18:59:12.006Z' → '2026-11-25 18:59' (in UTC, or the local zone; `seconds`: ':12' too)"""
        if not iso:
            return "-"
        if not self.local:
            return iso.replace("T", " ")[:19 if seconds else 16]
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
        return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")

    def header(self, name: str) -> str:
        return f"{name} ({self.zone})"

    def stamped(self, iso: str | None) -> str:
        return f"{self.short(iso)} {self.zone}" if iso else "-"


ALERT_WORDS = {"hook_failed": "hook {job} failed", "deletion_failed": "deletion {job} failed",
               "deletion_stuck": "stuck"}


def category_cell(category: dict, never_measured: bool = False) -> str:
    """'310.4 GiB', with the status unless active and what went wrong: '1.2 TiB [archiving; hook J12 failed]';
    '-' for a session never measured (its directory has not been there yet), which is not 0 B."""
    text = "-" if never_measured else human_size(category.get("size"))
    status = category.get("status")
    marks = [] if status in (None, "active") else [status]
    alert = category.get("alert")
    if alert:
        marks.append(ALERT_WORDS.get(alert["kind"], alert["kind"]).format(job=alert.get("job_id") or "?"))
    return f"{text} [{'; '.join(marks)}]" if marks else text


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)
