"""Incremental refreshes (only directories that changed are read again) agree with full ones after every
kind of change, on the real embedded store; what only a full refresh sees is shown, and that the scheduled
full refresh catches it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from livedm.server import files
from livedm.server.auth import Authenticator
from livedm.server.config import Config
from livedm.server.domain import DATATYPES
from livedm.server.services import Services
from livedm.server.sessions import Sessions
from livedm.server.store import Store, session_key
from testkit.sessiontree import SessionTree, build_session_tree
from tests.support.config import make_config, service_on

LAYOUT = make_config(Path("/nonexistent")).layout


def _snapshot(service: Sessions) -> dict[str, Any]:
    session = service.session("P1", "S1")
    registry = service.store.read_registry("P1", "S1", session.get("scan_gen"), sources=("scan",))["scan"]
    return {"measures": {dt: (c["size"], c["file_count"], c["status"]) for dt, c in session["data_management"].items()},
            "registry": {dt: sorted(paths) for dt, paths in registry.items()},
            "raw_dirs": sorted(session.get("raw_dirs") or [])}


def _truth(tree: SessionTree) -> dict[str, tuple[int, int]]:
    """What a walk from scratch measures (no saved state at all)."""
    walked = files.walk_session(str(tree.project_dir), "S1", LAYOUT)
    return {dt: (walked[dt].size, walked[dt].present) for dt in DATATYPES}


@pytest.fixture(params=[True, False], ids=["feed", "listing"])
def walker(request: pytest.FixtureRequest, real_store: Store, tmp_path: Path) -> Iterator[Sessions]:
    """Sessions whose changed directories are looked at from the change feed's names (tmp_path is a local
    file system), or always listed."""
    service = service_on(real_store, make_config(tmp_path / "state", change_feed=str(request.param).lower()))
    yield service
    service.walks.close()


@pytest.fixture
def measured(walker: Sessions, tmp_path: Path) -> tuple[Sessions, SessionTree]:
    tree = build_session_tree(tmp_path / "proj", exposures=6)
    walker.create_project("p", str(tree.project_dir))
    walker.create_live_session("P1", "s")
    walker.refresh_session("P1", "S1")  # the first walk is full: it saves what it saw
    assert walker.walks.wait_written(30)  # behind the refresh's answer
    return walker, tree


def _mc(tree: SessionTree) -> Path:
    return tree.session_path / "motioncorrected"


def _add_files(tree: SessionTree) -> None:
    for i in range(3):
        (_mc(tree) / f"new_{i}.mrc").write_bytes(b"n" * (100 + i))


def _add_subdir(tree: SessionTree) -> None:
    deep = tree.session_path / "extract" / "template" / "256"
    deep.mkdir(parents=True)
    (deep / "stack.mrc").write_bytes(b"s" * 4321)


def _delete_file(tree: SessionTree) -> None:
    next(_mc(tree).iterdir()).unlink()


def _delete_subdir(tree: SessionTree) -> None:
    shutil.rmtree(tree.session_path / "extract" / "blob")


def _rename_within(tree: SessionTree) -> None:
    first = sorted(_mc(tree).iterdir())[0]
    first.rename(_mc(tree) / "renamed.mrc")


def _rename_across(tree: SessionTree) -> None:
    first = sorted(_mc(tree).iterdir())[0]
    first.rename(tree.session_path / "thumbnails" / first.name)


def _replace_under_old_name(tree: SessionTree) -> None:
    victim = sorted(_mc(tree).iterdir())[0]
    fresh = _mc(tree) / "incoming.tmp"
    fresh.write_bytes(b"r" * 99_999)
    fresh.rename(victim)  # how most tools write: another inode under the old name


def _touch_back(tree: SessionTree) -> None:
    """A file added, then the directory's mtime set back: its ctime still moves."""
    before = os.stat(_mc(tree))
    (_mc(tree) / "sneaky.mrc").write_bytes(b"x" * 555)
    os.utime(_mc(tree), ns=(before.st_atime_ns, before.st_mtime_ns))


def _new_movie_linked(tree: SessionTree) -> None:
    movie = tree.movies_dir / "late_fractions.tiff"
    movie.write_bytes(b"m" * 6000)
    (tree.session_path / "import_movies" / movie.name).symlink_to(movie)


