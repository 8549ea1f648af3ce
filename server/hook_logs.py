"""A hook run's log: one file per run in the hook log dir, named by its job, written capped, read back in
pieces, and removed when old.

Each run writes `<project>_<session>_<datatype>_<job>.log` (an admin's `script_log_path_abs` names another
file directly in the dir): runs that overlap (a script that triggers the next state change) never share a
file. Files are created mode 0600 and never opened through a symbolic link; a run keeps at most
`hook_log_max_bytes` of output (its head, its tail, and a line saying what was cut between them). Reading
gives whole UTF-8 characters from a byte offset (or the tail), so a page can show the end and download the
whole in pieces. Logs older than `hook_log_keep_s` are removed.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from .config import Config
from .errors import forbidden, invalid_params

log = logging.getLogger(__name__)

LOG_DIR_MODE = 0o700
LOG_FILE_MODE = 0o600
MAX_READ_BYTES = 1 << 20  # one piece of a log read through the API
DEFAULT_READ_BYTES = 1 << 16
PRUNE_EVERY_S = 3600.0
_RUN_LOG = re.compile(r"[A-Za-z0-9-]+_S[0-9]+_[a-z]+_J[0-9]+\.log")  # what prune may remove: per-run logs only


class LogRefused(Exception):
    """The log cannot be opened safely (a link or something odd in its place): nothing is run."""


def run_log_name(project_uid: str, session_uid: str, datatype: str, job_id: str) -> str:
    """The file a hook run writes: one per job, named so that a listing of the dir says whose it is."""
    return f"{project_uid}_{session_uid}_{datatype}_{job_id}.log"


def override_name(config: Config, requested: str) -> str:
    """The file an admin's script_log_path_abs names: directly in the hook log dir, else refused."""
    if "\0" in requested or not os.path.isabs(requested):
        raise invalid_params("script_log_path_abs must be an absolute path")
    name = os.path.basename(requested)
    inside = os.path.realpath(os.path.dirname(requested)) == os.path.realpath(config.hook_logs)
    if name in ("", ".", "..") or not inside:
        raise forbidden(f"script_log_path_abs must name a file directly in the hook log dir "
                        f"{config.hook_logs} (the hook_log_dir setting)")
    return name


def open_for_append(config: Config, name: str) -> int:
    """The log, opened to append without following a symlink: a link planted there is refused."""
    directory = config.hook_logs
    directory.mkdir(parents=True, exist_ok=True, mode=LOG_DIR_MODE)
    path = directory / name
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     LOG_FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LogRefused(f"refused, nothing was run: the hook log {path} is a symbolic link; remove it "
                             "(livedmd never writes through a link)") from None
        raise LogRefused(f"nothing was run: cannot open the hook log {path}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise LogRefused(f"refused, nothing was run: the hook log {path} is not a plain file with one link; remove it")
    return fd


@dataclass(frozen=True)
class LogPiece:
    name: str
    size: int
    offset: int
    next_offset: int
    text: str

    def public(self, job_id: str) -> dict[str, Any]:
        return {"job_id": job_id, "log": self.name, "exists": self.size >= 0, "size": max(self.size, 0),
                "offset": self.offset, "next_offset": self.next_offset, "text": self.text,
                "complete": self.offset == 0 and self.next_offset >= self.size}


def read_piece(config: Config, name: str, *, offset: int | None, limit: int) -> LogPiece:
    """Up to `limit` bytes of the log from `offset` (None: its last `limit` bytes), cut to whole UTF-8
    characters (bytes that are not UTF-8 show as U+FFFD). A log not written yet has size -1."""
    if not 1 <= limit <= MAX_READ_BYTES:
        raise invalid_params(f"limit must be 1-{MAX_READ_BYTES} bytes")
    if offset is not None and offset < 0:
        raise invalid_params("offset must be 0 or more (or null for the log's end)")
    fd = _open_for_reading(config, name)
    if fd is None:
        return LogPiece(name, -1, 0, 0, "")
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - limit) if offset is None else offset
        if start > size:
            raise invalid_params(f"offset {start} is past the end of the log ({size} bytes)")
        data = os.pread(fd, limit, start)
    finally:
        os.close(fd)
    if offset is None:  # the tail begins at a character, not in the middle of one
        skip = _continuation_bytes(data)
        data, start = data[skip:], start + skip
    if start + len(data) < size:  # a piece ends with a whole character: the next read starts with one
        data = data[:_last_whole(data) or len(data)]  # (unless the limit is shorter than one character)
    return LogPiece(name, size, start, start + len(data), data.decode("utf-8", errors="replace"))


