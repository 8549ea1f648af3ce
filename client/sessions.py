"""The everyday verbs on projects, sessions and categories: `livedm project add`, `livedm session
add|start|pause|complete`, `livedm mark` and `livedm files`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .format import human_size
from .output import EXIT_OK, print_json
from .rpc import CommandClient

SESSION_VERBS = {"start": ("start_session", "running"), "pause": ("pause_session", "paused"),
                 "complete": ("mark_session_completed", "completed")}


def cmd_project_add(client: CommandClient, args: argparse.Namespace) -> int:
    project = client.call("create_project", title=args.title, project_dir=os.path.abspath(args.dir))
    if args.json:
        print_json(project)
    else:
        print(f"{project['uid']} {project['title']!r} at {project['project_dir']}; add a session: "
              f"livedm session add {project['uid']} TITLE")
    return EXIT_OK


def cmd_session_add(client: CommandClient, args: argparse.Namespace) -> int:
    session = client.call("create_live_session", project_uid=args.project, title=args.title, session_dir=args.dir)
    if args.json:
        print_json(session)
    else:
        print(f"{session['project_uid']} {session['uid']} {session['title']!r} ({session['status']}) in "
              f"{session['session_dir']}")
    return EXIT_OK


def _total(session: dict[str, Any]) -> int:
    return sum(int(category.get("size") or 0) for category in session["data_management"].values())


def cmd_session_status(client: CommandClient, args: argparse.Namespace) -> int:
    method, _status = SESSION_VERBS[args.verb]
    session = client.call(method, project_uid=args.project, session_uid=args.session)
    if args.json:
        print_json(session)
        return EXIT_OK
    text = f"{session['project_uid']} {session['uid']} is {session['status']}"
    if session["status"] != "running":  # pausing and completing measure the session
        text += f"; measured: {human_size(_total(session))}"
    if session["status"] == "completed":
        text += f" (mark or delete its categories: livedm mark {args.project} {args.session} DATATYPE STATUS)"
    print(text)
    return EXIT_OK


def cmd_mark(client: CommandClient, args: argparse.Namespace) -> int:
    data_management = client.call("change_session_data_management_state", project_uid=args.project,
                                  session_uid=args.session, datatype=args.datatype, status=args.status)
    if args.json:
        print_json(data_management)
    else:
        category = data_management[args.datatype]
        print(f"{args.datatype} of {args.project} {args.session} is {category['status']}"
              + (" (files stay: `livedm delete` deletes them)" if args.status == "deleted" else ""))
    return EXIT_OK


def cmd_files(client: CommandClient, args: argparse.Namespace) -> int:
    listing = client.call("get_datatype_file_paths", project_uid=args.project, session_uid=args.session,
                          datatype=args.datatype)
    if args.json:
        print_json(listing)
        return EXIT_OK
    out = sys.stdout.buffer
    for path in listing[args.datatype]:
        out.write(os.fsencode(path) + b"\n")  # a name that is not UTF-8 comes out as its own bytes
    out.flush()
    missing = listing.get("missing") or []
    if missing:
        print(f"{len(missing)} {args.datatype} file(s) left out: their link leads nowhere (the movie is gone), e.g. "
              f"{missing[0]}; --json lists them under \"missing\"", file=sys.stderr)
    return EXIT_OK
