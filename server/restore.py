"""A restore: the upload streams into a private file in the state dir, checked line by line as it arrives
(backup_check.py); only a file that passed is loaded beside the live database (store: staging collections)
and switched in. Any refusal or failure before the switch leaves the database as it was."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .backup import documents, reject
from .backup_check import BackupChecker
from .config import Config
from .errors import CONFLICT, INVALID_REQUEST, ApiError
from .store import Store

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 << 20  # one document is at most 16 MiB of BSON; its Extended JSON may be a few times that
BATCH_DOCS = 1000
FREE_SPACE_MARGIN_BYTES = 64 << 20
UPLOAD_PREFIX = ".restore-upload-"
BUSY = "jobs are running; restore when the queue is idle (livedm jobs --state running); nothing was restored"


@dataclass
class Upload:
    """The request body on its way into a private file, checked line by line as it arrives."""

    file: BinaryIO
    checker: BackupChecker
    max_bytes: int
    size_bytes: int = 0
    partial: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> None:
        self.size_bytes += len(chunk)
        if self.size_bytes > self.max_bytes:
            raise too_large(self.max_bytes)
        self.file.write(chunk)
        self.partial += chunk
        start = 0
        while (end := self.partial.find(b"\n", start)) != -1:
            self.checker.line(bytes(self.partial[start:end]))
            start = end + 1
        del self.partial[:start]
        if len(self.partial) > MAX_LINE_BYTES:
            raise reject(self.checker.line_no + 1, f"longer than {MAX_LINE_BYTES} bytes")

    def close(self) -> None:
        if self.partial:  # a last line without its newline: a file cut short, most likely
            self.checker.line(bytes(self.partial))
            self.partial.clear()
        self.file.flush()
        self.checker.finish()


def too_large(max_bytes: int) -> ApiError:
    return ApiError(INVALID_REQUEST, f"the backup is larger than {max_bytes} bytes, the most a restore accepts "
                                     "(max_restore_bytes); nothing was restored", {"http_status": 413})


def remove_stale_uploads(state_dir: str, spare_pid: int | None = None) -> int:
    """Remove the uploads an earlier livedmd left in the state dir when it died mid-restore (each up to
    max_restore_bytes); how many went. At start (one livedmd per state dir, the lock held) every upload
    is stale; during a restore, `spare_pid` spares this process's own, which may be other restores'.
    Links and directories of that name are not followed: a link goes as a link, a directory stays."""
    removed = 0
    for path in Path(state_dir).glob(UPLOAD_PREFIX + "*"):
        if spare_pid is not None and path.name.startswith(f"{UPLOAD_PREFIX}{spare_pid}-"):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    if removed:
        log.info("removed %d upload(s) left in %s by a restore that did not finish", removed, state_dir)
    return removed


@contextlib.contextmanager
def upload_file(state_dir: str) -> Iterator[tuple[BinaryIO, Path]]:
    """A new file only livedmd's user may read (mkstemp: mode 0600), removed afterwards whatever happens."""
    remove_stale_uploads(state_dir, spare_pid=os.getpid())
    fd, name = tempfile.mkstemp(prefix=f"{UPLOAD_PREFIX}{os.getpid()}-", suffix=".ndjson", dir=state_dir)
    try:
        with os.fdopen(fd, "w+b") as upload:
            yield upload, Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def check_free_space(state_dir: str, expected_bytes: int | None) -> None:
    if expected_bytes is None:
        return
    free_bytes = shutil.disk_usage(state_dir).free
    if free_bytes < expected_bytes + FREE_SPACE_MARGIN_BYTES:
        raise ApiError(INVALID_REQUEST, f"the state dir {state_dir} has {free_bytes} bytes free; the restore keeps the "
                                        f"{expected_bytes}-byte upload there while it checks it: free some space",
                       {"http_status": 507})


def load(store: Store, path: Path, counts: dict[str, int], *, owner: str) -> None:
    """Load the checked file into the staging collections and switch them in; on any failure before the
    switch the staging is dropped and the live database was never touched."""
    try:
        for collection, group in itertools.groupby(documents(path), key=lambda pair: pair[0]):
            docs = (doc for _, doc in group)
            while batch := list(itertools.islice(docs, BATCH_DOCS)):
                store.stage_documents(owner, collection, batch, now_s=time.time())
        if store.count_jobs("running"):
            raise ApiError(CONFLICT, BUSY)
        store.switch_restore(owner, counts, time.time())
    except ValueError as exc:
        store.abandon_restore(owner)
        raise ApiError(INVALID_REQUEST, f"{exc}; nothing was restored") from None
    except BaseException:
        store.abandon_restore(owner)
        raise


# --- the routes ------------------------------------------------------------------------------------


async def restore(store: Store, config: Config, chunks: AsyncIterator[bytes], *, content_length: int | None,
                  unverified_ok: bool) -> dict[str, Any]:
    """Check the uploaded backup as its chunks arrive, then load and switch it in; what was restored."""
    await _check_idle(store)
    if content_length is not None and content_length > config.max_restore_bytes:
        raise too_large(config.max_restore_bytes)
    check_free_space(config.state_dir, content_length)
    checker = BackupChecker(config.data_roots, (config.state_dir, str(config.hook_logs)), unverified_ok=unverified_ok,
                            raw_dirs=tuple(directory for directory, datatype in config.layout if datatype == "raw"))
    with upload_file(config.state_dir) as (file, path):
        upload = Upload(file, checker, config.max_restore_bytes)
        try:
            async for chunk in chunks:
                await asyncio.to_thread(upload.feed, chunk)
            await asyncio.to_thread(upload.close)
        except OSError as exc:
            raise ApiError(INVALID_REQUEST, f"the upload could not be kept in the state dir ({exc}); "
                                            "nothing was restored") from None
        owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        if not await asyncio.to_thread(store.begin_restore, owner, time.time()):
            raise ApiError(CONFLICT, "another restore is under way; wait for it to finish, then try again")
        await asyncio.to_thread(functools.partial(load, store, path, checker.kept_counts, owner=owner))
    return {"restored": checker.kept_counts, "format": checker.version, "left_out": checker.left_out,
            "settled_categories": checker.settled_categories}


async def _check_idle(store: Store) -> None:
    if await asyncio.to_thread(store.count_jobs, "running"):
        raise ApiError(CONFLICT, BUSY)
