"""The category state machine: one table, one writer, every change audited and (when people see it)
hooked; nothing else writes a category's status."""

from __future__ import annotations

import ast
import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from livedm.server import states
from livedm.server.auth import Authenticator
from livedm.server.domain import DATATYPES
from livedm.server.services import Services
from livedm.server.states import TRANSITIONS, IllegalTransition
from livedm.server.store import Store
from testkit.sessiontree import build_session_tree
from tests.support.config import make_config
from tests.support.hook_scripts import executable

SERVER = Path(states.__file__).parent
README = SERVER.parent / "README.md"


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == name]


def _modules() -> dict[str, ast.Module]:
    return {path.name: ast.parse(path.read_text()) for path in sorted(SERVER.glob("*.py"))}


def test_only_the_state_module_changes_a_category_status() -> None:
    modules = _modules()
    callers = {name for name, tree in modules.items() if _calls(tree, "set_category_status")}
    assert callers == {"states.py"}
    generic = {name for name, tree in modules.items() if _calls(tree, "_update_session")}
    assert generic == {"store.py"}, "sessions are written through the store's named methods only"
    store = modules["store.py"]
    flagged = [fn.name for fn in ast.walk(store) if isinstance(fn, ast.FunctionDef)
               for call in _calls(fn, "_update_session")
               if any(k.arg == "writes_category_status" for k in call.keywords)]
    assert flagged == ["set_category_status"]


def test_the_store_refuses_a_status_written_any_other_way(mock_store: Store, tmp_path: Path) -> None:
    services = Services.build(mock_store, make_config(tmp_path / "state"), Authenticator(mock_store, 2))
    (tmp_path / "proj").mkdir()
    services.sessions.create_project("p", str(tmp_path / "proj"))
    services.sessions.create_live_session("P1", "s")
    mock_store.set_measures("P1", "S1", {"raw": {"size": 1, "status": "archived"}})  # a status is never measured
    with pytest.raises(AssertionError, match="set_category_status"):
        mock_store._update_session("P1", "S1", {}, {"$set": {"data_management.raw.status": "archived"}})
    assert services.sessions.get_session("P1", "S1")["data_management"]["raw"]["status"] == "active"


def test_the_table_allows_only_what_it_says(mock_store: Store, tmp_path: Path) -> None:
    services = Services.build(mock_store, make_config(tmp_path / "state"), Authenticator(mock_store, 2))
    machine = services.sessions.states
    (tmp_path / "proj").mkdir()
    services.sessions.create_project("p", str(tmp_path / "proj"))
    services.sessions.create_live_session("P1", "s")
    for source, targets in TRANSITIONS.items():
        assert source not in targets, f"{source} -> {source} is not a change"
        for target in set(TRANSITIONS) - set(targets) - {source}:
            with pytest.raises(IllegalTransition):
                machine.change(project_uid="P1", session_uid="S1", datatype="raw", expect=source, to=target,
                               actor="t", by="user")
    assert machine.change(project_uid="P1", session_uid="S1", datatype="raw", expect="archived", to="active",
                          actor="t", by="user") is None, "the category is not archived: nothing changes"
    assert mock_store.find_audit(limit=10) == []


def test_the_readme_prints_the_table() -> None:
    text = README.read_text()
    start = text.index("<!-- transitions:start -->") + len("<!-- transitions:start -->")
    end = text.index("<!-- transitions:end -->")
    assert text[start:end].strip() == states.markdown_table(), "paste states.markdown_table() into the README"


def test_missing_is_audited_and_hooked_and_deleting_is_not_hooked(mock_store: Store, tmp_path: Path) -> None:
    script = executable(tmp_path / "hook.sh", "#!/bin/sh\n")
    config = make_config(tmp_path / "state", hook_enable="true", hook_path=str(script))
    services = Services.build(mock_store, config, Authenticator(mock_store, 2))
    tree = build_session_tree(tmp_path / "proj", exposures=2)
    services.sessions.create_project("p", str(tree.project_dir))
    services.sessions.create_live_session("P1", "s")
    services.sessions.change_session_status("P1", "S1", "complete")
    shutil.rmtree(tree.movies_dir)  # the raw links stay: their movies are gone
    services.sessions.refresh_session("P1", "S1")
    assert services.sessions.get_session("P1", "S1")["data_management"]["raw"]["status"] == "missing"
    entry = next(e for e in mock_store.find_audit(limit=10) if e["action"] == "state_changed")
    assert (entry["actor"], entry["by"], entry["old_status"], entry["status"]) == ("livedm", "refresh", "active",
                                                                                  "missing")
    hooks = [j["params"] for j in services.queue.list("hook", None, None, limit=50)]
    assert hooks == [{"project_uid": "P1", "session_uid": "S1", "datatype": "raw", "status": "missing"}]
    services.deletions.request({"name": "admin", "role": "admin"}, "P1", "S1", datatype="particles",
                               filepaths=None, user_id=None)
    assert len(services.queue.list("hook", None, None, limit=50)) == 1, "deleting is transitional: no hook"
    entries = mock_store.find_audit(limit=10)  # entries of one millisecond may come in any order
    assert "deletion_requested" in {e["action"] for e in entries}
    changed = {(e["datatype"], e["old_status"], e["status"], e["by"])
               for e in entries if e["action"] == "state_changed"}
    assert {("particles", "active", "deleting", "user"), ("raw", "active", "missing", "refresh")} <= changed


