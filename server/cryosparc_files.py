"""What cryoSPARC leaves in project directories, read without trusting it: project.json, workspaces.json
(the Live sessions) and each session's exposures.bson.

These files come from another program, may be half-written, hand-edited or hostile: nothing read here
raises anything but `Unreadable`, and what is skipped inside a readable file is listed in `problems`.
Everything blocks on the disk; callers run it off the event loop. No livedm imports: only stdlib.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import re
import stat
import struct
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

MAX_PROJECT_JSON_BYTES = 16 * 1024 * 1024
MAX_WORKSPACES_JSON_BYTES = 64 * 1024 * 1024  # one entry per workspace; a big project has hundreds
MAX_EXPOSURE_BYTES = 16 * 1024 * 1024  # MongoDB's own document limit: no real exposure is bigger
MAX_TITLE_CHARS = 200
# What one project's files may add up to: cryoSPARC's hold tens of Live sessions (the busiest hundreds), a
# few exposure groups each, a pause per day; a hostile file could hold millions of each within 64 MB (memory,
# a session document over MongoDB's 16 MB, hours of CPU). Beyond these, the rest is skipped and reported.
MAX_LIVE_SESSIONS = 1000
MAX_RAW_DIRS = 100  # per session
MAX_DATES = 1000  # of a list like paused_at: the latest are kept
MAX_PROBLEMS = 200  # listed per project; the others are counted in one more

_PROJECT_UID = re.compile(r"P[1-9][0-9]{0,8}")
_SESSION_UID = re.compile(r"S[1-9][0-9]{0,8}")
_WORKSPACE_UID = re.compile(r"W[1-9][0-9]{0,8}")
_STATUS = re.compile(r"[a-z_]{1,40}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Unreadable(Exception):
    """A file or directory that could not be used, and why (saying what to do about it, if anything).

    Raised, and also kept as a record (`Project.problems`, items of `find_project_dirs`)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def __repr__(self) -> str:
        return f"Unreadable({self.path!r}, {self.reason!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Unreadable):
            return NotImplemented
        return (self.path, self.reason) == (other.path, other.reason)

    def __hash__(self) -> int:
        return hash((self.path, self.reason))


class _Problems(list[Unreadable]):
    """Problems found in one project's files: the first MAX_PROBLEMS, and how many more there were."""

    def __init__(self) -> None:
        super().__init__()
        self.more = 0

    def append(self, problem: Unreadable) -> None:
        if len(self) < MAX_PROBLEMS:
            super().append(problem)
        else:
            self.more += 1

    def listed(self, path: str) -> tuple[Unreadable, ...]:
        more = (Unreadable(path, f"{self.more} more problem(s) in these files are not listed"),) if self.more else ()
        return (*self, *more)


class _Absent(Unreadable):
    """The file is not there (for workspaces.json: a project without workspaces yet, not a problem)."""


@dataclass(frozen=True)
class ExposureCounts:
    """Exposures not deleted (`total`), split three ways: failed, else rejected, else accepted."""

    total: int
    accepted: int
    rejected: int
    failed: int


@dataclass(frozen=True)
class LiveSession:
    session_uid: str
    workspace_uid: str | None
    title: str
    session_dir: str  # relative to the project dir, normalised
    status: str
    created_at: str | None
    completed_at: str | None
    paused_at: list[str]
    created_by_user_id: str | None
    deleted: bool
    raw_dirs: tuple[str, ...]  # the exposure groups' watched directories (absolute, normalised)
    stats: ExposureCounts | None


@dataclass(frozen=True)
class Project:
    uid: str  # from project.json, never from the directory's name
    title: str
    owner_user_id: str | None
    created_at: str | None
    archived: bool
    detached: bool
    deleted: bool
    recorded_dir: str | None  # project.json's project_dir as written: informational only
    sessions: tuple[LiveSession, ...]
    problems: tuple[Unreadable, ...]
    fingerprint: str


# ---------------------------------------------------------------------------------------------------------
# Finding project directories


