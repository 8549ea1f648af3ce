"""Background jobs for people: `livedm jobs`, `livedm job JOB [--wait]`, and following a job's progress."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .format import human_size, table
from .output import EXIT_OK, EXIT_SERVER_ERROR, print_json
from .rpc import CommandClient

WHAT_PARAMS = ("project_uid", "session_uid", "datatype", "status")
TAIL_BYTES = 1 << 16  # `--log`: the end of a hook run's log
PIECE_BYTES = 1 << 20  # `--full-log` reads the whole in pieces of this size (the API's most)


def describe_progress(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    text = f"{job['id']} {job['kind']} {job['state']}"
    if progress.get("phase"):
        text += f" ({progress['phase']})"
    if progress.get("total"):
        text += f" {progress.get('done', 0)}/{progress['total']}"
    if progress.get("bytes_freed"):
        text += f", {human_size(progress['bytes_freed'])} freed"
    return text


def follow_job(client: CommandClient, job_id: str, quiet: bool, *, poll_s: float = 0.5) -> dict[str, Any]:
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


def print_log(client: CommandClient, job_id: str, *, whole: bool, as_json: bool) -> None:
    """A hook run's log: its tail, or (whole) all of it, read in pieces."""
    if not whole:
        piece = client.call("get_job_log", job_id=job_id, offset=None, limit=TAIL_BYTES)
        if as_json:
            print_json(piece)
            return
        if not piece["exists"]:
            print(f"{job_id} has no log yet (it has not run)", file=sys.stderr)
            return
        if piece["offset"] > 0:
            print(f"[the last {piece['size'] - piece['offset']} of {piece['size']} bytes of {piece['log']}; "
                  f"livedm job {job_id} --full-log prints all of it]", file=sys.stderr)
        sys.stdout.write(piece["text"])
        return
    offset, parts, size, name = 0, [], 0, ""
    while True:
        piece = client.call("get_job_log", job_id=job_id, offset=offset, limit=PIECE_BYTES)
        size, name = piece["size"], piece["log"]
        parts.append(piece["text"])
        if not as_json:
            sys.stdout.write(piece["text"])
        if piece["next_offset"] >= size or piece["next_offset"] == offset:
            break
        offset = piece["next_offset"]
    if as_json:
        print_json({"job_id": job_id, "log": name, "size": size, "text": "".join(parts)})


def cmd_job(client: CommandClient, args: argparse.Namespace) -> int:
    job = follow_job(client, args.job_id, args.json) if args.wait else client.call("get_job", args.job_id)
    if args.log or args.full_log:
        if not args.json:
            print(describe_progress(job) + (f": {job['error']}" if job.get("error") else ""), file=sys.stderr)
        print_log(client, args.job_id, whole=args.full_log, as_json=args.json)
    elif args.json:
        print_json(job)
    else:
        print(describe_progress(job) + (f": {job['error']}" if job.get("error") else ""))
    return EXIT_SERVER_ERROR if job["state"] == "failed" else EXIT_OK


def cmd_jobs(client: CommandClient, args: argparse.Namespace) -> int:
    jobs = client.call("list_jobs", kind=args.kind, state=args.state, project_uid=args.project, limit=args.limit)
    if args.json:
        print_json(jobs)
        return EXIT_OK
    rows = [[j["id"], j["kind"], j["state"], " ".join(str(v) for k, v in j["params"].items() if k in WHAT_PARAMS),
             describe_progress(j).split(j["state"], 1)[1].strip() or "-", args.times.short(j["created_at"]),
             (j.get("error") or "")[:60]] for j in jobs]
    headers = ["JOB", "KIND", "STATE", "WHAT", "PROGRESS", args.times.header("CREATED"), "ERROR"]
    print(table(headers, rows) if rows else "No jobs.")
    return EXIT_OK
