"""`livedm`: the command line of livedmd. `rtpcli` for scripts (as cryoSPARC's), everyday verbs for people.

`--json` (machine-readable output) and `--local` (times in this machine's zone; UTC by default) may stand
anywhere on the line."""

from __future__ import annotations

import argparse
import code
import os
import sys
from collections.abc import Callable
from typing import Any

from .admin import cmd_admin
from .callparse import CallSyntaxError, parse_call
from .deleting import cmd_delete
from .format import Times
from .jobs import cmd_job, cmd_jobs
from .output import EXIT_BROKEN_PIPE, EXIT_OK, EXIT_SERVER_ERROR, EXIT_UNREACHABLE, EXIT_USAGE, print_result
from .overview import cmd_discover, cmd_ls, cmd_refresh
from .rpc import CommandClient, LivedmError, Unreachable
from .sessions import SESSION_VERBS, cmd_files, cmd_mark, cmd_project_add, cmd_session_add, cmd_session_status
from .users import (
    cmd_audit,
    cmd_user_add,
    cmd_user_list,
    cmd_user_permission,
    cmd_user_remove,
    cmd_user_revoke,
    cmd_user_role,
    cmd_user_token,
    cmd_whoami,
)

Command = Callable[[CommandClient, argparse.Namespace], int]
DATATYPES = ("raw", "micrographs", "thumbnails", "particles", "metadata")
LISTED = tuple(d for d in DATATYPES if d != "thumbnails")  # file lists and marks: not for thumbnails
SESSION_STATUSES = ("running", "paused", "completed")
CATEGORY_STATUSES = ("active", "archiving", "archived", "deleted", "missing", "deleting", "calculating")
DELETABLE = tuple(d for d in DATATYPES if d != "raw")
MARKS = ("active", "archiving", "archived", "deleted")


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


