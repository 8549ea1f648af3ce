"""What is on disk below a directory, to compare before and after an operation that may delete."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def disk_state(root: Path) -> dict[str, str]:
    """Every file and link below root: its content digest, or where a link points."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path) and not os.path.isfile(path):
                continue  # a socket (the embedded store's), a fifo
            state[path] = ("link:" + os.readlink(path)) if os.path.islink(path) else \
                hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return state


def data_state(root: Path) -> dict[str, str]:
    """disk_state of the data below root: without livedmd's own state dirs (any directory named state)
    and logs."""
    return {p: d for p, d in disk_state(root).items()
            if "state" not in Path(p).relative_to(root).parts[:-1] and not p.endswith(".log")}
