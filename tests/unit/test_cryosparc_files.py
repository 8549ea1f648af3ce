"""Reading cryoSPARC's project files: against realistic trees from the fixture and against hostile input."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import time
import tracemalloc
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import Binary, Code, Decimal128, MaxKey, MinKey, ObjectId, Regex, Timestamp

from livedm.server import cryosparc_files as cf
from livedm.server import files
from livedm.server.config import parse_layout
from livedm.server.cryosparc_files import ExposureCounts, Unreadable
from testkit.cryosparc_tree import (
    CryosparcProject,
    SessionSpec,
    build_cryosparc_project,
    build_facility,
    encode_exposures,
    write_big_exposures_bson,
)

LAYOUT = parse_layout("import_movies=raw,motioncorrected=micrographs,thumbnails=thumbnails,extract=particles")


def project(tmp_path: Path, sessions: list[SessionSpec] | None = None, **kwargs: Any) -> CryosparcProject:
    return build_cryosparc_project(tmp_path / "root", sessions=sessions, movies_dir=tmp_path / "movies", **kwargs)


def refusal(call: Any, *args: Any) -> str:
    with pytest.raises(Unreadable) as caught:
        call(*args)
    return caught.value.reason


def problems(path: Path | str) -> list[tuple[str, str]]:
    return [(p.path, p.reason) for p in cf.read_project(str(path)).problems]


# ---------------------------------------------------------------------------------------------------------
# A realistic project


def test_reads_a_realistic_project_field_by_field(tmp_path: Path) -> None:
    built = project(tmp_path, [SessionSpec(title="Apo grid 1", exposures=5, failed=1, manual_rejected=1,
                                           threshold_rejected=1, deleted=1),
                               SessionSpec(session_dir="live/S2", exposure_groups=2, status="running")])
    read = cf.read_project(str(built.project_dir))
    owner = built.doc["owner_user_id"]
    assert (read.uid, read.title, read.owner_user_id, read.created_at) == (
        "P12", "Apoferritin test", owner, "2024-03-01T10:02:03.123Z")
    assert (read.archived, read.detached, read.deleted) == (False, False, False)
    assert read.recorded_dir == str(built.project_dir)
    assert read.problems == ()
    s1, s2 = read.sessions
    movies = tmp_path / "movies"
    assert s1 == cf.LiveSession(
        session_uid="S1", workspace_uid="W2", title="Apo grid 1", session_dir="S1", status="completed",
        created_at="2024-03-01T11:02:03.123Z", completed_at="2024-03-01T13:02:03.123Z",
        paused_at=["2024-03-01T12:02:03.123Z"], created_by_user_id=owner, deleted=False,
        raw_dirs=(str(movies / "CS-apoferritin-test-S1"),),
        stats=ExposureCounts(total=4, accepted=1, rejected=2, failed=1))
    assert (s2.session_uid, s2.workspace_uid, s2.session_dir, s2.status, s2.completed_at, s2.paused_at) == (
        "S2", "W3", "live/S2", "running", None, [])
    assert s2.raw_dirs == (str(movies / "CS-apoferritin-test-S2" / "grid1"),
                           str(movies / "CS-apoferritin-test-S2" / "grid2"))
    assert s2.stats == ExposureCounts(total=3, accepted=3, rejected=0, failed=0)


@pytest.mark.parametrize("style", ["iso", "millis", "numberLong"])
def test_every_extended_json_date_form_reads_the_same(tmp_path: Path, style: str) -> None:
    read = cf.read_project(str(project(tmp_path, date_style=style).project_dir))
    assert read.created_at == "2024-03-01T10:02:03.123Z"
    assert (read.sessions[0].created_at, read.sessions[0].completed_at, read.sessions[0].paused_at) == (
        "2024-03-01T11:02:03.123Z", "2024-03-01T13:02:03.123Z", ["2024-03-01T12:02:03.123Z"])
    assert read.problems == ()


@pytest.mark.parametrize(("value", "expected"), [
    ({"$date": "2024-03-01T10:02:03Z"}, "2024-03-01T10:02:03.000Z"),
    ({"$date": "2024-03-01T12:02:03.5+02:00"}, "2024-03-01T10:02:03.500Z"),
    ({"$date": "2024-03-01T10:02:03.123"}, "2024-03-01T10:02:03.123Z"),  # no zone: UTC
    ({"$date": 0}, "1970-01-01T00:00:00.000Z"),
    ({"$date": -1000}, "1969-12-31T23:59:59.000Z"),
    ({"$date": {"$numberLong": "1709287323123"}}, "2024-03-01T10:02:03.123Z"),
    ("2024-03-01T10:02:03.123Z", "2024-03-01T10:02:03.123Z"),
    ({"$date": 10**18}, None), ({"$date": {"$numberLong": "99999999999999999999"}}, None),
    ({"$date": "yesterday"}, None), ({"$date": True}, None), ({"$date": 1.5}, None), ({"$date": None}, None),
    ({"$date": "2024-03-01", "x": 1}, None), (1709287323123, None), ([], None), ("9" * 100, None),
    ({"$date": "0001-01-01T00:00:00+01:00"}, None),
])
def test_dates(value: Any, expected: str | None) -> None:
    assert cf.parse_date(value) == expected


def test_fixture_bytes_agree_with_livedms_own_walk(tmp_path: Path) -> None:
    """The fixture counts what it writes; livedm's walker measures the tree: two independent sides."""
    built = project(tmp_path, [SessionSpec(exposures=4, failed=1, deleted=1),
                               SessionSpec(session_dir="deep/S2", exposure_groups=3, exposures=5)])
    for session in built.sessions.values():
        walked = files.walk_session(str(built.project_dir), session.session_dir, LAYOUT)
        assert {dt: t.size for dt, t in walked.items()} == session.bytes_by_datatype
        assert {dt: t.present for dt, t in walked.items()} == session.files_by_datatype
        assert {dt: sorted(t.paths) for dt, t in walked.items()} == {
            dt: sorted(paths) for dt, paths in session.paths_by_datatype.items()}
    assert built.sessions["S1"].files_by_datatype == {"raw": 4, "micrographs": 8, "thumbnails": 0, "particles": 2,
                                                      "metadata": 9}


