"""The JSON-RPC API: names and parameters as SPEC.md §2 gives them. Thin: each method checks nothing
the signature's type hints do not say, and hands over to the service. Plain methods run in a worker
thread, so they may block; the few `async` ones are hot reads that use the batched SessionReader."""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

from . import __version__
from .discovery import shown_job
from .domain import check_datatype, datatype_size
from .overview import overview_query
from .params import describe_type
from .rpc import ApiMethod, CallContext

API_VERSION = 1
METHODS: dict[str, ApiMethod] = {}


def api(access: str = "user", name: str | None = None,
        read_when: dict[str, Any] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an API method. `read_when`: arguments with which a call only reads (everyone may make it)."""
    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        method_name = name or func.__name__
        METHODS[method_name] = ApiMethod(method_name, func, access, inspect.signature(func),
                                         typing.get_type_hints(func), read_when=dict(read_when or {}))
        return func

    return register


@api(name="system.describe")
def system_describe(ctx: CallContext) -> dict[str, Any]:
    """The methods this server offers (cryosparc-tools' CommandClient asks for this first)."""
    return {"procs": _procs(), "server": "livedm", "version": __version__, "api_version": API_VERSION}


@functools.cache
def _procs() -> list[dict[str, Any]]:
    """The methods described, once: the table does not change while livedmd runs, and a batch of describes
    must not cost a walk of it each."""
    procs = []
    for method in METHODS.values():
        params = [{"name": p.name, "type": describe_type(method.hints.get(p.name, Any)),
                   **({} if p.default is inspect.Parameter.empty else {"default": p.default})}
                  for p in list(method.signature.parameters.values())[1:]]
        procs.append({"name": method.name, "params": params, "access": method.access,
                      **({"read_when": method.read_when} if method.read_when else {}),
                      "doc": inspect.getdoc(method.func) or ""})
    return procs


@api()
def whoami(ctx: CallContext) -> dict[str, Any]:
    """The caller: name, role and whether they may change live data."""
    user = ctx.user or {}
    return {"name": user.get("name"), "role": user.get("role"),
            "live_data_management": bool(user.get("live_data_management"))}


# --- projects and sessions -----------------------------------------------------------------------

@api(access="manage")
def create_project(ctx: CallContext, title: str, project_dir: str) -> dict[str, Any]:
    """Register a project whose directory exists (not a symlink, not inside another project); its uid is
    the next P<n>. Needs the live data management permission."""
    return ctx.services.sessions.create_project(title, project_dir)


@api()
def list_projects(ctx: CallContext) -> list[dict[str, Any]]:
    """Every project with its session count and per-datatype totals."""
    return ctx.services.sessions.list_projects()


@api()
def get_overview(ctx: CallContext, *, search: str | None = None, session_status: str | list[str] | None = None,
                 category_status: str | list[str] | None = None, expand: bool | list[str] = True,
                 collapse: list[str] | None = None, page: int = 1, page_size: int | None = None) -> dict[str, Any]:
    """The Data Management table: {"projects": [project with totals and its "sessions" on this page], "as_of",
    and where the page lies: "page", "page_size", "pages", "rows", "first_row", "last_row",
    "matched_projects", "matched_sessions", "facility" (totals of every project)}. By name only, all optional:
    search (text in a project's or session's uid, title or owner, any case), session_status (running, paused,
    completed) and category_status (a category's: active, archiving, ...), one or a list; expand (true, or
    the projects whose sessions are rows) and collapse; page (from 1) and page_size (rows, at most 500;
    none: every row)."""
    query = overview_query(search=search, session_status=session_status, category_status=category_status,
                           expand=expand, collapse=collapse, page=page, page_size=page_size)
    return ctx.services.overview.get(query)


@api()
def get_project(ctx: CallContext, project_uid: str) -> dict[str, Any]:
    """One project with its session count and per-datatype totals."""
    return ctx.services.sessions.get_project(project_uid)


@api()
def create_live_session(ctx: CallContext, project_uid: str, title: str,
                        session_dir: str | None = None) -> dict[str, Any]:
    """A new session (status paused) with data_management initialised; session_dir defaults to its uid."""
    return ctx.services.sessions.create_live_session(project_uid, title, session_dir)


@api()
def list_sessions(ctx: CallContext, project_uid: str) -> list[dict[str, Any]]:
    """The project's sessions, oldest first."""
    return ctx.services.sessions.list_sessions(project_uid)


@api()
def get_session(ctx: CallContext, project_uid: str, session_uid: str) -> dict[str, Any]:
    """One session with its data_management."""
    return ctx.services.sessions.get_session(project_uid, session_uid)


@api()
async def start_session(ctx: CallContext, project_uid: str, session_uid: str) -> dict[str, Any]:
    """Mark the session running."""
    return await ctx.services.disk.run(ctx.services.sessions.change_session_status, project_uid, session_uid,
                                       "start")


@api()
async def pause_session(ctx: CallContext, project_uid: str, session_uid: str) -> dict[str, Any]:
    """Mark the session paused and refresh its sizes."""
    return await ctx.services.disk.run(ctx.services.sessions.change_session_status, project_uid, session_uid,
                                       "pause")


@api()
async def mark_session_completed(ctx: CallContext, project_uid: str, session_uid: str) -> dict[str, Any]:
    """Mark the session completed (category actions need this) and refresh its sizes."""
    return await ctx.services.disk.run(ctx.services.sessions.change_session_status, project_uid, session_uid,
                                       "complete")


# --- files and sizes (the seed's API) ------------------------------------------------------------

@api(access="manage")
async def register_files(ctx: CallContext, project_uid: str, session_uid: str, datatype: str,
                         paths: list[str]) -> dict[str, Any]:
    """Add files (absolute, or relative to the project dir; inside the project, not in another session's
    directory nor registered to another session) to a category. Needs the live data management permission."""
    return await ctx.services.disk.run(ctx.services.sessions.register_files, project_uid, session_uid, datatype,
                                       paths=paths)


@api()
async def scan_session(ctx: CallContext, project_uid: str, session_uid: str) -> dict[str, Any]:
    """Find the session's files by the layout rules and measure them; the new data_management."""
    return await ctx.services.disk.run_coalesced(("scan", project_uid, session_uid),
                                                 ctx.services.sessions.refresh_session, project_uid, session_uid)


@api()
async def get_datatype_file_paths(ctx: CallContext, project_uid: str, session_uid: str,
                                  datatype: str) -> dict[str, list[str]]:
    """{datatype: [absolute paths]}; raw gives the movie files (symlink targets). Not for thumbnails."""
    return await ctx.services.disk.run(ctx.services.sessions.get_datatype_file_paths, project_uid, session_uid,
                                       datatype)


@api()
async def get_datatype_size(ctx: CallContext, project_uid: str, session_uid: str, datatype: str) -> int:
    """Bytes of the category, as last measured."""
    return datatype_size(await ctx.services.reader.session(project_uid, session_uid), datatype)


@api()
async def update_session_datatype_sizes(ctx: CallContext, project_uid: str, session_uid: str,
                                       full: bool = False) -> int:
    """Measure every datatype of the session now; the session's total bytes. Only directories that changed
    since the last walk are read again; full=true stats every file (catches files rewritten in place)."""
    return await ctx.services.disk.run_coalesced(("sizes", project_uid, session_uid, full),
                                                 ctx.services.sessions.update_session_datatype_sizes, project_uid,
                                                 session_uid, full=full)


@api()
def get_data_management_stats(ctx: CallContext, project_uid: str) -> dict[str, Any]:
    """{session_uid: data_management} for every session of the project."""
    return ctx.services.sessions.get_data_management_stats(project_uid)


@api()
async def get_project_file_paths(ctx: CallContext, project_uid: str) -> dict[str, Any]:
    """"Download Project Stats": {session_uid: {datatype: [absolute paths]}}."""
    return await ctx.services.disk.run(ctx.services.sessions.get_project_file_paths, project_uid)


# --- category states and the audit log -----------------------------------------------------------

@api(access="manage")
def change_session_data_management_state(ctx: CallContext, project_uid: str, session_uid: str, datatype: str,
                                         status: str) -> dict[str, Any]:
    """Mark a category active, archiving, archived or deleted ("deleted" only marks: files stay).
    Completed sessions only; not thumbnails. The session's data_management."""
    data_management, _changed = ctx.services.categories.change_state(
        ctx.actor, project_uid, session_uid, datatype=datatype, status=status)
    return data_management


@api()
def get_audit_log(ctx: CallContext, project_uid: str | None = None, session_uid: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
    """Newest first: state changes, deletions, permission changes, hook runs."""
    return ctx.services.audit.query(project_uid, session_uid, limit)


# --- users (admins only) -------------------------------------------------------------------------

@api(access="admin")
def create_user(ctx: CallContext, name: str, role: str = "user") -> dict[str, Any]:
    """A new user (role admin or user) and its API token, shown this once."""
    return ctx.services.users.create_user(ctx.actor, name, role)


@api(access="admin")
def list_users(ctx: CallContext) -> list[dict[str, Any]]:
    """Every user with role and live data management permission (not livedm's own hook account)."""
    return ctx.services.users.list_users()


@api(access="admin")
def issue_token(ctx: CallContext, user: str) -> dict[str, str]:
    """A new API token for the user (older ones keep working until revoked)."""
    return ctx.services.users.issue_token(ctx.actor, user)


@api(access="admin")
def revoke_token(ctx: CallContext, user: str) -> dict[str, Any]:
    """Revoke every token of the user."""
    return ctx.services.users.revoke_token(ctx.actor, user)


@api(access="admin")
def remove_user(ctx: CallContext, user: str) -> dict[str, Any]:
    """Remove the user and revoke all of their tokens; the audit log keeps their name. Not yourself, not the
    last admin who can sign in."""
    return ctx.services.users.remove_user(ctx.actor, user)


@api(access="admin")
def set_user_role(ctx: CallContext, user: str, role: str) -> dict[str, Any]:
    """Make the user an admin or a user (never leaving no admin who can sign in)."""
    return ctx.services.users.set_role(ctx.actor, user, role)


@api(access="admin")
def set_user_data_management_permission(ctx: CallContext, user: str, enabled: bool) -> dict[str, Any]:
    """Allow or forbid the user to mark and delete live session data."""
    return ctx.services.users.set_permission(ctx.actor, user, enabled)


# --- deletion, background jobs and the hook ------------------------------------------------------

WAIT_FIRST_POLL_S = 0.02
WAIT_MAX_POLL_S = 0.5


@api(access="manage", read_when={"dry_run": True})
async def delete_live_datatype(ctx: CallContext, project_uid: str, session_uid: str, datatype: str,
                               filepaths_to_delete: dict[str, list[str]] | list[str] | None = None,
                               user_id: str | None = None, asynchronous: bool = True,
                               dry_run: bool = False, confirm_digest: str | None = None) -> Any:
    """Delete the category's files (or the listed subset, all registered to it) in a background job.
    Not raw; completed sessions only. The job id; with asynchronous=False the finished job; with
    dry_run=True the file count and bytes that would go and a confirm_digest, changing nothing (a read: it
    needs no permission). Given that confirm_digest, the deletion goes ahead only if the list is still
    exactly the one shown. Deleting needs the live data management permission."""
    deletions = ctx.services.deletions
    if dry_run:
        return await ctx.services.disk.run(deletions.preview, ctx.caller, project_uid, session_uid,
                                           datatype=datatype, filepaths=filepaths_to_delete, user_id=user_id)
    job_id = await ctx.services.disk.run(deletions.request, ctx.caller, project_uid, session_uid,
                                         datatype=datatype, filepaths=filepaths_to_delete, user_id=user_id,
                                         confirm_digest=confirm_digest)
    if asynchronous:
        return job_id
    return await wait_for_job(ctx, job_id)


async def wait_for_job(ctx: CallContext, job_id: str) -> dict[str, Any]:
    poll_s = WAIT_FIRST_POLL_S  # short jobs answer quickly, long ones cost few reads
    while True:
        job = await asyncio.to_thread(ctx.services.queue.get, job_id)
        if job["state"] in ("done", "failed"):
            return job
        await asyncio.sleep(poll_s)
        poll_s = min(poll_s * 2, WAIT_MAX_POLL_S)


@api()
def update_all_sessions_datatype_sizes(ctx: CallContext, project_uid: str, session_uid: str | None = None,
                                       full: bool = False) -> str:
    """Measure every session of the project (or only session_uid) in a background job; the job id
    (get_job shows progress). full=true stats every file instead of re-reading what changed."""
    params: dict[str, Any] = {"project_uid": project_uid}
    if session_uid is None:
        ctx.services.sessions.project(project_uid)
    else:
        ctx.services.sessions.session(project_uid, session_uid)
        params["session_uid"] = session_uid
    if full:
        params["full"] = True
    return ctx.services.queue.enqueue("refresh_sizes", params, ctx.actor)


@api(access="manage")
def trigger_live_data_management_script(ctx: CallContext, project_uid: str, session_uid: str, datatype: str,
                                        status: str | None = None, script_location: str | None = None,
                                        script_log_path_abs: str | None = None) -> str:
    """Run the hook script now (only when enabled); the overrides need an admin. The job id."""
    session = ctx.services.sessions.session(project_uid, session_uid)
    current = session["data_management"][check_datatype(datatype)]["status"]
    return ctx.services.hooks.trigger(ctx.caller, project_uid, session_uid, datatype=datatype, status=status,
                                      script_location=script_location,
                                      script_log_path_abs=script_log_path_abs, current_status=current)


# --- discovery ---------------------------------------------------------------------------------

@api(access="manage")
async def discover(ctx: CallContext, dry_run: bool = False) -> Any:
    """Look for cryoSPARC projects and Live sessions under the discovery roots now: the job id (one pass
    runs at a time; asking while one is queued or running gives its id). With dry_run=True, what a pass
    would add, change and mark gone, and its conflicts and unreadable files, changing nothing."""
    if dry_run:  # a walk of every root: in the disk threads, and dry runs asked meanwhile share the next one
        return await ctx.services.disk.run_coalesced("discover-dry-run", ctx.services.discovery.dry_run)
    job_id, _new = await asyncio.to_thread(ctx.services.queue.enqueue_single, "discover", {}, ctx.actor)
    return job_id


@api()
def get_discovery_report(ctx: CallContext) -> dict[str, Any]:
    """The last discovery pass: when, the roots reached or not, what it found, added and marked gone, its
    conflicts and unreadable files (their paths only for users with the live data management permission)."""
    return ctx.services.discovery.last_report(with_paths=bool(ctx.caller.get("live_data_management")))


@api()
def get_all_sessions_in_project(ctx: CallContext, project_uid: str) -> list[dict[str, Any]]:
    """cryoSPARC v4's rtp call: the project's Live session documents as cryoSPARC lists them (uid is the
    workspace's, session_uid the session's), data_management included."""
    return ctx.services.sessions.cryosparc_sessions(project_uid)


@api()
def get_job(ctx: CallContext, job_id: str) -> dict[str, Any]:
    """A background job: kind, state (queued/running/done/failed), progress, result, error, times."""
    return shown_job(ctx.services.queue.get(job_id), bool(ctx.caller.get("live_data_management")))


@api(access="manage")
def get_job_log(ctx: CallContext, job_id: str, offset: int | None = None, limit: int = 65536) -> dict[str, Any]:
    """A piece of a hook run's log: `limit` bytes (at most 1 MiB) from byte `offset`, or its last `limit` bytes
    (offset null), as text of whole UTF-8 characters, with `size` and `next_offset` to read on from. Needs the
    live data management permission: a log holds paths and whatever the script printed."""
    return ctx.services.hooks.read_log(ctx.services.queue.get(job_id), offset=offset, limit=limit)


@api()
def list_jobs(ctx: CallContext, kind: str | None = None, state: str | None = None, project_uid: str | None = None,
              limit: int = 50) -> list[dict[str, Any]]:
    """Recent jobs, newest first, filtered by kind, state or project."""
    with_paths = bool(ctx.caller.get("live_data_management"))
    return [shown_job(job, with_paths) for job in ctx.services.queue.list(kind, state, project_uid, limit=limit)]
