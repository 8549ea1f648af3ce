"""People and what they did: `livedm whoami`, `livedm user ...` (admins) and `livedm audit`."""

from __future__ import annotations

import argparse
from typing import Any

from .format import table
from .output import EXIT_OK, EXIT_USAGE, confirmed, print_json
from .rpc import CommandClient


def cmd_whoami(client: CommandClient, args: argparse.Namespace) -> int:
    me = client.call("whoami")
    if args.json:
        print_json(me)
    else:
        allowed = "may" if me["live_data_management"] else "may not"
        print(f"{me['name']} ({me['role']}) at {client.url}; {allowed} change live session data")
    return EXIT_OK


def cmd_user_list(client: CommandClient, args: argparse.Namespace) -> int:
    users = client.call("list_users")
    if args.json:
        print_json(users)
        return EXIT_OK
    rows = [[u["name"], u["role"], "yes" if u["live_data_management"] else "no", args.times.short(u["created_at"])]
            for u in users]
    print(table(["NAME", "ROLE", "LIVE DATA MANAGEMENT", args.times.header("CREATED")], rows))
    return EXIT_OK


def _token_text(name: str, result: dict[str, Any]) -> str:
    return f"token for {name} (shown once; give it to them as LIVEDM_TOKEN):\n{result['token']}"


def cmd_user_add(client: CommandClient, args: argparse.Namespace) -> int:
    result = client.call("create_user", name=args.name, role="admin" if args.admin else "user")
    print_json(result) if args.json else print(_token_text(args.name, result))
    return EXIT_OK


def cmd_user_token(client: CommandClient, args: argparse.Namespace) -> int:
    result = client.call("issue_token", user=args.name)
    print_json(result) if args.json else print(_token_text(args.name, result))
    return EXIT_OK


def cmd_user_revoke(client: CommandClient, args: argparse.Namespace) -> int:
    result = client.call("revoke_token", user=args.name)
    print_json(result) if args.json else print(f"revoked {result['revoked']} token(s) of {args.name}")
    return EXIT_OK


def cmd_user_permission(client: CommandClient, args: argparse.Namespace) -> int:
    result = client.call("set_user_data_management_permission", user=args.name, enabled=args.enabled)
    if args.json:
        print_json(result)
    else:
        print(f"{args.name} {'may' if result['live_data_management'] else 'may not'} change live session data")
    return EXIT_OK


def cmd_user_role(client: CommandClient, args: argparse.Namespace) -> int:
    result = client.call("set_user_role", user=args.name, role=args.role)
    print_json(result) if args.json else print(f"{args.name} is {'an admin' if args.role == 'admin' else 'a user'}")
    return EXIT_OK


def cmd_user_remove(client: CommandClient, args: argparse.Namespace) -> int:
    if not args.yes:
        answer = confirmed("user remove", f"Remove the user {args.name} and revoke all of their tokens? The audit log "
                           "keeps their name.", args.name)
        if not answer:
            return EXIT_USAGE
    result = client.call("remove_user", user=args.name)
    if args.json:
        print_json(result)
    else:
        print(f"removed {args.name} ({result['tokens_revoked']} token(s) revoked); the audit log keeps the name")
    return EXIT_OK


def actor_text(entry: dict[str, Any]) -> str:
    """Who made an audit entry: a person's name, or livedm's own ("hook (livedm's hook run)")."""
    label = entry.get("actor_label")
    if entry.get("actor_kind") != "livedm" or not label or entry["actor"] == label:
        return str(entry["actor"])
    return f"{entry['actor']} ({label})"


def cmd_audit(client: CommandClient, args: argparse.Namespace) -> int:
    entries = client.call("get_audit_log", project_uid=args.project, session_uid=args.session, limit=args.limit)
    if args.json:
        print_json(entries)
        return EXIT_OK
    rows = []
    skip = {"at", "actor", "action", "project_uid", "session_uid", "datatype", "actor_kind", "actor_label"}
    for e in entries:
        where = " ".join(filter(None, (e.get("project_uid"), e.get("session_uid"), e.get("datatype"))))
        what = ", ".join(f"{k}={v}" for k, v in e.items() if k not in skip)
        rows.append([args.times.short(e["at"], seconds=True), actor_text(e), e["action"], where or "-", what])
    headers = [args.times.header("WHEN"), "WHO", "ACTION", "WHERE", "DETAILS"]
    print(table(headers, rows) if rows else "The audit log is empty.")
    return EXIT_OK