def test_the_uid_comes_from_project_json_never_the_directory_name(tmp_path: Path) -> None:
    built = project(tmp_path, dir_name="P99", uid="P12")
    assert built.project_dir.name == "P99"
    assert cf.read_project(str(built.project_dir)).uid == "P12"


def test_a_recorded_dir_with_shell_variables_is_kept_as_written(tmp_path: Path) -> None:
    built = project(tmp_path, recorded_dir="$CRYOSPARC_PROJECTS/CS-apoferritin-test")
    assert cf.read_project(str(built.project_dir)).recorded_dir == "$CRYOSPARC_PROJECTS/CS-apoferritin-test"


def test_no_workspaces_json_means_no_sessions_and_no_problem(tmp_path: Path) -> None:
    built = project(tmp_path)
    built.workspaces_json.unlink()
    read = cf.read_project(str(built.project_dir))
    assert (read.sessions, read.problems) == ((), ())
    assert read.fingerprint.endswith(";workspaces.json:absent")


def test_base_workspaces_and_deleted_sessions(tmp_path: Path) -> None:
    built = project(tmp_path, [SessionSpec(), SessionSpec(deleted_session=True)], base_workspaces=3)
    read = cf.read_project(str(built.project_dir))
    assert [(s.session_uid, s.workspace_uid, s.deleted) for s in read.sessions] == [
        ("S1", "W4", False), ("S2", "W5", True)]


def test_sessions_added_removed_and_changed(tmp_path: Path) -> None:
    built = project(tmp_path, [SessionSpec(status="running")])
    before = cf.read_project(str(built.project_dir))
    built.add_session(SessionSpec(title="second"), session_files=False)
    built.set_status("S1", "paused")
    after = cf.read_project(str(built.project_dir))
    assert [(s.session_uid, s.status, s.title) for s in after.sessions] == [
        ("S1", "paused", "Session 1"), ("S2", "completed", "second")]
    assert after.fingerprint != before.fingerprint
    built.remove_session("S1")
    assert [s.session_uid for s in cf.read_project(str(built.project_dir)).sessions] == ["S2"]


def test_fingerprint_is_the_same_cheap_or_read_and_changes_with_either_file(tmp_path: Path) -> None:
    built = project(tmp_path)
    directory = str(built.project_dir)
    first = cf.files_fingerprint(directory)
    assert cf.read_project(directory).fingerprint == first == cf.files_fingerprint(directory)
    for path in (built.project_json, built.workspaces_json):
        data = path.read_bytes()
        path.write_bytes(data)  # in place: same inode and size, so only the time tells
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        changed = cf.files_fingerprint(directory)
        assert changed != first
        assert cf.read_project(directory).fingerprint == changed
        first = changed
    built.project_json.unlink()
    assert cf.files_fingerprint(directory).startswith("project.json:absent;")


# ---------------------------------------------------------------------------------------------------------
# Hostile project.json


def test_a_truncated_project_json_is_unreadable(tmp_path: Path) -> None:
    built = project(tmp_path)
    built.truncate_project_json()
    with pytest.raises(Unreadable) as caught:
        cf.read_project(str(built.project_dir))
    assert caught.value.path == str(built.project_json)
    assert caught.value.reason.startswith("project.json is not valid JSON (")
    assert "cut short while being written?" in caught.value.reason


@pytest.mark.parametrize("keep", [0, 1, 10, 100])
def test_project_json_cut_anywhere_is_unreadable_not_a_crash(tmp_path: Path, keep: int) -> None:
    built = project(tmp_path)
    built.truncate_project_json(keep)
    with pytest.raises(Unreadable):
        cf.read_project(str(built.project_dir))


def test_a_byte_that_is_not_utf8_costs_one_character_not_the_project(tmp_path: Path) -> None:
    built = project(tmp_path)
    built.break_utf8_in_title()
    read = cf.read_project(str(built.project_dir))
    assert (read.uid, read.title) == ("P12", "\ufffdApoferritin test")
    assert len(read.sessions) == 1
    offset = built.project_json.read_bytes().index(b"\xff")
    assert [(p.path, p.reason) for p in read.problems] == [
        (str(built.project_json), f"project.json is not valid UTF-8 (first bad byte at offset {offset}); odd bytes "
                                  "were read as U+FFFD")]


