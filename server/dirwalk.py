"""Walking a session directory by directory, in parallel, re-reading only what changed since the last walk.

A walk keeps, per directory, what it saw (`DirState`): the directory's identity and times, its subdirectories
and its files (names, inode numbers, sizes). The next walk opens every directory once; one whose inode,
mtime and ctime are unchanged has the same entries (adding, removing or renaming an entry changes the
directory's mtime and ctime, and ctime cannot be set back by anyone but root), so it is reused without
listing it or stat'ing its files. A changed directory is listed, and only its entries that are new, or that
are another file under an old name (another inode), are stat'ed. What only a full walk sees: a file
rewritten in place (same inode, new size), and a raw movie that changed or vanished behind an unchanged
link. Callers make every Nth scheduled refresh full for that.

Everything here blocks on the disk and holds no store: callers load and save the states.
"""

from __future__ import annotations

import os
import stat
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat

from .domain import DATATYPES

Layout = Sequence[tuple[str, str]]
STAT_BATCH = 2000  # names stat'ed per task: large enough to amortise a task, small enough to spread a flat dir
DIRS_PER_ROUND = 256  # directories held open at once


@dataclass
class Entries:
    """The files of one directory, in parallel arrays. A size of -1: listed but not there to measure (a
    broken raw link, a file gone between listing and stat). `keys` holds (dev, ino) pairs of the bytes
    that may be counted elsewhere too (raw targets, hard links), (0, 0) for the others; None: none such."""

    names: list[str] = field(default_factory=list)
    inos: array = field(default_factory=lambda: array("Q"))
    sizes: array = field(default_factory=lambda: array("q"))
    keys: array | None = None

    def __len__(self) -> int:
        return len(self.names)

    def key(self, index: int) -> tuple[int, int] | None:
        if self.keys is None or (self.keys[2 * index] == 0 and self.keys[2 * index + 1] == 0):
            return None
        return self.keys[2 * index], self.keys[2 * index + 1]

    def extend(self, names: list[str], inos: list[int], sizes: list[int], keys: list[tuple[int, int] | None]) -> None:
        if self.keys is None and any(key is not None for key in keys):
            self.keys = array("Q", bytes(16 * len(self.names)))
        self.names += names
        self.inos.extend(inos)
        self.sizes.extend(sizes)
        if self.keys is not None:
            self.keys.extend([part for key in keys for part in (key or (0, 0))])

    def known(self) -> dict[str, tuple[int, int, tuple[int, int] | None]]:
        """{name: (inode, size, key)}."""
        keys: Iterable[tuple[int, int] | None] = repeat(None)
        if self.keys is not None:
            keys = (None if key == (0, 0) else key for key in zip(self.keys[0::2], self.keys[1::2], strict=True))
        return dict(zip(self.names, zip(self.inos, self.sizes, keys, strict=False), strict=True))


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

    def same_directory(self, st: os.stat_result) -> bool:
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns) == (self.ino, self.mtime_ns, self.ctime_ns)

    def total_up(self) -> None:
        assert self.entries is not None
        entries = self.entries
        missing = entries.sizes.count(-1)
        self.files = len(entries)
        self.present = self.files - missing
        self.plain_bytes = self.keyed_bytes = 0
        if entries.keys is None:  # nothing counted elsewhere too: a sum in C
            self.plain_bytes = sum(entries.sizes) + missing
            self.keyed = False
            return
        self.present = 0
        seen: set[tuple[int, int]] = set()
        for index, size in enumerate(entries.sizes):
            if size < 0:
                continue
            self.present += 1
            key = entries.key(index)
            if key is None:
                self.plain_bytes += size
            elif key not in seen:
                seen.add(key)
                self.keyed_bytes += size
        self.keyed = bool(seen)


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
    compared: dict[str, Entries | None] = field(default_factory=dict)  # changed dir: what it held before, if known
    movie_dirs: set[str] = field(default_factory=set)  # where the raw links stat'ed point into


