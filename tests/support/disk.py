"""What is on disk below a directory, to compare before and after an operation that may delete."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path


def disk_state(root: Path, skip_dirs: Iterable[str] = ()) -> dict[str, str]:
    """Every file and link below root: its content digest, or where a link points. Directories named in
    skip_dirs are not looked into (nor listed)."""
    skipped = set(skip_dirs)
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skipped]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path) and not os.path.isfile(path):
                continue  # a socket (the embedded store's), a fifo
            state[path] = ("link:" + os.readlink(path)) if os.path.islink(path) else \
                hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return state


def data_state(root: Path, skip_dirs: Iterable[str] = ()) -> dict[str, str]:
    """disk_state of the data below root: without livedmd's own state dirs (any directory named state),
    its logs, and the directories named in skip_dirs."""
    return {p: d for p, d in disk_state(root, {"state", *skip_dirs}).items() if not p.endswith(".log")}
