"""Hook scripts and the directories they sit in, as the hook tests lay them out, and the refusals
livedmd gives for a script another user could change (OpenSSH's StrictModes)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

OTHER = 65534  # nobody: neither root nor livedmd's own user
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


def executable(path: Path, text: str, mode: int = 0o755) -> Path:
    """A script at `path` that may be run: `text`, mode 0755 unless told otherwise."""
    path.write_text(text)
    path.chmod(mode)
    return path


def marker_script(path: Path, marker: Path, body: str = "") -> Path:
    """A hook that records that it ran (and with which arguments) in `marker`, then runs `body`."""
    return executable(path, f"#!/bin/sh\necho \"$@\" >> {marker}\n{body}")


def private_dir(path: Path) -> Path:
    """A directory only its owner (root, or livedmd's user) may change: mode 0755, whatever the umask."""
    path.mkdir()
    path.chmod(0o755)
    return path


def plain_script(directory: Path, name: str = "hook.sh", mode: int = 0o755) -> Path:
    """An executable script in `directory` (a new one is made 0755): nobody but its owner may change it."""
    if not directory.exists():
        private_dir(directory)
    return executable(directory / name, "#!/bin/sh\n", mode)


def sticky_dir(path: Path) -> Path:
    """A directory like /tmp: anyone may add entries, only an entry's owner may replace it."""
    path.mkdir()
    path.chmod(0o1777)
    return path


def open_dir(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o777)
    return path


def user_text(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def changeable(script: Path, problem: str) -> str:
    """The whole refusal for `script`, with `problem` the entry at fault and the command that fixes it."""
    return f"hook script {script} could be changed by another user: {problem}"


def owned_by_other(entry: Path, kind: str = "file") -> str:
    chown = "chown -h" if kind == "symbolic link" else "chown"
    return (f"the {kind} {entry} is owned by {user_text(OTHER)}, not by {user_text(0)}; run "
            f"`{chown} root {entry}` or move the script where only root can write")


def writable(entry: Path, mode: int, kind: str = "file", by: str = "group and others") -> str:
    return f"the {kind} {entry} is writable by {by} (mode {mode:04o}); run `chmod go-w {entry}`"
