"""Files on disk: the layout rules, walking a session, sizing, and where a path may point.

Everything here blocks on the disk; callers run it off the event loop.
Registry paths are stored relative to the project directory ("S1/motioncorrected/a.mrc").
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .dirwalk import Layout, SessionWalk, paths_of
from .domain import DATATYPES
from .errors import forbidden, invalid_params

PROJECT_MARKER = "project.json"  # what cryoSPARC writes at the root of every project directory
PATH_MAX = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096

@dataclass
class Tally:
    """One category's files on disk: registry paths (relative to the project dir), the bytes they hold
    (each file, or raw symlink target, counted once, like `du -b`) and how many exist."""

    paths: list[str] = field(default_factory=list)
    size: int = 0
    present: int = 0
    seen: set[tuple[int, int]] = field(default_factory=set)  # (dev, inode) of bytes that may repeat

    @property
    def registered(self) -> int:
        return len(self.paths)

    def add(self, rel: str, st: os.stat_result | None, always_keyed: bool) -> None:
        self.paths.append(rel)
        if st is None:
            return
        self.present += 1
        if always_keyed or st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in self.seen:
                return
            self.seen.add(key)
        self.size += st.st_size


def shown(path: str) -> str:
    """A path for people and JSON: a name that is not UTF-8 shows its odd bytes escaped."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _target_stat(name: str, dir_fd: int | None = None) -> os.stat_result | None:
    """A raw file counts with its symlink target's size; a link to a directory or nothing counts 0."""
    try:
        st = os.stat(name, dir_fd=dir_fd)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def walk_session(project_dir: str, session_dir: str, layout: Layout,
                 *, skip: frozenset[str] = frozenset(), threads: int = 1) -> dict[str, Tally]:
    """All files under the session dir, sorted into datatypes by the layout rules, and measured: a full
    walk (dirwalk.SessionWalk) with nothing known before.

    Directories are walked without following symlinks; a symlink is a file of its category (raw
    ones are measured by their target). Paths in `skip` (registered by API elsewhere) are left out.
    """
    check_session_root(project_dir, session_dir)
    walked = SessionWalk(project_dir, session_dir, layout, previous={}, load_entries=lambda _: None, skip=skip,
                         threads=threads).run()
    found = {datatype: Tally() for datatype in DATATYPES}
    for state in walked.dirs.values():
        tally = found[state.datatype]
        assert state.entries is not None
        tally.paths += paths_of(state, state.entries)
        for index in range(len(state.entries)):
            key = state.entries.key(index)
            if key is not None:
                tally.seen.add(key)
    for datatype, totals in walked.totals.items():
        found[datatype].size, found[datatype].present = totals.size, totals.present
    return found


def _lstat_or_none(path: str, follow_links: bool) -> os.stat_result | None:
    if follow_links:
        return _target_stat(path)
    try:
        return os.lstat(path)
    except OSError:
        return None


def add_registered(tally: Tally, project_dir: str, rel_paths: Iterable[str], *, follow_links: bool) -> None:
    """Measure files registered by API (outside the layout) into a category's tally."""
    for rel in rel_paths:
        tally.add(rel, _lstat_or_none(os.path.join(project_dir, rel), follow_links), follow_links)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_data_roots(path: str, roots: Sequence[str]) -> None:
    """Refuse a path (after resolving symlinks) outside every data root; no roots: anywhere."""
    if not roots:
        return
    real = os.path.realpath(path)
    if not any(_inside(real, os.path.realpath(root)) for root in roots):
        raise forbidden(f"{path} is outside the data roots livedm may manage ({', '.join(roots)}); "
                        "an admin sets them with LIVEDM_DATA_ROOTS")


# Never a project dir, nor inside one of them: deleting "metadata" there would break the machine.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
                "/sys", "/usr", "/var/lib", "/var/log", "/var/run", "/var/spool", "/var/cache")
# Never a project dir themselves (projects may lie below them).
SYSTEM_DIRS = ("/", "/home", "/var", "/tmp", "/var/tmp", "/mnt", "/media", "/srv", "/opt", "/root", "/data")


def _real(path: str) -> str:
    return os.path.realpath(path)


def check_project_location(project_dir: str, data_roots: Sequence[str], guarded: Sequence[str]) -> None:
    """Where a project dir may never be: `/` or a system directory, a directory holding (or inside) one
    of `guarded` (livedmd's state dir, its hook logs), or outside the data roots when they are set."""
    real = _real(project_dir)
    if real in SYSTEM_DIRS or any(_inside(real, tree) for tree in SYSTEM_TREES):
        raise forbidden(f"{project_dir} is a system directory (or inside one); a project dir must be a "
                        "directory of its own on your data storage")
    for path in guarded:
        real_guarded = _real(path)
        if _inside(real_guarded, real) or _inside(real, real_guarded):
            raise forbidden(f"{project_dir} holds or lies inside livedm's own state ({path}); choose a directory "
                            "on your data storage")
    check_data_roots(project_dir, data_roots)


