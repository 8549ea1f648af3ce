"""`livedm delete P S DATATYPE`: shows what would go, asks for the project and session uid, follows the job."""

from __future__ import annotations

import argparse
import sys

from .format import human_size
from .jobs import follow_job
from .output import EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, confirmed, print_json
from .rpc import CommandClient


def cmd_delete(client: CommandClient, args: argparse.Namespace) -> int:
    where = dict(project_uid=args.project, session_uid=args.session, datatype=args.datatype)
    dry = client.call("delete_live_datatype", **where, dry_run=True)
    if args.dry_run:
        print_json(dry) if args.json else print(f"would delete {dry['file_count']} files, {human_size(dry['bytes'])}")
        return EXIT_OK
    if not args.yes:
        # every project has an S1: the confirmation names the project too
        answer = confirmed("delete", f"Delete {dry['file_count']} {args.datatype} files ({human_size(dry['bytes'])}) "
                           f"of {args.project} {args.session}?", f"{args.project} {args.session}")
        if not answer:
            return EXIT_USAGE
    job_id = client.call("delete_live_datatype", **where, confirm_digest=dry["confirm_digest"])
    job = follow_job(client, job_id, args.json)
    if args.json:
        print_json(job)
    elif job["state"] == "done":
        result = job["result"]
        print(f"deleted {result['deleted']} files, {human_size(result['bytes_freed'])} freed; "
              f"{args.datatype} is {result['status']}")
    else:
        print(f"deletion failed: {job['error']}", file=sys.stderr)
    return EXIT_OK if job["state"] == "done" else EXIT_SERVER_ERROR
