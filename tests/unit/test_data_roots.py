"""Data roots: the first line of defence, checked at project creation and again at delete time."""

from __future__ import annotations

from pathlib import Path

import pytest

from livedm.server.auth import Authenticator
from livedm.server.config import ConfigError
from livedm.server.errors import FORBIDDEN, ApiError
from livedm.server.jobs import JobFailed, JobRun
from livedm.server.services import Services
from livedm.server.store import Store
from testkit.sessiontree import build_session_tree
from tests.support.config import make_config

ADMIN = {"name": "admin", "role": "admin", "live_data_management": True}


def services(store: Store, tmp_path: Path, roots: str) -> Services:
    return Services.build(store, make_config(tmp_path / "state", data_roots=roots), Authenticator(store, 2))


def test_projects_outside_the_roots_are_refused(mock_store: Store, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "other").mkdir()
    s = services(mock_store, tmp_path, str(tmp_path / "data"))
    with pytest.raises(ApiError) as info:
        s.sessions.create_project("p", str(tmp_path / "other"))
    assert info.value.code == FORBIDDEN
    assert s.sessions.create_project("p", str(tmp_path / "data"))["uid"] == "P1"


def test_a_deletion_is_checked_again_when_it_runs(mock_store: Store, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=2)
    allowed = services(mock_store, tmp_path, str(tmp_path / "data"))
    allowed.sessions.create_project("p", str(tree.project_dir))
    allowed.sessions.create_live_session("P1", "s")
    allowed.sessions.change_session_status("P1", "S1", "complete")
    job_id = allowed.deletions.request(ADMIN, "P1", "S1", datatype="particles", filepaths=None, user_id=None)
    narrowed = services(mock_store, tmp_path, str(tmp_path / "elsewhere"))  # the roots changed meanwhile
    job = narrowed.queue.claim("w")
    assert job is not None and job["id"] == job_id
    with pytest.raises(JobFailed, match="outside the data roots"):
        narrowed.deletions.run(JobRun(job, narrowed.queue))
    assert all(Path(p).exists() for p in tree.paths_by_datatype["particles"])
    category = narrowed.sessions.get_session("P1", "S1")["data_management"]["particles"]
    assert category["status"] == "active" and category["job_id"] is None
    with pytest.raises(ApiError) as info:
        narrowed.deletions.preview(ADMIN, "P1", "S1", datatype="particles", filepaths=None, user_id=None)
    assert info.value.code == FORBIDDEN


def test_roots_come_as_a_path_list(tmp_path: Path) -> None:
    config = make_config(tmp_path, data_roots="/data/a:/data/b/")
    assert config.data_roots == ("/data/a", "/data/b")
    assert make_config(tmp_path, data_roots="").data_roots == ()
    with pytest.raises(ConfigError, match="not an absolute path"):
        make_config(tmp_path, data_roots="/data/a:relative/b")