def _project_marker(directory: str) -> bool | Unreadable:
    """Does this directory hold a regular project.json (True), none (False), or something odd?"""
    try:
        st = os.lstat(os.path.join(directory, "project.json"))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:
        return Unreadable(directory, "permission denied looking inside it; give livedm's user read and execute "
                                     "access, or leave it out of discover_roots")
    except OSError as exc:
        return Unreadable(directory, f"cannot look inside it ({exc.strerror})")
    if stat.S_ISREG(st.st_mode):
        return True
    if stat.S_ISLNK(st.st_mode):
        return Unreadable(directory, "its project.json is a symlink; not followed (cryoSPARC writes a plain file): "
                                     "a copy or a link farm? list the real project directory in discover_roots")
    return Unreadable(directory, "its project.json is not a regular file; not a cryoSPARC project")


def _symlinked_project(path: str) -> Unreadable | None:
    """A symlink found while walking: reported when it leads to a project directory, else ignored."""
    try:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            return None
        if not stat.S_ISREG(os.stat(os.path.join(path, "project.json")).st_mode):
            return None
    except (OSError, ValueError):
        return None  # dangling, a loop, unreadable: nothing that could be a project
    return Unreadable(path, f"a symlink to {os.path.realpath(path)}; not followed: list the real directory "
                            "in discover_roots")


def find_project_dirs(root: str | os.PathLike[str], max_depth: int,
                      known: Iterable[str] = ()) -> Iterator[str | Unreadable]:
    """The directories below `root` (itself depth 0) down to `max_depth` that hold a regular project.json,
    as paths under the root (not resolved), in sorted order; what could not be looked at, as `Unreadable`.

    A project directory is never entered (sessions hold 100k+ files), unless it holds one of the `known`
    project directories (a project.json planted above them must not hide them), and symlinks are never
    followed (a loop must not hang the walk); a symlink that leads to a project is reported. Every other
    directory, hidden ones included, is walked: one scandir each, using the entries' types without a stat.
    Raises Unreadable when the root is missing or not a directory.
    """
    if max_depth < 0:
        raise ValueError(f"max_depth must be 0 or more, not {max_depth}")
    holders = {parent for path in known for parent in _parents(os.path.normpath(path))}
    top = os.path.normpath(os.path.abspath(os.fspath(root)))
    try:
        top_is_dir = stat.S_ISDIR(os.stat(top).st_mode)
    except OSError as exc:
        raise Unreadable(top, f"the discovery root cannot be used ({exc.strerror}); check discover_roots") from None
    if not top_is_dir:
        raise Unreadable(top, "the discovery root is not a directory; check discover_roots")
    stack: list[tuple[str, int, bool]] = [(top, 0, False)]  # (path, depth, is a symlink)
    while stack:
        directory, depth, is_link = stack.pop()
        if is_link:
            found = _symlinked_project(directory)
            if found is not None:
                yield found
            continue
        marker = _project_marker(directory)
        if marker is True:
            yield directory
            if directory not in holders:
                continue
        if isinstance(marker, Unreadable):
            yield marker
            continue
        if depth >= max_depth:
            continue
        children: list[tuple[str, bool]] = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        children.append((entry.name, False))
                    elif entry.is_symlink():
                        children.append((entry.name, True))
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed or replaced while we walked
        except PermissionError:
            yield Unreadable(directory, "permission denied listing it; give livedm's user read and execute "
                                        "access, or leave it out of discover_roots")
            continue
        except OSError as exc:
            yield Unreadable(directory, f"cannot list it ({exc.strerror}); it is skipped this time")
            continue
        for name, link in sorted(children, reverse=True):
            stack.append((os.path.join(directory, name), depth + 1, link))


def _parents(path: str) -> Iterator[str]:
    """Every directory above an absolute path, up to and without "/"."""
    parent = os.path.dirname(path)
    while parent not in ("/", path):
        yield parent
        path, parent = parent, os.path.dirname(parent)


# ---------------------------------------------------------------------------------------------------------
# Reading files safely


