"""Attacks on the incremental walk (server/dirwalk.py, server/session_walks.py, server/walk_docs.py) and the
packed scanned registry (server/store.py), as a hostile local user or a careless admin would make them: swaps
between a walk's listing and its opening or stat, hostile names, tampered store documents, concurrent and
killed refreshes. Every test keeps one attack; each says what must hold."""

from __future__ import annotations

import os
import threading
import tracemalloc
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from bson.binary import Binary

from livedm.server import dirwalk
from livedm.server.domain import DATATYPES
from livedm.server.sessions import Sessions
from testkit.sessiontree import SessionTree, build_session_tree
from tests.support.config import make_config, service_on


def _registry(service: Sessions) -> dict[str, list[str]]:
    session = service.session("P1", "S1")
    return service.store.read_registry("P1", "S1", session.get("scan_gen"), sources=("scan",))["scan"]


def _measures(service: Sessions) -> dict[str, tuple[int, int]]:
    dm = service.session("P1", "S1")["data_management"]
    return {dt: (dm[dt]["size"], dm[dt]["file_count"]) for dt in DATATYPES}


@pytest.fixture
def measured(real_service: Sessions, tmp_path: Path) -> tuple[Sessions, SessionTree]:
    tree = build_session_tree(tmp_path / "proj", exposures=3)
    real_service.create_project("p", str(tree.project_dir))
    real_service.create_live_session("P1", "s")
    real_service.refresh_session("P1", "S1")
    assert real_service.walks.wait_written(30)  # the tests tamper with the walk state it leaves
    return real_service, tree


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.parametrize("full", [True, False])
def test_a_directory_swapped_for_a_link_after_its_listing_is_not_walked_through(
        measured: tuple[Sessions, SessionTree], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full: bool) -> None:
    """extract/ is listed (it holds blob/), then swapped for a symlink to a directory outside the project that
    holds a blob/ too, before the walk opens extract/blob. The walk opens subdirectories by their whole path
    (O_NOFOLLOW guards only the last component): it must not count, nor register, what lies outside."""
    service, tree = measured
    before = _measures(service)
    outside = tmp_path / "outside"
    (outside / "blob").mkdir(parents=True)
    with open(outside / "blob" / "secret.key", "wb") as fh:
        fh.truncate(50_000_000)  # sparse: 50 MB apparent
    extract = tree.session_path / "extract"
    (extract / "new.mrc").write_bytes(b"n" * 10)  # extract/ changed: an incremental walk lists it again
    swapped = []

    def then_swap(real: Callable[..., Any]) -> Callable[..., Any]:
        def listing_then_swap(fd: int, *args: Any) -> Any:
            listing = real(fd, *args)
            if _fd_path(fd) == str(extract) and not swapped:
                extract.rename(tree.session_path / "extract.real")
                extract.symlink_to(outside)
                swapped.append(True)
            return listing
        return listing_then_swap

    # a full walk lists extract/, an incremental one compares it with what it held, or looks up the names the
    # change feed gives: all are raced
    monkeypatch.setattr(dirwalk._dirstat, "list_dir", then_swap(dirwalk._dirstat.list_dir))
    monkeypatch.setattr(dirwalk._dirstat, "diff_dir", then_swap(dirwalk._dirstat.diff_dir))
    monkeypatch.setattr(dirwalk._dirstat, "probe_names", then_swap(dirwalk._dirstat.probe_names))
    service.refresh_session("P1", "S1", full=full)
    assert swapped
    registry = _registry(service)
    assert not any("secret.key" in path for paths in registry.values() for path in paths), registry["particles"]
    assert _measures(service)["particles"][0] < before["particles"][0] + 50_000_000


def _truth_registry(tree: SessionTree) -> dict[str, list[str]]:
    """Every file under the session dir by the layout rules, by a plain os.walk (links not followed)."""
    layout = dict(dirwalk_layout())
    out: dict[str, list[str]] = {dt: [] for dt in DATATYPES}
    for root, _dirs, names in os.walk(tree.session_path):
        rel = os.path.relpath(root, tree.project_dir)
        parts = rel.split("/")
        datatype = layout.get(parts[1], "metadata") if len(parts) > 1 else "metadata"
        out[datatype] += [f"{rel}/{name}" for name in names]
        out[datatype] += [f"{rel}/{d}" for d in _dirs if os.path.islink(os.path.join(root, d))]
    return {dt: sorted(paths) for dt, paths in out.items()}


