"""Everything the API methods use, built once per process from the store and the settings."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .audit import Audit
from .auth import Authenticator
from .categories import Categories
from .config import Config
from .deletion import Deletions
from .discovery import Discovery
from .diskpool import DiskPool
from .hook_logs import Pruner
from .hooks import Hooks
from .jobs import JobFailed, JobRun, Queue
from .overview import Overview
from .overview_index import OverviewIndex
from .reads import SessionReader
from .sessions import Sessions
from .states import CategoryStates
from .store import Store
from .users import Users
from .worker import Handler, Workers

RECONCILE_TOTALS_EVERY_S = 3600.0  # project totals summed again from the sessions: no drift outlives this


class Every:
    """Runs `action` at most once every `period_s`; the first call runs it."""

    def __init__(self, period_s: float, action: Callable[[], Any]) -> None:
        self.period_s = period_s
        self.action = action
        self.last_s: float | None = None

    def __call__(self) -> Any:
        now_s = time.monotonic()
        if self.last_s is not None and now_s - self.last_s < self.period_s:
            return None
        self.last_s = now_s
        return self.action()


@dataclass(frozen=True)
class Services:
    sessions: Sessions
    reader: SessionReader
    categories: Categories
    users: Users
    audit: Audit
    queue: Queue
    hooks: Hooks
    deletions: Deletions
    discovery: Discovery
    disk: DiskPool
    config: Config
    overview: Overview

    @classmethod
    def build(cls, store: Store, config: Config, authenticator: Authenticator) -> Services:
        audit = Audit(store)
        queue = Queue(store, lease_s=config.job_lease_s, max_attempts=config.job_max_attempts)
        hooks = Hooks(config, store, queue, audit=audit, token_revoked=authenticator.forget_token)
        states = CategoryStates(store, audit, hooks)
        sessions = Sessions(store, config, states)
        return cls(sessions=sessions, reader=SessionReader(store, config.session_cache_s),
                   categories=Categories(sessions, states),
                   users=Users(store, audit, changed=authenticator.forget), audit=audit, queue=queue, hooks=hooks,
                   deletions=Deletions(sessions, queue, audit, states=states),
                   discovery=Discovery(sessions, store, queue, audit, config), disk=DiskPool(config.disk_threads),
                   config=config, overview=Overview(store, sessions, OverviewIndex(store)))

    def close(self) -> None:
        self.disk.close()
        self.sessions.walks.close()

    def job_handlers(self) -> dict[str, Handler]:
        def refresh_sizes(run: JobRun) -> dict[str, int]:
            params = run.params if isinstance(run.params, dict) else {}
            project_uid, session_uid = params.get("project_uid"), params.get("session_uid")
            full = params.get("full", False)
            if not isinstance(project_uid, str) or not set(params) <= {"project_uid", "session_uid", "full"} \
                    or not isinstance(session_uid, str | None) or not isinstance(full, bool):
                raise JobFailed("not a valid size refresh job; nothing was done")
            return self.sessions.refresh_project(project_uid, run.progress, only=session_uid, full=full)

        def refresh_due(run: JobRun) -> dict[str, int]:
            if run.params:
                raise JobFailed("not a valid scheduled refresh job; nothing was done")
            return self.sessions.refresh_due(self.config.refresh_interval, run.progress)

        return {"delete": self.deletions.run, "hook": self.hooks.run, "refresh_sizes": refresh_sizes,
                "discover": self.discovery.run, "refresh_due": refresh_due}

    def workers(self, count: int) -> Workers:
        prune_hook_logs = Pruner(self.config)  # at most hourly
        reconcile_totals = Every(RECONCILE_TOTALS_EVERY_S, self.sessions.store.reconcile_totals)  # first at start

        def maintenance() -> int:
            prune_hook_logs()
            reconcile_totals()
            return self.deletions.repair_stuck() + self.sessions.repair_calculating()

        return Workers(self.queue, self.job_handlers(), count, maintenance=maintenance)
