"""Walking a session directory by directory, in parallel, re-reading only what changed since the last walk.

A walk keeps, per directory, what it saw (`DirState`): the directory's identity and times, its subdirectories
and its files (names, inode numbers, sizes). The next walk opens every directory once; one whose inode,
mtime and ctime are unchanged has the same entries (adding, removing or renaming an entry changes the
directory's mtime and ctime, and ctime cannot be set back by anyone but root), so it is reused without
listing it or stat'ing its files. A changed directory is listed, and only its entries that are new, or that
are another file under an old name (another inode), are stat'ed. What only a full walk sees: a file
rewritten in place (same inode, new size), and a raw movie that changed or vanished behind an unchanged
link. Callers make every Nth scheduled refresh full for that.

With a change feed (change_feed.py), a changed directory the feed has followed since it was last listed is
not listed again: only the names the kernel reported changed are looked up. Anything but new files there (a
known file gone or replaced) lists it after all, as above.

Everything here blocks on the disk and holds no store: callers load and save the states.
"""

from __future__ import annotations

import errno
import operator
import os
import stat
import sys
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import chain, compress, repeat

from . import _dirstat
from .change_feed import ChangeFeed
from .domain import DATATYPES
from .pool_share import PoolShare

Layout = Sequence[tuple[str, str]]
_NO_KEY = (0, 0)
FS_ENCODING = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())

STAT_BATCH = 2000  # names stat'ed per task: large enough to amortise a task, small enough to spread a flat dir
DIRS_PER_ROUND = 256  # directories held open at once


class Entries:
    """The files of one directory, in parallel arrays. A size of -1: listed but not there to measure (a
    broken raw link, a file gone between listing and stat). `keys` holds (dev, ino) pairs of the bytes
    that may be counted elsewhere too (raw targets, hard links), (0, 0) for the others; None: none such.
    Names read back from the store stay packed (NUL-separated bytes of the file system's encoding) until
    something needs them all as str: comparing a directory with its listing and adding new files do not."""

    def __init__(self, names: list[str] | None = None, inos: array | None = None, sizes: array | None = None,
                 keys: array | None = None, *, packed_names: bytes = b"", packed_count: int = 0) -> None:
        self._packed, self._packed_count = packed_names, packed_count  # the first names, packed
        self._tail = names if names is not None else []  # the rest
        self.inos = inos if inos is not None else array("Q")
        self.sizes = sizes if sizes is not None else array("q")
        self.keys = keys

    @property
    def names(self) -> list[str]:
        if self._packed_count:
            self._tail[:0] = self._packed.decode(*FS_ENCODING).split("\0")
            self._packed, self._packed_count = b"", 0
        return self._tail

    def names_from(self, start: int) -> list[str]:
        """names[start:], without unpacking the names before `start` if they are still packed."""
        if start >= self._packed_count:
            return self._tail[start - self._packed_count:]
        return self.names[start:]

    def packed_names(self) -> bytes:
        """All names NUL-separated, as bytes of the file system's encoding."""
        if not self._tail:
            return self._packed
        tail = "\0".join(self._tail).encode(*FS_ENCODING)
        return self._packed + b"\0" + tail if self._packed_count else tail

    def packed_names_from(self, start: int) -> bytes:
        """names[start:] NUL-separated, as bytes of the file system's encoding."""
        if start == 0:
            return self.packed_names()
        if start >= self._packed_count:
            return "\0".join(self._tail[start - self._packed_count:]).encode(*FS_ENCODING)
        return "\0".join(self.names[start:]).encode(*FS_ENCODING)

    def name_blobs(self, start: int, per_blob: int) -> list[bytes]:
        """names[start:] packed in runs of `per_blob` names, as the store's chunks hold them."""
        if start >= self._packed_count:  # from the str names: each run encoded by itself
            tail, first = self._tail, start - self._packed_count
            return ["\0".join(tail[at:at + per_blob]).encode(*FS_ENCODING) for at in range(first, len(tail), per_blob)]
        names = self.packed_names_from(start).split(b"\0")
        return [b"\0".join(names[at:at + per_blob]) for at in range(0, len(names), per_blob)]

    def frozen(self, packed_names: bytes | None = None) -> Entries:
        """A copy with every name packed (one bytes object, not a str per file); `packed_names`: already
        worked out by the caller."""
        return Entries(None, array("Q", self.inos), array("q", self.sizes),
                       None if self.keys is None else array("Q", self.keys),
                       packed_names=self.packed_names() if packed_names is None else packed_names,
                       packed_count=len(self))

    def __len__(self) -> int:
        return len(self.sizes)

    def copy(self) -> Entries:
        return Entries(list(self._tail), array("Q", self.inos), array("q", self.sizes),
                       None if self.keys is None else array("Q", self.keys), packed_names=self._packed,
                       packed_count=self._packed_count)

    def extend(self, names: list[str], inos: array, sizes: array, keys: array | None) -> None:
        """More files, from packed arrays (keys: (dev, ino) pairs, None when all are (0, 0))."""
        if self.keys is None and keys is not None:
            self.keys = array("Q", bytes(16 * len(self)))
        self._tail.extend(names)
        self.inos.extend(inos)
        self.sizes.extend(sizes)
        if self.keys is not None:
            self.keys.extend(keys if keys is not None else array("Q", bytes(16 * len(names))))

    def key(self, index: int) -> tuple[int, int] | None:
        if self.keys is None or (self.keys[2 * index] == 0 and self.keys[2 * index + 1] == 0):
            return None
        return self.keys[2 * index], self.keys[2 * index + 1]


