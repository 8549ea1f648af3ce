"""Which names changed in a session's directories since the last walk listed them, from the kernel (inotify),
so that a refresh after files were added stats those names instead of listing directories of hundreds of
thousands of files.

A walk arms a directory before it lists it: the watch is added (or kept), and the token it gets back stands
for "every name changed in this directory from now on". The token is saved with the directory's state; the
next walk, finding the directory changed, asks for the names changed since that token and looks at just
those. A token is honoured only while nothing may have been missed since it was given:

- the same daemon (watches live in this process; a restart lists every changed directory once);
- the same directory (the watch's device and inode are those of the directory opened now);
- no overflow since (the kernel's queue, or this feed's own cap on names held, `max_names`);
- a local file system: inotify sees only this machine's changes, so on NFS, Lustre, GPFS, CIFS or any
  file system not in LOCAL_FS_MAGIC a file another node writes would go unseen, and no token is given.

Only entries created, deleted or renamed are followed (a file rewritten in place changes no name: as with
listings, only a full walk sees its new size).
"""

from __future__ import annotations

import errno
import logging
import select
import threading
import uuid
import weakref
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass, field

from inotify_simple import INotify, flags

from . import _dirstat

log = logging.getLogger(__name__)

# statfs f_type of file systems whose every change, made by any process on any host, happens on this kernel
LOCAL_FS_MAGIC = frozenset({
    0xEF53,  # ext2, ext3, ext4
    0x58465342,  # xfs
    0x9123683E,  # btrfs
    0x01021994,  # tmpfs
    0x2FC12FC1,  # zfs
    0xF2F52010,  # f2fs
})
_NAME_EVENTS = flags.CREATE | flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO
_WATCH_MASK = _NAME_EVENTS | flags.ONLYDIR | flags.EXCL_UNLINK
_POLL_MS = 1000  # how soon the reader notices close()
EVICT_FRACTION = 64  # with no room for a watch, the least recently armed 1/64 of ours make room


@dataclass
class _Watch:
    identity: tuple[int, int]  # (dev, inode) of the directory watched
    gen: int  # unique within this feed: a watch descriptor the kernel hands out again is another watch
    base: int = 0  # sequence number of names[0]; tokens before it can no longer be answered
    names: list[str] = field(default_factory=list)
    created: bytearray = field(default_factory=bytearray)  # per name: 1 if its event was IN_CREATE