def check_project_dir(project_dir: str) -> str:
    """A project dir is an absolute path to an existing directory that is not itself a symlink; kept as
    given, normalised."""
    if "\x00" in project_dir or not os.path.isabs(project_dir):
        raise invalid_params(f"project_dir {project_dir!r} must be an absolute path")
    normal = os.path.normpath(project_dir)
    try:
        st = os.lstat(normal)
    except OSError as exc:
        raise invalid_params(f"project_dir {normal} is not an existing directory ({exc.strerror}); create it "
                             "first") from None
    if stat.S_ISLNK(st.st_mode):
        raise invalid_params(f"project_dir {normal} is a symlink; give the directory it points to "
                             f"({os.path.realpath(normal)})")
    if not stat.S_ISDIR(st.st_mode):
        raise invalid_params(f"project_dir {normal} is not a directory")
    return normal


def dir_pin(project_dir: str) -> dict[str, int]:
    """What identifies the project's directory itself (not whatever its path leads to later)."""
    st = os.stat(project_dir, follow_symlinks=False)
    return {"dev": st.st_dev, "ino": st.st_ino}


class ProjectDirChanged(Exception):
    """The project's path no longer leads to the directory it was created with."""


def open_pinned_dir(project_dir: str, pin: dict[str, int]) -> int:
    """A descriptor of the project's own directory: opened without following a final symlink, and
    refused unless it is the very directory (device and inode) the project was created with."""
    try:
        fd = os.open(project_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ProjectDirChanged(f"{project_dir} cannot be opened as a plain directory ({exc.strerror}): "
                                "it is gone, or was replaced by a symlink") from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (pin["dev"], pin["ino"]):
        os.close(fd)
        raise ProjectDirChanged(f"{project_dir} is no longer the directory the project was created with "
                                "(it was moved or replaced)")
    return fd


def check_pinned(project_dir: str, pin: dict[str, int]) -> None:
    os.close(open_pinned_dir(project_dir, pin))


def dir_id(st: os.stat_result) -> str:
    """A directory's identity (device and inode) as one string, to store and compare."""
    return f"{st.st_dev}:{st.st_ino}"


def session_dir_id(project_dir: str, session_dir: str) -> str | None:
    """The session dir's identity, or None when it is not there as a plain directory (gone, a symlink)."""
    try:
        st = os.lstat(os.path.join(project_dir, session_dir))
    except OSError:
        return None
    return dir_id(st) if stat.S_ISDIR(st.st_mode) else None


def dir_stamp(project_dir: str, session_dir: str) -> str | None:
    """Changes when an entry is added to or removed from the session dir or one of its subdirs (their
    mtimes); None when the session dir is not there. One scandir: cheap enough for every session."""
    top = os.path.join(project_dir, session_dir)
    try:
        parts = [str(os.lstat(top).st_mtime_ns)]
        with os.scandir(top) as entries:
            parts += sorted(f"{e.name}:{e.stat(follow_symlinks=False).st_mtime_ns}" for e in entries
                            if e.is_dir(follow_symlinks=False))
    except OSError:
        return None
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def raw_movie_dirs(project_dir: str, raw_links: Iterable[str]) -> set[str]:
    """Identities of the directories that raw links point into (where the movies are): no deletion may
    take a file from them, whichever project or category lists it."""
    found: set[str] = set()
    seen_parents: set[str] = set()
    for rel in raw_links:
        link = os.path.join(project_dir, rel)
        try:
            target = os.readlink(link)
        except OSError:
            continue  # a plain file, or gone
        parent = os.path.dirname(os.path.normpath(os.path.join(os.path.dirname(link), target)))
        if parent in seen_parents:
            continue
        seen_parents.add(parent)
        try:
            found.add(dir_id(os.stat(parent)))
        except OSError:
            continue
    return found


def dirs_overlap(a: str, b: str) -> bool:
    """Are two normalised paths the same, or is one inside the other?"""
    return _inside(a, b) or _inside(b, a)


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
    if len(os.fsencode(path)) > PATH_MAX:
        raise invalid_params(f"a path of {len(path)} characters is longer than any this system allows ({PATH_MAX})")
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
    except OSError as exc:
        raise invalid_params(f"{path[:200]}: {exc.strerror}") from None
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


def movie_paths(project_dir: str, raw_links: Iterable[str]) -> tuple[list[str], list[str]]:
    """(movies, missing): the absolute paths of the movies raw links lead to, each once, and of those they
    should lead to but that are gone (a broken link, a movie deleted or unmounted)."""
    movies: list[str] = []
    missing: list[str] = []
    for path in absolute_paths(project_dir, raw_links, resolve_links=True):
        (movies if os.path.isfile(path) else missing).append(path)
    return movies, missing


def raw_movies(project_dir: str, raw_links: Iterable[str]) -> frozenset[tuple[int, int]]:
    """(dev, inode) of the movies that raw links point at: whatever category another session's scan
    put them in, they are raw data, which livedm never deletes."""
    found = set()
    for rel in raw_links:
        st = _target_stat(os.path.join(project_dir, rel))
        if st is not None:
            found.add((st.st_dev, st.st_ino))
    return frozenset(found)