def datatype_of(top_dir: str, layout: Layout) -> str:
    for directory, datatype in layout:
        if top_dir == directory:
            return datatype
    return "metadata"


def _target_stat(name: str, dir_fd: int) -> os.stat_result | None:
    """A raw file counts with its symlink target's size; a link to a directory or nothing counts 0."""
    try:
        st = os.stat(name, dir_fd=dir_fd)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _stat_batch(dir_fd: int, dir_path: str, names: list[str], follow_links: list[bool],
                raw: bool) -> tuple[list[int], list[tuple[int, int] | None], set[str]]:
    """Sizes (-1: not there) and keys (None: counted by itself) of the names, and the directories followed
    links point into. Raw files are always keyed (links often share a movie); others only when hard-linked."""
    sizes: list[int] = []
    keys: list[tuple[int, int] | None] = []
    movie_dirs: set[str] = set()
    for name, follow in zip(names, follow_links, strict=True):
        try:
            if follow:
                movie_dirs.add(os.path.dirname(os.path.normpath(os.path.join(dir_path, os.readlink(
                    name, dir_fd=dir_fd)))))
            st = _target_stat(name, dir_fd) if follow else os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            st = None
        if st is None:
            sizes.append(-1)
            keys.append(None)
        else:
            sizes.append(st.st_size)
            keys.append((st.st_dev, st.st_ino) if raw or st.st_nlink > 1 else None)
    return sizes, keys, movie_dirs


@dataclass
class _Listed:
    rel: str
    datatype: str
    fd: int
    state: DirState
    pending: list[tuple[str, int, bool]]  # (name, d_ino, follow the link) to stat; known ones first
    known_pending: int = 0  # of those, how many the last walk saw (stat'ed again: raw targets)
    reused: bool = False
    before: Entries | None = None  # what the last walk saw here


