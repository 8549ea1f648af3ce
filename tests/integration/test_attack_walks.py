"""Attacks on the incremental walk (server/dirwalk.py, server/session_walks.py, server/walk_docs.py) and the
packed scanned registry (server/store.py), as a hostile local user or a careless admin would make them: swaps
between a walk's listing and its opening or stat, hostile names, tampered store documents, concurrent and
killed refreshes. Every test keeps one attack; each says what must hold."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from livedm.server import dirwalk
from livedm.server.domain import DATATYPES
from livedm.server.sessions import Sessions
from testkit.sessiontree import SessionTree, build_session_tree


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
    real_list = dirwalk._dirstat.list_dir
    swapped = []

    def list_then_swap(fd: int) -> Any:
        listing = real_list(fd)
        if _fd_path(fd) == str(extract) and not swapped:
            extract.rename(tree.session_path / "extract.real")
            extract.symlink_to(outside)
            swapped.append(True)
        return listing

    monkeypatch.setattr(dirwalk._dirstat, "list_dir", list_then_swap)
    service.refresh_session("P1", "S1", full=full)
    assert swapped
    registry = _registry(service)
    assert not any("secret.key" in path for paths in registry.values() for path in paths), registry["particles"]
    assert _measures(service)["particles"][0] < before["particles"][0] + 50_000_000