def test_project_json_in_another_encoding_entirely_is_unreadable(tmp_path: Path) -> None:
    built = project(tmp_path)
    built.write_project_json_bytes(json.dumps(built.doc).encode("utf-16"))
    with pytest.raises(Unreadable, match="not valid JSON"):
        cf.read_project(str(built.project_dir))


@pytest.mark.parametrize(("content", "reason"), [
    (b"[]", "project.json is a list, not an object"),
    (b'"P12"', "project.json is a string, not an object"),
    (b"null", "project.json is null, not an object"),
    (b"{}", "project.json has no usable uid (uid is null, not like 'P12')"),
    (b'{"uid": "12"}', "project.json has no usable uid (uid is \"12\", not like 'P12')"),
    (b'{"uid": "P0"}', "project.json has no usable uid (uid is \"P0\", not like 'P12')"),
    (b'{"uid": "P1234567890"}', "project.json has no usable uid (uid is \"P1234567890\", not like 'P12')"),
    (b'{"uid": "P12\\n"}', "project.json has no usable uid (uid is \"P12\\n\", not like 'P12')"),
    (b'{"uid": 12}', "project.json has no usable uid (uid is 12, not like 'P12')"),
    (b"[" * 100_000, None),  # deeper than the parser goes
    (b'{"uid": "P1", "n": 1' + b"0" * 5000 + b"}", None),  # more digits than Python converts
])
def test_project_json_without_a_usable_uid_is_unreadable(tmp_path: Path, content: bytes, reason: str | None) -> None:
    built = project(tmp_path)
    built.write_project_json_bytes(content)
    with pytest.raises(Unreadable) as caught:
        cf.read_project(str(built.project_dir))
    assert caught.value.path == str(built.project_json)
    if reason is not None:
        assert caught.value.reason == reason


def test_wrong_typed_project_fields_fall_back_and_are_reported(tmp_path: Path) -> None:
    built = project(tmp_path)
    for key, value in [("title", 42), ("owner_user_id", ["x"]), ("created_at", {"$date": "soon"}),
                       ("archived", "yes"), ("detached", 1), ("deleted", None), ("project_dir", {"a": 1})]:
        built.doc[key] = value
    built.write_project_json()
    read = cf.read_project(str(built.project_dir))
    assert (read.uid, read.title, read.owner_user_id, read.created_at, read.recorded_dir) == ("P12", "", None, None,
                                                                                              None)
    assert (read.archived, read.detached, read.deleted) == (False, False, False)
    assert len(read.sessions) == 1
    path = str(built.project_json)
    assert problems(built.project_dir) == [
        (path, 'project.json: project_dir {"a": 1} is not a path; read as absent'),
        (path, 'project.json: title is a number, not a string; read as ""'),
        (path, "project.json: owner_user_id is a list, not a string; read as absent"),
        (path, 'project.json: created_at {"$date": "soon"} is not a date; read as absent'),
        (path, "project.json: archived is a string, not true or false; read as false"),
        (path, "project.json: detached is a number, not true or false; read as false"),
    ]


def test_titles_lose_control_characters_and_stop_at_200(tmp_path: Path) -> None:
    built = project(tmp_path)
    built.set_project_field("title", "  Apo\x00fer\nri\x1b[31mtin\ud800 \x85é  ")
    assert cf.read_project(str(built.project_dir)).title == "Apoferri[31mtin é"
    built.set_project_field("title", "x" * 1000)
    assert cf.read_project(str(built.project_dir)).title == "x" * 200


def test_a_symlinked_project_json_is_refused(tmp_path: Path) -> None:
    built = project(tmp_path)
    elsewhere = tmp_path / "elsewhere.json"
    built.project_json.rename(elsewhere)
    built.project_json.symlink_to(elsewhere)
    with pytest.raises(Unreadable) as caught:
        cf.read_project(str(built.project_dir))
    assert caught.value.reason == "project.json is a symlink; not followed (cryoSPARC writes a plain file)"


def test_a_fifo_or_directory_as_project_json_is_refused_without_blocking(tmp_path: Path) -> None:
    built = project(tmp_path)
    built.project_json.unlink()
    os.mkfifo(built.project_json)
    assert refusal(cf.read_project, str(built.project_dir)) == "project.json is not a regular file"
    built.project_json.unlink()
    built.project_json.mkdir()
    assert refusal(cf.read_project, str(built.project_dir)) == "project.json is not a regular file"


def test_missing_and_oversized_project_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = project(tmp_path)
    size = built.project_json.stat().st_size
    monkeypatch.setattr(cf, "MAX_PROJECT_JSON_BYTES", size - 1)
    with pytest.raises(Unreadable) as caught:
        cf.read_project(str(built.project_dir))
    assert caught.value.reason == (f"project.json holds {size} bytes, more than the {size - 1} livedm reads; not a "
                                   "file cryoSPARC wrote?")
    built.project_json.unlink()
    assert refusal(cf.read_project, str(built.project_dir)) == "project.json does not exist"


# ---------------------------------------------------------------------------------------------------------
# Hostile workspaces.json


def test_workspaces_json_as_an_object_gives_no_sessions_and_says_so(tmp_path: Path) -> None:
    built = project(tmp_path, [SessionSpec(), SessionSpec()])
    built.workspaces_as_object()
    read = cf.read_project(str(built.project_dir))
    assert read.sessions == ()
    assert [(p.path, p.reason) for p in read.problems] == [
        (str(built.workspaces_json), "workspaces.json is an object, not a list; no sessions read")]