@dataclass
class DirState:
    """What a walk saw of one directory: identity and times, subdirectories, and its files' totals
    (`entries` may be left unloaded when the directory is reused)."""

    rel: str  # relative to the project dir
    datatype: str
    ino: int
    mtime_ns: int
    ctime_ns: int
    subdirs: list[str]
    files: int = 0
    present: int = 0
    plain_bytes: int = 0  # files counted by themselves
    keyed_bytes: int = 0  # files that may repeat: each (dev, ino) once within this directory
    keyed: bool = False
    entries: Entries | None = None
    fresh_from: int = 0  # entries before this index were known from the last walk; the rest are new
    restated: bool = False  # known entries were stat'ed again (their sizes may differ from the saved ones)
    feed: str = ""  # the change feed's token from when this directory was last listed ("": none)

    def same_directory(self, st: os.stat_result) -> bool:
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns) == (self.ino, self.mtime_ns, self.ctime_ns)

    def total_up(self) -> None:
        assert self.entries is not None
        entries = self.entries
        missing, self.plain_bytes, self.keyed_bytes, keyed_files = _dirstat.tally(  # each (dev, ino) once
            entries.sizes, entries.keys)
        self.files = len(entries)
        self.present = self.files - missing
        self.keyed = keyed_files > 0


@dataclass
class Totals:
    """One category: its registry paths (`registered`), how many exist (`present`) and their bytes (like
    `du -b`: each file, or raw link's target, once)."""

    registered: int = 0
    present: int = 0
    size: int = 0


@dataclass
class WalkResult:
    dirs: dict[str, DirState]
    changed: list[str]  # directories listed again (new ones included)
    removed: list[DirState]  # directories of the last walk that are gone
    totals: dict[str, Totals]
    stats: int = 0  # files stat'ed: what this walk cost beyond listing
    probed: int = 0  # changed directories not listed: the change feed said which names to look at
    compared: dict[str, Entries | None] = field(default_factory=dict)  # changed dir: what it held before, if known
    movie_dirs: set[str] = field(default_factory=set)  # where the raw links stat'ed point into


def datatype_of(top_dir: str, layout: Layout) -> str:
    for directory, datatype in layout:
        if top_dir == directory:
            return datatype
    return "metadata"


