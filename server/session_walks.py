"""Measuring a session from what its last walk saw: load the directory states, walk (re-reading what
changed, or all of it), bring the scanned registry and the saved states up to date.

Consistency: the session's walk document is marked dirty before anything is written and clean after; a
refresh that finds it dirty (a livedmd died mid-write, or two on one MongoDB wrote at once) walks in full,
which rewrites the registry and every state. So the registry and the states can disagree only until the next
refresh. Within a process, walks of one session take turns (Turns), the write of the walk state included,
which a refresh leaves to the writer's thread once its figures are stored (`measuring(behind=True)`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from . import _dirstat, files, walk_docs
from .change_feed import ChangeFeed
from .config import Config
from .dirwalk import FS_ENCODING, DirState, Entries, SessionWalk, Totals, WalkResult
from .domain import DATATYPES
from .entries_cache import EntriesCache
from .pool_share import PoolShare
from .store import Pieces, Store, directory_pieces, scan_digest, session_key
from .turns import Turns

log = logging.getLogger(__name__)

WALK_FORMAT = "2"  # bump when DirState documents change meaning: every session is then walked in full once
MAX_CHUNKS_PER_DIR = 32  # appended chunks beyond this are merged into fresh ones
SAVE_BATCH_DOCS, SAVE_BATCH_BYTES = 64, 4 << 20  # a full walk's chunks go to the store this many at a time
FEED_NAMES_MAX = 1_000_000  # changed names the feed holds between refreshes (~100 bytes each)
CLOSE_WRITES_S = 10.0  # how long closing waits for walk states being written behind (a million files: ~1 s)
WRITES_PENDING_MAX = 2  # walk states waiting for the writer: the next refresh waits for room (each holds its walk)


@dataclass
class Measured:
    totals: dict[str, Totals]
    full: bool  # every file was stat'ed
    stats: int  # files stat'ed
    dirs: int
    changed_dirs: int
    probed_dirs: int  # of those, looked at from the change feed's names rather than listed


def _settled(future: Future[Any]) -> None:
    """Returns once `future` ran or was cancelled. Not concurrent.futures.wait: a task that the pool's
    shutdown(cancel_futures=True) cancels (SessionWalks.close while it is queued) is never notified to
    wait(), which would then block for ever; Future.exception() wakes on any cancel."""
    with contextlib.suppress(CancelledError):
        future.exception()


@dataclass
class _NameRuns:
    """A full walk's names per directory, in the runs its chunks hold (`runs`) and compressed (`packed`)."""
    runs: dict[str, list[bytes]]
    packed: dict[str, list[bytes]]


@dataclass
class _Walked:
    """A walk done, for its registry's write (the caller's thread) and its state's (the writer's)."""
    key: str
    project_uid: str
    session_uid: str
    session: dict[str, Any]
    project_dir: str
    asked_full: bool  # someone asked for a full refresh: the registry is rewritten whatever its digest
    full: bool  # every file was stat'ed
    result: WalkResult
    names: _NameRuns
    share: PoolShare
    saved: dict[str, _Saved]  # the last walk's documents per directory
    load_entries: Callable[[DirState], Entries | None]
    api: dict[str, list[str]]  # per category, the files registered by API
    done_after: tuple[int, int, int]  # for the walk document: since_full, API changes seen, API paths found
    movie_stamp: str
    movie_feed: list[str]
    old_movie_dirs: list[str]  # where the last walk's raw links pointed
    new_movie_dirs: list[str]  # where this walk's point
    writer: str  # begin_walk_write's token: the state is marked clean only if no other walk began since


@dataclass
class _Saved:
    header_id: str
    gen: str
    chunk_ids: list[str]