def dirwalk_layout() -> list[tuple[str, str]]:
    from tests.support.config import make_config
    return list(make_config(Path("/nonexistent")).layout)


def _sorted(registry: dict[str, list[str]]) -> dict[str, list[str]]:
    return {dt: sorted(paths) for dt, paths in registry.items()}


HOSTILE_NAMES = [os.fsdecode(b"caf\xe9.mrc"), os.fsdecode(b"\xff\xfe"), "line\nbreak.mrc", "tab\there", "x" * 255,
                 "...", ". .", "..\u2024", "\u2024\u2024", " ", "-rf", "a\\b", "\u202eevil.mrc", "%s%n", "*"]


def test_hostile_names_are_measured_and_registered_as_they_are_by_full_and_incremental_refreshes(
        measured: tuple[Sessions, SessionTree]) -> None:
    service, tree = measured
    mc = tree.session_path / "motioncorrected"
    weird_dir = mc / os.fsdecode(b"dir\xff\n..")
    weird_dir.mkdir()
    for i, name in enumerate(HOSTILE_NAMES):
        (mc / name).write_bytes(b"h" * (i + 1))
        (weird_dir / name).write_bytes(b"w" * (i + 1))
    service.refresh_session("P1", "S1")  # incremental: new names in a changed dir, a new dir
    incremental = (_measures(service), _sorted(_registry(service)))
    assert incremental[1] == _truth_registry(tree)
    (mc / HOSTILE_NAMES[4]).unlink()  # a name gone: the registry is rewritten whole
    (weird_dir / HOSTILE_NAMES[0]).rename(weird_dir / HOSTILE_NAMES[0].replace("caf", "tea"))
    service.refresh_session("P1", "S1")
    incremental = (_measures(service), _sorted(_registry(service)))
    assert incremental[1] == _truth_registry(tree)
    service.refresh_session("P1", "S1", full=True)
    assert (_measures(service), _sorted(_registry(service))) == incremental
    service.refresh_session("P1", "S1")
    assert (_measures(service), _sorted(_registry(service))) == incremental


def test_a_flat_directory_of_many_files_agrees_between_full_and_incremental_refreshes(
        measured: tuple[Sessions, SessionTree]) -> None:
    """More files than a walk chunk (20 000) and a stat batch (2 000) hold, in one directory; one file gone
    from the middle, one replaced under its name, one added."""
    service, tree = measured
    flat = tree.session_path / "extract" / "flat"
    flat.mkdir()
    count = 45_000
    for i in range(count):
        (flat / f"p{i:06d}.mrc").write_bytes(b"")
    (flat / "p022222.mrc").write_bytes(b"s" * 1234)
    service.refresh_session("P1", "S1")
    (flat / "p030000.mrc").unlink()
    (flat / "new.mrc").write_bytes(b"n" * 77)
    replacement = flat / "incoming"
    replacement.write_bytes(b"r" * 500)
    replacement.rename(flat / "p000001.mrc")
    service.refresh_session("P1", "S1")
    incremental = (_measures(service), _sorted(_registry(service)))
    assert incremental[1] == _truth_registry(tree)
    service.refresh_session("P1", "S1", full=True)
    assert (_measures(service), _sorted(_registry(service))) == incremental


def _tamper_micrographs_chunk(service: Sessions, tree: SessionTree, change: dict[str, Any]) -> None:
    store = service.store
    header = next(doc for doc in store.db.walks.find({"key": "P1/S1", "kind": "dir"})
                  if os.fsdecode(bytes.fromhex(doc["rel"])) == "S1/motioncorrected")
    store.db.walks.update_one({"_id": header["chunks"][0]}, {"$set": change})
    service.walks.cache = type(service.walks.cache)(0)  # what the store holds, not what this process remembers
    (tree.session_path / "motioncorrected" / "new.mrc").write_bytes(b"n" * 10)  # the directory must be read back


def _zlib_bomb(size: int) -> Binary:
    packer = zlib.compressobj(9)
    return Binary(packer.compress(bytes(size)) + packer.flush())


TAMPERED_CHUNKS: dict[str, dict[str, Any]] = {
    "names not zlib": {"names": Binary(b"garbage")},
    "names a string": {"names": "garbage"},
    "sizes an integer": {"sizes": 10**6},
    "sizes of the wrong length": {"sizes": Binary(zlib.compress(b"1234567"))},
    "keys not zlib": {"keys": Binary(b"\x00" * 5)},
    "count that lies": {"count": 10**9},
    "names missing": {"names": None},
}