def _open_for_reading(config: Config, name: str) -> int | None:
    try:
        dir_fd = os.open(config.hook_logs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise forbidden(f"the hook log {name} cannot be read ({exc.strerror}): livedmd reads only plain files in "
                        "the hook log dir, never through a link") from None
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise forbidden(f"the hook log {name} is not a plain file; livedmd reads only plain files")
    return fd


def _continuation_bytes(data: bytes) -> int:
    """How many bytes at the start belong to a character begun before it (at most 3)."""
    skip = 0
    while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
        skip += 1
    return skip


def _last_whole(data: bytes) -> int:
    """The length of `data` without a character cut short at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for its lead byte
        need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 \
            if byte >> 3 == 0b11110 else 1
        return len(data) if back >= need else len(data) - back
    return len(data)


def prune(config: Config, now_s: float | None = None) -> int:
    """Remove per-run logs not written to for longer than hook_log_keep_s; how many. Other files stay."""
    if config.hook_log_keep_s <= 0:
        return 0
    cutoff = (time.time() if now_s is None else now_s) - config.hook_log_keep_s
    removed = 0
    try:
        entries = list(os.scandir(config.hook_logs))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if _RUN_LOG.fullmatch(entry.name) and entry.is_file(follow_symlinks=False) \
                    and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except OSError as exc:
            log.warning("cannot remove the old hook log %s: %s", entry.path, exc.strerror)
    if removed:
        log.info("removed %d hook log(s) older than hook_log_keep_s", removed)
    return removed


class Pruner:
    """Prunes at most once every PRUNE_EVERY_S (it runs with the workers' maintenance)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.last_s = 0.0

    def __call__(self) -> int:
        now_s = time.monotonic()
        if now_s - self.last_s < PRUNE_EVERY_S:
            return 0
        self.last_s = now_s
        return prune(self.config)


class CappedLog:
    """A run's output into its log: the first half of `max_bytes` at once, the last half at the end,
    and one line saying how many bytes were cut between them. No temporary file: the tail waits in a
    bounded buffer. A failed write (a full disk) stops the logging, never the hook."""

    def __init__(self, fd: int, max_bytes: int) -> None:
        self.fd = fd
        self.max_bytes = max_bytes
        self.head_left = max_bytes - max_bytes // 2
        self.tail_max = max_bytes // 2
        self.tail: deque[bytes] = deque()
        self.tail_bytes = 0
        self.cut_bytes = 0
        self.error: str | None = None
        self._at_line_start = True

    def feed(self, chunk: bytes) -> None:
        if self.head_left > 0:
            head, chunk = chunk[:self.head_left], chunk[self.head_left:]
            self.head_left -= len(head)
            self._write(head)
        if not chunk:
            return
        self.tail.append(chunk)
        self.tail_bytes += len(chunk)
        while self.tail and self.tail_bytes - len(self.tail[0]) >= self.tail_max:
            dropped = self.tail.popleft()
            self.tail_bytes -= len(dropped)
            self.cut_bytes += len(dropped)

    def finish(self) -> None:
        """Write the cut note and the tail kept back."""
        excess = self.tail_bytes - self.tail_max
        if excess > 0:
            self.tail[0] = self.tail[0][excess:]
            self.tail_bytes -= excess
            self.cut_bytes += excess
        if self.cut_bytes:
            self.line(f"=== [{self.cut_bytes} bytes of output cut here: a run keeps its first and last "
                      f"{self.max_bytes} bytes in all (hook_log_max_bytes)]")
        while self.tail:
            self._write(self.tail.popleft())
        self.tail_bytes = 0

    def line(self, text: str) -> None:
        """A line of livedm's own (header, note, footer), on a line of its own."""
        self._write(("" if self._at_line_start else "\n").encode() + text.encode(errors="replace") + b"\n")

    def _write(self, data: bytes) -> None:
        if self.error is not None or not data:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            self.error = exc.strerror or str(exc)
            log.warning("hook log write failed (%s); the rest of this run's output is not logged", self.error)
            return
        self._at_line_start = data.endswith(b"\n")
