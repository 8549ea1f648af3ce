"""The change feed gives the names changed since a token, and nothing at all when it cannot be sure: another
daemon's token, another directory's, one given before the last arm, an overflow since, a file system that is
not local, no room for a watch, a closed feed."""

from __future__ import annotations

import errno
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from inotify_simple import Event, flags

from livedm.server import change_feed
from livedm.server.change_feed import ChangeFeed


@pytest.fixture
def feed() -> Iterator[ChangeFeed]:
    feed = ChangeFeed(max_names=1000)
    yield feed
    feed.close()


class Opened:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        st = os.fstat(self.fd)
        self.identity = (st.st_dev, st.st_ino)

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Opened]:
    (tmp_path / "d").mkdir()
    opened = Opened(tmp_path / "d")
    yield opened
    opened.close()


def test_names_created_deleted_and_renamed_since_a_token_each_once(feed: ChangeFeed, opened: Opened,
                                                                    tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "old.mrc").write_bytes(b"o")
    token, names = feed.arm(opened.fd, opened.identity)
    assert token and names is None, "a first arm knows nothing before it"
    (d / "a.mrc").write_bytes(b"a")
    (d / "a.mrc").unlink()
    (d / "a.mrc").write_bytes(b"a")
    (d / "old.mrc").rename(d / "new.mrc")
    (d / "sub").mkdir()
    (d / "sub" / "deeper.mrc").write_bytes(b"x")  # in a subdirectory: its own watch's, not this one's
    with open(d / "old_enough", "wb"):
        pass
    with open(d / "old_enough", "ab") as fh:
        fh.write(b"appended in place changes no name")
    token2, names = feed.arm(opened.fd, opened.identity, token)
    assert names == ["a.mrc", "old.mrc", "new.mrc", "sub", "old_enough"]
    assert token2 != token
    assert feed.arm(opened.fd, opened.identity, token2)[1] == [], "nothing since"


def test_a_token_is_answered_once_then_only_the_newer_one(feed: ChangeFeed, opened: Opened, tmp_path: Path) -> None:
    token, _ = feed.arm(opened.fd, opened.identity)
    (tmp_path / "d" / "early").write_bytes(b"")
    _, names = feed.arm(opened.fd, opened.identity, token)
    assert names == ["early"]
    (tmp_path / "d" / "x").write_bytes(b"")
    # the saved state still holding `token` (its walk's save failed) must not be answered: "early" was handed
    # to the walk that took `newer`, and is no longer held
    assert feed.arm(opened.fd, opened.identity, token)[1] is None


def _with_part(token: str, index: int, value: str) -> str:
    parts = token.split(":")  # instance, watch descriptor, watch generation, sequence
    parts[index] = value
    return ":".join(parts)


@pytest.mark.parametrize("forge", [
    lambda token: "",
    lambda token: "garbage",
    lambda token: "a:b:c:d",
    lambda token: _with_part(token, 0, "0" * 12),  # another daemon's
    lambda token: _with_part(token, 1, "12345"),  # another watch
    lambda token: _with_part(token, 2, "999"),  # another watch generation
    lambda token: _with_part(token, 3, str(int(token.split(":")[3]) + 5)),  # a sequence not reached
])
def test_forged_or_foreign_tokens_are_not_answered(feed: ChangeFeed, opened: Opened, tmp_path: Path,
                                                   forge: object) -> None:
    token, _ = feed.arm(opened.fd, opened.identity)
    (tmp_path / "d" / "x").write_bytes(b"")
    assert feed.arm(opened.fd, opened.identity, forge(token))[1] is None  # type: ignore[operator]


