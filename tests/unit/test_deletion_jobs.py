"""The deletion job in batches, through the API: progress, the counts saved for a resumed job, and a
directory swapped for a symlink while the job runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from livedm.server import deletion
from livedm.server.jobs import JobRun
from livedm.server.unlinker import Outcome, Unlinker
from testkit.sessiontree import build_session_tree
from tests.support.api import Api

EXTRA = 9  # particles added beside the tree's own, so the directory spans several batches


@pytest.fixture
async def many_particles(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """P1 S1 completed, with EXTRA more particles in extract/blob/256, and batches of two files."""
    tree = build_session_tree(tmp_path / "proj", exposures=1)
    particles = tree.session_path / "extract" / "blob" / "256"
    for i in range(EXTRA):
        (particles / f"extra_{i}.mrc").write_bytes(b"e" * (i + 1))
    await api.ok("create_project", {"title": "p", "project_dir": str(tree.project_dir)})
    await api.ok("create_live_session", ["P1", "s"])
    await api.ok("mark_session_completed", ["P1", "S1"])
    monkeypatch.setattr(deletion, "BATCH_FILES", 2)
    return particles


def on_batch(monkeypatch: pytest.MonkeyPatch, number: int, action: Any) -> list[str]:
    """Run `action` just before the unlinker's batch `number` (1 is the first); the directories of the batches."""
    seen: list[str] = []
    real = Unlinker.unlink_batch

    def batch(self: Unlinker, rel_dir: str, names: Sequence[str]) -> Outcome:
        seen.append(rel_dir)
        if len(seen) == number:
            action()
        return real(self, rel_dir, names)

    monkeypatch.setattr(Unlinker, "unlink_batch", batch)
    return seen


async def test_a_directory_replaced_by_a_symlink_while_the_job_runs_keeps_the_rest(
        api: Api, many_particles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = sorted(p.name for p in many_particles.iterdir())
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    for name in names:
        (decoy / name).write_bytes(b"precious")
    moved = tmp_path / "moved"

    def swap() -> None:
        many_particles.rename(moved)
        many_particles.symlink_to(decoy)

    batches = on_batch(monkeypatch, 2, swap)
    job = await api.ok("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1", "datatype": "particles",
                                                "asynchronous": False})
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


async def test_progress_and_saved_counts_follow_the_batches(api: Api, many_particles: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[dict[str, Any]] = []
    monkeypatch.setattr(deletion, "SAVE_COUNTS_FILES", 4)
    real = JobRun.progress

    def progress(self: JobRun, force: bool = False, **fields: Any) -> None:
        if force:
            saved.append(fields)
        real(self, force, **fields)

    monkeypatch.setattr(JobRun, "progress", progress)
    total = EXTRA + 1
    job = await api.ok("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1", "datatype": "particles",
                                                "asynchronous": False})
    assert job["result"]["deleted"] == total and not any(many_particles.iterdir())
    assert [s["done"] for s in saved] == [4, 8, total]  # never more than 4 files deleted and not saved
    assert [s["deleted"] for s in saved] == [4, 8, total]
    assert job["progress"] == {"done": total, "total": total, "deleted": total,
                               "bytes_freed": job["result"]["bytes_freed"], "failed": 0}