class Commands:
    """Adds commands (and groups of them) that all take --json and --local, wherever they stand."""

    def __init__(self, sub: Any, common: argparse.ArgumentParser | None = None) -> None:
        self.sub = sub
        self.common = common or self._common_flags()

    @staticmethod
    def _common_flags() -> argparse.ArgumentParser:
        common = argparse.ArgumentParser(add_help=False)
        # SUPPRESS: a flag given before the command is not reset by the command's own default
        common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="machine-readable output (JSON)")
        common.add_argument("--local", action="store_true", default=argparse.SUPPRESS,
                            help="times in this machine's time zone (default: UTC)")
        return common

    def add(self, name: str, help: str, run: Command | None = None, **defaults: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.sub.add_parser(name, help=help, description=help[0].upper() + help[1:],
                                                              parents=[self.common])
        if run is not None:
            parser.set_defaults(run=run, **defaults)
        return parser

    def group(self, name: str, help: str) -> Commands:
        parser = self.add(name, help)
        return Commands(parser.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION"), self.common)


def _project_session(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("project", help="project uid, e.g. P3")
    parser.add_argument("session", help="session uid, e.g. S1")
    return parser


def add_data_commands(commands: Commands) -> None:
    p = commands.add("ls", "overview table: projects, sessions, sizes and statuses per category", cmd_ls)
    p.add_argument("project", nargs="?", help="only this project (e.g. P1)")
    p.add_argument("--search", help="only sessions whose uid, title or owner (or their project's) hold this text")
    p.add_argument("--status", choices=SESSION_STATUSES, help="only sessions of this status")
    p.add_argument("--category-status", choices=CATEGORY_STATUSES,
                   help="only sessions with a category of this status")
    p = commands.add("refresh", "measure sizes now (a session, or every session of a project)", cmd_refresh)
    p.add_argument("project")
    p.add_argument("session", nargs="?")
    p.add_argument("--full", action="store_true", help="stat every file, not only what changed since the last "
                   "walk (catches files rewritten in place)")
    p = commands.add("discover", "find cryoSPARC projects and Live sessions under the discovery roots now "
                     "(--dry-run: only show what would change)", cmd_discover)
    p.add_argument("--dry-run", action="store_true")
    projects = commands.group("project", "add a project (its directory must exist)")
    p = projects.add("add", "add a project: a title and its existing directory (e.g. /data/cryo/P3)", cmd_project_add)
    p.add_argument("title")
    p.add_argument("dir", help="the project directory (relative paths are taken from here)")
    sessions = commands.group("session", "add a Live session, or start, pause or complete one")
    p = sessions.add("add", "add a session to a project (status paused; its directory: --dir, else its uid)",
                     cmd_session_add)
    p.add_argument("project", help="project uid, e.g. P3")
    p.add_argument("title")
    p.add_argument("--dir", help="the session directory, relative to the project's (default: the session uid)")
    for verb, (_method, status) in SESSION_VERBS.items():
        measures = "" if verb == "start" else "; measures its sizes"
        _project_session(sessions.add(verb, f"mark the session {status}{measures}", cmd_session_status, verb=verb))
    p = _project_session(commands.add("mark", "mark a category active, archiving, archived or deleted (files stay); "
                                      "completed sessions only, not thumbnails", cmd_mark))
    p.add_argument("datatype", choices=LISTED)
    p.add_argument("status", choices=MARKS)
    p = _project_session(commands.add("files", "a category's files, one path per line (--json: the API's answer); "
                                      "raw gives the movies", cmd_files))
    p.add_argument("datatype", choices=LISTED)
    p = _project_session(commands.add("delete", "delete a category's files (asks first; --dry-run only counts)",
                                      cmd_delete))
    p.add_argument("datatype", choices=DELETABLE)
    p.add_argument("--dry-run", action="store_true", help="only count what would go (needs no permission)")
    p.add_argument("--yes", action="store_true", help="do not ask (for scripts)")


def add_user_commands(commands: Commands) -> None:
    commands.add("whoami", "who the token belongs to", cmd_whoami)
    users = commands.group("user", "admins: list, add, token, revoke, allow, deny, role, remove users")
    users.add("list", "the users, their role and live data management permission", cmd_user_list)
    p = users.add("add", "add a user and show their first token", cmd_user_add)
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="make an admin")
    for action, help_text, run, defaults in (
            ("token", "issue the user a new token (older ones keep working)", cmd_user_token, {}),
            ("revoke", "revoke every token of the user", cmd_user_revoke, {}),
            ("allow", "allow the user to mark and delete live session data", cmd_user_permission, {"enabled": True}),
            ("deny", "forbid the user to mark and delete live session data", cmd_user_permission, {"enabled": False})):
        users.add(action, help_text, run, **defaults).add_argument("name")
    p = users.add("role", "make the user an admin or a user", cmd_user_role)
    p.add_argument("name")
    p.add_argument("role", choices=["admin", "user"])
    p = users.add("remove", "remove the user and revoke their tokens (asks first; the audit log keeps the name)",
                  cmd_user_remove)
    p.add_argument("name")
    p.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    p = commands.add("audit", "who changed what, newest first", cmd_audit)
    p.add_argument("project", nargs="?")
    p.add_argument("session", nargs="?")
    p.add_argument("--limit", type=int, default=50)


def add_job_commands(commands: Commands) -> None:
    p = commands.add("jobs", "background jobs, newest first", cmd_jobs)
    p.add_argument("--kind", choices=["delete", "hook", "refresh_sizes", "discover", "refresh_due"])
    p.add_argument("--state", choices=["queued", "running", "done", "failed"])
    p.add_argument("--project")
    p.add_argument("--limit", type=int, default=30)
    p = commands.add("job", "one job; --wait follows its progress until it ends; --log shows a hook run's log",
                     cmd_job)
    p.add_argument("job_id")
    p.add_argument("--wait", action="store_true", help="follow its progress until it ends")
    p.add_argument("--log", action="store_true", help="a hook run: the end of its log (needs the live data "
                   "management permission)")
    p.add_argument("--full-log", action="store_true", help="a hook run: all of its log (e.g. > J12.log)")
    p = commands.add("admin", "admins: backup FILE / restore FILE --yes of livedm's own database", cmd_admin)
    p.add_argument("action", choices=["backup", "restore"])
    p.add_argument("file")
    p.add_argument("--yes", action="store_true", help="with restore: replace the database")
    p.add_argument("--unverified", action="store_true",
                   help="with restore: accept a format-1 backup (older livedm), which cannot prove it is whole")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livedm", description="Client of livedmd, the live session data management daemon. "
        "Finds it through LIVEDM_URL and LIVEDM_TOKEN (or LIVEDM_TOKEN_FILE).")
    parser.add_argument("--url", help="livedmd's URL (default: $LIVEDM_URL or http://127.0.0.1:39070)")
    parser.add_argument("--token", help="API token (default: $LIVEDM_TOKEN, $LIVEDM_TOKEN_FILE, or a local "
                        "daemon's admin.token)")
    parser.add_argument("--json", action="store_true", help="machine-readable output (anywhere on the line)")
    parser.add_argument("--local", action="store_true",
                        help="times in this machine's time zone (default: UTC; anywhere on the line)")
    commands = Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    p = commands.add("rtpcli", "send one call written as Python, e.g. \"get_datatype_size(project_uid='P1', "
                     "session_uid='S1', datatype='raw')\"", cmd_rtpcli)
    p.add_argument("call")
    commands.add("icli", "interactive Python shell with a `cli` object", cmd_icli)
    add_data_commands(commands)
    add_job_commands(commands)
    add_user_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.times = Times(local=args.local)
    client = CommandClient(url=args.url, token=args.token)
    try:
        status = int(args.run(client, args))
        sys.stdout.flush()  # a closed pipe shows here, not when the interpreter exits
        return status
    except BrokenPipeError:  # `livedm ls | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
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