class SessionWalk:
    """One walk of one session. `previous` is what the last walk saw (empty: walk and stat everything);
    `load_entries` fetches a reused directory's files when they are needed (to compare, to de-duplicate
    across directories, or to list removed paths)."""

    def __init__(self, project_dir: str, session_dir: str, layout: Layout, *, previous: dict[str, DirState],
                 load_entries: Callable[[DirState], Entries | None], skip: frozenset[str] = frozenset(),
                 threads: int = 1, restat_raw: bool = True,
                 movie_inodes: frozenset[tuple[int, int]] | None = None) -> None:
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

    def run(self) -> WalkResult:
        dirs: dict[str, DirState] = {}
        changed: list[str] = []
        root = os.path.join(self.project_dir, self.session_dir)
        try:
            root_is_dir = stat.S_ISDIR(os.lstat(root).st_mode)  # a session dir swapped for a link is not walked
        except OSError:
            root_is_dir = False
        if root_is_dir:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="walk") as pool:
                level = [(self.session_dir, "metadata")]
                while level:
                    next_level: list[tuple[str, str]] = []
                    for start in range(0, len(level), DIRS_PER_ROUND):
                        for state, was_changed in self._round(pool, level[start:start + DIRS_PER_ROUND]):
                            dirs[state.rel] = state
                            if was_changed:
                                changed.append(state.rel)
                            top = state.rel == self.session_dir
                            next_level += [(f"{state.rel}/{name}",
                                            datatype_of(name, self.layout) if top else state.datatype)
                                           for name in state.subdirs]
                    level = next_level
        removed = [state for rel, state in self.previous.items() if rel not in dirs]
        return WalkResult(dirs, changed, removed, self._totals(dirs), self.stats, self.compared, self.movie_dirs)

    def _round(self, pool: ThreadPoolExecutor, batch: list[tuple[str, str]]) -> Iterator[tuple[DirState, bool]]:
        listed = [item for item in pool.map(lambda d: self._list(*d), batch) if item is not None]
        try:
            jobs = []
            for item in listed:
                for start in range(0, len(item.pending), STAT_BATCH):
                    part = item.pending[start:start + STAT_BATCH]
                    jobs.append((item, part, pool.submit(
                        _stat_batch, item.fd, os.path.join(self.project_dir, item.rel), [p[0] for p in part],
                        [p[2] for p in part], item.datatype == "raw")))
            measured: dict[str, tuple[list[int], list[tuple[int, int] | None]]] = {}
            for item, _, future in jobs:
                sizes, keys, movie_dirs = future.result()
                columns = measured.setdefault(item.rel, ([], []))
                columns[0].extend(sizes)
                columns[1].extend(keys)
                self.movie_dirs |= movie_dirs
        finally:
            for item in listed:
                os.close(item.fd)
        for item in listed:
            if item.reused:
                yield item.state, False
                continue
            assert item.state.entries is not None
            item.state.fresh_from = len(item.state.entries) + item.known_pending
            sizes, keys = measured.get(item.rel, ([], []))
            item.state.entries.extend([p[0] for p in item.pending], [p[1] for p in item.pending], sizes, keys)
            self.stats += len(item.pending)
            item.state.total_up()
            if item.rel in self.previous:
                self.compared[item.rel] = item.before
            yield item.state, True

    def _list(self, rel: str, datatype: str) -> _Listed | None:
        """Open a directory (never through a symlink); reuse it if unchanged, else list it and note which of
        its files need a stat."""
        try:
            fd = os.open(os.path.join(self.project_dir, rel), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | os.O_CLOEXEC)
        except OSError:
            return None  # gone since its parent was listed, or swapped for a link
        try:
            st = os.fstat(fd)
            previous = self.previous.get(rel)
            raw = datatype == "raw"
            if previous is not None and previous.datatype == datatype and previous.same_directory(st) and not (
                    raw and self.restat_raw):
                return _Listed(rel, datatype, fd, previous, [], reused=True)
            before = self._before(previous)
            known = before.known() if before is not None else None
            state = DirState(rel, datatype, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, [], entries=Entries())
            pending: list[tuple[str, int, bool]] = []
            again: list[tuple[str, int, bool]] = []
            reused: tuple[list[str], list[int], list[int], list[tuple[int, int] | None]] = ([], [], [], [])
            assert state.entries is not None
            # raw targets live elsewhere: a known link keeps its size only if its movie is still there
            keep_all = not (raw and self.restat_raw)
            movies = self.movie_inodes if self.movie_inodes is not None else frozenset()
            skip, prefix, subdirs, known_get = self.skip, rel + "/", state.subdirs, (known or {}).get
            with os.scandir(fd) as listing:
                for entry in listing:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
                        continue
                    name = entry.name
                    if skip and prefix + name in skip:
                        continue
                    ino = entry.inode()
                    old = known_get(name)
                    if old is not None and old[0] == ino and (keep_all or old[2] in movies):
                        reused[0].append(name)
                        reused[1].append(ino)
                        reused[2].append(old[1])
                        reused[3].append(old[2])
                    else:
                        (again if old is not None and old[0] == ino else pending).append(
                            (name, ino, raw and entry.is_symlink()))
            state.entries.extend(*reused)
            state.restated = bool(again)
            return _Listed(rel, datatype, fd, state, again + pending, known_pending=len(again), before=before)
        except BaseException:
            os.close(fd)
            raise

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
    seen: set[tuple[int, int]] = set()
    total = 0
    for state in states:
        entries = state.entries if state.entries is not None else load_entries(state)
        if entries is None:
            total += state.keyed_bytes  # cannot be compared: counted as the directory counted it
            continue
        for index, size in enumerate(entries.sizes):
            key = entries.key(index)
            if size >= 0 and key is not None and key not in seen:
                seen.add(key)
                total += size
    return total


def paths_of(state: DirState, entries: Entries) -> list[str]:
    return [f"{state.rel}/{name}" for name in entries.names]
