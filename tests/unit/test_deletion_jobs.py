"""The deletion job in batches on a few threads, through the API: progress, the counts saved for a
resumed job, and a directory swapped for a symlink while the job runs."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from livedm.server import deletion
from livedm.server.jobs import Queue
from livedm.server.unlinker import Outcome, Unlinker
from testkit.sessiontree import build_session_tree
from tests.support.api import Api

EXTRA = 9  # particles added beside the tree's own in each extra directory


async def completed_with(api: Api, tmp_path: Path, directories: list[str]) -> Path:
    """P1 S1 completed, with EXTRA more particles in each of extract/<directories>; the extract dir."""
    tree = build_session_tree(tmp_path / "proj", exposures=1)
    extract = tree.session_path / "extract"
    for directory in directories:
        (extract / directory).mkdir(parents=True, exist_ok=True)
        for i in range(EXTRA):
            (extract / directory / f"extra_{i}.mrc").write_bytes(b"e" * (i + 1))
    await api.ok("create_project", {"title": "p", "project_dir": str(tree.project_dir)})
    await api.ok("create_live_session", ["P1", "s"])
    await api.ok("mark_session_completed", ["P1", "S1"])
    return extract


def on_batch(monkeypatch: pytest.MonkeyPatch, number: int, action: Any) -> list[str]:
    """Run `action` just before the unlinkers' batch `number` (1 is the first); the directories of the batches."""
    seen: list[str] = []
    real = Unlinker.unlink_batch

    def batch(self: Unlinker, rel_dir: str, names: Sequence[str]) -> Outcome:
        seen.append(rel_dir)
        if len(seen) == number:
            action()
        return real(self, rel_dir, names)

    monkeypatch.setattr(Unlinker, "unlink_batch", batch)
    return seen


def delete_particles() -> dict[str, Any]:
    return {"project_uid": "P1", "session_uid": "S1", "datatype": "particles", "asynchronous": False}


async def test_a_directory_replaced_by_a_symlink_while_the_job_runs_keeps_the_rest(
        api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    particles = await completed_with(api, tmp_path, ["blob/256"]) / "blob" / "256"  # one directory: one thread
    monkeypatch.setattr(deletion, "BATCH_FILES", 2)
    names = sorted(p.name for p in particles.iterdir())
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    for name in names:
        (decoy / name).write_bytes(b"precious")
    moved = tmp_path / "moved"

    def swap() -> None:
        particles.rename(moved)
        particles.symlink_to(decoy)

    batches = on_batch(monkeypatch, 2, swap)
    job = await api.ok("delete_live_datatype", delete_particles())
    assert len(batches) == (len(names) + 1) // 2
    assert job["state"] == "done" and job["result"]["deleted"] == 2, job
    assert job["result"]["refused"] == len(names) - 2
    kept = sorted(p.name for p in moved.iterdir())
    assert len(kept) == len(names) - 2 and set(kept) < set(names)  # the first batch went, the rest stayed
    assert all((decoy / name).read_bytes() == b"precious" for name in names)
    category = (await api.ok("get_session", ["P1", "S1"]))["data_management"]["particles"]
    assert category["status"] == "active" and "refused as unsafe" in category["note"]
    audit = next(e for e in await api.ok("get_audit_log", {}) if e["action"] == "deleted")
    assert (audit["files"], audit["refused"]) == (2, len(names) - 2)


async def test_never_more_deleted_than_saved_counts_know_of_plus_the_bound(
        api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whenever a batch starts, the files handed to batches so far exceed the last saved count by at most
    SAVE_COUNTS_FILES: a job killed at that moment has deleted at most that many its counts miss."""
    extract = await completed_with(api, tmp_path, [f"d{i}" for i in range(6)])
    bound = 6
    monkeypatch.setattr(deletion, "BATCH_FILES", 2)
    monkeypatch.setattr(deletion, "SAVE_COUNTS_FILES", bound)
    lock = threading.Lock()
    handed = {"files": 0, "saved": 0, "worst": 0, "threads": set()}
    real_batch, real_progress = Unlinker.unlink_batch, Queue.progress

    def batch(self: Unlinker, rel_dir: str, names: Sequence[str]) -> Outcome:
        with lock:
            handed["files"] += len(names)
            handed["worst"] = max(handed["worst"], handed["files"] - handed["saved"])
            handed["threads"].add(threading.get_ident())
        return real_batch(self, rel_dir, names)

    def progress(self: Queue, job: dict[str, Any], fields: dict[str, Any]) -> None:
        real_progress(self, job, fields)
        with lock:
            handed["saved"] = fields["done"]

    monkeypatch.setattr(Unlinker, "unlink_batch", batch)
    monkeypatch.setattr(Queue, "progress", progress)
    job = await api.ok("delete_live_datatype", delete_particles())
    total = 6 * EXTRA + 1
    assert job["result"]["deleted"] == total and not any(p.is_file() for p in extract.rglob("*"))
    assert 0 < handed["worst"] <= bound
    assert len(handed["threads"]) > 1, "the directories went on several threads"
    assert job["progress"] == {"done": total, "total": total, "deleted": total,
                               "bytes_freed": job["result"]["bytes_freed"], "failed": 0}