def test_unreadable_workspaces_json_is_a_problem_not_a_failure(tmp_path: Path) -> None:
    built = project(tmp_path)
    data = built.workspaces_json.read_bytes()
    built.workspaces_json.write_bytes(data[:-20])
    read = cf.read_project(str(built.project_dir))
    assert (read.uid, read.sessions) == ("P12", ())
    assert len(read.problems) == 1
    assert read.problems[0].reason.startswith("workspaces.json is not valid JSON (")
    built.workspaces_json.unlink()
    built.workspaces_json.symlink_to(tmp_path / "movies")
    assert problems(built.project_dir) == [
        (str(built.workspaces_json), "workspaces.json is a symlink; not followed (cryoSPARC writes a plain file)")]


def test_bad_live_entries_are_skipped_each_with_a_problem(tmp_path: Path) -> None:
    built = project(tmp_path, [SessionSpec(number=n) for n in range(1, 9)])
    built.set_session_field("S2", "session_uid", None)
    built.set_session_field("S3", "session_dir", "../S3")
    built.set_session_field("S4", "session_dir", "/data/S4")
    built.set_session_field("S5", "session_uid", "S1")  # a second S1
    built.set_session_field("S6", "session_dir", "S1/inner")  # inside S1's directory
    built.set_session_field("S7", "session_dir", "S7/../S1")  # S1's directory, spelled differently
    built.add_workspace_entry("not an object")
    built.add_workspace_entry({"workspace_type": "base", "uid": "W99", "session_dir": "../ignored"})
    read = cf.read_project(str(built.project_dir))
    assert [(s.session_uid, s.session_dir) for s in read.sessions] == [("S1", "S1"), ("S8", "S8")]
    path = str(built.workspaces_json)
    assert [(p.path, p.reason) for p in read.problems] == [
        (path, "workspaces.json[2] (W3): session_uid null is not a session uid like 'S1'; session skipped"),
        (path, 'workspaces.json[3] (W4 S3): session_dir "../S3" is not a relative path inside the project directory; '
               "session skipped"),
        (path, 'workspaces.json[4] (W5 S4): session_dir "/data/S4" is not a relative path inside the project '
               "directory; session skipped"),
        (path, "workspaces.json[5] (W6 S1): a second entry for S1; skipped (the first one is read)"),
        (path, "workspaces.json[6] (W7 S6): session_dir S1/inner is, holds or lies in S1's (S1); skipped"),
        (path, "workspaces.json[7] (W8 S7): session_dir S1 is, holds or lies in S1's (S1); skipped"),
        (path, "workspaces.json[9] is a string, not an object; skipped"),
    ]


@pytest.mark.parametrize(("session_dir", "expected"), [
    (None, "S1"), ("", "S1"), ("./S1/", "S1"), ("live//S1", "live/S1"), ("a/../S1", "S1"), ("S1/.", "S1")])
def test_session_dirs_are_normalised_and_default_to_the_uid(tmp_path: Path, session_dir: str | None,
                                                             expected: str) -> None:
    built = project(tmp_path, session_files=False)
    built.set_session_field("S1", "session_dir", session_dir)
    assert cf.read_project(str(built.project_dir)).sessions[0].session_dir == expected


@pytest.mark.parametrize("session_dir", [".", "..", "../x", "/S1", "x/../..", "S1\x00", "S\udc80", 1, ["S1"]])
def test_session_dirs_leading_out_are_refused(tmp_path: Path, session_dir: Any) -> None:
    built = project(tmp_path, session_files=False)
    built.set_session_field("S1", "session_dir", session_dir)
    read = cf.read_project(str(built.project_dir))
    assert read.sessions == ()
    assert len(read.problems) == 1
    assert read.problems[0].reason.endswith("is not a relative path inside the project directory; session skipped")


@pytest.mark.parametrize(("status", "expected", "reported"), [
    ("running", "running", False), ("compacted", "compacted", False), ("restoration_failed", "restoration_failed",
                                                                        False),
    ("some_new_state", "some_new_state", False), (None, "unknown", False), ("Running", "unknown", True),
    ("x" * 41, "unknown", True), (3, "unknown", True), ("", "unknown", True)])
def test_status_is_kept_when_it_is_a_status_word(tmp_path: Path, status: Any, expected: str, reported: bool) -> None:
    built = project(tmp_path, session_files=False)
    built.set_session_field("S1", "status", status)
    read = cf.read_project(str(built.project_dir))
    assert read.sessions[0].status == expected
    assert len(read.problems) == int(reported)