@pytest.mark.parametrize("change", TAMPERED_CHUNKS)
def test_a_tampered_walk_chunk_makes_the_refresh_list_the_directory_again(
        measured: tuple[Sessions, SessionTree], change: str) -> None:
    """A chunk that cannot be read back is what the walk does not know: the directory is listed again, the
    refresh succeeds and agrees with a full one (it must not fail every incremental refresh from now on)."""
    service, tree = measured
    _tamper_micrographs_chunk(service, tree, TAMPERED_CHUNKS[change])
    service.refresh_session("P1", "S1")
    incremental = (_measures(service), _sorted(_registry(service)))
    assert incremental[1] == _truth_registry(tree)
    service.refresh_session("P1", "S1", full=True)
    assert (_measures(service), _sorted(_registry(service))) == incremental


def test_a_zlib_bomb_in_a_walk_chunk_does_not_blow_memory(measured: tuple[Sessions, SessionTree]) -> None:
    """A chunk's sizes: 300 KB stored, 300 MB inflated, for a directory of a few files. Reading it back must
    stop at what `count` entries can hold."""
    service, tree = measured
    _tamper_micrographs_chunk(service, tree, {"sizes": _zlib_bomb(300_000_000)})
    tracemalloc.start()
    try:
        service.refresh_session("P1", "S1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000_000, f"{peak / 1e6:.0f} MB for a refresh of a few dozen files"
    assert _sorted(_registry(service)) == _truth_registry(tree)


def _deep_file(top: Path, depth_bytes: int, size: int) -> int:
    """A file below a chain of directories longer, as one path, than the system's PATH_MAX (made with
    openat, as any user can); the depth of the chain."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    depth = 0
    try:
        while depth * 200 < depth_bytes:
            name = "d" * 199
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            depth += 1
        hidden = os.open("hidden.bin", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.truncate(hidden, size)
        os.close(hidden)
    finally:
        os.close(fd)
    return depth


@pytest.mark.parametrize("full", [True, False])
def test_files_below_a_path_longer_than_path_max_are_not_hidden_from_the_measure(
        measured: tuple[Sessions, SessionTree], full: bool) -> None:
    """`du -sb` counts them (it walks with openat). The walk opens a directory by its whole path, which fails
    with ENAMETOOLONG past PATH_MAX: taken for a directory gone, a user would hide any amount of data from the
    measure (and from the registry, so from every deletion) by nesting it deep enough. Past PATH_MAX the walk
    goes down one name at a time."""
    service, tree = measured
    before = _measures(service)["particles"]
    _deep_file(tree.session_path / "extract", 5000, 7_000_000)
    service.refresh_session("P1", "S1", full=full)
    size, count = _measures(service)["particles"]
    assert (size, count) == (before[0] + 7_000_000, before[1] + 1)


def test_two_incremental_refreshes_at_once_leave_no_path_twice_in_the_registry(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two refreshes of one session at once by two daemons on one database (in one process, walks of a session
    take turns): both walk, then both write. Both see the same new file and both append it: the registry's
    generation does not change on an append, so neither notices the other."""
    service, tree = measured
    other = service_on(service.store, make_config(tmp_path / "other-state"))
    (tree.session_path / "motioncorrected" / "new.mrc").write_bytes(b"n" * 10)
    both_walked = threading.Barrier(2, timeout=30)
    real_begin = service.store.begin_walk_write

    def begin_after_both_walked(*args: Any, **kwargs: Any) -> Any:
        both_walked.wait()
        return real_begin(*args, **kwargs)

    monkeypatch.setattr(service.store, "begin_walk_write", begin_after_both_walked)
    session = service.session("P1", "S1")
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda run: run[0].walks.measure("P1", "S1", session, str(tree.project_dir), full=run[1]),
                          [(service, False), (other, None)]))
    finally:
        other.walks.close()
    monkeypatch.undo()
    service.refresh_session("P1", "S1")  # the next refresh: whatever it does, it must leave the registry right
    registry = _registry(service)
    assert sorted(registry["micrographs"]) == _truth_registry(tree)["micrographs"], "a path listed twice"


