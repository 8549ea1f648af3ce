"""Refreshes that take a changed directory's news from the change feed instead of listing it: they do so for
new files, list after anything else, and agree with a walk from scratch, also while files are being written
during the refresh, after a restart, an overflow, a forged token, or on a file system the feed cannot follow."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from livedm.server import change_feed, dirwalk
from livedm.server.sessions import Sessions
from livedm.server.store import Store, session_key
from livedm.server.walk_docs import header_id
from testkit.sessiontree import SessionTree, build_session_tree
from tests.support.config import make_config, service_on
from tests.support.walks import figures as _figures
from tests.support.walks import measure as _measure
from tests.support.walks import measured_session
from tests.support.walks import motioncorrected as _mc
from tests.support.walks import registry as _registry
from tests.support.walks import truth as _truth


@pytest.fixture
def measured(real_store: Store, tmp_path: Path) -> Iterator[tuple[Sessions, SessionTree]]:
    yield from measured_session(real_store, tmp_path)


def _count_listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The directories the walk lists (whole), by their paths."""
    listed: list[str] = []
    for name in ("list_dir", "diff_dir"):
        real = getattr(dirwalk._dirstat, name)

        def counting(fd: int, *args: Any, _real: Callable[..., Any] = real) -> Any:
            listed.append(os.readlink(f"/proc/self/fd/{fd}"))
            return _real(fd, *args)

        monkeypatch.setattr(dirwalk._dirstat, name, counting)
    return listed


def test_new_files_are_taken_from_the_feed_without_listing_their_directory(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch) -> None:
    service, tree = measured
    for i in range(3):
        (_mc(tree) / f"new_{i}.mrc").write_bytes(b"n" * (100 + i))
    listed = _count_listings(monkeypatch)
    after = _measure(service, tree)
    assert (after.full, after.changed_dirs, after.probed_dirs, after.stats) == (False, 1, 1, 3)
    assert listed == [], "nothing listed: the feed named the three files"
    assert _figures(after) == _truth(tree)
    monkeypatch.undo()
    incremental = _registry(service)
    assert len(incremental["micrographs"]) == 12 + 3
    _measure(service, tree, full=True)
    assert _registry(service) == incremental


def test_a_new_subdirectory_is_walked_and_a_removed_one_dropped(measured: tuple[Sessions, SessionTree]) -> None:
    service, tree = measured
    block = tree.session_path / "extract" / "blob" / "257"
    block.mkdir()
    (block / "stack.mrc").write_bytes(b"s" * 4321)
    grown = _measure(service, tree)
    assert grown.probed_dirs == 1 and _figures(grown) == _truth(tree)
    (block / "stack.mrc").unlink()
    block.rmdir()
    shrunk = _measure(service, tree)
    assert _figures(shrunk) == _truth(tree)
    assert not any("/257/" in path for path in _registry(service)["particles"])


@pytest.mark.parametrize("change", ["delete", "rename within", "replace under the old name"])
def test_anything_but_new_files_lists_the_directory(measured: tuple[Sessions, SessionTree], change: str) -> None:
    service, tree = measured
    first = sorted(_mc(tree).iterdir())[0]
    if change == "delete":
        first.unlink()
    elif change == "rename within":
        first.rename(_mc(tree) / "renamed.mrc")
    else:
        (_mc(tree) / "incoming.tmp").write_bytes(b"r" * 99_999)
        (_mc(tree) / "incoming.tmp").rename(first)
    after = _measure(service, tree)
    assert (after.changed_dirs, after.probed_dirs) == (1, 0)
    assert _figures(after) == _truth(tree)
    incremental = _registry(service)
    _measure(service, tree, full=True)
    assert _registry(service) == incremental