# bytes.translate tables over list_dir's kinds: one byte per entry, nonzero where it is of that kind
_DIR_MASK = bytes(1 if i == ord("d") else 0 for i in range(256))
_FILE_MASK = bytes(0 if i == ord("d") else 1 for i in range(256))
_LINK_MASK = bytes(1 if i == ord("l") else 0 for i in range(256))
_KIND_DIR = ord("d")


def _stat_batch(dir_fd: int, dir_path: str, names: list[str], follow: bytes,
                raw: bool) -> tuple[array, array | None, set[str]]:
    """Sizes (-1: not there) and keys ((dev, ino) pairs, (0, 0): counted by itself; None: none keyed) of the
    names, and the directories followed links point into. A followed link counts its target's size if that
    is a regular file. Raw files are always keyed (links often share a movie); others only when hard-linked."""
    size_bytes, key_bytes, targets = _dirstat.stat_names(dir_fd, names, follow, raw)
    sizes = array("q")
    sizes.frombytes(size_bytes)
    keys: array | None = None
    if key_bytes.count(0) != len(key_bytes):
        keys = array("Q")
        keys.frombytes(key_bytes)
    return sizes, keys, _link_dirs(dir_path, targets)


def _link_dirs(dir_path: str, targets: list[str | None]) -> set[str]:
    """The directories that links in `dir_path` with these texts point into; each distinct one worked out once
    (a session's links mostly share one movie directory)."""
    heads: set[str] = set()
    odd: list[str] = []
    for target in targets:
        if target is None:
            continue
        head, _, tail = target.rpartition("/")
        if tail in ("", ".", ".."):
            odd.append(target)
        else:
            heads.add(head or ("/" if target.startswith("/") else "."))
    found = {_as_the_kernel_reads(os.path.join(dir_path, head)) for head in heads}
    found.update(os.path.dirname(os.path.normpath(os.path.join(dir_path, target))) for target in odd)
    return found


def _as_the_kernel_reads(path: str) -> str:
    """The path tidied where that cannot change where it leads: a '..' is left in place, for the kernel takes it
    after following whatever link comes before it (`hop/../m` with `hop` a link is not `m`)."""
    return path if ".." in path.split("/") else os.path.normpath(path)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GONE = frozenset((errno.ENOENT, errno.ENOTDIR, errno.ELOOP))  # opening a directory: gone, or now a link or file