def test_a_directory_that_cannot_be_read_fails_the_refresh_and_keeps_the_last_figures(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000 stops no root (these tests run as root): the listing's EACCES is made by hand. The refresh
    fails with the system's reason; the registry, the saved walk and the figures stay as the last refresh left
    them, and the categories do not stay `calculating`."""
    service, tree = measured
    before = (_measures(service), _sorted(_registry(service)))
    mc = tree.session_path / "motioncorrected"
    (mc / "new.mrc").write_bytes(b"n" * 10)
    def unreadable(real: Callable[..., Any]) -> Callable[..., Any]:
        def listing(fd: int, *args: Any) -> Any:
            if _fd_path(fd) == str(mc):
                raise PermissionError(13, "Permission denied")
            return real(fd, *args)
        return listing

    # a full walk lists the directory, an incremental one compares it with what it held or looks up the names
    # the change feed gives: all fail
    monkeypatch.setattr(dirwalk._dirstat, "list_dir", unreadable(dirwalk._dirstat.list_dir))
    monkeypatch.setattr(dirwalk._dirstat, "diff_dir", unreadable(dirwalk._dirstat.diff_dir))
    monkeypatch.setattr(dirwalk._dirstat, "probe_names", unreadable(dirwalk._dirstat.probe_names))
    open_fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(PermissionError, match="motioncorrected"):  # which directory: the C call cannot say
        service.refresh_session("P1", "S1")
    assert len(os.listdir("/proc/self/fd")) == open_fds, "the other directories of the round stay open"
    assert (_measures(service), _sorted(_registry(service))) == before
    assert {c["status"] for c in service.session("P1", "S1")["data_management"].values()} == {"active"}
    monkeypatch.undo()
    service.refresh_session("P1", "S1")
    assert _sorted(_registry(service)) == _truth_registry(tree)


def test_a_tampered_walk_header_naming_dot_dot_subdirs_does_not_lead_the_walk_out(
        measured: tuple[Sessions, SessionTree]) -> None:
    """A reused directory's subdirectories come from its saved header: '..' or '../..' there must not make
    the walk list (and register) the session's parent or the project's."""
    service, tree = measured
    store = service.store
    header = next(doc for doc in store.db.walks.find({"key": "P1/S1", "kind": "dir"})
                  if os.fsdecode(bytes.fromhex(doc["rel"])) == "S1/thumbnails")
    (tree.project_dir / "not_a_session_file.txt").write_bytes(b"p" * 1000)
    store.db.walks.update_one({"_id": header["_id"]}, {"$set": {"subdirs": [b"..".hex(), b"../..".hex()]}})
    service.refresh_session("P1", "S1")
    registry = _registry(service)
    assert not any("/.." in path for paths in registry.values() for path in paths), registry


def test_a_directory_the_daemon_may_not_open_is_not_taken_for_a_directory_gone(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch) -> None:
    """A user chmods a subdirectory 000 (livedmd runs as a service user, not root): opening it fails with
    EACCES. Taking that for 'gone' drops its files from the measure and the registry without a word (data
    hidden from the accounting, SPEC §5: missing is not empty). The refresh must fail, naming the directory,
    and keep the last figures. (Root ignores chmod: the EACCES is made by hand.)"""
    service, tree = measured
    before = (_measures(service), _sorted(_registry(service)))
    mc = tree.session_path / "motioncorrected"
    (mc / "new.mrc").write_bytes(b"n" * 10)
    real_open = os.open

    def denied(path: Any, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path) == str(mc):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(dirwalk.os, "open", denied)
    with pytest.raises(PermissionError, match="motioncorrected"):
        service.refresh_session("P1", "S1")
    monkeypatch.undo()
    assert (_measures(service), _sorted(_registry(service))) == before


@pytest.mark.parametrize("change", [{"rel": "not hex"}, {"subdirs": None}, {"ino": "x"}, {"chunks": 5}])
def test_a_tampered_walk_header_makes_the_refresh_walk_in_full(
        measured: tuple[Sessions, SessionTree], change: dict[str, Any]) -> None:
    """Saved state that cannot be read is no reason to fail every incremental refresh from now on (README:
    a refresh that finds the saved state unreadable walks in full by itself)."""
    service, tree = measured
    service.store.db.walks.update_one({"key": "P1/S1", "kind": "dir"}, {"$set": change})
    (tree.session_path / "motioncorrected" / "new.mrc").write_bytes(b"n" * 10)
    service.refresh_session("P1", "S1")
    assert _sorted(_registry(service)) == _truth_registry(tree)
    again = service.walks.measure("P1", "S1", service.session("P1", "S1"), str(tree.project_dir), full=False)
    assert not again.full, "the full walk saved a state the next refresh can use"