def test_files_written_while_refreshes_run_are_all_counted_in_the_end(measured: tuple[Sessions, SessionTree]) -> None:
    """The feed is armed before a directory is looked at: a file created while a refresh runs is either seen by
    it or handed to the next one, never lost between the two."""
    service, tree = measured
    stop = threading.Event()
    # each file written outside and moved in whole: one created in place may be stat'ed before its bytes are
    # written, and a file written in place after it was looked at is seen by a full refresh only (listed or not)
    staging = tree.project_dir.parent / "staging"
    staging.mkdir()

    def write() -> None:
        i = 0
        while not stop.is_set():
            for target, data in ((_mc(tree) / f"live_{i:06d}.mrc", b"l" * (i % 50)),
                                 (tree.session_path / "thumbnails" / f"live_{i:06d}.png", b"t")):
                (staging / target.name).write_bytes(data)
                (staging / target.name).rename(target)
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    probed = 0
    try:
        for _ in range(15):
            probed += _measure(service, tree).probed_dirs
    finally:
        stop.set()
        writer.join()
    assert probed > 0, "the feed answered while files were being written"
    settled = _measure(service, tree)
    assert _figures(settled) == _truth(tree)
    incremental = _registry(service)
    _measure(service, tree, full=True)
    assert _registry(service) == incremental


def test_after_a_restart_changed_directories_are_listed_once(measured: tuple[Sessions, SessionTree],
                                                            real_store: Store, tmp_path: Path) -> None:
    service, tree = measured
    service.walks.close()
    restarted = service_on(real_store, make_config(tmp_path / "state"))
    try:
        (_mc(tree) / "after_restart.mrc").write_bytes(b"a" * 77)
        first = _measure(restarted, tree)
        assert (first.changed_dirs, first.probed_dirs) == (1, 0), "the last daemon's tokens are not answered"
        assert _figures(first) == _truth(tree)
        (_mc(tree) / "later.mrc").write_bytes(b"b" * 78)
        second = _measure(restarted, tree)
        assert (second.changed_dirs, second.probed_dirs) == (1, 1)
        assert _figures(second) == _truth(tree)
    finally:
        restarted.walks.close()


def test_an_overflow_lists_the_changed_directories(measured: tuple[Sessions, SessionTree]) -> None:
    service, tree = measured
    feed = service.walks.feed()
    assert feed is not None
    (_mc(tree) / "lost_in_overflow.mrc").write_bytes(b"o" * 5)
    with feed._lock:
        feed._drain()
        feed._forget_names()  # what IN_Q_OVERFLOW or too many names held does
    after = _measure(service, tree)
    assert (after.changed_dirs, after.probed_dirs) == (1, 0)
    assert _figures(after) == _truth(tree)


def test_another_directorys_token_forged_into_the_saved_state_is_not_answered(
        measured: tuple[Sessions, SessionTree], real_store: Store) -> None:
    """The thumbnails' token written into motioncorrected's saved state: the names of thumbnails/ must not be
    looked up in motioncorrected/."""
    service, tree = measured
    key = session_key("P1", "S1")
    thumbs = real_store.db.walks.find_one({"_id": header_id(key, "S1/thumbnails")})
    real_store.db.walks.update_one({"_id": header_id(key, "S1/motioncorrected")}, {"$set": {"feed": thumbs["feed"]}})
    (tree.session_path / "thumbnails" / "decoy.png").write_bytes(b"d")
    (_mc(tree) / "real.mrc").write_bytes(b"r" * 31)
    after = _measure(service, tree)
    assert after.probed_dirs == 1, "thumbnails/ from the feed; motioncorrected/ listed"
    assert _figures(after) == _truth(tree)


@pytest.mark.parametrize("forged", [7, "x:1:1:0", None])
def test_a_damaged_token_in_the_saved_state_lists_or_walks_in_full(measured: tuple[Sessions, SessionTree],
                                                                  real_store: Store, forged: object) -> None:
    service, tree = measured
    key = session_key("P1", "S1")
    real_store.db.walks.update_one({"_id": header_id(key, "S1/motioncorrected")}, {"$set": {"feed": forged}})
    (_mc(tree) / "real.mrc").write_bytes(b"r" * 31)
    after = _measure(service, tree)
    assert after.probed_dirs == 0
    assert _figures(after) == _truth(tree)


