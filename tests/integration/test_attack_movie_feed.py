"""Attacks on the change feed of the movie directories (outside the session, where raw links point): whatever
happens there, an incremental refresh must count the raw bytes and movies a walk from scratch counts."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from livedm.server.sessions import Sessions
from livedm.server.store import Store
from testkit.sessiontree import SessionTree
from tests.support.config import make_config, service_on
from tests.support.walks import figures as _figures
from tests.support.walks import measure as _measure
from tests.support.walks import measured_session
from tests.support.walks import truth as _truth


@pytest.fixture
def measured(real_store: Store, tmp_path: Path) -> Iterator[tuple[Sessions, SessionTree]]:
    yield from measured_session(real_store, tmp_path)


def _raw(service: Sessions, tree: SessionTree, full: bool | None = False) -> tuple[int, int]:
    return _figures(_measure(service, tree, full=full))["raw"]


def _true_raw(tree: SessionTree) -> tuple[int, int]:
    return _truth(tree)["raw"]


def _linked_movies(tree: SessionTree) -> list[Path]:
    return sorted(tree.movies_dir.iterdir())


def _during_save(service: Sessions, monkeypatch: pytest.MonkeyPatch, act: Callable[[], None]) -> None:
    """`act` runs once, after the walk stat'ed the links and before its state is written."""
    real = service.store.begin_walk_write
    done: list[bool] = []

    def finishing(*args: Any, **kwargs: Any) -> Any:
        if not done:
            done.append(True)
            act()
        return real(*args, **kwargs)

    monkeypatch.setattr(service.store, "begin_walk_write", finishing)


@pytest.mark.parametrize("full", [True, False])
def test_a_movie_deleted_while_a_walk_that_found_a_new_movie_directory_is_saved_is_seen_next(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch, full: bool) -> None:
    service, tree = measured
    _measure(service, tree)
    other = tree.movies_dir.parent / "movies-elsewhere"
    other.mkdir()
    (other / "b.tiff").write_bytes(b"b" * 777)
    (tree.session_path / "import_movies" / "b.tiff").symlink_to(other / "b.tiff")
    victim = _linked_movies(tree)[0]
    _during_save(service, monkeypatch, victim.unlink)
    _measure(service, tree, full=full)
    monkeypatch.undo()
    assert _raw(service, tree) == _true_raw(tree)


def test_movie_dir_renamed_and_recreated_with_other_movies(measured: tuple[Sessions, SessionTree]) -> None:
    service, tree = measured
    _measure(service, tree)
    names = [p.name for p in _linked_movies(tree)]
    tree.movies_dir.rename(tree.movies_dir.with_name("old"))
    tree.movies_dir.mkdir()
    for name in names[:-1]:
        (tree.movies_dir / name).write_bytes(b"x" * 10)
    assert _raw(service, tree) == _true_raw(tree)


def test_movie_dir_swapped_for_a_link_to_a_copy(measured: tuple[Sessions, SessionTree]) -> None:
    service, tree = measured
    _measure(service, tree)
    copy = tree.movies_dir.with_name("copy")
    shutil.copytree(tree.movies_dir, copy)
    (copy / _linked_movies(tree)[0].name).unlink()
    shutil.rmtree(tree.movies_dir)
    tree.movies_dir.symlink_to(copy)
    assert _raw(service, tree) == _true_raw(tree)


def test_movie_moved_out_and_back(measured: tuple[Sessions, SessionTree]) -> None:
    service, tree = measured
    _measure(service, tree)
    movie = _linked_movies(tree)[0]
    movie.rename(tree.movies_dir.parent / "away")
    (tree.movies_dir.parent / "away").write_bytes(b"z" * 3)
    (tree.movies_dir.parent / "away").rename(movie)
    assert _raw(service, tree) == _true_raw(tree)


def test_movie_deleted_and_written_anew_with_its_old_inode_number(measured: tuple[Sessions, SessionTree]) -> None:
    service, tree = measured
    _measure(service, tree)
    movie = _linked_movies(tree)[0]
    ino = os.lstat(movie).st_ino
    movie.unlink()
    movie.write_bytes(b"n" * 54_321)
    if os.lstat(movie).st_ino != ino:
        pytest.skip("this file system did not hand the inode number out again")
    assert _raw(service, tree) == _true_raw(tree)


