"""Attacks on the change feed of the movie directories (outside the session, where raw links point): whatever
happens there, an incremental refresh must count the raw bytes and movies a walk from scratch counts."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from livedm.server.sessions import Sessions
from livedm.server.store import Store
from testkit.sessiontree import SessionTree
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