def test_on_a_file_system_the_feed_cannot_follow_every_changed_directory_is_listed(
        real_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Taken for NFS (inotify would miss what other nodes write): no token is saved, nothing is probed."""
    monkeypatch.setattr(change_feed, "LOCAL_FS_MAGIC", frozenset())
    service = service_on(real_store, make_config(tmp_path / "state"))
    try:
        tree = build_session_tree(tmp_path / "proj", exposures=3)
        service.create_project("p", str(tree.project_dir))
        service.create_live_session("P1", "s")
        service.refresh_session("P1", "S1")
        assert service.walks.wait_written(30)
        headers = list(real_store.db.walks.find({"key": session_key("P1", "S1"), "kind": "dir"}))
        assert headers and {h["feed"] for h in headers} == {""}
        (_mc(tree) / "remote.mrc").write_bytes(b"r" * 10)
        after = _measure(service, tree)
        assert (after.changed_dirs, after.probed_dirs) == (1, 0)
        assert _figures(after) == _truth(tree)
    finally:
        service.walks.close()


def test_a_directory_swapped_for_another_between_refreshes_is_listed(measured: tuple[Sessions, SessionTree]) -> None:
    """Another directory put in motioncorrected's place (same path, another inode), holding the same names
    and one more: the old watch's token says nothing of it."""
    service, tree = measured
    mc = _mc(tree)
    impostor = tree.session_path / "impostor"
    impostor.mkdir()
    for path in sorted(mc.iterdir()):
        (impostor / path.name).write_bytes(b"i" * 3)  # same names, other sizes and inodes
    (impostor / "extra.mrc").write_bytes(b"e")
    mc.rename(tree.session_path / "motioncorrected.old")
    impostor.rename(mc)
    after = _measure(service, tree)
    assert _figures(after) == _truth(tree)
    assert _figures(after)["micrographs"] == (12 * 3 + 1, 13), "12 files of 3 bytes and one of 1"


def test_new_movies_where_links_point_need_no_listing_there_and_a_movie_gone_is_still_seen(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch) -> None:
    """The movie directory (outside the session) is followed too: only movies made anew there since the last
    refresh means no known link's target changed, so neither the movies are listed nor the links stat'ed again;
    a movie deleted or moved there is a change the feed reports, and the links are looked at again."""
    service, tree = measured
    _measure(service, tree)  # the walk that armed the movie directory saved its token
    movie = tree.movies_dir / "late_fractions.tiff"
    movie.write_bytes(b"m" * 6000)
    (tree.session_path / "import_movies" / movie.name).symlink_to(movie)
    listed = _count_listings(monkeypatch)
    grown = _measure(service, tree)
    assert str(tree.movies_dir) not in listed, "the movie directory is not listed"
    assert (grown.stats, grown.probed_dirs) == (1, 1)
    assert _figures(grown) == _truth(tree)
    sorted(tree.movies_dir.iterdir())[0].unlink()  # a linked movie gone: the link stays
    shrunk = _measure(service, tree)
    assert str(tree.movies_dir) in listed, "a movie gone: the movie directory is listed again"
    assert _figures(shrunk) == _truth(tree)
    replaced = sorted(tree.movies_dir.iterdir())[0]
    (tree.movies_dir / "incoming").write_bytes(b"r" * 12345)
    (tree.movies_dir / "incoming").rename(replaced)  # another movie under a linked name
    assert _figures(_measure(service, tree)) == _truth(tree)


def test_a_link_whose_movie_arrives_after_it_is_measured_once_the_movie_is_there(
        measured: tuple[Sessions, SessionTree]) -> None:
    """Only creations in the movie directory, but one of them is the movie of a link that dangled: that link is
    stat'ed again (Live links a movie before its copy may have landed)."""
    service, tree = measured
    present = _measure(service, tree).totals["raw"].present
    early = tree.movies_dir / "copied_later.tiff"
    (tree.session_path / "import_movies" / early.name).symlink_to(early)
    assert _figures(_measure(service, tree)) == _truth(tree)
    early.write_bytes(b"m" * 4321)
    arrived = _measure(service, tree)
    assert _figures(arrived) == _truth(tree)
    assert arrived.totals["raw"].present == present + 1