def test_relative_links_through_a_symlink_and_back_up_are_followed_where_they_lead(
        measured: tuple[Sessions, SessionTree]) -> None:
    """`import_movies/m -> ../hop/../../movies/m` with `hop` a link elsewhere: the kernel takes '..' after
    following `hop`, so the movie is not in the directory the text names when read as a plain path (a decoy
    there, where only new files come, must not stand for it)."""
    service, tree = measured
    far = tree.project_dir.parent / "x" / "y"
    far.mkdir(parents=True)
    (tree.session_path / "hop").symlink_to(far)
    decoy = tree.project_dir / tree.movies_dir.name
    decoy.mkdir()
    for link in (tree.session_path / "import_movies").iterdir():
        target = Path(os.readlink(link))
        link.unlink()
        link.symlink_to(f"../hop/../../{tree.movies_dir.name}/{target.name}")
    assert _raw(service, tree, full=True) == _true_raw(tree)
    _measure(service, tree)
    _linked_movies(tree)[0].unlink()
    (decoy / "new.tiff").write_bytes(b"d")
    assert _raw(service, tree) == _true_raw(tree)


def test_a_file_of_its_own_in_import_movies_does_not_make_every_refresh_after_a_full_one_stat_the_links(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch) -> None:
    """The check after a walk that found new movie directories (are the movies it stat'ed still there?) passes
    over a plain file in import_movies, whose key is its own inode, not a movie's."""
    service, tree = measured
    (tree.session_path / "import_movies" / "gain_ref.mrc").write_bytes(b"g" * 99)
    _measure(service, tree, full=True)
    restats: list[bool] = []
    real = service.walks.__class__.measure.__globals__["SessionWalk"]

    def recording(*args: Any, **kwargs: Any) -> Any:
        restats.append(kwargs["restat_raw"])
        return real(*args, **kwargs)

    monkeypatch.setattr("livedm.server.session_walks.SessionWalk", recording)
    assert _raw(service, tree) == _true_raw(tree)
    assert restats == [False], "nothing changed where the links point: no link is stat'ed again"


@pytest.mark.parametrize("tamper", ["swapped", "another directory's", "too many", "not strings"])
def test_tampered_movie_feed_tokens_are_not_answered(measured: tuple[Sessions, SessionTree], tamper: str) -> None:
    service, tree = measured
    other = tree.movies_dir.parent / "movies-elsewhere"
    other.mkdir()
    (other / "b.tiff").write_bytes(b"b" * 777)
    (tree.session_path / "import_movies" / "b.tiff").symlink_to(other / "b.tiff")
    _measure(service, tree)
    _measure(service, tree)
    walks = service.store.db.walks
    tokens = walks.find_one({"_id": "P1/S1"})["movie_feed"]
    assert len(tokens) == 2 and all(tokens)
    forged = {"swapped": tokens[::-1], "another directory's": [tokens[1], tokens[1]],
              "too many": tokens + tokens, "not strings": [1, None]}[tamper]
    walks.update_one({"_id": "P1/S1"}, {"$set": {"movie_feed": forged}})
    (other / "c.tiff").write_bytes(b"c")  # before the movie goes: it cannot take the freed inode number (xfail below)
    _linked_movies(tree)[0].unlink()
    assert _raw(service, tree) == _true_raw(tree)


@pytest.mark.xfail(strict=True, reason="without the feed's word on which names changed (a restart, an overflow, "
                   "no feed on NFS) a linked movie is known by its inode number in a listing of the movie "
                   "directories, and one deleted whose number a new movie got (ext4 hands it out at once) is taken "
                   "for the same movie: only a full refresh sees it; stat'ing every link instead would cost every "
                   "refresh after a movie directory changed on NFS what a full refresh costs")
def test_after_a_restart_a_movie_gone_whose_inode_number_a_new_movie_got_is_seen(
        measured: tuple[Sessions, SessionTree], real_store: Store, tmp_path: Path) -> None:
    service, tree = measured
    _measure(service, tree)
    service.walks.close()
    restarted = service_on(real_store, make_config(tmp_path / "state"))
    try:
        movie = _linked_movies(tree)[0]
        ino = os.lstat(movie).st_ino
        movie.unlink()
        newcomer = tree.movies_dir / "newcomer.tiff"
        newcomer.write_bytes(b"n" * 3)
        if os.lstat(newcomer).st_ino != ino:
            pytest.skip("this file system did not hand the inode number out again")
        assert _raw(restarted, tree) == _true_raw(tree)
    finally:
        restarted.walks.close()