def _movie_gone(tree: SessionTree) -> None:
    sorted(tree.movies_dir.iterdir())[-1].unlink()  # the link stays, the session dir does not change


def _hard_link_elsewhere(tree: SessionTree) -> None:
    first = sorted(_mc(tree).iterdir())[0]
    os.link(first, tree.session_path / "motioncorrected" / "second_name.mrc")


def _dir_becomes_link(tree: SessionTree) -> None:
    thumbs = tree.session_path / "thumbnails"
    shutil.rmtree(thumbs)
    thumbs.symlink_to(tree.session_path / "motioncorrected")


def _everything_removed(tree: SessionTree) -> None:
    for sub in tree.session_path.iterdir():
        if sub.is_dir() and not sub.is_symlink():
            shutil.rmtree(sub)


CHANGES: dict[str, Callable[[SessionTree], None]] = {
    "add files": _add_files, "add a subdirectory": _add_subdir, "delete a file": _delete_file,
    "delete a subdirectory": _delete_subdir, "rename within a directory": _rename_within,
    "rename across categories": _rename_across, "replace under the old name": _replace_under_old_name,
    "mtime set back": _touch_back, "new movie linked": _new_movie_linked, "movie gone behind its link": _movie_gone,
    "directory swapped for a link": _dir_becomes_link,
    "everything removed": _everything_removed,
}


@pytest.mark.parametrize("change", CHANGES)
def test_incremental_and_full_refresh_agree_after(measured: tuple[Sessions, SessionTree], change: str) -> None:
    service, tree = measured
    CHANGES[change](tree)
    service.refresh_session("P1", "S1")
    incremental = _snapshot(service)
    assert {dt: m[:2] for dt, m in incremental["measures"].items()} == _truth(tree)
    service.refresh_session("P1", "S1", full=True)
    assert _snapshot(service) == incremental
    service.refresh_session("P1", "S1")  # and the state saved by the full walk serves the next one
    assert _snapshot(service) == incremental


def test_an_unchanged_session_is_not_listed_again_and_new_files_alone_are_stated(
        measured: tuple[Sessions, SessionTree]) -> None:
    service, tree = measured
    session = service.session("P1", "S1")
    project_dir = str(tree.project_dir)
    again = service.walks.measure("P1", "S1", session, project_dir, full=False)
    assert (again.full, again.stats, again.changed_dirs) == (False, 0, 0)
    assert again.dirs == 9  # S1, its 7 subdirs (extract holds blob) and extract/blob/256
    _add_files(tree)
    after = service.walks.measure("P1", "S1", service.session("P1", "S1"), project_dir, full=False)
    assert (after.full, after.stats, after.changed_dirs) == (False, 3, 1)
    full = service.walks.measure("P1", "S1", service.session("P1", "S1"), project_dir, full=True)
    assert full.full and full.stats == sum(len(paths) for paths in tree.paths_by_datatype.values()) + 3 + 1
    assert {dt: (t.size, t.present) for dt, t in full.totals.items()} == {
        dt: (t.size, t.present) for dt, t in after.totals.items()}


def test_a_file_rewritten_in_place_is_seen_only_by_a_full_refresh_which_the_schedule_runs(
        real_store: Store, tmp_path: Path) -> None:
    config: Config = make_config(tmp_path / "state", full_refresh_every="3")
    service = Services.build(real_store, config, Authenticator(real_store, 2)).sessions
    tree = build_session_tree(tmp_path / "proj", exposures=3)
    service.create_project("p", str(tree.project_dir))
    service.create_live_session("P1", "s")
    service.refresh_session("P1", "S1")
    victim = sorted(_mc(tree).iterdir())[0]
    grown = victim.stat().st_size + 1000
    with open(victim, "r+b") as fh:  # same inode, same directory: nothing a walk can see but the file itself
        fh.seek(0, os.SEEK_END)
        fh.write(b"g" * 1000)
    expected = tree.bytes_by_datatype["micrographs"] + 1000
    assert victim.stat().st_size == grown

    def micrographs() -> int:
        return int(service.session("P1", "S1")["data_management"]["micrographs"]["size"])

    service.refresh_session("P1", "S1")
    assert micrographs() == expected - 1000, "an incremental refresh does not stat unchanged directories"
    service.refresh_session("P1", "S1", full=None)  # scheduled: the 2nd since the full one
    assert micrographs() == expected - 1000
    service.refresh_session("P1", "S1", full=None)  # the 3rd: full
    assert micrographs() == expected