def movie_dirs_stamp(paths: list[str]) -> str:
    """Changes when a movie is added to, removed from or renamed in one of the directories raw links point
    into (their identities and times): then every raw target is stat'ed again."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        try:
            st = os.stat(path)
            digest.update(f"{path}\0{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}\0".encode(
                "utf-8", "surrogateescape"))
        except OSError:
            digest.update(f"{path}\0gone\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _dir_identity(path: str) -> str | None:
    try:
        return files.dir_id(os.stat(path))
    except OSError:
        return None


def movie_inodes(paths: list[str]) -> frozenset[tuple[int, int]] | None:
    """(dev, inode) of every entry in the movie directories, listed without a stat each; None when one
    cannot be listed (then every raw target is stat'ed)."""
    found: set[tuple[int, int]] = set()
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            dev = os.fstat(fd).st_dev
            _, ino_bytes, _ = _dirstat.list_dir(fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        inos = array("Q")
        inos.frombytes(ino_bytes)
        found.update(zip(repeat(dev), inos))
    return frozenset(found)


def changed_inodes(changed: dict[str, list[str]]) -> set[tuple[int, int]]:
    """(dev, inode) of what the names the change feed reports changed in the movie directories lead to now: a
    movie deleted and written anew under its name may get the freed inode number again (ext4 hands it out at
    once), and one moved away and back may have been rewritten meanwhile, so a link to one of these inodes is
    stat'ed again though its movie is listed."""
    found: set[tuple[int, int]] = set()
    for path, names in changed.items():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            for name in names:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                found.add((st.st_dev, st.st_ino))
        finally:
            os.close(fd)
    return found


class SessionWalks:
    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        self.cache = EntriesCache(config.walk_cache_entries)
        self._feed: ChangeFeed | None = None
        self._lazy_lock = threading.Lock()  # the feed and the pool, started at the first walk
        self._feed_failed = False
        self._pool: ThreadPoolExecutor | None = None
        self._turns = Turns()  # per session: one walk at a time, its state's write included
        self._writer: ThreadPoolExecutor | None = None  # writes walk states behind (one at a time: the store
        # serves one call at a time anyway), started at the first
        self._writes: set[Future[None]] = set()  # handed to the writer, not yet done
        self._write_room = threading.BoundedSemaphore(WRITES_PENDING_MAX)

    def pool(self) -> ThreadPoolExecutor:
        """The threads every walk of this process lists, stats and packs on, started at the first: a pool
        per refresh cost a few milliseconds per thread, each start waiting for the busy ones to let go of
        the interpreter lock. Never waited on from inside itself (no deadlock when refreshes share it)."""
        with self._lazy_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max(self.config.walk_threads, os.cpu_count() or 1),
                                                thread_name_prefix="walk")
            return self._pool

    def feed(self) -> ChangeFeed | None:
        """The change feed, started at the first walk; None when off or the kernel refuses one."""
        if not self.config.change_feed:
            return None
        with self._lazy_lock:
            if self._feed is None and not self._feed_failed:
                try:
                    self._feed = ChangeFeed(max_names=FEED_NAMES_MAX)
                except OSError as exc:  # no inotify, or fs.inotify.max_user_instances reached
                    self._feed_failed = True
                    log.warning("no change feed (%s): refreshes list every directory that changed", exc)
            return self._feed

    def close(self) -> None:
        """Walk states being written behind get CLOSE_WRITES_S to finish (one cut short stays marked dirty: its
        session's next walk is full); then the feed and the pool stop. A refresh that hands a write over while
        this waits gets a writer anew, which is stopped too."""
        deadline = time.monotonic() + CLOSE_WRITES_S
        while True:
            with self._lazy_lock:
                writer, self._writer = self._writer, None
            if writer is None:
                break
            if not self.wait_written(max(0.0, deadline - time.monotonic())):
                log.warning("walk states still being written after %.0f s are left marked dirty: those sessions' "
                            "next refreshes walk in full", CLOSE_WRITES_S)
            writer.shutdown(wait=False, cancel_futures=True)
        with self._lazy_lock:
            if self._feed is not None:
                self._feed.close()
                self._feed = None
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def _saved_entries(self, chunk_ids: list[str], files: int) -> Entries | None:
        """A directory's files as its last walk saved them, from memory if held; None when a chunk is gone
        from the store (replaced by a concurrent walk), damaged, or of another walk's generation."""
        entries = self.cache.get(chunk_ids)
        if entries is not None:
            return entries
        docs = self.store.load_walk_chunks(chunk_ids)
        try:
            entries = walk_docs.entries_from_chunks(docs) if docs is not None else None
        except ValueError:
            return None
        if entries is None or len(entries) != files:
            return None
        self.cache.put(chunk_ids, entries)
        return entries

    def measure(self, project_uid: str, session_uid: str, session: dict[str, Any], project_dir: str,
                *, full: bool | None) -> Measured:
        """Walk the session and store what was seen, the walk state included, before returning."""
        with self.measuring(project_uid, session_uid, session, project_dir, full=full) as measured:
            return measured

    @contextlib.contextmanager
    def measuring(self, project_uid: str, session_uid: str, session: dict[str, Any], project_dir: str,
                  *, full: bool | None, behind: bool = False) -> Iterator[Measured]:
        """Walk the session and bring its registry up to date; `full`: True walks everything, False re-reads
        only what changed, None (a scheduled refresh) is full every `full_refresh_every`th time.

        The walk state (the next walk's starting point; a cache, never backed up) is handed to the writer's
        thread when the body ends, if the registry was written (else it stays marked dirty: the next walk is
        full): the store serves one call at a time, and the caller's own writes go first. Without `behind` this
        waits for it and raises what it raised; with `behind` the caller answers meanwhile, and a failed write
        is logged. Walks of one session take turns, their state's writes included: the next one waits for it.
        At most WRITES_PENDING_MAX writes wait for the writer: the body's end waits for room."""
        key = session_key(project_uid, session_uid)
        self._turns.take(key)
        handed_over = False  # the turn goes back when the walk state's write ends
        try:
            walked = self._walk(key, project_uid, session_uid, session, project_dir, full=full)
            registry_ok = False
            try:
                registry_ok, measured = self._register(walked)
                yield measured
            finally:
                if registry_ok:  # else not written at all: the state stays marked dirty, the next walk is full
                    written = self._submit_write(key, walked, log_failure=behind)
                    handed_over = True
                    if not behind:
                        written.result()
        finally:
            if not handed_over:
                self._turns.give_back(key)

    def _submit_write(self, key: str, walked: _Walked, *, log_failure: bool) -> Future[None]:
        """The walk state's write on the writer's thread, which gives the session's turn back when it ends.
        Waits while WRITES_PENDING_MAX others are pending (a store slower than the walks must not make every
        walk of a scheduled round wait in memory)."""
        self._write_room.acquire()
        try:
            with self._lazy_lock:
                if self._writer is None:
                    self._writer = ThreadPoolExecutor(1, thread_name_prefix="walk-writer")
                written = self._writer.submit(self._write_state, walked)
                self._writes.add(written)
        except BaseException:  # the interpreter shutting down
            self._write_room.release()
            raise

        def done(_: Future[None]) -> None:  # a write cancelled by close() too
            with self._lazy_lock:
                self._writes.discard(written)
            if log_failure and not written.cancelled() and written.exception() is not None:
                log.warning("%s: the walk state could not be written (%r); the next refresh walks in full", key,
                            written.exception())
            self._write_room.release()
            self._turns.give_back(key)

        written.add_done_callback(done)
        return written

    def wait_written(self, timeout_s: float | None = None) -> bool:
        """Whether every walk state handed to the writer so far is written (or failed) within `timeout_s`."""
        with self._lazy_lock:
            writes = list(self._writes)
        _, pending = wait(writes, timeout=timeout_s)
        return not pending

    def _walk(self, key: str, project_uid: str, session_uid: str, session: dict[str, Any], project_dir: str,
              *, full: bool | None) -> _Walked:
        """The walk, from the saved state; the walk state marked dirty (cleared, before a full walk's write)."""
        walk_doc, headers = self.store.load_walk(key)
        api_changes = int((walk_doc or {}).get("api_changes") or 0)
        if (walk_doc or {}).get("api_seen") == [api_changes, 0]:  # none then, none registered since
            api: dict[str, list[str]] = {dt: [] for dt in DATATYPES}
        else:  # the registry's API part is read from chunks of every source: costly on a large session
            api = self.store.read_registry(project_uid, session_uid, None, sources=("api",))["api"]
        skip = frozenset(p for paths in api.values() for p in paths)
        sig = self._signature(skip)
        since_full = int((walk_doc or {}).get("since_full") or 0)
        every = self.config.full_refresh_every
        walk_full = (full is True or walk_doc is None or walk_doc.get("sig") != sig or bool(walk_doc.get("dirty"))
                     or (full is None and every > 0 and since_full + 1 >= every))
        saved: dict[str, _Saved] = {}
        previous: dict[str, DirState] = {}
        if not walk_full:
            try:
                for doc in headers:
                    state = walk_docs.state_from_header(doc)
                    previous[state.rel] = state
                    saved[state.rel] = _Saved(doc["_id"], doc["gen"], list(doc["chunks"]))
            except (KeyError, TypeError, ValueError) as exc:  # a header this module did not write as it is
                log.warning("%s %s: a saved walk state cannot be read (%r); walking in full", project_uid,
                            session_uid, exc)
                walk_full, previous, saved = True, {}, {}
        loaded: dict[str, Entries | None] = {}
        lock = threading.Lock()

        def load_entries(state: DirState) -> Entries | None:
            with lock:
                if state.rel in loaded:
                    return loaded[state.rel]
            entry = saved.get(state.rel)
            entries = self._saved_entries(entry.chunk_ids, state.files) if entry is not None else None
            with lock:
                loaded[state.rel] = entries
            return entries

        files.check_session_root(project_dir, session["session_dir"])
        movie_dirs = [] if walk_full else walk_docs.unpack_paths((walk_doc or {}).get("movie_dirs"))
        movie_stamp = movie_dirs_stamp(movie_dirs)
        restat_raw = walk_full or (walk_doc or {}).get("movie_stamp") != movie_stamp
        movie_feed, only_created, movie_changes = self._arm_movie_dirs(movie_dirs,
                                                                       (walk_doc or {}).get("movie_feed"))
        if restat_raw and not walk_full and movie_dirs and only_created and all(
                state.present == state.files for state in previous.values() if state.datatype == "raw"):
            # movies were only added where the links point, and every known link's movie was there: none of
            # them changed (a link whose movie was missing is stat'ed again: its movie may be one of the new)
            restat_raw = False
        movies_now = movie_inodes(movie_dirs) if restat_raw and not walk_full else None
        if movies_now is not None and movie_changes:
            movies_now = movies_now - changed_inodes(movie_changes)
        share = PoolShare(self.pool(), self.config.walk_threads)
        walk = SessionWalk(project_dir, session["session_dir"], self.config.layout, previous=previous,
                           load_entries=load_entries, skip=skip, threads=self.config.walk_threads,
                           restat_raw=restat_raw,
                           movie_inodes=movies_now,
                           feed=self.feed(), pool=share)
        result = walk.run()
        if not walk_full:
            result.movie_dirs |= set(movie_dirs)
        names = self._freeze(result, share) if walk_full else _NameRuns({}, {})
        writer = self.store.begin_walk_write(key, sig)
        if walk_full:  # before the registry's write is in the store: its calls are served one at a time
            self.store.clear_walk(key)
        return _Walked(key=key, project_uid=project_uid, session_uid=session_uid, session=session,
                       project_dir=project_dir, asked_full=full is True, full=walk_full, result=result, names=names,
                       share=share, saved=saved, load_entries=load_entries, api=api,
                       done_after=(0 if walk_full else since_full + 1, api_changes, len(skip)),
                       movie_stamp=movie_stamp, movie_feed=movie_feed, old_movie_dirs=movie_dirs,
                       new_movie_dirs=sorted(result.movie_dirs), writer=writer)

    def _register(self, walked: _Walked) -> tuple[bool, Measured]:
        """The registry brought up to date (False: it changed under this walk, or could not be), and the
        figures, files registered by API measured in."""
        result, api = walked.result, walked.api
        registry_ok = self._update_registry(
            walked.project_uid, walked.session_uid, walked.session, project_dir=walked.project_dir, result=result,
            walk_full=walked.full, load_entries=walked.load_entries, api_raw=api["raw"], rewrite=walked.asked_full,
            names=walked.names)
        totals = result.totals
        for datatype in DATATYPES:  # files registered by API join the measure, each byte once
            if api[datatype]:
                totals[datatype] = self._with_registered(result, datatype, api[datatype], walked.project_dir,
                                                         load_entries=walked.load_entries)
        return registry_ok, Measured(totals, walked.full, result.stats, len(result.dirs), len(result.changed),
                                     result.probed)

    def _write_state(self, walked: _Walked) -> None:
        """On the writer's thread: the walk state sent to the store and marked clean, unless another walk wrote
        meanwhile or began writing since (another livedmd on the same MongoDB)."""
        # movie directories first seen by this walk are armed and checked beside the writes (they read the
        # disk, not the store: after the answer, where they no longer slow it down), and their outcome kept only
        # if the writes end clean
        checked = None if walked.new_movie_dirs == sorted(walked.old_movie_dirs) else self.pool().submit(
            self._arm_new_movie_dirs, walked.result, walked.old_movie_dirs, walked.movie_feed,
            walked.new_movie_dirs, walked.load_entries)
        try:
            if walked.full:
                saved_ok = self._save_all(walked.key, walked.result, walked.names, walked.share)
            else:
                saved_ok = self._save_changes(walked.key, walked.result, saved=walked.saved)
        finally:
            if checked is not None:
                _settled(checked)
        if saved_ok:
            stamp, feed_tokens = walked.movie_stamp, walked.movie_feed
            if checked is not None:
                stamp, feed_tokens = checked.result()
            since_full, api_changes, api_found = walked.done_after
            self.store.finish_walk_write(walked.key, since_full=since_full,
                                         movie_dirs=walk_docs.pack_paths(walked.new_movie_dirs), movie_stamp=stamp,
                                         movie_feed=feed_tokens, api_seen=(api_changes, api_found),
                                         writer=walked.writer)

    def _arm_new_movie_dirs(self, result: WalkResult, old_dirs: list[str], old_tokens: list[str], new_dirs: list[str],
                            load_entries: Callable[[DirState], Entries | None]) -> tuple[str, list[str]]:
        """The stamp and the change feed's tokens of movie directories this walk found anew: armed only now,
        after the walk stat'ed the links, so what changed since the stat is checked here. ("", no tokens):
        a movie went meanwhile, and the next refresh stats the links again."""
        stamp = movie_dirs_stamp(new_dirs)
        since_walk = dict(zip(old_dirs, old_tokens, strict=True))
        tokens, _, changes = self._arm_movie_dirs(new_dirs, [since_walk.get(p, "") for p in new_dirs])
        if not self._movies_still_there(result, new_dirs, changes, load_entries):
            return "", [""] * len(new_dirs)
        return stamp, tokens

    @staticmethod
    def _movies_still_there(result: WalkResult, paths: list[str], changed: dict[str, list[str]],
                            load_entries: Callable[[DirState], Entries | None]) -> bool:
        """Whether every raw link's movie as the walk saw it is still in the movie directories, listed now
        (after their tokens were taken), and not behind a name changed since the walk's own tokens."""
        listed = movie_inodes(paths)
        if listed is None:
            return False
        there = listed - changed_inodes(changed)
        for state in result.dirs.values():
            if state.datatype != "raw" or not state.present:
                continue
            entries = state.entries if state.entries is not None else load_entries(state)
            if entries is None:
                return False
            if entries.keys is None:
                return False  # a present raw link is always keyed: an odd state, looked at again
            keys = zip(entries.keys[0::2], entries.keys[1::2], strict=True)
            for key, ino, size in zip(keys, entries.inos, entries.sizes, strict=True):
                # a file of its own in import_movies (not a link) is keyed by its own inode: not a movie's
                if size >= 0 and key[1] != ino and key != (0, 0) and key not in there:
                    return False
        return True

    def _arm_movie_dirs(self, paths: list[str], tokens: object) -> tuple[list[str], bool, dict[str, list[str]]]:
        """The change feed's tokens for the directories raw links point into (outside the session, where
        movies come and go), and whether since the tokens given (`tokens`, in the order of `paths`) only new
        movies came: then no raw link needs its target stat'ed again, and the movie directories need no
        listing. Armed before the walk looks, as the session's own directories are. Last, per directory whose
        changes since its token are known, the names changed."""
        feed = self.feed()
        if feed is None:
            return [""] * len(paths), False, {}
        saved = tokens if isinstance(tokens, list) and len(tokens) == len(paths) else [""] * len(paths)
        armed: list[str] = []
        changed: dict[str, list[str]] = {}
        only_created = True
        for path, since in zip(paths, saved, strict=True):
            token, created, names = "", False, None
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    st = os.fstat(fd)
                    token, created, names = feed.arm_for_creations(fd, (st.st_dev, st.st_ino),
                                                                   since if isinstance(since, str) else "")
                finally:
                    os.close(fd)
            armed.append(token)
            if names:
                changed[path] = names
            only_created = only_created and created
        return armed, only_created, changed

    def _signature(self, skip: frozenset[str]) -> str:
        """What a walk's states depend on besides the disk: a change walks in full."""
        digest = hashlib.sha256(WALK_FORMAT.encode())
        digest.update(repr(self.config.layout).encode())
        for path in sorted(skip):
            digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
        return digest.hexdigest()

    # --- the scanned registry --------------------------------------------------------------------

    def _update_registry(self, project_uid: str, session_uid: str, session: dict[str, Any], *, project_dir: str,
                         result: WalkResult, walk_full: bool, load_entries: Callable[[DirState], Entries | None],
                         api_raw: list[str], rewrite: bool = False, names: _NameRuns) -> bool:
        """New files are appended to the registry; a file gone or replaced rewrites it whole, and `rewrite`
        (a full refresh someone asked for) always does: it is what repairs a damaged registry document, even
        when the paths are the same. False: the registry changed under this walk, or what the last walk saw
        could not be read (the next refresh walks in full)."""
        forced = rewrite and walk_full
        rewrite = walk_full or bool(result.removed)
        for rel in () if rewrite else result.changed:
            state = result.dirs[rel]
            assert state.entries is not None
            if rel in result.compared:
                before = result.compared[rel]
                # a file went or is another now (another that took its name comes after fresh_from), or what
                # was there is unknown
                if before is None or state.fresh_from < len(before):
                    rewrite = True
                    break
        if rewrite:
            pieces = self._pieces(result, load_entries, names)
            if pieces is None:
                log.warning("%s %s: what the last walk saw could not be read back; the next refresh walks in full",
                            project_uid, session_uid)
                return False
            if forced or session.get("scan_digest") is None:  # written whatever the digest: the store
                # takes the documents while the digest is worked out
                new_gen = self.store.insert_scan(project_uid, session_uid, pieces)
                ok = self.store.swap_scan(project_uid, session_uid, session.get("scan_gen"), new_gen,
                                          digest=scan_digest(pieces))
            else:
                digest = scan_digest(pieces)
                ok = digest == session.get("scan_digest") or self.store.replace_scan(
                    project_uid, session_uid, session.get("scan_gen"), pieces=pieces, digest=digest)
        else:
            added: dict[str, list[str]] = {}
            for rel in result.changed:
                state = result.dirs[rel]
                assert state.entries is not None
                prefix = rel + "/"
                added.setdefault(state.datatype, []).extend(prefix + name
                                                            for name in state.entries.names_from(state.fresh_from))
            ok = self.store.append_scan_paths(project_uid, session_uid, session.get("scan_gen"),
                                              session.get("scan_digest"),
                                              paths_by_datatype={dt: p for dt, p in added.items() if p})
        if ok:  # where the links point (found by the walk's readlinks): no deletion may take a file there. One
            # no link points into any more stays protected until a full walk (or the last link goes).
            linked = result.movie_dirs if result.totals["raw"].registered else set()
            movie_dirs = files.raw_movie_dirs(project_dir, api_raw) | {
                identity for identity in map(_dir_identity, linked) if identity is not None}
            if sorted(movie_dirs) != sorted(session.get("raw_dirs") or ()):
                self.store.set_raw_dirs(project_uid, session_uid, sorted(movie_dirs))
        return ok

    @staticmethod
    def _pieces(result: WalkResult, load_entries: Callable[[DirState], Entries | None],
                names: _NameRuns) -> Pieces | None:
        """The registry's paths of every directory, packed; None when one cannot be read back."""
        pieces: Pieces = {dt: [] for dt in DATATYPES}
        for state in result.dirs.values():
            entries = state.entries if state.entries is not None else load_entries(state)
            if entries is None:
                return None
            runs, packed = names.runs.get(state.rel), names.packed.get(state.rel)
            if runs is None:
                runs = entries.name_blobs(0, walk_docs.ENTRIES_PER_CHUNK)
            prefix = (state.rel + "/").encode(*FS_ENCODING)
            for index, run in enumerate(runs):
                count = min(walk_docs.ENTRIES_PER_CHUNK, len(entries) - index * walk_docs.ENTRIES_PER_CHUNK)
                pieces[state.datatype] += directory_pieces(prefix, run, count, packed[index] if packed else None)
        return pieces

    # --- the saved states ------------------------------------------------------------------------

    @staticmethod
    def _freeze(result: WalkResult, share: PoolShare) -> _NameRuns:
        """After a full walk: every directory's names packed once, in the store's chunks' runs, and each run
        compressed once, for the chunks, the registry and the cache alike (a million names take a tenth of a
        second to encode and as much again to compress)."""
        runs: dict[str, list[bytes]] = {}
        for state in result.dirs.values():
            assert state.entries is not None
            runs[state.rel] = state.entries.name_blobs(0, walk_docs.ENTRIES_PER_CHUNK)
            state.entries = state.entries.frozen(b"\0".join(runs[state.rel]))
        flat = [(rel, run) for rel, rel_runs in runs.items() for run in rel_runs]
        packed: dict[str, list[bytes]] = {rel: [] for rel in runs}
        for (rel, _), zipped in zip(flat, share.map(walk_docs.compressed, (run for _, run in flat)),
                                    strict=True):  # zlib runs without the GIL
            packed[rel].append(zipped)
        return _NameRuns(runs, packed)

    def _save_all(self, key: str, result: WalkResult, names: _NameRuns, share: PoolShare) -> bool:
        """After a full walk: every directory's state anew (the old ones were cleared): the chunks in batches
        as the directories are packed, so that the store writes while the rest are packed, then the headers.
        False: another walk saved some meanwhile (the next refresh walks in full and clears what is left)."""
        headers: list[dict[str, Any]] = []
        batch: list[dict[str, Any]] = []
        batch_bytes = 0

        def pack(state: DirState) -> list[dict[str, Any]]:
            assert state.entries is not None
            return list(walk_docs.chunk_docs(key, state.entries, packed_names=names.packed[state.rel]))

        states = list(result.dirs.values())
        for state, own in zip(states, share.map(pack, states), strict=True):  # zlib runs without the GIL
            assert state.entries is not None
            chunk_ids = [c["_id"] for c in own]
            headers.append(walk_docs.header_doc(key, state, chunk_ids=chunk_ids, gen=uuid.uuid4().hex))
            batch += own
            batch_bytes += sum(walk_docs.packed_bytes(c) for c in own)
            if len(batch) >= SAVE_BATCH_DOCS or batch_bytes >= SAVE_BATCH_BYTES:
                self.store.insert_walk_chunks(batch)
                batch, batch_bytes = [], 0
            self.cache.put(chunk_ids, state.entries)
        self.store.insert_walk_chunks(batch)
        return self.store.insert_walk_headers(headers)

    def _save_changes(self, key: str, result: WalkResult, *, saved: dict[str, _Saved]) -> bool:
        """After an incremental walk: changed directories (new files appended as a chunk of their own where
        nothing else changed), removed ones deleted; unchanged ones are not touched."""
        ok = True
        for rel in result.changed:
            state = result.dirs[rel]
            assert state.entries is not None
            old = saved.get(rel)
            before = result.compared.get(rel)
            appending = (old is not None and before is not None and not state.restated
                         and state.fresh_from == len(before)
                         and len(old.chunk_ids) < MAX_CHUNKS_PER_DIR)
            new_chunks = list(walk_docs.chunk_docs(key, state.entries, start=state.fresh_from if appending else 0))
            self.store.insert_walk_chunks(new_chunks)
            kept = old.chunk_ids if appending and old is not None else []
            header = walk_docs.header_doc(key, state, chunk_ids=kept + [c["_id"] for c in new_chunks],
                                          gen=uuid.uuid4().hex)
            if self.store.replace_walk_dir(header, expect_gen=old.gen if old is not None else None):
                self.cache.put(header["chunks"], state.entries)
                if old is not None and not appending:
                    self.store.delete_walk_chunks(old.chunk_ids)
            else:
                self.store.delete_walk_chunks([c["_id"] for c in new_chunks])
                ok = False
        for state in result.removed:
            old = saved[state.rel]
            if self.store.delete_walk_dir(old.header_id, expect_gen=old.gen):
                self.store.delete_walk_chunks(old.chunk_ids)
            else:
                ok = False
        return ok

    # --- files registered by API -----------------------------------------------------------------

    @staticmethod
    def _with_registered(result: WalkResult, datatype: str, rel_paths: list[str], project_dir: str,
                         *, load_entries: Callable[[DirState], Entries | None]) -> Totals:
        """The category's totals with its files registered by API measured in; a byte already counted in
        the walk (a raw movie linked both ways) is not counted again."""
        walked = result.totals[datatype]
        tally = files.Tally()
        for state in result.dirs.values():
            entries = state.entries if state.entries is not None else load_entries(state)
            if state.datatype == datatype and state.keyed and entries is not None:
                tally.seen.update(k for k in map(entries.key, range(len(entries))) if k is not None)
        files.add_registered(tally, project_dir, rel_paths, follow_links=datatype == "raw")
        return Totals(walked.registered + tally.registered, walked.present + tally.present, walked.size + tally.size)