def test_wrong_typed_session_fields_fall_back_and_are_reported(tmp_path: Path) -> None:
    built = project(tmp_path, session_files=False)
    for key, value in [("uid", "workspace 2"), ("title", ["t"]), ("created_at", 5), ("completed_at", "never"),
                       ("paused_at", [{"$date": 0}, "bad", None]), ("created_by_user_id", "a\nb"),
                       ("deleted", "no"), ("project_uid", "P7")]:
        built.set_session_field("S1", key, value)
    read = cf.read_project(str(built.project_dir))
    (session,) = read.sessions
    assert (session.workspace_uid, session.title, session.created_at, session.completed_at, session.paused_at,
            session.created_by_user_id, session.deleted) == (None, "", None, None, ["1970-01-01T00:00:00.000Z"],
                                                             None, False)
    where = "workspaces.json[1] (workspace 2 S1)"
    assert [p.reason for p in read.problems] == [
        f"{where}: uid \"workspace 2\" is not a workspace uid like 'W3'; read as absent",
        f"{where}: project_uid \"P7\" is not this project's (P12): a file copied from another project? the session is "
        "read as this project's",
        f'{where}: title is a list, not a string; read as ""',
        f"{where}: created_at 5 is not a date; read as absent",
        f'{where}: completed_at "never" is not a date; read as absent',
        f"{where}: paused_at holds 2 value(s) that are not dates; they are left out",
        f"{where}: created_by_user_id 'a\\nb' is not an id; read as absent",
        f"{where}: deleted is a string, not true or false; read as false",
    ]


def test_raw_dirs_are_absolute_normalised_and_distinct(tmp_path: Path) -> None:
    built = project(tmp_path, session_files=False)
    groups = [{"file_engine_watch_path_abs": path} for path in (
        "/data/movies//grid1/", "relative/dir", "/", "", None, "/data/movies/grid1", "//data/./x/../grid2", 7,
        "/bad\x00path")] + ["not a group"]
    built.set_session_field("S1", "exposure_groups", groups)
    read = cf.read_project(str(built.project_dir))
    assert read.sessions[0].raw_dirs == ("/data/movies/grid1", "/data/grid2")
    assert [p.reason.split(": ", 1)[1] for p in read.problems] == [
        'exposure_groups[1].file_engine_watch_path_abs "relative/dir" is not an absolute path; left out of the raw '
        "data directories",
        "exposure_groups[7].file_engine_watch_path_abs 7 is not an absolute path; left out of the raw data directories",
        'exposure_groups[8].file_engine_watch_path_abs "/bad\\u0000path" is not an absolute path; left out of the '
        "raw data directories",
    ]
    built.set_session_field("S1", "exposure_groups", {"a": 1})
    read = cf.read_project(str(built.project_dir))
    assert read.sessions[0].raw_dirs == ()
    assert read.problems[0].reason.endswith("exposure_groups is an object, not a list; no raw data directories read")


@pytest.mark.parametrize(("stats", "expected"), [
    ({"total_exposures": 10, "total_accepted": 6, "total_rejected": 3}, ExposureCounts(10, 6, 3, 0)),
    ({"total_exposures": 10, "total_accepted": 6, "total_rejected": 3, "total_failed": 1}, ExposureCounts(10, 6, 3, 1)),
    ({"total_exposures": 10}, ExposureCounts(10, 0, 0, 0)),
    (None, None), ({}, "reported"), ({"total_exposures": -1}, "reported"), ({"total_exposures": True}, "reported"),
    ({"total_exposures": 3, "total_accepted": "2"}, "reported"), ([1, 2], "reported")])
def test_stats(tmp_path: Path, stats: Any, expected: Any) -> None:
    built = project(tmp_path, session_files=False)
    built.set_session_field("S1", "stats", stats)
    read = cf.read_project(str(built.project_dir))
    if expected == "reported":
        assert read.sessions[0].stats is None
        assert len(read.problems) == 1
    else:
        assert (read.sessions[0].stats, read.problems) == (expected, ())


# ---------------------------------------------------------------------------------------------------------
# Finding project directories


def make_project_dir(path: Path, uid: str = "P1") -> Path:
    path.mkdir(parents=True)
    (path / "project.json").write_text(json.dumps({"uid": uid}))
    return path


def found(root: Path, max_depth: int) -> list[str | tuple[str, str]]:
    return [item if isinstance(item, str) else (item.path, item.reason) for item in cf.find_project_dirs(str(root),
                                                                                                         max_depth)]


def test_finds_projects_in_sorted_order_down_to_the_depth_limit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = make_project_dir(root / "CS-a")
    b = make_project_dir(root / "group" / "CS-b")
    c = make_project_dir(root / "group" / "user" / "CS-c")
    hidden = make_project_dir(root / ".hidden" / "CS-d")
    (root / "group" / "notes.txt").write_text("x")
    (root / "empty").mkdir()
    assert found(root, 0) == []
    assert found(root, 1) == [str(a)]
    assert found(root, 2) == [str(hidden), str(a), str(b)]
    assert found(root, 3) == [str(hidden), str(a), str(b), str(c)]
    with pytest.raises(ValueError):
        found(root, -1)


def test_project_dirs_are_never_entered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = project(tmp_path, [SessionSpec(exposures=2)])
    make_project_dir(built.project_dir / "S1" / "motioncorrected" / "nested", "P2")
    make_project_dir(built.project_dir / "J1" / "inner", "P3")
    listed: list[str] = []
    real_scandir = os.scandir

    def spying_scandir(path: Any) -> Any:
        listed.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", spying_scandir)
    assert found(tmp_path / "root", 10) == [str(built.project_dir)]
    assert listed == [str(tmp_path / "root")]


def test_the_root_itself_may_be_the_project(tmp_path: Path) -> None:
    built = project(tmp_path)
    assert found(built.project_dir, 0) == found(built.project_dir, 5) == [str(built.project_dir)]


