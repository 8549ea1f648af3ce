"""Writing a backup file safely: a new private FILE.partial, renamed onto FILE only once the whole backup
arrived (its end line proves it), so FILE is never half-written, never written through a link, never readable
by others."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

BACKUP_MODE = 0o600  # the backup holds every token hash and who may do what: its owner's alone
TAIL_BYTES = 1 << 16  # the end line is a few hundred bytes


class BackupNotWritten(Exception):
    """The backup file was not written; the message says why and what to do."""


def end_line_documents(tail: bytes) -> int | None:
    """The documents a backup holds, from its end line (the last line of `tail`); None if it has none (it
    was cut short)."""
    lines = [line for line in tail.splitlines() if line.strip()]
    try:
        counts = json.loads(lines[-1])["livedm_backup_end"]["counts"]
        return sum(counts.values())
    except (IndexError, ValueError, KeyError, TypeError, AttributeError):
        return None


def create_partial(path: Path) -> tuple[int, Path]:
    """A new FILE.partial, mode 0600, that is ours: never a file or link someone put there first."""
    partial = path.with_name(path.name + ".partial")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(partial, flags, BACKUP_MODE)
    except FileExistsError:
        raise BackupNotWritten(f"{partial} already exists (left by a backup that was interrupted, or put there by "
                               f"someone else: a link or a file another user may read); nothing was written. Look "
                               f"at it, remove it (rm {partial}) and back up again") from None
    except OSError as exc:
        raise BackupNotWritten(f"cannot create {partial}: {exc.strerror}; nothing was written") from None
    os.fchmod(fd, BACKUP_MODE)  # exactly 0600, whatever the umask
    return fd, partial


def copy_to(source: BinaryIO, fd: int) -> tuple[int, bytes]:
    """Copy the stream into the file and make it durable (fsync); (bytes written, the last bytes)."""
    written, tail = 0, b""
    with os.fdopen(fd, "wb", closefd=False) as out:
        while chunk := source.read(1 << 20):
            out.write(chunk)
            written += len(chunk)
            tail = (tail + chunk)[-TAIL_BYTES:]
        out.flush()
        os.fsync(fd)
    return written, tail


def is_ours(fd: int, partial: Path) -> bool:
    """Is the file at `partial` still the one open as `fd` (not removed, not replaced)?"""
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(partial))
    except OSError:
        return False


def put_in_place(fd: int, partial: Path, path: Path) -> None:
    """Rename the partial file onto FILE (a link at FILE is replaced, never followed), if it is still the
    one we wrote, and make the rename durable."""
    if not is_ours(fd, partial):
        raise BackupNotWritten(f"{partial} was removed or replaced while the backup was written (by another user "
                               f"of {partial.parent}?); nothing was written to {path}: back up into a directory "
                               "only you may write")
    try:
        os.replace(partial, path)
    except OSError as exc:
        raise BackupNotWritten(f"cannot put the backup at {path}: {exc.strerror}; nothing was written") from None
    with contextlib.suppress(OSError):  # not every file system syncs a directory
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_backup(source: Callable[[], Any], path: Path) -> tuple[int, int]:
    """Write the backup `source()` opens into FILE through a new private FILE.partial, then rename it onto
    FILE: (bytes, documents). FILE is left as it was unless the whole backup arrived."""
    fd, partial = create_partial(path)
    try:
        with source() as response:
            written, tail = copy_to(response, fd)
        documents = end_line_documents(tail)
        if documents is None:
            raise BackupNotWritten("the backup stopped before its end (livedmd or its database failed mid-way; see "
                                   f"its log): nothing was written to {path}, try again")
        put_in_place(fd, partial, path)
    except BaseException:
        if is_ours(fd, partial):  # never remove what someone else put there
            with contextlib.suppress(OSError):
                partial.unlink()
        raise
    finally:
        os.close(fd)
    return written, documents
