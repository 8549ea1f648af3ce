"""Files on disk: the layout rules, walking a session, sizing, and where a path may point.

Everything here blocks on the disk; callers run it off the event loop.
Registry paths are stored relative to the project directory ("S1/motioncorrected/a.mrc").
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .domain import DATATYPES
from .errors import invalid_params

Layout = Sequence[tuple[str, str]]

# (relative path, identity of the bytes counted or None when missing, bytes)
Entry = tuple[str, tuple[int, int] | None, int]


@dataclass(frozen=True)
class Measure:
    """One category measured on disk."""

    size: int  # bytes, each file (or raw symlink target) counted once
    present: int  # registered files that exist
    registered: int


def datatype_of(top_dir: str, layout: Layout) -> str:
    for directory, datatype in layout:
        if top_dir == directory:
            return datatype
    return "metadata"


def _stat_entry(rel: str, st: os.stat_result | None) -> Entry:
    if st is None:
        return (rel, None, 0)
    return (rel, (st.st_dev, st.st_ino), st.st_size)


def _raw_target_stat(path: str) -> os.stat_result | None:
    """A raw file counts with its symlink target's size; a link to a directory or nothing counts 0."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _walk_files(root: str, rel_prefix: str, follow_links: bool, out: list[Entry]) -> None:
    stack = [(root, rel_prefix)]
    while stack:
        directory, rel_dir = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, rel))
                continue
            try:
                if follow_links and entry.is_symlink():
                    out.append(_stat_entry(rel, _raw_target_stat(entry.path)))
                else:
                    out.append(_stat_entry(rel, entry.stat(follow_symlinks=False)))
            except OSError:
                out.append((rel, None, 0))


def walk_session(project_dir: str, session_dir: str, layout: Layout,
                 skip: frozenset[str] = frozenset()) -> dict[str, list[Entry]]:
    """All files under the session dir, sorted into datatypes by the layout rules, with their sizes.

    Directories are walked without following symlinks; a symlink is a file of its category (raw
    ones are measured by their target). Paths in `skip` (registered by API elsewhere) are left out.
    """
    found: dict[str, list[Entry]] = {datatype: [] for datatype in DATATYPES}
    session_root = os.path.join(project_dir, session_dir)
    check_session_root(project_dir, session_dir)
    try:
        top_entries = list(os.scandir(session_root))
    except FileNotFoundError:
        return found
    for entry in top_entries:
        rel = f"{session_dir}/{entry.name}"
        datatype = datatype_of(entry.name, layout) if entry.is_dir(follow_symlinks=False) else "metadata"
        if entry.is_dir(follow_symlinks=False):
            _walk_files(entry.path, rel, datatype == "raw", found[datatype])
        else:
            try:
                found["metadata"].append(_stat_entry(rel, entry.stat(follow_symlinks=False)))
            except OSError:
                continue
    if skip:
        for datatype in DATATYPES:
            found[datatype] = [e for e in found[datatype] if e[0] not in skip]
    return found


def stat_registered(project_dir: str, rel_paths: Iterable[str], follow_links: bool) -> list[Entry]:
    entries: list[Entry] = []
    for rel in rel_paths:
        path = os.path.join(project_dir, rel)
        if follow_links:
            entries.append(_stat_entry(rel, _raw_target_stat(path)))
            continue
        try:
            entries.append(_stat_entry(rel, os.lstat(path)))
        except OSError:
            entries.append((rel, None, 0))
    return entries


def measure(entries: Sequence[Entry]) -> Measure:
    seen: set[tuple[int, int]] = set()
    size = present = 0
    for _rel, key, nbytes in entries:
        if key is None:
            continue
        present += 1
        if key not in seen:
            seen.add(key)
            size += nbytes
    return Measure(size=size, present=present, registered=len(entries))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_project_dir(project_dir: str) -> str:
    """A project dir is an absolute path to an existing directory; kept as given, normalised."""
    if "\x00" in project_dir or not os.path.isabs(project_dir):
        raise invalid_params(f"project_dir {project_dir!r} must be an absolute path")
    normal = os.path.normpath(project_dir)
    if not os.path.isdir(normal):
        raise invalid_params(f"project_dir {normal} is not an existing directory; create it first")
    return normal


def check_session_dir(session_dir: str) -> str:
    """A session dir is a relative path below the project dir, without '..'."""
    normal = os.path.normpath(session_dir) if session_dir else ""
    if (not normal or "\x00" in normal or os.path.isabs(normal) or normal == "."
            or normal.split(os.sep)[0] == ".."):
        raise invalid_params(f"session_dir {session_dir!r} must be a relative path inside the project dir")
    return normal


def check_session_root(project_dir: str, session_dir: str) -> None:
    real_project = os.path.realpath(project_dir)
    real_session = os.path.realpath(os.path.join(project_dir, session_dir))
    if not _inside(real_session, real_project) or real_session == real_project:
        raise invalid_params(f"session dir {session_dir} resolves to {real_session}, outside the project "
                             f"dir {real_project}; livedm only manages files inside the project")


def project_relative(project_dir: str, path: str) -> str:
    """The registry form of a path (relative to the project dir) if it lies inside the project.

    The containing directory is resolved (so '..' and symlinked directories cannot lead out); the
    file itself may be a symlink, which stays a link: its target is never what is managed.
    """
    if not isinstance(path, str) or not path or "\x00" in path:
        raise invalid_params(f"{path!r} is not a file path")
    joined = os.path.normpath(os.path.join(project_dir, path))
    real_project = os.path.realpath(project_dir)
    parent = os.path.realpath(os.path.dirname(joined))
    name = os.path.basename(joined)
    if not name or name in (".", ".."):
        raise invalid_params(f"{path!r} names a directory, not a file")
    resolved = os.path.join(parent, name)
    if not _inside(parent, real_project):
        raise invalid_params(f"{path} is outside the project dir {project_dir} (after resolving '..' and "
                             "symlinks); only files inside the project can be registered")
    return os.path.relpath(resolved, real_project)


def check_registrable(project_dir: str, rel: str) -> None:
    path = os.path.join(project_dir, rel)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise invalid_params(f"{path} does not exist; register files once they are written") from None
    if stat.S_ISDIR(st.st_mode):
        raise invalid_params(f"{path} is a directory; register the files inside it")


def absolute_paths(project_dir: str, rel_paths: Iterable[str], resolve_links: bool) -> list[str]:
    """Absolute paths for file lists; raw ones resolved to their targets, each target once."""
    out: list[str] = []
    seen: set[str] = set()
    for rel in rel_paths:
        path = os.path.join(project_dir, rel)
        if resolve_links:
            path = os.path.realpath(path)
        if path not in seen:
            seen.add(path)
            out.append(path)
    return out