def _parent_of(dir_fd: int) -> tuple[int, int] | None:
    """(dev, inode) of the directory that holds an open directory now; None when it cannot be told."""
    try:
        st = os.stat("..", dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass
class _Listed:
    rel: str
    datatype: str
    fd: int
    state: DirState
    # to stat, known ones first: names, their inode numbers, and a nonzero byte for links to follow
    pending: list[str] = field(default_factory=list)
    pending_inos: array = field(default_factory=lambda: array("Q"))
    pending_follow: bytes = b""
    known_pending: int = 0  # of those, how many the last walk saw (stat'ed again: raw targets)
    reused: bool = False
    before: Entries | None = None  # what the last walk saw here
    identity: tuple[int, int] = (0, 0)  # (dev, inode) of the directory opened: its subdirectories' parent


class SessionWalk:
    """One walk of one session. `previous` is what the last walk saw (empty: walk and stat everything);
    `load_entries` fetches a reused directory's files when they are needed (to compare, to de-duplicate
    across directories, or to list removed paths)."""

    def __init__(self, project_dir: str, session_dir: str, layout: Layout, *, previous: dict[str, DirState],
                 load_entries: Callable[[DirState], Entries | None], skip: frozenset[str] = frozenset(),
                 threads: int = 1, restat_raw: bool = True,
                 movie_inodes: frozenset[tuple[int, int]] | None = None, feed: ChangeFeed | None = None,
                 pool: ThreadPoolExecutor | PoolShare | None = None) -> None:
        self.project_dir = project_dir
        self.session_dir = session_dir
        self.layout = layout
        self.previous = previous
        self.load_entries = load_entries
        self.skip = skip
        self.threads = max(1, threads)
        self.stats = 0
        self.compared: dict[str, Entries | None] = {}
        self.restat_raw = restat_raw  # raw targets live outside the session: its directories' times say nothing
        self.movie_dirs: set[str] = set()
        # with restat_raw: the (dev, inode) of every file now in the movie directories; a known link whose
        # target is among them keeps its size, the others are stat'ed again (None: all are)
        self.movie_inodes = movie_inodes
        self.feed = feed
        self.probed = 0
        self.pool = pool  # the caller's (its share of the walk pool), or None: one of `threads` for this walk

    def run(self) -> WalkResult:
        dirs: dict[str, DirState] = {}
        changed: list[str] = []
        root = os.path.join(self.project_dir, self.session_dir)
        try:
            root_is_dir = stat.S_ISDIR(os.lstat(root).st_mode)  # a session dir swapped for a link is not walked
        except OSError:
            root_is_dir = False
        if root_is_dir:
            with nullcontext(self.pool) if self.pool is not None else ThreadPoolExecutor(
                    self.threads, thread_name_prefix="walk") as pool:
                level: list[tuple[str, str, tuple[int, int] | None]] = [(self.session_dir, "metadata", None)]
                while level:
                    next_level: list[tuple[str, str, tuple[int, int] | None]] = []
                    for start in range(0, len(level), DIRS_PER_ROUND):
                        for state, was_changed, identity in self._round(pool, level[start:start + DIRS_PER_ROUND]):
                            dirs[state.rel] = state
                            if was_changed:
                                changed.append(state.rel)
                            top = state.rel == self.session_dir
                            next_level += [(f"{state.rel}/{name}",
                                            datatype_of(name, self.layout) if top else state.datatype, identity)
                                           for name in state.subdirs]
                    level = next_level
        removed = [state for rel, state in self.previous.items() if rel not in dirs]
        return WalkResult(dirs, changed, removed, self._totals(dirs), self.stats, self.probed, self.compared,
                          self.movie_dirs)

    def _round(self, pool: ThreadPoolExecutor | PoolShare, batch: list[tuple[str, str, tuple[int, int] | None]]
               ) -> Iterator[tuple[DirState, bool, tuple[int, int]]]:
        """List a batch of directories and stat their files, each directory's stats queued as soon as it is
        listed and each one totalled as soon as they are done, so the threads do not wait for the slowest
        listing or for the totalling. Yielded in the batch's order (the registry's order stays the same)."""
        listings = [pool.submit(self._list, *d) for d in batch]
        listed: list[_Listed] = []
        pending: dict[Future[tuple[array, array | None, set[str]]], tuple[_Listed, int]] = {}
        measured: dict[str, list[tuple[array, array | None] | None]] = {}
        failure: BaseException | None = None
        try:
            for future in as_completed(listings):
                try:
                    item = future.result()
                except BaseException as exc:  # the others' descriptors are closed below all the same
                    failure = failure or exc
                    continue
                if item is None:
                    continue
                listed.append(item)
                if failure is not None or item.reused:
                    continue
                parts = range(0, len(item.pending), STAT_BATCH)
                measured[item.rel] = [None] * len(parts)
                for index, start in enumerate(parts):
                    end = start + STAT_BATCH
                    pending[pool.submit(_stat_batch, item.fd, os.path.join(self.project_dir, item.rel),
                                        item.pending[start:end], item.pending_follow[start:end],
                                        item.datatype == "raw")] = (item, index)
                if not parts:
                    self._finish(item, [])
            if failure is not None:
                raise failure
            for measuring in as_completed(pending):
                item, index = pending[measuring]
                sizes, keys, movie_dirs = measuring.result()
                self.movie_dirs |= movie_dirs
                parts_done = measured[item.rel]
                parts_done[index] = (sizes, keys)
                if all(part is not None for part in parts_done):
                    self._finish(item, [part for part in parts_done if part is not None])
        finally:
            for measuring in pending:
                measuring.cancel()
            wait(pending)
            for item in listed:
                os.close(item.fd)
        by_rel = {item.rel: item for item in listed}
        for rel, _, _ in batch:
            item = by_rel.get(rel)
            if item is not None:
                yield item.state, not item.reused, item.identity

    def _finish(self, item: _Listed, parts: list[tuple[array, array | None]]) -> None:
        """A listed directory's entries and totals, once its files are stat'ed."""
        entries = item.state.entries
        assert entries is not None
        item.state.fresh_from = len(entries) + item.known_pending
        start = 0
        for sizes, keys in parts:
            entries.extend(item.pending[start:start + len(sizes)],
                                  item.pending_inos[start:start + len(sizes)], sizes, keys)
            start += len(sizes)
        self.stats += len(item.pending)
        item.state.total_up()
        if item.rel in self.previous:
            self.compared[item.rel] = item.before

    def _list(self, rel: str, datatype: str, parent: tuple[int, int] | None) -> _Listed | None:
        """Open a directory (never through a symlink); reuse it if unchanged, else list it and note which of
        its files need a stat. `parent`: the (dev, inode) of the directory that was opened as its parent."""
        try:
            fd = self._open_dir(rel)
        except OSError as exc:
            if exc.errno in _GONE:
                return None  # gone since its parent was listed, or swapped for a link
            raise  # there but not readable (EACCES, EIO): not a directory gone, whose files would go unsaid
        try:
            st = os.fstat(fd)
            if parent is not None and _parent_of(fd) != parent:
                # O_NOFOLLOW guards the last component only: an ancestor swapped for a symlink since it was
                # opened leads the path elsewhere (out of the session). Not walked, as a directory gone.
                os.close(fd)
                return None
            previous = self.previous.get(rel)
            raw = datatype == "raw"
            if previous is not None and previous.datatype == datatype and previous.same_directory(st) and not (
                    raw and self.restat_raw):
                return _Listed(rel, datatype, fd, previous, reused=True, identity=(st.st_dev, st.st_ino))
            before = self._before(previous)
            state = DirState(rel, datatype, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, [], entries=Entries())
            identity = (st.st_dev, st.st_ino)
            changed_names = None
            if self.feed is not None:  # before looking: a change from here on is the next walk's
                state.feed, changed_names = self.feed.arm(fd, identity, previous.feed if previous is not None else "")
            try:
                if before is not None:
                    assert previous is not None
                    probed = None if changed_names is None else self._probe(
                        rel, datatype, fd, state, before, previous, changed_names)
                    listed = probed or self._compare(rel, datatype, fd, state, before)
                    listed.identity = identity
                    return listed
                names, ino_bytes, kinds = _dirstat.list_dir(fd)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, os.path.join(self.project_dir, rel)) from None
            inos = array("Q")
            inos.frombytes(ino_bytes)
            state.subdirs = list(compress(names, kinds.translate(_DIR_MASK)))
            is_file = kinds.translate(_FILE_MASK)
            files, file_inos = list(compress(names, is_file)), array("Q", compress(inos, is_file))
            follow = bytes(compress(kinds.translate(_LINK_MASK), is_file)) if raw else bytes(len(files))
            files, file_inos, follow = self._unskipped(rel, files, file_inos, follow)
            return _Listed(rel, datatype, fd, state, files, file_inos, follow,  # nothing known: all are stat'ed
                           identity=identity)
        except BaseException:
            os.close(fd)
            raise

    def _open_dir(self, rel: str) -> int:
        """A directory of the session, opened by its whole path; one deeper than PATH_MAX allows (where a user
        could hide data from the measure and from deletion), one name at a time from the project dir."""
        try:
            return os.open(os.path.join(self.project_dir, rel), _DIR_FLAGS)
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
        fd = os.open(self.project_dir, _DIR_FLAGS & ~os.O_NOFOLLOW)  # as the whole path would have opened it
        try:
            for name in rel.split("/"):
                inner = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _unskipped(self, rel: str, files: list[str], inos: array, follow: bytes) -> tuple[list[str], array, bytes]:
        """Without the files registered by API (measured apart)."""
        if not self.skip:
            return files, inos, follow
        prefix = rel + "/"
        kept = bytes(prefix + name not in self.skip for name in files)
        return list(compress(files, kept)), array("Q", compress(inos, kept)), bytes(compress(follow, kept))

    def _compare(self, rel: str, datatype: str, fd: int, state: DirState, before: Entries) -> _Listed:
        """A changed directory the last walk saw, listed against what it held (in C: a Live directory holds
        hundreds of thousands of files, few of them new). Known files keep their sizes (a raw link only while
        its movie is still there); new ones, and known names that are now another file, are stat'ed."""
        raw = datatype == "raw"
        state.subdirs, present, fresh, fresh_ino_bytes, fresh_kinds = _dirstat.diff_dir(
            fd, before.packed_names(), before.inos.tobytes())
        fresh_inos = array("Q")
        fresh_inos.frombytes(fresh_ino_bytes)
        follow = fresh_kinds.translate(_LINK_MASK) if raw else bytes(len(fresh))
        fresh, fresh_inos, follow = self._unskipped(rel, fresh, fresh_inos, follow)
        keep = present
        if raw and self.restat_raw:  # a known link keeps its size only while its movie is still there
            movies = self.movie_inodes if self.movie_inodes is not None else frozenset()
            old_keys = zip(before.keys[0::2], before.keys[1::2], strict=True) if before.keys is not None else repeat(
                _NO_KEY, len(before))
            keep = bytes(map(operator.and_, map(bool, present), map(movies.__contains__, old_keys)))
        if keep.count(0) == 0:  # every known file is still there, as it was
            state.entries = before.copy()
            return _Listed(rel, datatype, fd, state, fresh, fresh_inos, follow, before=before)
        state.entries = Entries(list(compress(before.names, keep)), array("Q", compress(before.inos, keep)),
                                array("q", compress(before.sizes, keep)), None if before.keys is None else array(
                                    "Q", chain.from_iterable(compress(zip(before.keys[0::2], before.keys[1::2],
                                                                          strict=True), keep))))
        # stat'ed again: known files still there whose movie is gone; they come first, then the fresh ones
        again_mask = bytes(bool(p) and not k for p, k in zip(present, keep, strict=True))
        again = list(compress(before.names, again_mask))
        state.restated = bool(again)
        pending_inos = array("Q", compress(before.inos, again_mask))
        pending_inos.extend(fresh_inos)
        pending_follow = bytes(compress(present, again_mask)).translate(_LINK_MASK) + follow
        return _Listed(rel, datatype, fd, state, again + fresh, pending_inos, pending_follow,
                       known_pending=len(again), before=before)

    def _probe(self, rel: str, datatype: str, fd: int, state: DirState, before: Entries, previous: DirState,
               names: list[str]) -> _Listed | None:
        """A changed directory the last walk saw, from just the names the change feed reports changed since
        then. Only new files (and subdirectories come or gone) are taken this way; None when a known file is
        gone or another now, or a raw link's movie must be stat'ed again (then the directory is listed)."""
        raw = datatype == "raw"
        if raw and self.restat_raw:  # as in _compare: a known link keeps its size only while its movie is there
            movies = self.movie_inodes if self.movie_inodes is not None else frozenset()
            if before.keys is None or not all(map(movies.__contains__, zip(before.keys[0::2], before.keys[1::2],
                                                                           strict=True))):
                return None
        index_bytes, ino_bytes, kinds = _dirstat.probe_names(fd, before.packed_names(), before.inos.tobytes(), names)
        indexes, inos = array("q"), array("Q")
        indexes.frombytes(index_bytes)
        inos.frombytes(ino_bytes)
        subdirs = dict.fromkeys(previous.subdirs)
        fresh: list[str] = []
        fresh_inos = array("Q")
        fresh_kinds = bytearray()
        again: dict[int, tuple[str, int]] = {}  # known index: name, kind
        for name, index, ino, kind in zip(names, indexes, inos, kinds, strict=True):
            if index >= 0:
                if kind in (0, _KIND_DIR) or ino != before.inos[index]:
                    return None
                # the same inode number: renamed away and back, or deleted and another file given the freed
                # number (ext4 does at once), which a listing cannot tell apart; the feed can, so it is stat'ed
                again[index] = (name, kind)
                continue
            if kind == _KIND_DIR:
                subdirs[name] = None
                continue
            subdirs.pop(name, None)
            if kind:
                fresh.append(name)
                fresh_inos.append(ino)
                fresh_kinds.append(kind)
        state.subdirs = list(subdirs)
        follow = bytes(fresh_kinds).translate(_LINK_MASK) if raw else bytes(len(fresh))
        fresh, fresh_inos, follow = self._unskipped(rel, fresh, fresh_inos, follow)
        self.probed += 1
        if not again:
            state.entries = before.copy()
            return _Listed(rel, datatype, fd, state, fresh, fresh_inos, follow, before=before)
        keep = bytes(index not in again for index in range(len(before)))  # as _compare: the others first
        state.entries = Entries(list(compress(before.names, keep)), array("Q", compress(before.inos, keep)),
                                array("q", compress(before.sizes, keep)), None if before.keys is None else array(
                                    "Q", chain.from_iterable(compress(zip(before.keys[0::2], before.keys[1::2],
                                                                          strict=True), keep))))
        state.restated = True
        again_names = [name for name, _ in again.values()]
        pending_inos = array("Q", (before.inos[index] for index in again))
        pending_inos.extend(fresh_inos)
        again_follow = bytes(kind for _, kind in again.values()).translate(_LINK_MASK) if raw else bytes(len(again))
        return _Listed(rel, datatype, fd, state, again_names + fresh, pending_inos, again_follow + follow,
                       known_pending=len(again), before=before)

    def _before(self, previous: DirState | None) -> Entries | None:
        if previous is None:
            return None
        return previous.entries if previous.entries is not None else self.load_entries(previous)

    def _totals(self, dirs: dict[str, DirState]) -> dict[str, Totals]:
        totals = {dt: Totals() for dt in DATATYPES}
        keyed_dirs: dict[str, list[DirState]] = {dt: [] for dt in DATATYPES}
        for state in dirs.values():
            t = totals[state.datatype]
            t.registered += state.files
            t.present += state.present
            t.size += state.plain_bytes
            if state.keyed:
                keyed_dirs[state.datatype].append(state)
        for datatype, keyed in keyed_dirs.items():
            if len(keyed) == 1:
                totals[datatype].size += keyed[0].keyed_bytes
            elif keyed:  # the same bytes may sit in several directories: each (dev, ino) once
                totals[datatype].size += _unique_keyed_bytes(keyed, self.load_entries)
        return totals


def _unique_keyed_bytes(states: list[DirState], load_entries: Callable[[DirState], Entries | None]) -> int:
    by_key: dict[tuple[int, int], int] = {}
    unknown = 0
    for state in states:
        entries = state.entries if state.entries is not None else load_entries(state)
        if entries is None or entries.keys is None:
            unknown += state.keyed_bytes  # cannot be compared: counted as the directory counted it
            continue
        pairs = zip(entries.keys[0::2], entries.keys[1::2], strict=True)
        by_key.update((pair, size) for pair, size in zip(pairs, entries.sizes, strict=True)
                      if size >= 0 and pair != _NO_KEY)
    return unknown + sum(by_key.values())


def paths_of(state: DirState, entries: Entries) -> list[str]:
    prefix = state.rel + "/"
    return [prefix + name for name in entries.names]
