"""The service's rules, on mongomock."""

from pathlib import Path

import pytest

from livedm.server.domain import DATATYPES, datatype_size
from livedm.server.errors import CONFLICT, INVALID_PARAMS, NOT_FOUND, ApiError
from livedm.server.sessions import Sessions
from testkit.sessiontree import SessionTree, build_session_tree


def session_on_disk(service: Sessions, tmp_path: Path, exposures: int) -> SessionTree:
    """P1 S1 over a realistic tree, not yet measured."""
    tree = build_session_tree(tmp_path / "proj", exposures=exposures)
    service.create_project("p", str(tree.project_dir))
    service.create_live_session("P1", "s")
    return tree


def code_of(call, *args, **kwargs):
    with pytest.raises(ApiError) as info:
        call(*args, **kwargs)
    return info.value.code


def test_uids_are_assigned_in_order(mock_service: Sessions, tmp_path: Path) -> None:
    dirs = [tmp_path / f"proj{i}" for i in range(3)]
    for directory in dirs:
        directory.mkdir()
    assert [mock_service.create_project(f"p{i}", str(d))["uid"] for i, d in enumerate(dirs)] == ["P1", "P2", "P3"]
    assert [mock_service.create_live_session("P2", f"s{i}")["uid"] for i in range(2)] == ["S1", "S2"]
    assert mock_service.create_live_session("P1", "x")["uid"] == "S1"


