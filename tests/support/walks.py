"""A measured session on the real store, and what its walks are checked against: a walk from scratch
(files.walk_session) and the registry a full refresh leaves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from livedm.server import files
from livedm.server.domain import DATATYPES
from livedm.server.session_walks import Measured
from livedm.server.sessions import Sessions
from livedm.server.store import Store
from testkit.sessiontree import SessionTree, build_session_tree
from tests.support.config import make_config, service_on

LAYOUT = make_config(Path("/nonexistent")).layout


def measured_session(store: Store, tmp_path: Path, *, exposures: int = 6,
                     **flags: object) -> Iterator[tuple[Sessions, SessionTree]]:
    """For a fixture: a session of six exposures, walked once (the change feed on) and its walk state written,
    its service closed after.
    `flags`: settings of the service's config (e.g. walk_threads="1")."""
    service = service_on(store, make_config(tmp_path / "state", **flags))
    tree = build_session_tree(tmp_path / "proj", exposures=exposures)
    service.create_project("p", str(tree.project_dir))
    service.create_live_session("P1", "s")
    service.refresh_session("P1", "S1")
    assert service.walks.wait_written(30), "the first walk's state was not written"
    yield service, tree
    service.walks.close()


def measure(service: Sessions, tree: SessionTree, full: bool | None = False) -> Measured:
    return service.walks.measure("P1", "S1", service.session("P1", "S1"), str(tree.project_dir), full=full)


def truth(tree: SessionTree) -> dict[str, tuple[int, int]]:
    """Bytes and files per category by a walk from scratch (no saved state at all)."""
    walked = files.walk_session(str(tree.project_dir), "S1", LAYOUT)
    return {dt: (walked[dt].size, walked[dt].present) for dt in DATATYPES}


def figures(measured: Measured) -> dict[str, tuple[int, int]]:
    return {dt: (t.size, t.present) for dt, t in measured.totals.items()}


def registry(service: Sessions) -> dict[str, list[str]]:
    session = service.session("P1", "S1")
    scan = service.store.read_registry("P1", "S1", session.get("scan_gen"), sources=("scan",))["scan"]
    return {dt: sorted(paths) for dt, paths in scan.items()}


def motioncorrected(tree: SessionTree) -> Path:
    return tree.session_path / "motioncorrected"