def _open_regular(path: str, what: str, dir_fd: int | None = None) -> int:
    """A read descriptor on a regular file that is not a symlink (a FIFO or device would block or never end);
    with `dir_fd`, the file of that name (path's last part) in that directory."""
    try:
        fd = os.open(path if dir_fd is None else os.path.basename(path),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Unreadable(path, f"{what} is a symlink; not followed (cryoSPARC writes a plain file)") from None
        if exc.errno == errno.ENOENT:
            raise _Absent(path, f"{what} does not exist") from None
        if exc.errno == errno.EACCES:
            raise Unreadable(path, f"permission denied reading {what}; give livedm's user read access") from None
        raise Unreadable(path, f"cannot open {what} ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unreadable(path, f"{what} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_capped(path: str, what: str, cap_bytes: int) -> bytes:
    fd = _open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
        if size > cap_bytes:
            raise Unreadable(path, f"{what} holds {size} bytes, more than the {cap_bytes} livedm reads; not a "
                                   "file cryoSPARC wrote?")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 1024 * 1024)
            if not chunk:
                break
            total += len(chunk)
            if total > cap_bytes:
                raise Unreadable(path, f"{what} grew past {cap_bytes} bytes while being read")
            chunks.append(chunk)
    except OSError as exc:
        raise Unreadable(path, f"error reading {what} ({exc.strerror})") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _parse_json(path: str, what: str, data: bytes, problems: list[Unreadable]) -> Any:
    """JSON from bytes; bytes that are not UTF-8 become U+FFFD (reported) so the rest can still be read."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(Unreadable(path, f"{what} is not valid UTF-8 (first bad byte at offset {exc.start}); "
                                         "odd bytes were read as U+FFFD"))
        text = data.decode("utf-8-sig", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Unreadable(path, f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                               "cut short while being written? cryoSPARC rewrites it on the next change") from None
    except (ValueError, RecursionError) as exc:  # a 5,000-digit number, nesting 100,000 deep
        raise Unreadable(path, f"{what} cannot be read as JSON ({type(exc).__name__}: {str(exc)[:100]})") from None


def _stat_token(path: str) -> str:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return f"error-{exc.errno}"
    return f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}"


def files_fingerprint(project_dir: str | os.PathLike[str]) -> str:
    """Changes when project.json or workspaces.json changes: their mtime_ns, size and inode ("absent" when
    missing), taken without following symlinks and without reading them. read_project takes the same
    before it reads, so a change during the read shows as a changed fingerprint next time."""
    directory = os.fspath(project_dir)
    return (f"project.json:{_stat_token(os.path.join(directory, 'project.json'))};"
            f"workspaces.json:{_stat_token(os.path.join(directory, 'workspaces.json'))}")


# ---------------------------------------------------------------------------------------------------------
# Field values


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _clean_text(value: str) -> str:
    """One line of printable text: control characters and lone surrogates (from JSON "\\ud800") removed."""
    kept = "".join(c for c in value if unicodedata.category(c) not in ("Cc", "Cs"))
    return kept.strip()[:MAX_TITLE_CHARS]


def _date_from_millis(millis: int) -> str | None:
    try:
        return (_EPOCH + timedelta(milliseconds=millis)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except OverflowError:
        return None


def _date_from_text(text: str) -> str | None:
    if len(text) > 64:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when
    try:
        return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except OverflowError:
        return None


def parse_date(value: Any) -> str | None:
    """ISO 8601 UTC with milliseconds from Extended JSON ({"$date": "...Z"}, {"$date": millis},
    {"$date": {"$numberLong": "millis"}}) or a bare ISO string; None for anything else."""
    if isinstance(value, str):
        return _date_from_text(value)
    if not isinstance(value, dict) or set(value) != {"$date"}:
        return None
    inner = value["$date"]
    if isinstance(inner, dict) and set(inner) == {"$numberLong"} and isinstance(inner["$numberLong"], str):
        inner = inner["$numberLong"]
        if not re.fullmatch(r"-?[0-9]{1,19}", inner):
            return None
        return _date_from_millis(int(inner))
    if isinstance(inner, bool):
        return None
    if isinstance(inner, int):
        return _date_from_millis(inner)
    if isinstance(inner, str):
        return _date_from_text(inner)
    return None


class _Fields:
    """Optional fields of one JSON object: wrong-typed values fall back to a default, and are reported."""

    def __init__(self, doc: dict[str, Any], path: str, where: str, problems: list[Unreadable]) -> None:
        self.doc, self.path, self.where, self.problems = doc, path, where, problems

    def problem(self, message: str) -> None:
        self.problems.append(Unreadable(self.path, f"{self.where}: {message}"))

    def _bad(self, key: str, expected: str, fallback: str) -> None:
        self.problem(f"{key} is {_type_name(self.doc[key])}, not {expected}; read as {fallback}")

    def text(self, key: str) -> str:
        value = self.doc.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            self._bad(key, "a string", '""')
            return ""
        return _clean_text(value)

    def flag(self, key: str) -> bool:
        value = self.doc.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            self._bad(key, "true or false", "false")
            return False
        return value

    def ident(self, key: str) -> str | None:
        """A user id and alike: short printable text, else None."""
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self._bad(key, "a string", "absent")
            return None
        if not value or len(value) > 128 or not value.isprintable():
            self.problem(f"{key} {value[:40]!r} is not an id; read as absent")
            return None
        return value

    def date(self, key: str) -> str | None:
        value = self.doc.get(key)
        if value is None:
            return None
        parsed = parse_date(value)
        if parsed is None:
            self.problem(f"{key} {_short(value)} is not a date; read as absent")
        return parsed

    def dates(self, key: str) -> list[str]:
        value = self.doc.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self._bad(key, "a list", "[]")
            return []
        if len(value) > MAX_DATES:
            self.problem(f"{key} holds {len(value)} values, more than the {MAX_DATES} read; the latest are kept")
            value = value[-MAX_DATES:]
        parsed = [parse_date(item) for item in value]
        if None in parsed:
            self.problem(f"{key} holds {parsed.count(None)} value(s) that are not dates; they are left out")
        return [when for when in parsed if when is not None]


def _short(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------------------
# project.json and workspaces.json


def _session_dir(value: Any, session_uid: str) -> str | None:
    """The session dir normalised, or None if it would lead anywhere but below the project dir."""
    if value is None or value == "":
        return session_uid  # cryoSPARC: "Usually the same as session_uid"
    if not isinstance(value, str) or "\x00" in value or any(unicodedata.category(c) == "Cs" for c in value):
        return None
    normal = posixpath.normpath(value)
    if normal.startswith("/") or normal == "." or normal.split("/")[0] == "..":
        return None
    return normal


def _raw_dirs(groups: Any, fields: _Fields) -> tuple[str, ...]:
    if groups is None:
        return ()
    if not isinstance(groups, list):
        fields.problem(f"exposure_groups is {_type_name(groups)}, not a list; no raw data directories read")
        return ()
    found: dict[str, None] = {}
    for index, group in enumerate(groups):
        if len(found) >= MAX_RAW_DIRS:
            fields.problem(f"exposure_groups holds more than {MAX_RAW_DIRS} raw data directories; the rest are "
                           "left out")
            break
        watched = group.get("file_engine_watch_path_abs") if isinstance(group, dict) else None
        if watched is None or watched in ("", "/"):
            continue  # not set yet ("/" is cryoSPARC's default for an unset path)
        if (not isinstance(watched, str) or not watched.startswith("/") or "\x00" in watched
                or any(unicodedata.category(c) == "Cs" for c in watched)):
            fields.problem(f"exposure_groups[{index}].file_engine_watch_path_abs {_short(watched)} is not an "
                           "absolute path; left out of the raw data directories")
            continue
        normal = "/" + posixpath.normpath(watched).lstrip("/")
        if normal != "/":
            found[normal] = None
    return tuple(found)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _stats(value: Any, fields: _Fields) -> ExposureCounts | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        fields.problem(f"stats is {_type_name(value)}, not an object; left out")
        return None
    total = _count(value.get("total_exposures"))
    # total_failed is in v5's SessionStats; a v4 file without it reads as 0 failed
    parts = [_count(value.get(key, 0)) for key in ("total_accepted", "total_rejected", "total_failed")]
    if total is None or None in parts:
        fields.problem("stats.total_exposures/total_accepted/total_rejected/total_failed are not all counts; "
                       "stats left out")
        return None
    accepted, rejected, failed = (part or 0 for part in parts)
    return ExposureCounts(total=total, accepted=accepted, rejected=rejected, failed=failed)


def _live_session(entry: dict[str, Any], fields: _Fields, project_uid: str) -> LiveSession | None:
    session_uid = entry.get("session_uid")
    if not isinstance(session_uid, str) or not _SESSION_UID.fullmatch(session_uid):
        fields.problem(f"session_uid {_short(session_uid)} is not a session uid like 'S1'; session skipped")
        return None
    session_dir = _session_dir(entry.get("session_dir"), session_uid)
    if session_dir is None:
        fields.problem(f"session_dir {_short(entry.get('session_dir'))} is not a relative path inside the project "
                       "directory; session skipped")
        return None
    workspace_uid = entry.get("uid")
    if workspace_uid is not None and not (isinstance(workspace_uid, str) and _WORKSPACE_UID.fullmatch(workspace_uid)):
        fields.problem(f"uid {_short(workspace_uid)} is not a workspace uid like 'W3'; read as absent")
        workspace_uid = None
    entry_project = entry.get("project_uid")
    if entry_project is not None and entry_project != project_uid:
        fields.problem(f"project_uid {_short(entry_project)} is not this project's ({project_uid}): a file copied "
                       "from another project? the session is read as this project's")
    status = entry.get("status")
    if not (isinstance(status, str) and _STATUS.fullmatch(status)):
        if status is not None:
            fields.problem(f"status {_short(status)} is not a status word; read as 'unknown'")
        status = "unknown"
    return LiveSession(
        session_uid=session_uid,
        workspace_uid=workspace_uid,
        title=fields.text("title"),
        session_dir=session_dir,
        status=status,
        created_at=fields.date("created_at"),
        completed_at=fields.date("completed_at"),
        paused_at=fields.dates("paused_at"),
        created_by_user_id=fields.ident("created_by_user_id"),
        deleted=fields.flag("deleted"),
        raw_dirs=_raw_dirs(entry.get("exposure_groups"), fields),
        stats=_stats(entry.get("stats"), fields),
    )


class _SessionDirs:
    """The session dirs read so far: which one a new dir is, holds or lies in, in steps of its depth (a
    check against every one before it took 40 s for 10,000 sessions)."""

    def __init__(self) -> None:
        self.dirs: dict[str, LiveSession] = {}
        self.around: dict[str, LiveSession] = {}  # every directory above a session dir: one session below it

    def clash(self, session_dir: str) -> LiveSession | None:
        parts = session_dir.split("/")
        for depth in range(1, len(parts) + 1):  # itself, or a dir above it, is a session's
            found = self.dirs.get("/".join(parts[:depth]))
            if found is not None:
                return found
        return self.around.get(session_dir)  # it holds a session's

    def add(self, session: LiveSession) -> None:
        parts = session.session_dir.split("/")
        self.dirs[session.session_dir] = session
        for depth in range(1, len(parts)):
            self.around.setdefault("/".join(parts[:depth]), session)


def _read_sessions(path: str, project_uid: str, problems: list[Unreadable]) -> tuple[LiveSession, ...]:
    try:
        data = _read_capped(path, "workspaces.json", MAX_WORKSPACES_JSON_BYTES)
        entries = _parse_json(path, "workspaces.json", data, problems)
    except _Absent:
        return ()
    except Unreadable as exc:
        problems.append(exc)
        return ()
    if not isinstance(entries, list):
        problems.append(Unreadable(path, f"workspaces.json is {_type_name(entries)}, not a list; no sessions read"))
        return ()
    sessions: dict[str, LiveSession] = {}
    dirs = _SessionDirs()
    for index, entry in enumerate(entries):
        if len(sessions) >= MAX_LIVE_SESSIONS:
            problems.append(Unreadable(path, f"workspaces.json lists more than {MAX_LIVE_SESSIONS} Live sessions; "
                                             f"those after workspaces.json[{index - 1}] are skipped"))
            break
        if not isinstance(entry, dict):
            problems.append(Unreadable(path, f"workspaces.json[{index}] is {_type_name(entry)}, not an object; "
                                             "skipped"))
            continue
        if entry.get("workspace_type") != "live":
            continue
        label = " ".join(str(entry[key])[:20] for key in ("uid", "session_uid") if isinstance(entry.get(key), str))
        fields = _Fields(entry, path, f"workspaces.json[{index}]" + (f" ({label})" if label else ""), problems)
        session = _live_session(entry, fields, project_uid)
        if session is None:
            continue
        if session.session_uid in sessions:
            fields.problem(f"a second entry for {session.session_uid}; skipped (the first one is read)")
            continue
        clash = dirs.clash(session.session_dir)
        if clash is not None:
            fields.problem(f"session_dir {session.session_dir} is, holds or lies in {clash.session_uid}'s "
                           f"({clash.session_dir}); skipped")
            continue
        sessions[session.session_uid] = session
        dirs.add(session)
    return tuple(sessions.values())


def read_project(project_dir: str | os.PathLike[str]) -> Project:
    """The project as its project.json and workspaces.json describe it.

    Raises Unreadable when project.json cannot be used at all (missing, a symlink, too big, not JSON, not
    an object, no valid uid). Anything less (a wrong-typed field, a bad workspace entry, workspaces.json
    unreadable) falls back to a default and is listed in `problems`.
    """
    directory = os.fspath(project_dir)
    project_path = os.path.join(directory, "project.json")
    workspaces_path = os.path.join(directory, "workspaces.json")
    fingerprint = files_fingerprint(directory)  # before reading: a change while reading shows next time
    problems = _Problems()
    doc = _parse_json(project_path, "project.json", _read_capped(project_path, "project.json",
                                                                 MAX_PROJECT_JSON_BYTES), problems)
    if not isinstance(doc, dict):
        raise Unreadable(project_path, f"project.json is {_type_name(doc)}, not an object")
    uid = doc.get("uid")
    if not isinstance(uid, str) or not _PROJECT_UID.fullmatch(uid):
        raise Unreadable(project_path, f"project.json has no usable uid (uid is {_short(uid)}, not like 'P12')")
    fields = _Fields(doc, project_path, "project.json", problems)
    recorded_dir = doc.get("project_dir")
    if recorded_dir is not None and not (isinstance(recorded_dir, str) and recorded_dir.isprintable()
                                         and len(recorded_dir) <= 4096):
        fields.problem(f"project_dir {_short(recorded_dir)} is not a path; read as absent")
        recorded_dir = None
    title = fields.text("title")
    owner_user_id = fields.ident("owner_user_id")
    created_at = fields.date("created_at")
    archived, detached, deleted = fields.flag("archived"), fields.flag("detached"), fields.flag("deleted")
    sessions = _read_sessions(workspaces_path, uid, problems)
    return Project(uid=uid, title=title, owner_user_id=owner_user_id, created_at=created_at, archived=archived,
                   detached=detached, deleted=deleted, recorded_dir=recorded_dir, sessions=sessions,
                   problems=problems.listed(directory), fingerprint=fingerprint)


# ---------------------------------------------------------------------------------------------------------
# exposures.bson, streamed

_INT32 = struct.Struct("<i")
_INT64 = struct.Struct("<q")
_DOUBLE = struct.Struct("<d")
_FIXED_BYTES = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16,
                0x7F: 0, 0xFF: 0}
_STRING_TYPES = (0x02, 0x0D, 0x0E)  # string, JavaScript code, symbol: int32 length (NUL included) + bytes
_DOC_TYPES = (0x03, 0x04)
_KNOWN_TYPES = frozenset([0x00, *_FIXED_BYTES, *_STRING_TYPES, *_DOC_TYPES, 0x05, 0x0B, 0x0C, 0x0F])  # 0x00: the end
_FLAGS = {b"deleted": 0, b"failed": 1, b"manual_reject": 2, b"threshold_reject": 3}
_MAX_NAME_BYTES = 64 * 1024
_CHUNK_BYTES = 256 * 1024


class _Stream:
    """Forward reads over a file with a small buffer; long skips seek past the bytes instead of reading them
    (a 1 MB preview embedded in an exposure is never loaded)."""

    def __init__(self, fd: int, path: str, size: int) -> None:
        self.fd, self.path, self.size = fd, path, size
        self.buf = b""
        self.at = 0  # index in buf
        self.base = 0  # file offset of buf[0]

    @property
    def pos(self) -> int:
        return self.base + self.at

    def fail(self, offset: int, message: str) -> Unreadable:
        return Unreadable(self.path, f"not readable as BSON at byte {offset}: {message}")

    def _fill(self, need: int) -> None:
        """At least `need` bytes buffered from the current position."""
        have = len(self.buf) - self.at
        if have >= need:
            return
        if self.pos + need > self.size:
            raise self.fail(self.pos, f"{need} more bytes needed, the file ends at byte {self.size} (cut short?)")
        parts = [self.buf[self.at:]]
        self.base, self.at = self.pos, 0
        os.lseek(self.fd, self.base + have, os.SEEK_SET)
        while have < need:
            chunk = os.read(self.fd, max(_CHUNK_BYTES, need - have))
            if not chunk:
                raise self.fail(self.base + have, "the file ended early (shrunk while being read?)")
            parts.append(chunk)
            have += len(chunk)
        self.buf = b"".join(parts)

    def read(self, n: int) -> bytes:
        self._fill(n)
        data = self.buf[self.at:self.at + n]
        self.at += n
        return data

    def byte(self) -> int:
        self._fill(1)
        value = self.buf[self.at]
        self.at += 1
        return value

    def kind(self) -> int:
        """The type byte of the next element, or 0 at the end of a document."""
        value = self.byte()
        if value not in _KNOWN_TYPES:
            raise self.fail(self.pos - 1, f"unsupported BSON type 0x{value:02x} (not a file cryoSPARC wrote?)")
        return value

    def int32(self) -> int:
        self._fill(4)
        (value,) = _INT32.unpack_from(self.buf, self.at)
        self.at += 4
        return int(value)

    def skip_to(self, offset: int) -> None:
        if offset <= self.base + len(self.buf):
            self.at = offset - self.base
        else:
            self.buf, self.at, self.base = b"", 0, offset

    def cstring(self, end: int) -> bytes:
        """A NUL-terminated name, which must end before `end`."""
        start = self.pos
        while True:
            found = self.buf.find(b"\x00", self.at)
            if found >= 0:
                if self.base + found >= end:
                    raise self.fail(start, "a name runs past the end of its document")
                name = self.buf[self.at:found]
                self.at = found + 1
                return name
            length = len(self.buf) - self.at
            if length > _MAX_NAME_BYTES or self.pos + length >= end:
                raise self.fail(start, "a name without its terminating NUL byte")
            self._fill(min(length + _CHUNK_BYTES, self.size - self.pos))


def _value_end(stream: _Stream, kind: int, end: int) -> int:
    """Where the value that starts at the stream's position ends (the stream may move within it)."""
    start = stream.pos
    if kind in _FIXED_BYTES:
        value_end = start + _FIXED_BYTES[kind]
    elif kind in _STRING_TYPES:
        length = stream.int32()
        if length < 1:
            raise stream.fail(start, f"a string declares {length} bytes")
        value_end = start + 4 + length
    elif kind in _DOC_TYPES:
        length = stream.int32()
        if length < 5:
            raise stream.fail(start, f"an embedded document declares {length} bytes (5 at least)")
        value_end = start + length
    elif kind == 0x05:
        length = stream.int32()
        if length < 0:
            raise stream.fail(start, f"binary data declares {length} bytes")
        value_end = start + 5 + length
    elif kind == 0x0F:
        length = stream.int32()
        if length < 14:
            raise stream.fail(start, f"code with scope declares {length} bytes")
        value_end = start + length
    elif kind == 0x0B:
        stream.cstring(end)
        stream.cstring(end)
        value_end = stream.pos
    else:  # 0x0C, a DBPointer: a string and 12 bytes
        length = stream.int32()
        if length < 1:
            raise stream.fail(start, f"a DBPointer declares {length} bytes")
        value_end = start + 4 + length + 12
    if value_end > end - 1:  # the document's terminating NUL must still fit
        raise stream.fail(start, f"a value of {value_end - start} bytes runs past the end of its document "
                                 f"(byte {end})")
    return value_end


def _end_of_document(stream: _Stream, end: int) -> None:
    if stream.pos != end:
        raise stream.fail(stream.pos - 1, f"a document ends here, but declared it ends at byte {end}")


def _flag_value(stream: _Stream, kind: int, value_end: int) -> bool:
    """cryoSPARC writes booleans; numbers count as true when not 0, null and anything else as false."""
    if kind == 0x08:
        return stream.byte() != 0
    if kind == 0x10:
        return stream.int32() != 0
    if kind == 0x12:
        return _INT64.unpack(stream.read(8))[0] != 0
    if kind == 0x01:
        return _DOUBLE.unpack(stream.read(8))[0] != 0.0
    stream.skip_to(value_end)
    return False


def _count_exposure(stream: _Stream, array_end: int, counts: list[int]) -> None:
    start = stream.pos
    length = stream.int32()
    if length < 5:
        raise stream.fail(start, f"an exposure declares {length} bytes (5 at least)")
    if length > MAX_EXPOSURE_BYTES:
        raise stream.fail(start, f"an exposure of {length} bytes, more than the {MAX_EXPOSURE_BYTES} a "
                                 "cryoSPARC exposure can hold")
    end = start + length
    if end > array_end - 1:
        raise stream.fail(start, f"an exposure of {length} bytes runs past the end of the exposures list")
    flags = [False, False, False, False]
    while (kind := stream.kind()) != 0:
        name = stream.cstring(end)
        value_end = _value_end(stream, kind, end)
        index = _FLAGS.get(name)
        if index is None:
            stream.skip_to(value_end)
        else:
            flags[index] = _flag_value(stream, kind, value_end)
    _end_of_document(stream, end)
    deleted, failed, manual_reject, threshold_reject = flags
    if deleted:
        return
    counts[0] += 1
    if failed:
        counts[3] += 1
    elif manual_reject or threshold_reject:
        counts[2] += 1


def _count_exposures_list(stream: _Stream, end: int, counts: list[int]) -> None:
    while (kind := stream.kind()) != 0:
        at = stream.pos - 1
        stream.cstring(end)
        if kind != 0x03:
            raise stream.fail(at, f"an entry of the exposures list is BSON type 0x{kind:02x}, not a document")
        _count_exposure(stream, end, counts)
    _end_of_document(stream, end)


def open_session_dir(project_dir: str, session_dir: str) -> int:
    """A descriptor of a session's directory, each directory from the project's down opened without following
    a symlink (a session dir swapped for a link to somebody else's is not read). Unreadable if it is not
    there as plain directories."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    shown = os.path.join(project_dir, session_dir)
    try:
        fd = os.open(project_dir, flags)
    except OSError as exc:
        raise Unreadable(project_dir, f"the project directory cannot be opened as a plain directory "
                                      f"({exc.strerror})") from None
    try:
        for part in session_dir.split("/"):
            inner = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = inner
    except OSError as exc:
        os.close(fd)
        raise Unreadable(shown, f"the session directory is not there as a plain directory ({exc.strerror}; a "
                                "symlink is never followed)") from None
    return fd


def read_exposure_counts(path: str | os.PathLike[str], dir_fd: int | None = None) -> ExposureCounts:
    """Counts of the exposures in a session's exposures.bson: one or more BSON documents, each with an
    `exposures` list, concatenated. Streamed: only the four flags of each exposure are read, everything
    else (previews included) is skipped by its declared length. An empty file holds no exposures.

    Deleted exposures are not counted; of the others, a failed one counts as failed (whatever its
    rejection flags), else a manually or threshold-rejected one as rejected, else as accepted.
    Raises Unreadable (with the byte offset) on anything that is not well-formed BSON of that shape.
    """
    file_path = os.fspath(path)
    fd = _open_regular(file_path, "exposures.bson", dir_fd)
    try:
        stream = _Stream(fd, file_path, os.fstat(fd).st_size)
        counts = [0, 0, 0, 0]  # total, accepted (computed last), rejected, failed
        while stream.pos < stream.size:
            start = stream.pos
            length = stream.int32()
            if length < 5:
                raise stream.fail(start, f"a document declares {length} bytes (5 at least)")
            end = start + length
            if end > stream.size:
                raise stream.fail(start, f"a document of {length} bytes runs past the end of the file "
                                         f"(byte {stream.size}): cut short while being written?")
            while (kind := stream.kind()) != 0:
                name = stream.cstring(end)
                value_end = _value_end(stream, kind, end)
                if name == b"exposures" and kind == 0x04:
                    _count_exposures_list(stream, value_end, counts)
                else:
                    stream.skip_to(value_end)
            _end_of_document(stream, end)
    except OSError as exc:
        raise Unreadable(file_path, f"error reading exposures.bson ({exc.strerror})") from None
    finally:
        os.close(fd)
    total, _, rejected, failed = counts
    return ExposureCounts(total=total, accepted=max(0, total - rejected - failed), rejected=rejected, failed=failed)