def test_new_session_has_every_datatype_initialised(mock_service: Sessions, tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir(exist_ok=True)
    mock_service.create_project("p", str(tmp_path / "proj"))
    session = mock_service.create_live_session("P1", "s")
    assert session["session_dir"] == "S1" and session["status"] == "paused"
    assert session["data_management"] == {dt: {"status": "active", "prev_status": None, "size": 0,
                                                "file_count": 0, "updated_at": None} for dt in DATATYPES}


def test_sizes_are_measured_stored_and_summed_per_project(mock_service: Sessions, tmp_path: Path) -> None:
    t1 = build_session_tree(tmp_path / "proj", "S1", exposures=3)
    t2 = build_session_tree(tmp_path / "proj", "S2", exposures=2)
    mock_service.create_project("p", str(t1.project_dir))
    mock_service.create_live_session("P1", "one")
    mock_service.create_live_session("P1", "two")
    assert mock_service.update_session_datatype_sizes("P1", "S1") == t1.total()
    assert mock_service.update_session_datatype_sizes("P1", "S2") == t2.total()
    for dt in DATATYPES:
        assert datatype_size(mock_service.session("P1", "S1"), dt) == t1.bytes_by_datatype[dt]
    totals = mock_service.get_project("P1")["data_management"]
    assert {dt: totals[dt]["size"] for dt in DATATYPES} == {
        dt: t1.bytes_by_datatype[dt] + t2.bytes_by_datatype[dt] for dt in DATATYPES}
    stats = mock_service.get_data_management_stats("P1")
    assert stats["S2"]["particles"]["size"] == t2.bytes_by_datatype["particles"]
    assert stats["S1"]["micrographs"]["file_count"] == 6


def test_file_paths_are_absolute_and_raw_gives_movie_targets(mock_service: Sessions, tmp_path: Path) -> None:
    tree = session_on_disk(mock_service, tmp_path, exposures=3)
    mock_service.update_session_datatype_sizes("P1", "S1")
    for dt in ("raw", "micrographs", "particles", "metadata"):
        assert sorted(mock_service.get_datatype_file_paths("P1", "S1", dt)[dt]) == sorted(tree.paths_by_datatype[dt])
    assert code_of(mock_service.get_datatype_file_paths, "P1", "S1", "thumbnails") == INVALID_PARAMS
    everything = mock_service.get_project_file_paths("P1")
    assert sorted(everything["S1"]["thumbnails"]) == sorted(tree.paths_by_datatype["thumbnails"])
    assert mock_service.get_datatype_file_paths("P1", "S1", "raw")["missing"] == []
    assert set(mock_service.get_datatype_file_paths("P1", "S1", "particles")) == {"particles"}


def test_raw_lists_leave_out_movies_that_are_gone_and_name_them(mock_service: Sessions, tmp_path: Path) -> None:
    tree = session_on_disk(mock_service, tmp_path, exposures=3)
    mock_service.update_session_datatype_sizes("P1", "S1")
    first, second, third = tree.paths_by_datatype["raw"]
    Path(second).unlink()  # a movie deleted under its link
    (tree.session_path / "import_movies" / "stray.tiff").symlink_to(tmp_path / "never-there.tiff")
    mock_service.update_session_datatype_sizes("P1", "S1")
    listing = mock_service.get_datatype_file_paths("P1", "S1", "raw")
    assert set(listing) == {"raw", "missing"}
    assert sorted(listing["raw"]) == sorted([first, third])
    assert sorted(listing["missing"]) == sorted([second, str(tmp_path / "never-there.tiff")])
    assert mock_service.get_project_file_paths("P1")["S1"]["missing"] == listing["missing"]
    assert mock_service.get_session("P1", "S1")["data_management"]["raw"]["status"] == "active"  # not all gone


def test_rescan_follows_the_disk_and_all_gone_is_missing(mock_service: Sessions, tmp_path: Path) -> None:
    tree = session_on_disk(mock_service, tmp_path, exposures=2)
    mock_service.update_session_datatype_sizes("P1", "S1")
    extra = tree.session_path / "motioncorrected" / "new.mrc"
    extra.write_bytes(b"n" * 77)
    mock_service.update_session_datatype_sizes("P1", "S1")
    assert datatype_size(mock_service.session("P1", "S1"), "micrographs") == tree.bytes_by_datatype["micrographs"] + 77
    # the registry keeps what was registered; its files vanish from disk: 0 bytes and "missing"
    for movie in tree.movies_dir.iterdir():
        movie.unlink()
    dm = mock_service.refresh_session("P1", "S1")
    assert dm["raw"]["size"] == 0 and dm["raw"]["status"] == "missing" and dm["raw"]["prev_status"] == "active"
    assert dm["micrographs"]["status"] == "active"
    for path in tree.paths_by_datatype["raw"]:
        Path(path).write_bytes(b"back")
    dm = mock_service.refresh_session("P1", "S1")
    assert dm["raw"]["status"] == "active" and dm["raw"]["size"] == 8


def test_register_files_adds_outside_layout_and_refuses_bad_paths(mock_service: Sessions, tmp_path: Path) -> None:
    tree = session_on_disk(mock_service, tmp_path, exposures=1)
    mock_service.refresh_session("P1", "S1")
    shared = tree.project_dir / "shared" / "gain.mrc"
    shared.parent.mkdir()
    shared.write_bytes(b"g" * 321)
    out = mock_service.register_files("P1", "S1", "metadata", paths=[str(shared), "shared/gain.mrc"])
    assert out["registered"] == 1 and out["already_registered"] == 1
    assert datatype_size(mock_service.session("P1", "S1"), "metadata") == tree.bytes_by_datatype["metadata"] + 321
    before = mock_service.get_session("P1", "S1")
    (tmp_path / "outside.bin").write_bytes(b"o")
    for bad in ([str(tmp_path / "outside.bin")], ["../outside.bin"], [str(shared), "shared/absent.bin"],
                [str(tree.project_dir / "shared")], []):
        assert code_of(mock_service.register_files, "P1", "S1", "metadata", paths=bad) == INVALID_PARAMS
    micrograph = tree.paths_by_datatype["micrographs"][0]
    assert code_of(mock_service.register_files, "P1", "S1", "particles", paths=[micrograph]) == INVALID_PARAMS
    assert mock_service.get_session("P1", "S1") == before


def test_session_status_rules(mock_service: Sessions, tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir(exist_ok=True)
    mock_service.create_project("p", str(tmp_path / "proj"))
    mock_service.create_live_session("P1", "s")
    (tmp_path / "proj" / "S1").mkdir()
    assert mock_service.change_session_status("P1", "S1", "start")["status"] == "running"
    assert code_of(mock_service.change_session_status, "P1", "S1", "start") == CONFLICT
    paused = mock_service.change_session_status("P1", "S1", "pause")
    assert paused["status"] == "paused" and len(paused["paused_at"]) == 1
    assert paused["data_management"]["raw"]["updated_at"] is not None  # pausing refreshes sizes
    done = mock_service.change_session_status("P1", "S1", "complete")
    assert done["status"] == "completed" and done["completed_at"]
    assert code_of(mock_service.change_session_status, "P1", "S1", "start") == CONFLICT


def test_unknown_things_are_not_found_or_invalid(mock_service: Sessions, tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir(exist_ok=True)
    mock_service.create_project("p", str(tmp_path / "proj"))
    mock_service.create_live_session("P1", "s")
    assert code_of(mock_service.get_project, "P9") == NOT_FOUND
    assert code_of(mock_service.get_session, "P1", "S4") == NOT_FOUND
    assert code_of(mock_service.get_project, "p1; drop") == INVALID_PARAMS
    assert code_of(datatype_size, mock_service.session("P1", "S1"), "movies") == INVALID_PARAMS
    assert code_of(mock_service.create_live_session, "P1", "s", "../escape") == INVALID_PARAMS
    assert code_of(mock_service.create_project, "  ", str(tmp_path)) == INVALID_PARAMS
