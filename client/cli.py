"""`livedm`: the command line of livedmd. `rtpcli` for scripts (as cryoSPARC's), `ls` and friends for people."""

from __future__ import annotations

import argparse
import code
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .callparse import CallSyntaxError, parse_call
from .format import DATATYPE_COLUMNS, category_cell, human_size, short_time, table
from .rpc import CommandClient, LivedmError, Unreachable

EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def print_result(result: Any) -> None:
    """Strings and numbers bare (shell scripts capture them); everything else as JSON."""
    if isinstance(result, str) or (isinstance(result, (int, float)) and not isinstance(result, bool)):
        print(result)
    else:
        print(json.dumps(result))


def cmd_rtpcli(client: CommandClient, args: argparse.Namespace) -> int:
    try:
        method, params = parse_call(args.call)
    except CallSyntaxError as exc:
        print(f"livedm rtpcli: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print_result(client.send(method, params))
    return EXIT_OK


def cmd_icli(client: CommandClient, args: argparse.Namespace) -> int:
    methods = client.methods()
    banner = (f"livedm interactive client: connected to {client.url}\n"
              f"`cli` has {len(methods)} methods, e.g. cli.list_projects(); dir(cli) lists them.")
    try:
        import readline
        import rlcompleter

        readline.set_completer(rlcompleter.Completer({"cli": client}).complete)
        readline.parse_and_bind("tab: complete")
    except ImportError:
        pass
    code.interact(banner=banner, local={"cli": client}, exitmsg="")
    return EXIT_OK


def overview_rows(projects: list[dict], sessions_by_project: dict[str, list[dict]]) -> list[list[str]]:
    rows = []
    for project in projects:
        totals = project["data_management"]
        count = project["session_count"]
        rows.append([project["uid"], project["title"], f"{count} session{'' if count == 1 else 's'}",
                     *(category_cell(totals[dt]) for dt, _ in DATATYPE_COLUMNS),
                     short_time(project["created_at"]), "", "", ""])
        for s in sessions_by_project.get(project["uid"], []):
            dm = s["data_management"]
            status = s.get("cryosparc_status") or s["status"]
            rows.append([f"  {s['uid']}", s["title"], status,
                         *(category_cell(dm[dt]) for dt, _ in DATATYPE_COLUMNS), short_time(s["created_at"]),
                         short_time((s["paused_at"] or [None])[-1]), short_time(s["completed_at"]),
                         short_time(s.get("measured_at")) if s.get("measured_at") else "never"])
    return rows


def cmd_ls(client: CommandClient, args: argparse.Namespace) -> int:
    if args.project:
        projects = [client.call("get_project", args.project)]
        sessions = {args.project: client.call("list_sessions", args.project)}
    else:
        projects = client.call("get_overview")["projects"]
        sessions = {p["uid"]: p.pop("sessions") for p in projects}
    if args.json:
        print(json.dumps([{**p, "sessions": sessions[p["uid"]]} for p in projects], indent=2))
        return EXIT_OK
    if not projects:
        print("No projects yet. Find the cryoSPARC projects under the data roots: livedm discover; or create "
              "one: livedm rtpcli \"create_project(title='My project', project_dir='/data/P1')\"")
        return EXIT_OK
    headers = ["UID", "TITLE", "STATUS", *(label for _, label in DATATYPE_COLUMNS), "CREATED", "LAST PAUSED",
               "COMPLETED", "MEASURED"]
    print(table(headers, overview_rows(projects, sessions)))
    return EXIT_OK


def cmd_refresh(client: CommandClient, args: argparse.Namespace) -> int:
    sessions = [args.session] if args.session else [s["uid"] for s in client.call("list_sessions", args.project)]
    totals = {}
    for index, session_uid in enumerate(sessions, 1):
        if not args.json:
            print(f"[{index}/{len(sessions)}] measuring {args.project} {session_uid} ...", file=sys.stderr)
        totals[session_uid] = client.call("update_session_datatype_sizes", args.project, session_uid)
    if args.json:
        print(json.dumps(totals))
    else:
        args.session = None
        return cmd_ls(client, argparse.Namespace(project=args.project, json=False))
    return EXIT_OK


def cmd_whoami(client: CommandClient, args: argparse.Namespace) -> int:
    me = client.call("whoami")
    if args.json:
        print(json.dumps(me))
    else:
        allowed = "may" if me["live_data_management"] else "may not"
        print(f"{me['name']} ({me['role']}) at {client.url}; {allowed} change live session data")
    return EXIT_OK


def cmd_user(client: CommandClient, args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        users = client.call("list_users")
        if args.json:
            print(json.dumps(users))
        else:
            rows = [[u["name"], u["role"], "yes" if u["live_data_management"] else "no", short_time(u["created_at"])]
                    for u in users]
            print(table(["NAME", "ROLE", "LIVE DATA MANAGEMENT", "CREATED"], rows))
        return EXIT_OK
    if not args.name:
        print(f"livedm user {action}: give the user's name", file=sys.stderr)
        return EXIT_USAGE
    calls = {"add": ("create_user", {"name": args.name, "role": "admin" if args.admin else "user"}),
             "token": ("issue_token", {"user": args.name}),
             "revoke": ("revoke_token", {"user": args.name}),
             "allow": ("set_user_data_management_permission", {"user": args.name, "enabled": True}),
             "deny": ("set_user_data_management_permission", {"user": args.name, "enabled": False})}
    method, params = calls[action]
    result = client.call(method, **params)
    if args.json:
        print(json.dumps(result))
    elif "token" in result:
        print(f"token for {args.name} (shown once; give it to them as LIVEDM_TOKEN):\n{result['token']}")
    elif action == "revoke":
        print(f"revoked {result['revoked']} token(s) of {args.name}")
    else:
        allowed = "may" if result["live_data_management"] else "may not"
        print(f"{args.name} {allowed} change live session data")
    return EXIT_OK


def cmd_audit(client: CommandClient, args: argparse.Namespace) -> int:
    entries = client.call("get_audit_log", project_uid=args.project, session_uid=args.session, limit=args.limit)
    if args.json:
        print(json.dumps(entries))
        return EXIT_OK
    rows = []
    for e in entries:
        where = " ".join(filter(None, (e.get("project_uid"), e.get("session_uid"), e.get("datatype"))))
        skip = {"at", "actor", "action", "project_uid", "session_uid", "datatype"}
        what = ", ".join(f"{k}={v}" for k, v in e.items() if k not in skip)
        rows.append([e["at"].replace("T", " ")[:19], e["actor"], e["action"], where or "-", what])
    print(table(["WHEN (UTC)", "WHO", "ACTION", "WHERE", "DETAILS"], rows) if rows else "The audit log is empty.")
    return EXIT_OK


def describe_progress(job: dict) -> str:
    progress = job.get("progress") or {}
    text = f"{job['id']} {job['kind']} {job['state']}"
    if progress.get("phase"):
        text += f" ({progress['phase']})"
    if progress.get("total"):
        text += f" {progress.get('done', 0)}/{progress['total']}"
    if progress.get("bytes_freed"):
        text += f", {human_size(progress['bytes_freed'])} freed"
    return text


def follow_job(client: CommandClient, job_id: str, quiet: bool, *, poll_s: float = 0.5) -> dict:
    """Poll a job until it ends, showing its progress on stderr."""
    last = ""
    while True:
        job = client.call("get_job", job_id)
        line = describe_progress(job)
        if not quiet and line != last:
            print(line, file=sys.stderr)
            last = line
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(poll_s)


def cmd_job(client: CommandClient, args: argparse.Namespace) -> int:
    job = follow_job(client, args.job_id, args.json) if args.wait else client.call("get_job", args.job_id)
    print(json.dumps(job) if args.json else describe_progress(job) + (f": {job['error']}" if job.get("error") else ""))
    return EXIT_SERVER_ERROR if job["state"] == "failed" else EXIT_OK


def cmd_jobs(client: CommandClient, args: argparse.Namespace) -> int:
    jobs = client.call("list_jobs", kind=args.kind, state=args.state, project_uid=args.project, limit=args.limit)
    if args.json:
        print(json.dumps(jobs))
        return EXIT_OK
    rows = [[j["id"], j["kind"], j["state"], " ".join(str(v) for k, v in j["params"].items()
                                                      if k in ("project_uid", "session_uid", "datatype", "status")),
             describe_progress(j).split(j["state"], 1)[1].strip() or "-", short_time(j["created_at"]),
             (j.get("error") or "")[:60]] for j in jobs]
    print(table(["JOB", "KIND", "STATE", "WHAT", "PROGRESS", "CREATED", "ERROR"], rows) if rows else "No jobs.")
    return EXIT_OK


def discovery_summary(report: dict[str, Any], dry_run: bool) -> str:
    counts = report["counts"]
    verb = "would add" if dry_run else "added"
    lines = [f"{counts['projects']} cryoSPARC project(s) found under {len(report['roots'])} root(s): {verb} "
             f"{counts['added']}, {'would change' if dry_run else 'changed'} {counts['changed']}, "
             f"{counts['unchanged']} unchanged, {counts['gone']} gone (their sessions show missing)"]
    for root in report["roots"]:
        if not root["reached"]:
            lines.append(f"  root not reached: {root.get('path', root.get('label') or '?')}: {root['reason']}")
    for item in report["added"]:
        lines.append(f"  + {item['project_uid']} {item.get('title', '')} ({item.get('sessions', 0)} sessions) "
                     f"{item['project_dir']}")
    for item in report["gone"]:
        lines.append(f"  - {item['project_uid']} {item['project_dir']}: {item['why']}")
    if counts["conflicts"]:
        lines.append(f"{counts['conflicts']} conflict(s), nothing of them changed:")
        lines += [f"  ! {c['project_uid']}: {c['reason']}: {', '.join(c['paths'])}" for c in report["conflicts"]]
    if counts["unreadable"]:
        lines.append(f"{counts['unreadable']} file(s) or director(ies) could not be read:")
        lines += [f"  ? {u['path']}: {u['reason']}" for u in report["unreadable"]]
    return "\n".join(lines)


def cmd_discover(client: CommandClient, args: argparse.Namespace) -> int:
    if args.dry_run:
        report = client.call("discover", dry_run=True)
        print(json.dumps(report) if args.json else discovery_summary(report, dry_run=True))
        return EXIT_OK
    job_id = client.call("discover")
    if not args.json:
        print(f"discovery pass {job_id} (sizes are measured next, in refresh jobs: livedm jobs)", file=sys.stderr)
    job = follow_job(client, job_id, args.json)
    if args.json:
        print(json.dumps(job))
    elif job["state"] == "done":
        print(discovery_summary(job["result"], dry_run=False))
    else:
        print(f"discovery failed: {job['error']}", file=sys.stderr)
    return EXIT_OK if job["state"] == "done" else EXIT_SERVER_ERROR


def cmd_delete(client: CommandClient, args: argparse.Namespace) -> int:
    where = dict(project_uid=args.project, session_uid=args.session, datatype=args.datatype)
    dry = client.call("delete_live_datatype", **where, dry_run=True)
    if args.dry_run:
        print(json.dumps(dry) if args.json else
              f"would delete {dry['file_count']} files, {human_size(dry['bytes'])}")
        return EXIT_OK
    if not args.yes:
        if not sys.stdin.isatty():
            print("livedm delete: refusing without --yes when not at a terminal", file=sys.stderr)
            return EXIT_USAGE
        answer = input(f"Delete {dry['file_count']} {args.datatype} files ({human_size(dry['bytes'])}) of "
                       f"{args.project} {args.session}? Type the session uid to confirm: ")
        if answer.strip() != args.session:
            print("not deleted", file=sys.stderr)
            return EXIT_USAGE
    job_id = client.call("delete_live_datatype", **where, confirm_digest=dry["confirm_digest"])
    job = follow_job(client, job_id, args.json)
    if args.json:
        print(json.dumps(job))
    elif job["state"] == "done":
        result = job["result"]
        print(f"deleted {result['deleted']} files, {human_size(result['bytes_freed'])} freed; "
              f"{args.datatype} is {result['status']}")
    else:
        print(f"deletion failed: {job['error']}", file=sys.stderr)
    return EXIT_OK if job["state"] == "done" else EXIT_SERVER_ERROR


BACKUP_MODE = 0o600  # the backup holds every token hash and who may do what: its owner's alone
TAIL_BYTES = 1 << 16  # the end line is a few hundred bytes


class BackupNotWritten(Exception):
    """The backup file was not written; the message says why and what to do."""


def end_line_documents(tail: bytes) -> int | None:
    """The documents a backup holds, from its end line (the last line of `tail`); None if it has none (it
    was cut short)."""
    lines = [line for line in tail.splitlines() if line.strip()]
    try:
        counts = json.loads(lines[-1])["livedm_backup_end"]["counts"]
        return sum(counts.values())
    except (IndexError, ValueError, KeyError, TypeError, AttributeError):
        return None


def create_partial(path: Path) -> tuple[int, Path]:
    """A new FILE.partial, mode 0600, that is ours: never a file or link someone put there first."""
    partial = path.with_name(path.name + ".partial")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(partial, flags, BACKUP_MODE)
    except FileExistsError:
        raise BackupNotWritten(f"{partial} already exists (left by a backup that was interrupted, or put there by "
                               f"someone else: a link or a file another user may read); nothing was written. Look "
                               f"at it, remove it (rm {partial}) and back up again") from None
    except OSError as exc:
        raise BackupNotWritten(f"cannot create {partial}: {exc.strerror}; nothing was written") from None
    os.fchmod(fd, BACKUP_MODE)  # exactly 0600, whatever the umask
    return fd, partial


def copy_to(source: BinaryIO, fd: int) -> tuple[int, bytes]:
    """Copy the stream into the file and make it durable (fsync); (bytes written, the last bytes)."""
    written, tail = 0, b""
    with os.fdopen(fd, "wb", closefd=False) as out:
        while chunk := source.read(1 << 20):
            out.write(chunk)
            written += len(chunk)
            tail = (tail + chunk)[-TAIL_BYTES:]
        out.flush()
        os.fsync(fd)
    return written, tail


def is_ours(fd: int, partial: Path) -> bool:
    """Is the file at `partial` still the one open as `fd` (not removed, not replaced)?"""
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(partial))
    except OSError:
        return False


def put_in_place(fd: int, partial: Path, path: Path) -> None:
    """Rename the partial file onto FILE (a link at FILE is replaced, never followed), if it is still the
    one we wrote, and make the rename durable."""
    if not is_ours(fd, partial):
        raise BackupNotWritten(f"{partial} was removed or replaced while the backup was written (by another user "
                               f"of {partial.parent}?); nothing was written to {path}: back up into a directory "
                               "only you may write")
    try:
        os.replace(partial, path)
    except OSError as exc:
        raise BackupNotWritten(f"cannot put the backup at {path}: {exc.strerror}; nothing was written") from None
    with contextlib.suppress(OSError):  # not every file system syncs a directory
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_backup(source: Callable[[], Any], path: Path) -> tuple[int, int]:
    """Write the backup `source()` opens into FILE through a new private FILE.partial, then rename it onto
    FILE: (bytes, documents). FILE is left as it was unless the whole backup arrived."""
    fd, partial = create_partial(path)
    try:
        with source() as response:
            written, tail = copy_to(response, fd)
        documents = end_line_documents(tail)
        if documents is None:
            raise BackupNotWritten("the backup stopped before its end (livedmd or its database failed mid-way; see "
                                   f"its log): nothing was written to {path}, try again")
        put_in_place(fd, partial, path)
    except BaseException:
        if is_ours(fd, partial):  # never remove what someone else put there
            with contextlib.suppress(OSError):
                partial.unlink()
        raise
    finally:
        os.close(fd)
    return written, documents


def cmd_backup(client: CommandClient, args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        written, documents = write_backup(lambda: client.open_get("/admin/backup"), path)
    except BackupNotWritten as exc:
        print(f"livedm admin backup: {exc}", file=sys.stderr)
        return EXIT_SERVER_ERROR
    print(json.dumps({"file": str(path), "bytes": written, "documents": documents}) if args.json
          else f"backed up {documents} documents ({human_size(written)}) to {path}")
    return EXIT_OK


LEFT_OUT_TEXT = {
    "queued_or_running_jobs": "queued or running job(s): a restore never brings back queued work",
    "job_file_lists": "deletion job file list(s): no restored job runs again",
    "hook_tokens": "token(s) of the hook user: each hook run gets its own, never one from a backup",
}


def cmd_restore(client: CommandClient, args: argparse.Namespace) -> int:
    if not args.yes:
        print("livedm admin restore replaces livedm's whole database with the backup: add --yes", file=sys.stderr)
        return EXIT_USAGE
    path = Path(args.file)
    result = client.upload("/admin/restore?confirm=yes" + ("&unverified=yes" if args.unverified else ""), path)
    if args.json:
        print(json.dumps(result))
        return EXIT_OK
    print("restored " + ", ".join(f"{n} {c}" for c, n in result["restored"].items()))
    for kind, count in result.get("left_out", {}).items():
        if count and kind != "job_file_lists":
            print(f"left out {count} {LEFT_OUT_TEXT.get(kind, kind)}")
    if result.get("settled_categories"):
        print(f"{result['settled_categories']} category(ies) left deleting or calculating are back to their "
              "previous status")
    return EXIT_OK


def cmd_admin(client: CommandClient, args: argparse.Namespace) -> int:
    return cmd_backup(client, args) if args.action == "backup" else cmd_restore(client, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livedm", description="Client of livedmd, the live session data management daemon. "
        "Finds it through LIVEDM_URL and LIVEDM_TOKEN (or LIVEDM_TOKEN_FILE).")
    parser.add_argument("--url", help="livedmd's URL (default: $LIVEDM_URL or http://127.0.0.1:39070)")
    parser.add_argument("--token", help="API token (default: $LIVEDM_TOKEN, $LIVEDM_TOKEN_FILE, or a local "
                        "daemon's admin.token)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("rtpcli", help="send one call written as Python, e.g. \"get_datatype_size(project_uid="
                       "'P1', session_uid='S1', datatype='raw')\"")
    p.add_argument("call")
    p.set_defaults(run=cmd_rtpcli)
    p = sub.add_parser("icli", help="interactive Python shell with a `cli` object")
    p.set_defaults(run=cmd_icli)
    p = sub.add_parser("ls", help="overview table: projects, sessions, sizes and statuses per category")
    p.add_argument("project", nargs="?", help="only this project (e.g. P1)")
    p.set_defaults(run=cmd_ls)
    p = sub.add_parser("refresh", help="measure sizes now (a session, or every session of a project)")
    p.add_argument("project")
    p.add_argument("session", nargs="?")
    p.set_defaults(run=cmd_refresh)
    p = sub.add_parser("discover", help="find cryoSPARC projects and Live sessions under the discovery roots now "
                       "(--dry-run: only show what would change)")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(run=cmd_discover)
    p = sub.add_parser("whoami", help="who the token belongs to")
    p.set_defaults(run=cmd_whoami)
    p = sub.add_parser("user", help="admins: list, add, token, revoke, allow, deny users")
    p.add_argument("action", choices=["list", "add", "token", "revoke", "allow", "deny"])
    p.add_argument("name", nargs="?")
    p.add_argument("--admin", action="store_true", help="with add: make an admin")
    p.set_defaults(run=cmd_user)
    p = sub.add_parser("jobs", help="background jobs, newest first")
    p.add_argument("--kind", choices=["delete", "hook", "refresh_sizes", "discover", "refresh_due"])
    p.add_argument("--state", choices=["queued", "running", "done", "failed"])
    p.add_argument("--project")
    p.add_argument("--limit", type=int, default=30)
    p.set_defaults(run=cmd_jobs)
    p = sub.add_parser("job", help="one job; --wait follows its progress until it ends")
    p.add_argument("job_id")
    p.add_argument("--wait", action="store_true")
    p.set_defaults(run=cmd_job)
    p = sub.add_parser("delete", help="delete a category's files (asks first; --dry-run only counts)")
    p.add_argument("project")
    p.add_argument("session")
    p.add_argument("datatype", choices=["micrographs", "thumbnails", "particles", "metadata"])
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    p.set_defaults(run=cmd_delete)
    p = sub.add_parser("admin", help="admins: backup FILE / restore FILE --yes of livedm's own database")
    p.add_argument("action", choices=["backup", "restore"])
    p.add_argument("file")
    p.add_argument("--yes", action="store_true", help="with restore: replace the database")
    p.add_argument("--unverified", action="store_true",
                   help="with restore: accept a format-1 backup (older livedm), which cannot prove it is whole")
    p.set_defaults(run=cmd_admin)
    p = sub.add_parser("audit", help="who changed what, newest first")
    p.add_argument("project", nargs="?")
    p.add_argument("session", nargs="?")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(run=cmd_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = CommandClient(url=args.url, token=args.token)
    try:
        return args.run(client, args)
    except Unreachable as exc:
        print(f"livedm: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except LivedmError as exc:
        print(f"livedm: {exc.name}: {exc.message}", file=sys.stderr)
        return EXIT_SERVER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