def test_another_directorys_token_is_not_answered(feed: ChangeFeed, opened: Opened, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = Opened(tmp_path / "other")
    try:
        other_token, _ = feed.arm(other.fd, other.identity)
        feed.arm(opened.fd, opened.identity)
        (tmp_path / "other" / "x").write_bytes(b"")
        assert feed.arm(opened.fd, opened.identity, other_token)[1] is None
    finally:
        other.close()


def test_a_directory_replaced_under_its_path_gets_a_watch_of_its_own(feed: ChangeFeed, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    first = Opened(d)
    token, _ = feed.arm(first.fd, first.identity)
    first.close()
    d.rename(tmp_path / "d.old")
    d.mkdir()
    (d / "moved_in.mrc").write_bytes(b"m")
    second = Opened(d)
    try:
        assert feed.arm(second.fd, second.identity, token)[1] is None
    finally:
        second.close()


def test_too_many_names_held_forgets_them_all(opened: Opened, tmp_path: Path) -> None:
    feed = ChangeFeed(max_names=3)
    try:
        token, _ = feed.arm(opened.fd, opened.identity)
        for i in range(4):
            (tmp_path / "d" / f"f{i}").write_bytes(b"")
        assert feed.arm(opened.fd, opened.identity, token)[1] is None
    finally:
        feed.close()


def test_a_queue_overflow_forgets_every_name(feed: ChangeFeed, opened: Opened, tmp_path: Path) -> None:
    """The kernel's IN_Q_OVERFLOW (fs.inotify.max_queued_events, 16384 by default) is made by hand here: a
    root-only sysctl would change it for the whole machine."""
    token, _ = feed.arm(opened.fd, opened.identity)
    (tmp_path / "d" / "x").write_bytes(b"")
    real_read = feed._inotify.read
    overflowed = [False]

    def read_then_overflow(timeout: int | None = None, read_delay: int | None = None) -> list[object]:
        events = list(real_read(timeout=timeout))
        if not overflowed[0]:
            overflowed[0] = True
            events.append(Event(-1, flags.Q_OVERFLOW, 0, ""))
        return events

    feed._inotify.read = read_then_overflow  # type: ignore[method-assign]
    assert feed.arm(opened.fd, opened.identity, token)[1] is None
    assert overflowed[0]


def test_a_file_system_that_is_not_local_gets_no_token(feed: ChangeFeed, opened: Opened,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """inotify on NFS, Lustre or GPFS sees only this node's changes: a file written by another node would go
    unseen. Here the local file system is taken for such a one."""
    monkeypatch.setattr(change_feed, "LOCAL_FS_MAGIC", frozenset())
    assert feed.arm(opened.fd, opened.identity) == ("", None)
    assert feed.watches() == 0


def test_no_room_for_a_watch_gets_no_token(feed: ChangeFeed, opened: Opened, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    def full(path: str, mask: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(feed._inotify, "add_watch", full)
    assert feed.arm(opened.fd, opened.identity) == ("", None)
    assert feed.arm(opened.fd, opened.identity) == ("", None)
    assert [r.message for r in caplog.records].count(
        "the kernel allows no more inotify watches (fs.inotify.max_user_watches): the least recently walked "
        "directories give theirs up, and a directory without one is listed when it changes") == 1, \
        "said once, not per directory"


def test_with_no_room_left_the_least_recently_armed_watches_make_room(feed: ChangeFeed, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that allows three watches (fs.inotify.max_user_watches): the directory walked now gets one, the
    one armed longest ago gives its up, and its token is no longer answered."""
    real_add, real_rm = feed._inotify.add_watch, feed._inotify.rm_watch
    live: set[int] = set()

    def add(path: str, mask: int) -> int:
        wd = real_add(path, mask)
        if wd not in live and len(live) >= 3:
            real_rm(wd)
            raise OSError(errno.ENOSPC, "No space left on device")
        live.add(wd)
        return wd

    def rm(wd: int) -> None:
        live.discard(wd)
        real_rm(wd)

    monkeypatch.setattr(feed._inotify, "add_watch", add)
    monkeypatch.setattr(feed._inotify, "rm_watch", rm)
    dirs = []
    for name in "abcd":
        (tmp_path / name).mkdir()
        dirs.append(Opened(tmp_path / name))
    try:
        tokens = [feed.arm(d.fd, d.identity)[0] for d in dirs[:3]]
        feed.arm(dirs[0].fd, dirs[0].identity, tokens[0])  # a is armed again: b is now the least recent
        (tmp_path / "b" / "x").write_bytes(b"")
        token_d, _ = feed.arm(dirs[3].fd, dirs[3].identity)
        assert token_d and feed.watches() == 3 and len(live) == 3
        assert feed.arm(dirs[1].fd, dirs[1].identity, tokens[1])[1] is None, "b gave its watch up"
        (tmp_path / "d" / "y").write_bytes(b"")
        assert feed.arm(dirs[3].fd, dirs[3].identity, token_d)[1] == ["y"]
    finally:
        for d in dirs:
            d.close()


def test_a_removed_directory_drops_its_watch(feed: ChangeFeed, tmp_path: Path) -> None:
    d = tmp_path / "gone"
    d.mkdir()
    opened = Opened(d)
    feed.arm(opened.fd, opened.identity)
    opened.close()
    assert feed.watches() == 1
    d.rmdir()
    assert _soon(lambda: feed.watches() == 0), "the reader thread takes the kernel's IN_IGNORED"


def test_a_closed_feed_answers_nothing_and_closing_twice_is_fine(opened: Opened) -> None:
    feed = ChangeFeed(max_names=10)
    token, _ = feed.arm(opened.fd, opened.identity)
    feed.close()
    feed.close()
    assert feed.arm(opened.fd, opened.identity, token) == ("", None)


def test_a_feed_dropped_unclosed_stops_its_reader(opened: Opened) -> None:
    feed = ChangeFeed(max_names=10)
    name = f"change-feed-{feed.instance}"

    def reading() -> bool:
        return any(t.name == name for t in threading.enumerate())

    feed.arm(opened.fd, opened.identity)
    assert reading()
    del feed
    gc.collect()
    assert _soon(lambda: not reading(), within_s=5.0)


def _soon(condition: Callable[[], bool], within_s: float = 2.0) -> bool:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_an_overflow_forgets_a_token_whose_watch_held_no_names(feed: ChangeFeed, opened: Opened,
                                                               tmp_path: Path) -> None:
    """The kernel drops the events after IN_Q_OVERFLOW: a watch that held no names when it came may have lost
    some all the same, so its token is not answered (with nothing) either."""
    token, _ = feed.arm(opened.fd, opened.identity)
    with feed._lock:
        feed._drain()
        real_read = feed._inotify.read
        queued = [[Event(-1, flags.Q_OVERFLOW, 0, "")], []]
        feed._inotify.read = lambda timeout=None, read_delay=None: queued.pop(0)  # type: ignore[method-assign]
        feed._drain()
        feed._inotify.read = real_read  # type: ignore[method-assign]
    (tmp_path / "d" / "after").write_bytes(b"")  # not the one dropped; the token is stale all the same
    assert feed.arm(opened.fd, opened.identity, token)[1] is None


@pytest.mark.parametrize(("change", "only_created"), [
    ("nothing", True), ("create", True), ("create then write", True), ("delete", False),
    ("rename onto a name", False), ("move away", False), ("create then delete", False),
])
def test_arm_for_creations_says_whether_only_new_entries_came(feed: ChangeFeed, opened: Opened, tmp_path: Path,
                                                               change: str, only_created: bool) -> None:
    d = tmp_path / "d"
    (d / "kept.tiff").write_bytes(b"k")
    token, _, _ = feed.arm_for_creations(opened.fd, opened.identity, "")
    if change in ("create", "create then write", "create then delete"):
        (d / "new.tiff").write_bytes(b"n")
    if change == "create then write":
        with open(d / "new.tiff", "ab") as fh:
            fh.write(b"more")
    if change == "create then delete":
        (d / "new.tiff").unlink()
    if change == "delete":
        (d / "kept.tiff").unlink()
    if change == "rename onto a name":
        (tmp_path / "elsewhere.tiff").write_bytes(b"e")
        (tmp_path / "elsewhere.tiff").rename(d / "kept.tiff")
    if change == "move away":
        (d / "kept.tiff").rename(tmp_path / "away.tiff")
    assert feed.arm_for_creations(opened.fd, opened.identity, token)[1] is only_created


def test_arm_for_creations_without_a_token_knows_nothing(feed: ChangeFeed, opened: Opened) -> None:
    assert feed.arm_for_creations(opened.fd, opened.identity, "")[1] is False
