"""Attacks on the change feed's refreshes (a hostile local user or a careless admin): whatever the kernel
says or fails to say, an incremental refresh must count what a walk from scratch counts, never lose a file
and never count or register anything outside the session."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from livedm.server.session_walks import Measured
from livedm.server.sessions import Sessions
from livedm.server.store import Store
from testkit.sessiontree import SessionTree
from tests.support.walks import figures as _figures
from tests.support.walks import measure as _measure
from tests.support.walks import measured_session
from tests.support.walks import motioncorrected as _mc
from tests.support.walks import registry as _registry
from tests.support.walks import truth as _truth


@pytest.fixture
def measured(real_store: Store, tmp_path: Path) -> Iterator[tuple[Sessions, SessionTree]]:
    yield from measured_session(real_store, tmp_path)


def _agrees_with_a_full_walk(service: Sessions, tree: SessionTree, measure: Measured) -> None:
    assert _figures(measure) == _truth(tree)
    incremental = _registry(service)
    _measure(service, tree, full=True)
    assert _registry(service) == incremental


def test_a_real_queue_overflow_forgets_tokens_of_directories_whose_events_it_dropped(
        measured: tuple[Sessions, SessionTree]) -> None:
    """The kernel queues up to fs.inotify.max_queued_events (16384) events, then one IN_Q_OVERFLOW, and drops
    the rest. motioncorrected/ had no names held when its file's event was dropped: its token must not be
    answered (with nothing) after the overflow, or the new file is never counted."""
    service, tree = measured
    feed = service.walks.feed()
    assert feed is not None
    with open("/proc/sys/fs/inotify/max_queued_events") as fh:
        limit = int(fh.read())
    thumbs = tree.session_path / "thumbnails"
    with feed._lock:  # the reader thread waits: the kernel's queue fills as a busy daemon's would
        feed._drain()
        for i in range(limit // 2 + 10):  # a busy neighbour: a watched directory churning names
            path = thumbs / f"churn_{i}.tmp"
            path.write_bytes(b"")
            path.unlink()
        (_mc(tree) / "dropped_by_the_kernel.mrc").write_bytes(b"d" * 4242)
    after = _measure(service, tree)
    assert _figures(after)["micrographs"] == _truth(tree)["micrographs"], "the new micrograph is counted"
    _agrees_with_a_full_walk(service, tree, after)


HOSTILE_NAMES = [os.fsdecode(b"caf\xe9.mrc"), os.fsdecode(b"\xff\xfe"), "line\nbreak.mrc", "tab\there", "x" * 255,
                 "...", " ", "-rf", "a\\b", "\u202eevil.mrc", "%s%n", "*", "a:b:c:d"]


def test_non_utf8_and_hostile_names_arriving_through_the_feed(measured: tuple[Sessions, SessionTree]) -> None:
    service, tree = measured
    mc = _mc(tree)
    for i, name in enumerate(HOSTILE_NAMES):
        (mc / name).write_bytes(b"h" * (i + 1))
    weird = mc / os.fsdecode(b"dir\xff\n..")
    weird.mkdir()
    (weird / HOSTILE_NAMES[0]).write_bytes(b"w" * 9)
    after = _measure(service, tree)
    assert after.probed_dirs == 1
    _agrees_with_a_full_walk(service, tree, after)
    for i, name in enumerate(HOSTILE_NAMES):  # now known: the next new ones come through the feed again
        (weird / f"2{name[:250]}").write_bytes(b"v" * (i + 2))
    again = _measure(service, tree)
    assert again.probed_dirs == 1
    _agrees_with_a_full_walk(service, tree, again)


def test_files_registered_by_api_are_not_walked_when_the_feed_names_them(
        measured: tuple[Sessions, SessionTree]) -> None:
    """Registered files replaced under their names (other inodes) and one more written: the feed names all
    three, and the registered ones must be left out of the walk (they are measured apart), as a listing
    leaves them out."""
    service, tree = measured
    mc = _mc(tree)
    api_paths = [mc / "api_1.mrc", mc / "api_2.mrc"]
    for path in api_paths:
        path.write_bytes(b"a" * 1000)
    service.register_files("P1", "S1", "micrographs", paths=[str(p) for p in api_paths])
    _measure(service, tree)  # the registration changes what the walk skips: walked in full once
    for path in api_paths:
        path.with_suffix(".tmp").write_bytes(b"b" * 2000)
        path.with_suffix(".tmp").rename(path)
    (mc / "walked.mrc").write_bytes(b"w" * 10)
    after = _measure(service, tree)
    assert after.probed_dirs == 1
    truth = _truth(tree)
    assert after.totals["micrographs"].size == truth["micrographs"][0], "each byte once"
    scan = _registry(service)["micrographs"]
    assert not any(p.endswith(("api_1.mrc", "api_2.mrc")) for p in scan)
    assert any(p.endswith("walked.mrc") for p in scan)


@pytest.mark.parametrize("seed", range(2))
def test_churn_of_every_kind_while_refreshes_run_settles_to_a_walk_from_scratch(
        measured: tuple[Sessions, SessionTree], seed: int) -> None:
    """Creates, deletes, renames within and across directories, files replaced under their names, subdirectories
    made, filled, swapped for links out of the session and removed, links in import_movies made to movies, to
    directories, to devices and dangling, all while refreshes run; once it stops, one more refresh must agree
    with a walk from scratch, and its registry with a full refresh's, holding nothing outside the session."""
    service, tree = measured
    mc, thumbs, raw = _mc(tree), tree.session_path / "thumbnails", tree.session_path / "import_movies"
    outside = tree.project_dir.parent / "outside"
    outside.mkdir()
    (outside / "secret.mrc").write_bytes(b"s" * 100_000)
    movies = sorted(tree.movies_dir.iterdir())
    grave = tree.project_dir.parent / "grave"  # nothing is freed: a number the file system hands out again
    grave.mkdir()  # would be another file under an old name with the same inode (see the test below)
    stop = threading.Event()
    errors: list[BaseException] = []

    def put(path: Path, data: bytes) -> None:
        """A new file moved in whole: one written in place may be stat'ed between its create and its write,
        and keeps that size until a full refresh (the known limit, a strict xfail below), which made this
        test fail now and then on a busy machine."""
        incoming = grave / f"incoming-{path.name}"
        incoming.write_bytes(data)
        incoming.rename(path)

    def churn() -> None:
        rng = random.Random(seed)
        i = 0
        try:
            while not stop.is_set():
                i += 1
                op = rng.randrange(10)
                a, b = rng.choice([mc, thumbs]), rng.choice([mc, thumbs])
                if op == 0:
                    put(a / f"c{i}.mrc", b"c" * rng.randrange(200))
                elif op == 1:
                    victims = [p for p in a.iterdir() if p.is_file()]
                    if victims:
                        rng.choice(victims).rename(grave / f"g{i}")
                elif op == 2:
                    victims = [p for p in a.iterdir() if p.is_file()]
                    if victims:
                        v = rng.choice(victims)
                        v.rename(b / f"moved{i}.mrc")
                elif op == 3:  # another file under an old name
                    victims = [p for p in a.iterdir() if p.is_file() and not p.is_symlink()]
                    if victims:
                        victim = rng.choice(victims)
                        os.link(victim, grave / f"g{i}")  # its inode stays taken
                        put(victim, b"r" * rng.randrange(300))
                elif op == 4:  # a subdirectory made, filled, swapped for a link out of the session
                    sub = a / f"sub{i}"
                    sub.mkdir()
                    put(sub / "inside.mrc", b"i" * 11)
                    if rng.random() < 0.5:
                        sub.rename(a / f"gone{i}")
                        (a / f"sub{i}").symlink_to(outside)
                elif op == 5:
                    (raw / f"l{i}.tiff").symlink_to(rng.choice(movies))
                elif op == 6:
                    (raw / f"odd{i}.tiff").symlink_to(rng.choice([outside, "/dev/zero", outside / "nope", "/"]))
                elif op == 7:
                    links = [p for p in raw.iterdir() if p.is_symlink()]
                    if links:
                        rng.choice(links).rename(grave / f"g{i}")
                elif op == 8:  # a directory in import_movies
                    (raw / f"rawdir{i}").mkdir()
                    put(raw / f"rawdir{i}" / "x.tiff", b"x" * 7)
                else:  # created and deleted at once
                    (a / f"blink{i}").write_bytes(b"b")
                    (a / f"blink{i}").rename(grave / f"g{i}")
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        for _ in range(12):
            _measure(service, tree)
    finally:
        stop.set()
        writer.join()
    assert not errors
    settled = _measure(service, tree)
    _agrees_with_a_full_walk(service, tree, settled)
    again = _measure(service, tree)
    assert _figures(again) == _truth(tree)
    for paths in _registry(service).values():
        assert all(p.startswith("S1/") and "/outside/" not in p for p in paths)



