import os
from pathlib import Path

import pytest

from livedm.server import files
from livedm.server.config import parse_layout
from livedm.server.errors import ApiError
from testkit.sessiontree import build_session_tree

LAYOUT = parse_layout("import_movies=raw,motioncorrected=micrographs,thumbnails=thumbnails,extract=particles")


def sizes(project: Path, session_dir: str = "S1") -> dict[str, int]:
    return {dt: tally.size for dt, tally in files.walk_session(str(project), session_dir, LAYOUT).items()}


def test_walk_sorts_a_realistic_tree_into_datatypes_with_exact_bytes(tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "proj", exposures=5)
    assert sizes(tree.project_dir) == tree.bytes_by_datatype


def test_raw_counts_each_link_target_once_and_a_dangling_link_as_missing(tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "proj", exposures=2)
    (tree.session_path / "import_movies" / "gone.tiff").symlink_to(tmp_path / "nowhere.tiff")
    raw = files.walk_session(str(tree.project_dir), "S1", LAYOUT)["raw"]
    assert raw.size == tree.bytes_by_datatype["raw"]
    assert (raw.registered, raw.present) == (4, 3)  # 2 movies, 1 duplicate link, 1 dangling


def test_hard_links_count_once_like_du(tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "proj", exposures=1)
    first = next((tree.session_path / "motioncorrected").iterdir())
    os.link(first, tree.session_path / "motioncorrected" / "hardlink.mrc")
    assert sizes(tree.project_dir)["micrographs"] == tree.bytes_by_datatype["micrographs"]


def test_symlinked_directory_is_not_followed(tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "proj", exposures=1)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"x" * 100_000)
    (tree.session_path / "extract" / "escape").symlink_to(outside)
    particles = files.walk_session(str(tree.project_dir), "S1", LAYOUT)["particles"]
    assert not any("big.bin" in rel for rel in particles.paths)
    assert "S1/extract/escape" in particles.paths  # the link itself is a file of the category
    link_size = os.lstat(tree.session_path / "extract" / "escape").st_size  # a link counts its own bytes
    assert particles.size == tree.bytes_by_datatype["particles"] + link_size


def test_skipped_paths_are_left_out(tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "proj", exposures=1)
    skip = frozenset({"S1/exposures.bson"})
    metadata = files.walk_session(str(tree.project_dir), "S1", LAYOUT, skip=skip)["metadata"]
    assert "S1/exposures.bson" not in metadata.paths
    assert metadata.size == tree.bytes_by_datatype["metadata"] - 2048


def test_missing_session_dir_is_empty(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    assert sizes(tmp_path / "proj") == {dt: 0 for dt in files.DATATYPES}


def test_session_dir_resolving_outside_the_project_is_refused(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "proj" / "S1").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ApiError, match="outside the project"):
        files.walk_session(str(tmp_path / "proj"), "S1", LAYOUT)


@pytest.mark.parametrize("path", ["../secret.txt", "S1/../../secret.txt", "/etc/passwd", "S1/link_dir/secret.txt"])
def test_paths_leading_out_of_the_project_are_refused(tmp_path: Path, path: str) -> None:
    project = tmp_path / "proj"
    (project / "S1").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("s")
    (project / "S1" / "link_dir").symlink_to(tmp_path)
    with pytest.raises(ApiError, match="outside the project"):
        files.project_relative(str(project), path)


def test_a_link_file_inside_the_project_is_kept_as_a_link(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "S1").mkdir(parents=True)
    (tmp_path / "movie.tiff").write_bytes(b"m")
    (project / "S1" / "m.tiff").symlink_to(tmp_path / "movie.tiff")
    assert files.project_relative(str(project), str(project / "S1" / "m.tiff")) == "S1/m.tiff"
    assert files.project_relative(str(project), "S1/./m.tiff") == "S1/m.tiff"


def test_project_and_session_dir_checks(tmp_path: Path) -> None:
    with pytest.raises(ApiError, match="absolute"):
        files.check_project_dir("relative/dir")
    with pytest.raises(ApiError, match="not an existing directory"):
        files.check_project_dir(str(tmp_path / "absent"))
    assert files.check_project_dir(str(tmp_path) + "/./") == str(tmp_path)
    for bad in ("", "/abs", "..", "../x", "a/../../x", "."):
        with pytest.raises(ApiError, match="relative path inside"):
            files.check_session_dir(bad)
    assert files.check_session_dir("sessions/S1/") == "sessions/S1"