def test_paths_are_as_found_under_the_root_not_resolved(tmp_path: Path) -> None:
    make_project_dir(tmp_path / "real" / "CS-a")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert found(tmp_path / "alias", 1) == [str(tmp_path / "alias" / "CS-a")]


def test_a_symlink_loop_under_a_root_neither_hangs_nor_recurses(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = make_project_dir(root / "CS-a")
    (root / "loop").symlink_to(root)
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(root / "sub")
    (root / "self").symlink_to(root / "self")
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    assert found(root, 50) == [str(a)]


def test_a_project_reached_by_a_symlink_is_reported_not_followed(tmp_path: Path) -> None:
    other = make_project_dir(tmp_path / "other_root" / "CS-x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(other)
    (root / "to_other_root").symlink_to(tmp_path / "other_root")  # a tree of projects: not followed, not reported
    assert found(root, 3) == [(str(root / "link"), f"a symlink to {other}; not followed: list the real directory "
                                                   "in discover_roots")]
    assert found(tmp_path / "other_root", 3) == [str(other)]


def test_a_symlinked_project_json_is_reported_and_its_directory_not_entered(tmp_path: Path) -> None:
    root = tmp_path / "root"
    odd = make_project_dir(root / "CS-odd")
    (odd / "project.json").rename(tmp_path / "p.json")
    (odd / "project.json").symlink_to(tmp_path / "p.json")
    make_project_dir(odd / "S1" / "inner", "P2")
    assert found(root, 5) == [(str(odd), "its project.json is a symlink; not followed (cryoSPARC writes a plain "
                                         "file): a copy or a link farm? list the real project directory in "
                                         "discover_roots")]


def test_a_directory_that_cannot_be_listed_is_reported_and_the_walk_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated (tests run as root here, and root reads everything): scandir refuses one directory."""
    root = tmp_path / "root"
    make_project_dir(root / "a" / "CS-hidden")
    b = make_project_dir(root / "b" / "CS-b")
    real_scandir = os.scandir

    def refusing_scandir(path: Any) -> Any:
        if os.fspath(path) == str(root / "a"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)
    assert found(root, 3) == [
        (str(root / "a"), "permission denied listing it; give livedm's user read and execute access, or leave it "
                          "out of discover_roots"),
        str(b)]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads directories whatever their mode; the simulated test "
                                              "above covers this when running as root")
def test_a_directory_without_permissions_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_project_dir(root / "locked" / "CS-x")
    b = make_project_dir(root / "open" / "CS-b")
    (root / "locked").chmod(0)
    try:
        result = found(root, 3)
    finally:
        (root / "locked").chmod(0o755)
    assert result == [(str(root / "locked"), "permission denied looking inside it; give livedm's user read and "
                                             "execute access, or leave it out of discover_roots"), str(b)]


def test_a_missing_root_or_a_file_as_root_raises(tmp_path: Path) -> None:
    with pytest.raises(Unreadable) as caught:
        found(tmp_path / "missing", 2)
    assert (caught.value.path, caught.value.reason) == (
        str(tmp_path / "missing"), "the discovery root cannot be used (No such file or directory); check "
                                   "discover_roots")
    (tmp_path / "file").write_text("x")
    with pytest.raises(Unreadable, match="the discovery root is not a directory"):
        found(tmp_path / "file", 2)


# ---------------------------------------------------------------------------------------------------------
# exposures.bson


def exposure(uid: int, **flags: Any) -> dict[str, Any]:
    return {"uid": uid, "deleted": False, "failed": False, "manual_reject": False, "threshold_reject": False,
            "groups": {"exposure": {"movie_blob": {"path": f"S1/import_movies/{uid}.tif"}}}, **flags}


def counts_of(tmp_path: Path, data: bytes) -> ExposureCounts:
    path = tmp_path / "exposures.bson"
    path.write_bytes(data)
    return cf.read_exposure_counts(str(path))


def test_counts_match_the_fixture_in_one_document_or_several(tmp_path: Path) -> None:
    built = project(tmp_path, [SessionSpec(exposures=9, failed=1, manual_rejected=2, threshold_rejected=1, deleted=2),
                               SessionSpec(exposures=5, bson_documents=3),
                               SessionSpec(exposures=2, bson_documents=4),  # two documents with an empty list
                               SessionSpec(exposures=0)])
    expected = {"S1": ExposureCounts(7, 3, 3, 1), "S2": ExposureCounts(5, 5, 0, 0), "S3": ExposureCounts(2, 2, 0, 0),
                "S4": ExposureCounts(0, 0, 0, 0)}
    for uid, session in built.sessions.items():
        assert session.exposures_bson is not None
        assert cf.read_exposure_counts(str(session.exposures_bson)) == expected[uid] == ExposureCounts(
            **session.counts)
    data = built.sessions["S1"].exposures_bson.read_bytes()  # type: ignore[union-attr]
    assert len(bson.decode_all(data)[0]["exposures"]) == 9  # what storage tools read, from the same file


def test_flag_combinations_count_each_exposure_once(tmp_path: Path) -> None:
    data = encode_exposures([
        exposure(1, failed=True, manual_reject=True),  # failed wins
        exposure(2, manual_reject=True, threshold_reject=True),  # rejected once
        exposure(3, deleted=True, failed=True),  # deleted: not counted at all
        exposure(4, failed=1, manual_reject=0),  # numbers count as their truth
        exposure(5, threshold_reject=1.0, failed=None),
        exposure(6, manual_reject=bson.Int64(0), failed="yes"),  # a string is no flag
        {"uid": 7},  # no flags: accepted
        exposure(8, deleted=bson.Int64(2)),
    ])
    assert counts_of(tmp_path, data) == ExposureCounts(total=6, accepted=2, rejected=2, failed=2)


def test_every_bson_type_is_skipped_by_its_length(tmp_path: Path) -> None:
    odd = {"double": 1.5, "string": "é" * 10, "doc": {"a": [1, {"b": None}]}, "array": [1, "x", []],
           "binary": Binary(b"\x00" * 300, 0), "binary_old": Binary(b"\x01" * 7, 2), "oid": ObjectId(),
           "bool": True, "date": bson.datetime.datetime(2024, 3, 1), "null": None, "regex": Regex("^a.*\x01b$", "i"),
           "code": Code("function() {}"), "code_scope": Code("f(x)", {"x": 1}), "int32": 7, "ts": Timestamp(5, 1),
           "int64": bson.Int64(2**40), "dec": Decimal128("1.5"), "min": MinKey(), "max": MaxKey(), "": "empty name"}
    data = bson.encode({**odd, "exposures": [{**odd, **exposure(1)}, {**exposure(2, failed=True), **odd}],
                        "after": odd})
    assert counts_of(tmp_path, data) == ExposureCounts(total=2, accepted=1, rejected=0, failed=1)


def test_documents_without_an_exposures_list_count_nothing(tmp_path: Path) -> None:
    data = b"".join([bson.encode({"exposures": {"0": exposure(1)}}), bson.encode({"other": [exposure(2)]}),
                     bson.encode({"exposures": None}), bson.encode({}), bson.encode({"exposures": [exposure(3)]})])
    assert counts_of(tmp_path, data) == ExposureCounts(total=1, accepted=1, rejected=0, failed=0)
    assert counts_of(tmp_path, b"") == ExposureCounts(0, 0, 0, 0)


def test_cut_at_every_offset_gives_the_whole_documents_or_unreadable(tmp_path: Path) -> None:
    first = bson.encode({"exposures": [exposure(1), exposure(2, failed=True)]})
    second = bson.encode({"exposures": [exposure(3, manual_reject=True)], "note": "x"})
    data = first + second
    whole_documents = {0: ExposureCounts(0, 0, 0, 0), len(first): ExposureCounts(2, 1, 0, 1),
                       len(data): ExposureCounts(3, 1, 1, 1)}
    path = tmp_path / "exposures.bson"
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        if cut in whole_documents:
            assert cf.read_exposure_counts(str(path)) == whole_documents[cut], cut
            continue
        with pytest.raises(Unreadable) as caught:
            cf.read_exposure_counts(str(path))
        assert caught.value.path == str(path)
        assert caught.value.reason.startswith("not readable as BSON at byte "), caught.value.reason


def test_the_fixture_can_cut_a_sessions_exposures_bson(tmp_path: Path) -> None:
    built = project(tmp_path, [SessionSpec(exposures=4)])
    built.truncate_exposures_bson("S1", 100)
    with pytest.raises(Unreadable) as caught:
        cf.read_exposure_counts(str(built.sessions["S1"].exposures_bson))
    assert "runs past the end of the file (byte 100): cut short while being written?" in caught.value.reason


def test_every_byte_changed_gives_counts_or_unreadable(tmp_path: Path) -> None:
    data = bson.encode({"exposures": [exposure(1), exposure(2, manual_reject=True)], "n": bson.Int64(3)})
    path = tmp_path / "exposures.bson"
    outcomes = {"counts": 0, "unreadable": 0}
    for at in range(len(data)):
        for value in (0x00, 0x01, 0x7F, 0x80, 0xFF):
            path.write_bytes(data[:at] + bytes([value]) + data[at + 1:])
            try:
                result = cf.read_exposure_counts(str(path))
            except Unreadable:
                outcomes["unreadable"] += 1
            else:
                assert 0 <= result.accepted <= result.total <= 2
                outcomes["counts"] += 1
    assert outcomes["counts"] > 0 and outcomes["unreadable"] > 0


@pytest.mark.timeout(60)
def test_random_garbage_never_raises_anything_else(tmp_path: Path) -> None:
    rng = random.Random(7)
    path = tmp_path / "exposures.bson"
    for n in range(300):
        path.write_bytes(rng.randbytes(rng.randrange(1, 200 if n % 2 else 5000)))
        with contextlib.suppress(Unreadable):
            cf.read_exposure_counts(str(path))


def element_doc(*elements: bytes) -> bytes:
    body = b"".join(elements) + b"\x00"
    return (len(body) + 4).to_bytes(4, "little", signed=True) + body


@pytest.mark.parametrize(("data", "reason"), [
    ((-5).to_bytes(4, "little", signed=True) + b"\x00" * 10, "at byte 0: a document declares -5 bytes (5 at least)"),
    ((1 << 30).to_bytes(4, "little") + b"\x00" * 10, "at byte 0: a document of 1073741824 bytes runs past the end of "
                                                      "the file (byte 14): cut short while being written?"),
    (element_doc(b"\x14x\x00"), "at byte 4: unsupported BSON type 0x14 (not a file cryoSPARC wrote?)"),
    (element_doc(b"\x04exposures\x00" + element_doc(b"\x100\x00" + b"\x01\x00\x00\x00")),
     "at byte 19: an entry of the exposures list is BSON type 0x10, not a document"),
    (element_doc(b"\x02s\x00" + (-1).to_bytes(4, "little", signed=True) + b"\x00"),
     "at byte 7: a string declares -1 bytes"),
    (element_doc(b"\x02s\x00" + (100).to_bytes(4, "little") + b"ab\x00"),
     "at byte 7: a value of 104 bytes runs past the end of its document (byte 15)"),
    (element_doc(b"\x05b\x00" + (-3).to_bytes(4, "little", signed=True) + b"\x00"),
     "at byte 7: binary data declares -3 bytes"),
    (element_doc(b"\x03d\x00" + (2).to_bytes(4, "little")), "at byte 7: an embedded document declares 2 bytes (5 at "
                                                             "least)"),
    ((11).to_bytes(4, "little") + b"\x08nonulx", "at byte 5: a name without its terminating NUL byte"),
    (element_doc(b"\x08nonul"), "at byte 11: a value of 1 bytes runs past the end of its document (byte 11)"),
    (element_doc(b"\x08b\x00\x01") + b"\x00\x00", "at byte 9: 4 more bytes needed, the file ends at byte 11 (cut "
                                                   "short?)"),
    (element_doc(b"\x08b\x00\x01")[:-1] + b"\x07", "at byte 9: a name without its terminating NUL byte"),
    (element_doc(b"\x08b\x00\x01\x00"), "at byte 8: a document ends here, but declared it ends at byte 10"),
])
def test_malformed_bson_is_unreadable_with_the_offset(tmp_path: Path, data: bytes, reason: str) -> None:
    with pytest.raises(Unreadable) as caught:
        counts_of(tmp_path, data)
    assert caught.value.reason == f"not readable as BSON {reason}"


def test_an_exposure_bigger_than_the_cap_is_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bson.encode({"exposures": [exposure(1), {**exposure(2), "preview": Binary(b"x" * 5000)}]})
    monkeypatch.setattr(cf, "MAX_EXPOSURE_BYTES", 4096)
    with pytest.raises(Unreadable, match=r"an exposure of 5\d\d\d bytes, more than the 4096 a cryoSPARC exposure"):
        counts_of(tmp_path, data)


def test_exposures_bson_that_is_a_symlink_fifo_or_missing_is_unreadable(tmp_path: Path) -> None:
    real = tmp_path / "real.bson"
    real.write_bytes(bson.encode({"exposures": [exposure(1)]}))
    (tmp_path / "link.bson").symlink_to(real)
    assert refusal(cf.read_exposure_counts, str(tmp_path / "link.bson")) == (
        "exposures.bson is a symlink; not followed (cryoSPARC writes a plain file)")
    os.mkfifo(tmp_path / "fifo.bson")
    assert refusal(cf.read_exposure_counts, str(tmp_path / "fifo.bson")) == "exposures.bson is not a regular file"
    assert refusal(cf.read_exposure_counts, str(tmp_path / "missing.bson")) == "exposures.bson does not exist"


@pytest.mark.timeout(120)
def test_a_200_mb_exposures_bson_is_counted_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "exposures.bson"
    write_big_exposures_bson(path, exposures=200, preview_bytes=1024 * 1024, rejected_every=10)
    assert path.stat().st_size > 200 * 1024 * 1024
    tracemalloc.start()
    started = time.perf_counter()
    try:
        counts = cf.read_exposure_counts(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"200 MB exposures.bson counted in {time.perf_counter() - started:.3f} s, peak {peak / 1e6:.2f} MB traced")
    assert counts == ExposureCounts(total=200, accepted=180, rejected=20, failed=0)
    assert peak < 20 * 1024 * 1024


@pytest.mark.slow
def test_a_facility_of_500_projects_is_built_found_and_read(tmp_path: Path) -> None:
    started = time.perf_counter()
    built = build_facility(tmp_path / "root", 500, 10, movies_dir=tmp_path / "movies", instance_dir_name="instance-a")
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    dirs = list(cf.find_project_dirs(str(tmp_path / "root"), 3))
    read = [cf.read_project(d) for d in dirs if isinstance(d, str)]
    print(f"built 500 projects x 10 sessions in {build_s:.2f} s, found and read them in "
          f"{time.perf_counter() - started:.2f} s")
    assert dirs == sorted(str(p.project_dir) for p in built)
    assert sorted(int(p.uid[1:]) for p in read) == list(range(1, 501))
    assert sum(len(p.sessions) for p in read) == 5000
    assert all(p.problems == () for p in read)


# ---------------------------------------------------------------------------------------------------------


def test_unreadable_is_a_record_too() -> None:
    problem = Unreadable("/p/project.json", "why")
    assert (problem.path, problem.reason, str(problem)) == ("/p/project.json", "why", "/p/project.json: why")
    assert problem == Unreadable("/p/project.json", "why") != Unreadable("/p/project.json", "other")
    assert len({problem, Unreadable("/p/project.json", "why")}) == 1
    assert pickle.loads(pickle.dumps(problem)) == problem
