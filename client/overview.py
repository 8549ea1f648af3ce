"""The overview for people: `livedm ls`, `livedm refresh` and `livedm discover`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .format import DATATYPE_COLUMNS, Times, category_cell, table
from .jobs import follow_job
from .output import EXIT_OK, EXIT_SERVER_ERROR, print_json
from .rpc import CommandClient


def overview_rows(projects: list[dict[str, Any]], sessions_by_project: dict[str, list[dict[str, Any]]],
                  times: Times) -> list[list[str]]:
    rows = []
    for project in projects:
        totals = project["data_management"]
        count = project["session_count"]
        rows.append([project["uid"], project["title"], f"{count} session{'' if count == 1 else 's'}",
                     *(category_cell(totals[dt]) for dt, _ in DATATYPE_COLUMNS),
                     times.short(project["created_at"]), "", "", ""])
        for s in sessions_by_project.get(project["uid"], []):
            dm = s["data_management"]
            status = s.get("cryosparc_status") or s["status"]
            rows.append([f"  {s['uid']}", s["title"], status,
                         *(category_cell(dm[dt], never_measured=not s.get("measured_at") and not dm[dt].get(
                             "updated_at")) for dt, _ in DATATYPE_COLUMNS), times.short(s["created_at"]),
                         times.short((s["paused_at"] or [None])[-1]), times.short(s["completed_at"]),
                         times.short(s.get("measured_at")) if s.get("measured_at") else "never"])
    return rows


def cmd_ls(client: CommandClient, args: argparse.Namespace) -> int:
    filters = {name: value for name, value in (("search", args.search), ("session_status", args.status),
                                               ("category_status", args.category_status)) if value}
    if args.project and not filters:
        projects = [client.call("get_project", args.project)]
        sessions = {args.project: client.call("list_sessions", args.project)}
    else:  # livedmd searches and filters (every row: no page_size)
        projects = [p for p in client.call("get_overview", **filters)["projects"] if args.project in (None, p["uid"])]
        sessions = {p["uid"]: p.pop("sessions") for p in projects}
    if args.json:
        print(json.dumps([{**p, "sessions": sessions[p["uid"]]} for p in projects], indent=2))
        return EXIT_OK
    if not projects and filters:
        print("Nothing matches.")
        return EXIT_OK
    if not projects:
        print("No projects yet. Find the cryoSPARC projects under the data roots: livedm discover; or add one: "
              "livedm project add TITLE DIR")
        return EXIT_OK
    times: Times = args.times
    headers = ["UID", "TITLE", "STATUS", *(label for _, label in DATATYPE_COLUMNS), times.header("CREATED"),
               times.header("LAST PAUSED"), times.header("COMPLETED"), times.header("MEASURED")]
    print(table(headers, overview_rows(projects, sessions, times)))
    return EXIT_OK


def cmd_refresh(client: CommandClient, args: argparse.Namespace) -> int:
    sessions = [args.session] if args.session else [s["uid"] for s in client.call("list_sessions", args.project)]
    totals = {}
    for index, session_uid in enumerate(sessions, 1):
        if not args.json:
            print(f"[{index}/{len(sessions)}] measuring {args.project} {session_uid} ...", file=sys.stderr)
        totals[session_uid] = client.call("update_session_datatype_sizes", args.project, session_uid,
                                          *([True] if args.full else []))
    if args.json:
        print_json(totals)
        return EXIT_OK
    return cmd_ls(client, argparse.Namespace(project=args.project, json=False, times=args.times, search=None,
                                             status=None, category_status=None))


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
        print_json(job)
    elif job["state"] == "done":
        print(discovery_summary(job["result"], dry_run=False))
    else:
        print(f"discovery failed: {job['error']}", file=sys.stderr)
    return EXIT_OK if job["state"] == "done" else EXIT_SERVER_ERROR
