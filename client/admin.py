"""`livedm admin backup FILE` and `livedm admin restore FILE --yes`: livedm's whole database, for admins."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .backup_file import BackupNotWritten, write_backup
from .format import human_size
from .output import EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, print_json
from .rpc import CommandClient

LEFT_OUT_TEXT = {
    "queued_or_running_jobs": "queued or running job(s): a restore never brings back queued work",
    "job_file_lists": "deletion job file list(s): no restored job runs again",
    "hook_tokens": "token(s) of the hook user: each hook run gets its own, never one from a backup",
}


def cmd_backup(client: CommandClient, args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        written, documents = write_backup(lambda: client.open_get("/admin/backup"), path)
    except BackupNotWritten as exc:
        print(f"livedm admin backup: {exc}", file=sys.stderr)
        return EXIT_SERVER_ERROR
    if args.json:
        print_json({"file": str(path), "bytes": written, "documents": documents})
    else:
        print(f"backed up {documents} documents ({human_size(written)}) to {path}")
    return EXIT_OK


def cmd_restore(client: CommandClient, args: argparse.Namespace) -> int:
    if not args.yes:
        print("livedm admin restore replaces livedm's whole database with the backup: add --yes", file=sys.stderr)
        return EXIT_USAGE
    path = Path(args.file)
    result = client.upload("/admin/restore?confirm=yes" + ("&unverified=yes" if args.unverified else ""), path)
    if args.json:
        print_json(result)
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