def _one_session(store: Store, tmp_path: Path) -> Services:
    services = Services.build(store, make_config(tmp_path / "state"), Authenticator(store, 2))
    build_session_tree(tmp_path / "proj", exposures=2)
    services.sessions.create_project("p", str(tmp_path / "proj"))
    services.sessions.create_live_session("P1", "s")
    return services


def test_a_refresh_shows_calculating_and_goes_back_without_audit_or_hook(mock_store: Store, tmp_path: Path) -> None:
    services = _one_session(mock_store, tmp_path)
    seen: list[str] = []
    walk = services.sessions.walks.measuring

    @contextlib.contextmanager
    def watching_walk(*args: Any, **kwargs: Any) -> Iterator[Any]:
        seen.append(services.sessions.get_session("P1", "S1")["data_management"]["micrographs"]["status"])
        with walk(*args, **kwargs) as measured:
            yield measured

    services.sessions.walks.measuring = watching_walk  # type: ignore[method-assign]
    audit_before = len(mock_store.find_audit(limit=1000))
    services.sessions.refresh_session("P1", "S1")
    assert seen == ["calculating"]
    after = services.sessions.get_session("P1", "S1")
    assert {c["status"] for c in after["data_management"].values()} == {"active"}
    assert after["measured_at"] is not None
    assert len(mock_store.find_audit(limit=1000)) == audit_before, "a round trip through calculating is quiet"
    assert services.queue.list("hook", None, None, limit=50) == []


def test_a_measure_that_fails_puts_the_statuses_back(mock_store: Store, tmp_path: Path) -> None:
    services = _one_session(mock_store, tmp_path)

    def broken_walk(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk went away")

    services.sessions.walks.measuring = broken_walk  # type: ignore[method-assign]
    with pytest.raises(OSError):
        services.sessions.refresh_session("P1", "S1")
    assert {c["status"] for c in services.sessions.get_session("P1", "S1")["data_management"].values()} == {"active"}


def test_calculating_left_by_a_dead_daemon_is_repaired_once_stale(mock_store: Store, tmp_path: Path) -> None:
    services = _one_session(mock_store, tmp_path)
    services.sessions._begin_measure("P1", "S1", mock_store.get_session("P1", "S1"))
    assert services.sessions.repair_calculating(stale_s=3600) == 0, "a measure may still be running"
    assert services.sessions.repair_calculating(stale_s=-1) == len(DATATYPES)
    assert {c["status"] for c in services.sessions.get_session("P1", "S1")["data_management"].values()} == {"active"}


def test_a_refresh_round_trip_is_one_write_each_way_and_falls_back_when_a_status_moved(
        mock_store: Store, tmp_path: Path) -> None:
    services = _one_session(mock_store, tmp_path)
    services.sessions.refresh_session("P1", "S1")
    writes: list[int] = []
    real = mock_store.set_category_status

    def counting(*args: Any, **kwargs: Any) -> Any:
        writes.append(1 + len(kwargs.get("also") or {}))
        return real(*args, **kwargs)

    mock_store.set_category_status = counting  # type: ignore[method-assign]
    services.sessions.refresh_session("P1", "S1")
    assert writes == [len(DATATYPES), len(DATATYPES)], "all categories to calculating and back, in one write each"
    writes.clear()
    real_quiet = services.sessions.states.change_quietly
    lost_once = [True]

    def losing_the_race(**kwargs: Any) -> Any:  # another writer moved a status between read and write
        if lost_once.pop() if lost_once else False:
            return None
        return real_quiet(**kwargs)

    services.sessions.states.change_quietly = losing_the_race  # type: ignore[method-assign]
    audit_before = len(mock_store.find_audit(limit=1000))
    services.sessions.refresh_session("P1", "S1")
    after = services.sessions.get_session("P1", "S1")["data_management"]
    assert {c["status"] for c in after.values()} == {"active"}
    assert writes == [1] * len(DATATYPES) + [len(DATATYPES)], "one by one to calculating, then back in one"
    assert len(mock_store.find_audit(limit=1000)) == audit_before
