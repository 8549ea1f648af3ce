"""The everyday verbs of the livedm client, run as a subprocess against a real livedmd: what they print,
what they change, and what they say when they cannot."""

from __future__ import annotations

import json
from pathlib import Path

from testkit.daemon import Daemon
from testkit.sessiontree import build_session_tree
from tests.support.terminal import livedm_at_terminal


def test_user_role_and_remove(daemon: Daemon) -> None:
    token = daemon.livedm("user", "add", "hana").stdout.strip().splitlines()[-1]
    as_hana = {"LIVEDM_TOKEN": token}
    promoted = daemon.livedm("user", "role", "hana", "admin")
    assert promoted.returncode == 0 and promoted.stdout.strip() == "hana is an admin"
    assert daemon.livedm("user", "list", env=as_hana).returncode == 0  # an admin now
    demoted = daemon.livedm("user", "role", "--json", "hana", "user")
    assert demoted.returncode == 0 and json.loads(demoted.stdout)["role"] == "user"
    bad_role = daemon.livedm("user", "role", "hana", "root")
    assert bad_role.returncode == 2 and "invalid choice: 'root'" in bad_role.stderr

    last = daemon.livedm("user", "role", "admin", "user")
    assert last.returncode == 1 and "Conflict" in last.stderr and "livedm user add NAME --admin" in last.stderr
    hook = daemon.livedm("user", "deny", "hook")
    assert hook.returncode == 1 and "Forbidden" in hook.stderr and "livedm's own account" in hook.stderr
    assert "hook" not in daemon.livedm("user", "list").stdout.split()

    unasked = daemon.livedm("user", "remove", "hana")  # no terminal to ask at, no --yes
    assert unasked.returncode == 2 and "--yes" in unasked.stderr
    mistyped = livedm_at_terminal(daemon, "user", "remove", "hana", typed="hanna")
    assert mistyped.returncode == 2 and "nothing was done" in mistyped.stderr
    assert daemon.livedm("whoami", env=as_hana).returncode == 0
    removed = livedm_at_terminal(daemon, "user", "remove", "hana", typed="hana")
    assert removed.returncode == 0, removed.stderr
    assert "Type hana to confirm" in removed.stdout and "removed hana (1 token(s) revoked)" in removed.stdout
    gone = daemon.livedm("whoami", env=as_hana)
    assert gone.returncode == 1 and "Unauthenticated" in gone.stderr
    again = daemon.livedm("user", "remove", "hana", "--yes")
    assert again.returncode == 1 and "NotFound" in again.stderr and "livedm user list" in again.stderr
    audit = daemon.livedm("audit").stdout
    assert "user_removed" in audit and "user=hana" in audit and "role_changed" in audit


def test_delete_asks_for_the_project_and_the_session(daemon: Daemon, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "proj", exposures=2)
    daemon.call("create_project", ["p", str(tree.project_dir)])
    daemon.call("create_live_session", ["P1", "s"])
    daemon.call("mark_session_completed", ["P1", "S1"])
    only_the_session = livedm_at_terminal(daemon, "delete", "P1", "S1", "particles", typed="S1")
    assert only_the_session.returncode == 2 and "Type P1 S1 to confirm" in only_the_session.stdout
    assert "nothing was done" in only_the_session.stderr
    assert all(Path(p).exists() for p in tree.paths_by_datatype["particles"])
    done = livedm_at_terminal(daemon, "delete", "P1", "S1", "particles", typed="P1 S1")
    assert done.returncode == 0, done.stderr
    assert "deleted 2 files" in done.stdout
    assert not any(Path(p).exists() for p in tree.paths_by_datatype["particles"])