class ChangeFeed:
    """inotify watches on walked directories and the names changed under each. Thread-safe. `max_names`:
    names held in all (beyond it every watch starts over and the next walk lists its changed directories)."""

    def __init__(self, *, max_names: int) -> None:
        self.max_names = max_names
        self.instance = uuid.uuid4().hex[:12]
        self._lock = threading.Lock()
        self._watches: OrderedDict[int, _Watch] = OrderedDict()  # least recently armed first
        self._next_gen = 1
        self._held = 0
        self._full = False  # the kernel had no room for a watch: logged once
        self._closed = False
        self._inotify = INotify(nonblocking=True)  # OSError: no inotify here, or no instance left to this user
        # the reader holds the feed only weakly: a feed dropped unclosed (a test's) stops it and its descriptor
        threading.Thread(target=_read_forever, args=(weakref.ref(self), self._inotify.fileno()),
                         name=f"change-feed-{self.instance}", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._inotify.close()  # the reader's poll then returns at once and it stops

    # --- what walks call ---------------------------------------------------------------------------

    def arm(self, dir_fd: int, identity: tuple[int, int], since: str = "") -> tuple[str, list[str] | None]:
        """A token for the names changed in this open directory from now on ("" when there can be none: not a
        local file system, no room for another watch, the feed closed), and the names changed from the token
        `since` until now, each once (None when that cannot be known: no token, another daemon's, another
        directory's, an overflow since). In one step, so that no change falls between the two."""
        token, changes = self._arm(dir_fd, identity, since)
        return token, None if changes is None else list(dict.fromkeys(changes[0]))

    def arm_for_creations(self, dir_fd: int, identity: tuple[int, int],
                          since: str) -> tuple[str, bool, list[str] | None]:
        """As arm; True when every change since `since` is known and was an entry made anew (IN_CREATE): then
        nothing that was in the directory is gone or another file now (a rename onto a name, a delete, a move
        away are not creations). Last, the names changed, as arm gives them."""
        token, changes = self._arm(dir_fd, identity, since)
        if changes is None:
            return token, False, None
        return token, all(changes[1]), list(dict.fromkeys(changes[0]))

    def _arm(self, dir_fd: int, identity: tuple[int, int],
             since: str) -> tuple[str, tuple[list[str], bytearray] | None]:
        try:
            if _dirstat.fs_magic(dir_fd) not in LOCAL_FS_MAGIC:
                return "", None
        except OSError:
            return "", None
        with self._lock:
            if self._closed:
                return "", None
            wd = self._add_watch(dir_fd)
            if wd is None:
                return "", None
            self._drain()  # every event queued before this point is seen by the caller, who looks next
            watch = self._watches.get(wd)
            if watch is None or watch.identity != identity:
                watch = self._watches[wd] = _Watch(identity, self._next_gen)
                self._next_gen += 1
            self._watches.move_to_end(wd)
            changed = self._changes_since(since, wd, watch)
            watch.base += len(watch.names)
            self._held -= len(watch.names)
            watch.names, watch.created = [], bytearray()
            return f"{self.instance}:{wd}:{watch.gen}:{watch.base}", changed

    def _add_watch(self, dir_fd: int) -> int | None:
        """The watch descriptor of the open directory (the one open now, not whatever its path leads to by
        now); with no room left (fs.inotify.max_user_watches), the least recently armed of ours are dropped
        to make some: directories of sessions no longer growing give way to those walked now (theirs are
        listed when they change). None: no watch. Called with the lock held."""
        for attempt in range(2):
            try:
                return int(self._inotify.add_watch(f"/proc/self/fd/{dir_fd}", _WATCH_MASK))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    break
                if not self._full:
                    self._full = True
                    log.warning("the kernel allows no more inotify watches (fs.inotify.max_user_watches): the "
                                "least recently walked directories give theirs up, and a directory without "
                                "one is listed when it changes")
                if attempt or not self._watches:
                    break
                for _ in range(max(1, len(self._watches) // EVICT_FRACTION)):
                    old_wd, old = self._watches.popitem(last=False)
                    self._held -= len(old.names)
                    with suppress(OSError):  # gone already (its directory was deleted)
                        self._inotify.rm_watch(old_wd)
                self._drain()  # their IN_IGNORED, before the kernel can hand a descriptor out again
        return None

    def _changes_since(self, token: str, wd: int, watch: _Watch) -> tuple[list[str], bytearray] | None:
        try:
            instance, wd_text, gen_text, seq_text = token.split(":")
            token_wd, gen, seq = int(wd_text), int(gen_text), int(seq_text)
        except ValueError:
            return None
        if instance != self.instance or token_wd != wd or gen != watch.gen or not watch.base <= seq <= (
                watch.base + len(watch.names)):
            return None
        return watch.names[seq - watch.base:], watch.created[seq - watch.base:]

    def watches(self) -> int:
        with self._lock:
            return len(self._watches)

    # --- reading the kernel's events ---------------------------------------------------------------

    def _pump(self) -> bool:
        """The events queued now, read; False once closed."""
        with self._lock:
            if self._closed:
                return False
            self._drain()
            return True

    def _drain(self) -> None:
        """Every event queued now, into the watches' names. Called with the lock held."""
        while True:
            try:
                events = self._inotify.read(timeout=0)
            except BlockingIOError:
                return
            if not events:
                return
            for event in events:
                if event.mask & flags.Q_OVERFLOW:
                    log.warning("inotify's queue overflowed (fs.inotify.max_queued_events): the next refresh lists "
                                "every directory that changed")
                    self._forget_names()
                    continue
                watch = self._watches.get(event.wd)
                if watch is None:
                    continue
                if event.mask & flags.IGNORED:  # the directory is gone (or unmounted): the kernel dropped the watch
                    self._held -= len(watch.names)
                    del self._watches[event.wd]
                elif event.mask & _NAME_EVENTS and event.name:
                    watch.names.append(event.name)
                    watch.created.append(1 if event.mask & flags.CREATE else 0)
                    self._held += 1
            if self._held > self.max_names:
                log.warning("more than %d changed names held: the next refresh lists every directory that changed",
                            self.max_names)
                self._forget_names()

    def _forget_names(self) -> None:
        """Every token given so far can no longer be answered: each watch's sequence moves past its names and
        one more, so a token given when its watch held no names is not answered either (an overflow drops
        events the names never got, so an empty list says nothing)."""
        for watch in self._watches.values():
            watch.base += len(watch.names) + 1
            watch.names, watch.created = [], bytearray()
        self._held = 0


def _read_forever(feed_ref: weakref.ref[ChangeFeed], fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        poller.poll(_POLL_MS)  # a closed descriptor returns at once (POLLNVAL)
        feed = feed_ref()
        if feed is None or not feed._pump():
            return
        del feed