def test_saved_state_lost_or_tampered_falls_back_to_listing_and_stays_right(
        measured: tuple[Sessions, SessionTree], real_store: Store) -> None:
    service, tree = measured
    key = session_key("P1", "S1")
    chunk = real_store.db.walks.find_one({"key": key, "kind": "chunk"})
    real_store.db.walks.delete_one({"_id": chunk["_id"]})  # a chunk gone
    real_store.db.walks.update_many({"key": key, "kind": "dir"}, {"$set": {"mtime_ns": 1}})  # every dir "changed"
    _add_files(tree)
    service.refresh_session("P1", "S1")
    assert {dt: m[:2] for dt, m in _snapshot(service)["measures"].items()} == _truth(tree)
    assert len(_snapshot(service)["registry"]["micrographs"]) == len(tree.paths_by_datatype["micrographs"]) + 3


def test_a_refresh_killed_mid_write_makes_the_next_one_full(measured: tuple[Sessions, SessionTree],
                                                            real_store: Store) -> None:
    service, tree = measured
    key = session_key("P1", "S1")
    real_store.db.walks.update_one({"_id": key}, {"$set": {"dirty": True}})
    _delete_file(tree)
    measured_again = service.walks.measure("P1", "S1", service.session("P1", "S1"), str(tree.project_dir),
                                           full=False)
    assert measured_again.full
    assert not real_store.db.walks.find_one({"_id": key})["dirty"]


def test_a_hard_link_to_a_measured_file_is_counted_once_by_a_full_refresh(
        measured: tuple[Sessions, SessionTree]) -> None:
    """The first name's link count changed, not its directory's entries: an incremental refresh counts the
    bytes under both names until the next full one (README, Sizes)."""
    service, tree = measured
    _hard_link_elsewhere(tree)
    service.refresh_session("P1", "S1")
    linked = sorted(_mc(tree).iterdir())[0].stat().st_size
    sizes = {dt: m[0] for dt, m in _snapshot(service)["measures"].items()}
    assert sizes["micrographs"] == _truth(tree)["micrographs"][0] + linked
    service.refresh_session("P1", "S1", full=True)
    assert {dt: m[:2] for dt, m in _snapshot(service)["measures"].items()} == _truth(tree)


def test_a_new_movie_costs_one_stat_and_a_movie_gone_is_seen(measured: tuple[Sessions, SessionTree]) -> None:
    """The movie directory changed: it is listed (no stat per movie); only links whose movie is not there
    under the same inode, and new links, are stat'ed."""
    service, tree = measured
    _new_movie_linked(tree)
    grown = service.walks.measure("P1", "S1", service.session("P1", "S1"), str(tree.project_dir), full=False)
    assert (grown.full, grown.stats) == (False, 1)
    _movie_gone(tree)
    shrunk = service.walks.measure("P1", "S1", service.session("P1", "S1"), str(tree.project_dir), full=False)
    assert shrunk.stats == 1 and shrunk.totals["raw"].present == grown.totals["raw"].present - 1


def test_api_registrations_are_read_only_when_there_are_some_or_they_changed(
        measured: tuple[Sessions, SessionTree], real_store: Store) -> None:
    service, tree = measured
    reads: list[tuple[str, ...]] = []
    real_read = real_store.read_registry

    def counting(*args: Any, **kwargs: Any) -> Any:
        reads.append(kwargs.get("sources", ("scan", "api")))
        return real_read(*args, **kwargs)

    real_store.read_registry = counting  # type: ignore[method-assign]
    service.refresh_session("P1", "S1")
    assert ("api",) not in reads, "none registered: the session's registry is not read for them"
    extra = tree.project_dir / "elsewhere" / "kept.mrc"
    extra.parent.mkdir()
    extra.write_bytes(b"k" * 321)
    service.register_files("P1", "S1", "micrographs", paths=[str(extra)])
    reads.clear()
    service.refresh_session("P1", "S1")
    assert ("api",) in reads
    size = service.session("P1", "S1")["data_management"]["micrographs"]["size"]
    assert size == tree.bytes_by_datatype["micrographs"] + 321
