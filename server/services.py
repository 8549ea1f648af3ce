"""Everything the API methods use, built once per process from the store and the settings."""

from __future__ import annotations

from dataclasses import dataclass

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
from .reads import SessionReader
from .sessions import Sessions
from .states import CategoryStates
from .store import Store
from .users import Users
from .worker import Handler, Workers


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
                   config=config)

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

        def maintenance() -> int:
            prune_hook_logs()
            return self.deletions.repair_stuck() + self.sessions.repair_calculating()

        return Workers(self.queue, self.job_handlers(), count, maintenance=maintenance)
