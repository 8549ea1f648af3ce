"""What went wrong with a category, as the table shows it: its last hook run failed, its deletion failed
(or left files), or its deletion is stuck. Pure: computed when sessions are read, from the category and,
for a category being deleted, the job that deletes it.
"""

from __future__ import annotations

from typing import Any

STUCK_QUEUED_S = 300.0  # a deletion queued this long has no free worker


def category_alert(category: dict[str, Any], deletion_job: dict[str, Any] | None,
                   now_s: float) -> dict[str, Any] | None:
    """{"kind", "message", "job_id"} for a category people should look at, or None. Kinds: `hook_failed` (the
    hook's last run, for the status the category has, failed), `deletion_stuck` (deleting, but its job is
    gone, failed, waits for a worker or lost its worker), `deletion_failed` (the last deletion stopped or left
    files: the category's note)."""
    status = category.get("status")
    if status == "deleting":
        stuck = _stuck(category.get("job_id"), deletion_job, now_s)
        return None if stuck is None else {"kind": "deletion_stuck", "message": stuck, "job_id": category.get("job_id")}
    hook = category.get("hook")
    if isinstance(hook, dict) and hook.get("state") == "failed" and hook.get("status") == status:
        return {"kind": "hook_failed", "job_id": hook.get("job_id"),
                "message": f"the hook run {hook.get('job_id')} for {status} failed: {hook.get('error')}"}
    if category.get("note"):
        return {"kind": "deletion_failed", "message": category["note"], "job_id": category.get("note_job_id")}
    return None


def _stuck(job_id: str | None, job: dict[str, Any] | None, now_s: float) -> str | None:
    if job is None:
        return f"its deletion job {job_id} is gone; livedm puts the category back to its status within a minute"
    if job["state"] == "failed":
        return (f"its deletion job {job_id} failed ({job.get('error')}); livedm puts the category back to its status "
                "within a minute")
    if job["state"] == "queued" and now_s - float(job.get("created_ts") or now_s) > STUCK_QUEUED_S:
        waited_min = (now_s - float(job["created_ts"])) / 60
        return (f"its deletion job {job_id} has waited {waited_min:.0f} min for a worker (`livedm jobs --state "
                "running` shows what runs; livedmd --workers sets how many run at once)")
    if job["state"] == "running" and float(job.get("lease_until") or now_s) < now_s:
        return (f"the worker running its deletion job {job_id} stopped answering {now_s - job['lease_until']:.0f} s "
                "ago; another worker takes the job over and goes on")
    return None