def _rewritten_with_its_old_inode_number(path: Path, size: int) -> None:
    """Another file under the name, which the file system (ext4 does, at once) gives the freed inode number."""
    ino = os.lstat(path).st_ino
    path.unlink()
    path.write_bytes(b"n" * size)
    if os.lstat(path).st_ino != ino:
        pytest.skip("this file system did not hand the inode number out again")


def test_a_file_the_feed_saw_replaced_is_measured_again_though_it_got_the_old_inode_number(
        measured: tuple[Sessions, SessionTree]) -> None:
    """The feed names the file deleted and written again; the name still leads to the inode number the last
    walk saw, which the probe took for "renamed away and back" and kept the old size."""
    service, tree = measured
    first = sorted(_mc(tree).iterdir())[0]
    _rewritten_with_its_old_inode_number(first, 54_321)
    (_mc(tree) / "new.mrc").write_bytes(b"x" * 5)
    after = _measure(service, tree)
    assert after.probed_dirs == 1
    _agrees_with_a_full_walk(service, tree, after)


@pytest.mark.xfail(strict=True, reason="a listing cannot tell a freed inode number handed out again under the "
                   "same name from the file it saw (as before the feed): only a full refresh sees the new size")
def test_a_file_replaced_with_the_old_inode_number_beside_a_file_gone_is_measured_again(
        measured: tuple[Sessions, SessionTree]) -> None:
    """A known file gone too: the directory is listed (diff_dir), which compares inode numbers only."""
    service, tree = measured
    first, second = sorted(_mc(tree).iterdir())[:2]
    _rewritten_with_its_old_inode_number(first, 54_321)
    second.unlink()
    after = _measure(service, tree)
    assert _figures(after) == _truth(tree)



@pytest.mark.xfail(strict=True, reason="a file written in place after a refresh looked at it changes no name: "
                   "only a full refresh sees its bytes, fed or listed (a Live writer creating files in place can "
                   "be caught between create and write)")
def test_a_file_caught_half_written_is_measured_whole_once_its_directory_changes_again(
        measured: tuple[Sessions, SessionTree]) -> None:
    service, tree = measured
    half = _mc(tree) / "half_written.mrc"
    half.write_bytes(b"")  # created: the refresh stats it before its bytes come
    _measure(service, tree)
    with open(half, "ab") as fh:
        fh.write(b"h" * 4096)
    (_mc(tree) / "next.mrc").write_bytes(b"n")
    after = _measure(service, tree)
    assert _figures(after) == _truth(tree)
