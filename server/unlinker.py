"""Deleting registry paths below one project dir without ever following a symlink.

Directories are opened one by one from the project's pinned descriptor with O_NOFOLLOW and files are
unlinked by name in them (a symlink goes as a link). The files of one directory go in batches: each
batch first checks again that the path from the project dir still leads, component by component, to
the directories that were opened, so a directory swapped (for a symlink, or moved away) while the job
runs loses at most the batch under way, and the rest of it is refused.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .files import PROJECT_MARKER, dir_id, open_pinned_dir

MAX_OPEN_DIRS = 64  # directory descriptors kept open (the root's aside): ancestors of the current one and the last used
_NOT_A_NAME = frozenset(("", ".", ".."))


class UnsafePath(Exception):
    """A registered path that now leads somewhere livedm must not delete (a symlinked directory, '..')."""


@dataclass
class Outcome:
    """What one batch did. Paths are registry paths (relative to the project dir)."""

    deleted: int = 0
    freed: int = 0  # bytes: a file's size, 0 when other hard links keep its data
    gone: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, the system's reason)


def by_directory(paths: Iterable[str]) -> dict[str, list[str]]:
    """{directory: [file names]}, directories in the order they first appear."""
    grouped: dict[str, list[str]] = {}
    for path in paths:
        directory, _, name = path.rpartition("/")
        if not directory and path.startswith("/"):
            directory = "/"  # an absolute path is no directory of the project's (refused), not its top
        names = grouped.get(directory)
        if names is None:
            grouped[directory] = [name]
        else:
            names.append(name)
    return grouped


def _holds_project(dir_fd: int, rel_dir: str) -> str | None:
    """A directory below the project's own that holds a project.json is another (cryoSPARC) project: its
    files are never a session's of this one, whatever a session dir says (a project.json planted above it)."""
    try:
        os.stat(PROJECT_MARKER, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{rel_dir} cannot be checked for a {PROJECT_MARKER} ({exc.strerror})"
    return f"{rel_dir} holds a {PROJECT_MARKER}: it is another cryoSPARC project, never a session's files"


def _plain_dir(rel_dir: str) -> bool:
    return rel_dir == "" or not (rel_dir.startswith("/") or any(part in _NOT_A_NAME for part in rel_dir.split("/")))


class Unlinker:
    """Refuses, besides symlinks: directories no longer the session dirs that were measured, directories
    raw links point into, the sessions' raw layout dirs and everything below them, directories holding
    another project, and files that are raw movies (`protected`, hard links too)."""

    def __init__(self, project_dir: str, pin: dict[str, int], *,
                 protected: frozenset[tuple[int, int]] = frozenset(), session_dirs: dict[str, str] | None = None,
                 movie_dirs: frozenset[str] = frozenset(), raw_trees: tuple[str, ...] = ()) -> None:
        self.root_fd = open_pinned_dir(project_dir, pin)
        self._open: dict[str, tuple[int, int, int]] = {}  # relative dir: (fd, dev, inode), least recently used first
        self.protected = protected  # (dev, inode) of files never deleted: the sessions' raw movies
        self.session_dirs = session_dirs or {}  # relative session dir: the identity it was measured with
        self.movie_dirs = movie_dirs  # identities of directories raw links point into, anywhere
        self.raw_prefixes = tuple(tree.rstrip("/") + "/" for tree in raw_trees)  # nothing deleted below these
        self._refused: dict[str, str] = {}
        why = self._why_refused("", dir_id(os.fstat(self.root_fd)))
        if why is not None:  # the project dir itself is a movie directory
            self._refused[""] = why

    def close(self) -> None:
        for fd, _, _ in self._open.values():
            os.close(fd)
        self._open.clear()
        os.close(self.root_fd)

    def __enter__(self) -> Unlinker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _why_refused(self, rel_dir: str, identity: str) -> str | None:
        expected = self.session_dirs.get(rel_dir)
        if expected is not None and identity != expected:
            return f"{rel_dir} is no longer the session directory that was measured (moved or replaced)"
        if identity in self.movie_dirs:
            return f"{rel_dir} holds raw movies of a session (raw data is never deleted)"
        return None

    def _refuse(self, rel_dir: str, why: str) -> UnsafePath:
        self._refused[rel_dir] = why
        return UnsafePath(why)

    def _opened(self, rel_dir: str, parent_fd: int, name: str) -> int:
        """Open a directory below its parent's descriptor, checked, and keep it."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self._refuse(rel_dir, f"{rel_dir} is not a plain directory (a symlink?)") from None
            raise
        st = os.fstat(fd)
        why = self._why_refused(rel_dir, dir_id(st)) or _holds_project(fd, rel_dir)
        if why is not None:
            os.close(fd)
            raise self._refuse(rel_dir, why)
        self._open[rel_dir] = (fd, st.st_dev, st.st_ino)
        while len(self._open) > MAX_OPEN_DIRS:
            oldest = next(iter(self._open))
            os.close(self._open.pop(oldest)[0])
        return fd

    def _dir_fd(self, rel_dir: str) -> int:
        """A descriptor of the directory the path leads to now from the project dir, each component checked
        again: a kept descriptor whose path no longer leads to it (swapped, moved) refuses the directory."""
        if "" in self._refused:
            raise UnsafePath(self._refused[""])
        fd = self.root_fd
        if rel_dir == "":
            return fd
        prefix = ""
        for name in rel_dir.split("/"):
            prefix = f"{prefix}/{name}" if prefix else name
            if prefix in self._refused:
                raise UnsafePath(self._refused[prefix])
            kept = self._open.pop(prefix, None)
            if kept is None:
                fd = self._opened(prefix, fd, name)
                continue
            self._open[prefix] = kept  # most recently used now
            now = os.stat(name, dir_fd=fd, follow_symlinks=False)  # gone: its files are gone too
            if not stat.S_ISDIR(now.st_mode) or (now.st_dev, now.st_ino) != kept[1:]:
                raise self._refuse(prefix, f"{prefix} changed while the deletion ran (replaced by a symlink or "
                                           "another directory, or moved)")
            fd = kept[0]
        return fd

    def in_listing_order(self, rel_dir: str, names: list[str]) -> list[str]:
        """The names in the order the directory lists them (as `rm -rf` goes), those not listed last. On
        ext4 an lstat and unlink a file in that order cost what rm does; in name order, which is not the
        order of its hashed directory blocks, they took about 1.6 times as long. Unchanged if the
        directory cannot be listed: unlinking the names says why."""
        if len(names) < 2 or not _plain_dir(rel_dir):
            return names
        try:
            with os.scandir(self._dir_fd(rel_dir)) as entries:
                listed = [entry.name for entry in entries]
        except (UnsafePath, OSError):
            return names
        wanted = set(names)
        ordered = [name for name in listed if name in wanted]
        if len(ordered) < len(wanted):
            found = set(ordered)
            ordered += [name for name in names if name not in found]
        return ordered

    def unlink_batch(self, rel_dir: str, names: Sequence[str]) -> Outcome:
        """Unlink these names in one directory; every one ends up deleted, already gone, refused or failed."""
        out = Outcome()
        if not _plain_dir(rel_dir):
            out.refused = [(f"{rel_dir}/{n}", f"{rel_dir!r} is not a plain path inside the project") for n in names]
            return out
        prefix = f"{rel_dir}/" if rel_dir else ""
        if prefix.startswith(self.raw_prefixes):
            out.refused = [(prefix + n, f"{prefix + n} lies in a session's raw data directory (raw data is never "
                                        "deleted)") for n in names]
            return out
        try:
            dir_fd = self._dir_fd(rel_dir)
        except UnsafePath as exc:
            out.refused = [(prefix + n, str(exc)) for n in names]
            return out
        except FileNotFoundError:
            out.gone = len(names)
            return out
        except OSError as exc:
            out.failed = [(prefix + n, exc.strerror or str(exc)) for n in names]
            return out
        self._unlink_names(dir_fd, prefix, names, out)
        return out

    def _unlink_names(self, dir_fd: int, prefix: str, names: Sequence[str], out: Outcome) -> None:
        """The hot loop: one fstatat (what it is, its size, whether it is a raw movie) and one unlinkat a file."""
        lstat, unlink, is_dir, is_link = os.lstat, os.unlink, stat.S_ISDIR, stat.S_ISLNK
        protected = self.protected
        deleted = freed = gone = 0
        for name in names:
            if name in _NOT_A_NAME:
                out.refused.append((prefix + name, f"{prefix + name!r} is not a plain path inside the project"))
                continue
            try:
                st = lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                gone += 1
                continue
            except OSError as exc:
                out.failed.append((prefix + name, exc.strerror or str(exc)))
                continue
            mode = st.st_mode
            if is_dir(mode):
                out.refused.append((prefix + name, f"{prefix + name} is a directory"))
                continue
            if protected and (st.st_dev, st.st_ino) in protected:
                out.refused.append((prefix + name, f"{prefix + name} is a raw movie of a session (raw data is "
                                                   "never deleted)"))
                continue
            try:
                unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                gone += 1
                continue
            except OSError as exc:
                out.failed.append((prefix + name, exc.strerror or str(exc)))
                continue
            deleted += 1
            if st.st_nlink == 1 or is_link(mode):
                freed += st.st_size
        out.deleted += deleted
        out.freed += freed
        out.gone += gone
