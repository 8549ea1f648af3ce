"""The unlinker deletes registry paths below a pinned project dir and never follows a symlink, also when
a directory is swapped between two of its batches."""

from __future__ import annotations

import os
from pathlib import Path

from livedm.server import files, unlinker
from livedm.server.unlinker import Outcome, Unlinker


def unlink_one(u: Unlinker, rel: str) -> Outcome:
    directory, _, name = rel.rpartition("/")
    return u.unlink_batch(directory, [name])


def write(root: Path, rels: list[str], content: bytes = b"x") -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)


def test_links_go_as_links_and_nothing_is_reached_through_one(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "S1" / "extract").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "movie.tiff"
    target.write_bytes(b"m" * 10)
    (project / "S1" / "extract" / "link.mrc").symlink_to(target)
    (project / "S1" / "extract" / "real.mrc").write_bytes(b"r" * 7)
    (project / "S1" / "swapped").symlink_to(outside)  # a directory replaced by a link after registration
    with Unlinker(str(project), files.dir_pin(str(project))) as u:
        assert u.unlink_batch("S1/extract", ["real.mrc", "link.mrc", "real.mrc"]) == Outcome(
            deleted=2, freed=7 + len(str(target)), gone=1)  # a link counts its own size
        for unsafe in ("S1/swapped/movie.tiff", "S1/../../outside/movie.tiff", "/etc/passwd", "S1/extract",
                       "S1/extract/.."):
            outcome = unlink_one(u, unsafe)
            assert (outcome.deleted, outcome.gone, len(outcome.refused)) == (0, 0, 1), unsafe
    assert target.read_bytes() == b"m" * 10
    assert not (project / "S1" / "extract" / "link.mrc").is_symlink()
    assert (project / "S1" / "extract").is_dir()


def test_swapped_session_dirs_movie_dirs_and_raw_trees_are_refused(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    write(project, ["S1/motioncorrected/a.mrc", "S2/motioncorrected/a.mrc", "S1/import_movies/copied.tif",
                    "S1/import_movies/sub/deeper.tif", "movies/m.tif", "S1/extract/p.mrc"])
    ids = {name: files.dir_id((project / name).stat()) for name in ("S1", "S2", "movies")}
    (project / "S1").rename(project / "tmp")  # S1 and S2 swap after they were measured
    (project / "S2").rename(project / "S1")
    (project / "tmp").rename(project / "S2")
    before = sorted(p for p in project.rglob("*") if p.is_file())
    with Unlinker(str(project), files.dir_pin(str(project)), session_dirs={"S1": ids["S1"], "S2": ids["S2"]},
                  movie_dirs=frozenset({ids["movies"]}), raw_trees=("S1/import_movies",)) as u:
        for refused in ("S1/motioncorrected/a.mrc", "S2/motioncorrected/a.mrc", "movies/m.tif",
                        "S1/import_movies/copied.tif", "S1/import_movies/sub/deeper.tif", "S1/extract/p.mrc"):
            assert [path for path, _ in unlink_one(u, refused).refused] == [refused]
    assert sorted(p for p in project.rglob("*") if p.is_file()) == before
    with Unlinker(str(project), files.dir_pin(str(project)), session_dirs={"S2": ids["S1"]}) as u:
        assert unlink_one(u, "S2/extract/p.mrc").deleted == 1  # the directory measured as S1 is named S2 here


def test_raw_movies_and_their_hard_links_are_refused(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    write(project, ["S1/extract/movie.tif", "S1/extract/p.mrc"])
    os.link(project / "S1/extract/movie.tif", project / "S1/extract/hardlink.mrc")
    movie = (project / "S1/extract/movie.tif").stat()
    with Unlinker(str(project), files.dir_pin(str(project)), protected=frozenset({(movie.st_dev, movie.st_ino)})) as u:
        outcome = u.unlink_batch("S1/extract", ["hardlink.mrc", "p.mrc", "movie.tif"])
    assert sorted(path for path, _ in outcome.refused) == ["S1/extract/hardlink.mrc", "S1/extract/movie.tif"]
    assert outcome.deleted == 1 and (project / "S1/extract/hardlink.mrc").exists()


def test_a_directory_holding_another_project_is_refused(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    write(project, ["S1/extract/inner/project.json", "S1/extract/inner/p.mrc"])
    with Unlinker(str(project), files.dir_pin(str(project))) as u:
        outcome = unlink_one(u, "S1/extract/inner/p.mrc")
    assert outcome.refused and "another cryoSPARC project" in outcome.refused[0][1]
    assert (project / "S1/extract/inner/p.mrc").exists()


def test_a_directory_swapped_for_a_link_between_batches_refuses_the_rest(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    names = [f"p{i}.mrc" for i in range(6)]
    write(project, [f"S1/extract/blob/{n}" for n in names])
    outside = tmp_path / "outside"
    write(outside, names, b"precious")
    moved = tmp_path / "moved"
    with Unlinker(str(project), files.dir_pin(str(project))) as u:
        assert u.unlink_batch("S1/extract/blob", names[:2]).deleted == 2
        (project / "S1/extract/blob").rename(moved)  # moved away, a link to other files in its place
        (project / "S1/extract/blob").symlink_to(outside)
        outcome = u.unlink_batch("S1/extract/blob", names[2:])
    assert [path for path, _ in outcome.refused] == [f"S1/extract/blob/{n}" for n in names[2:]]
    assert "changed while the deletion ran" in outcome.refused[0][1]
    assert sorted(p.name for p in moved.iterdir()) == names[2:]
    assert all((outside / n).read_bytes() == b"precious" for n in names)


def test_an_ancestor_swapped_between_directories_refuses_the_files_below_it(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    write(project, ["S1/extract/a/p.mrc", "S1/extract/b/p.mrc"])
    outside = tmp_path / "outside"
    write(outside, ["a/p.mrc", "b/p.mrc"], b"precious")
    with Unlinker(str(project), files.dir_pin(str(project))) as u:
        assert unlink_one(u, "S1/extract/a/p.mrc").deleted == 1  # S1/extract is open now
        (project / "S1/extract").rename(tmp_path / "moved")
        (project / "S1/extract").symlink_to(outside)
        assert [path for path, _ in unlink_one(u, "S1/extract/b/p.mrc").refused] == ["S1/extract/b/p.mrc"]
    assert (tmp_path / "moved/b/p.mrc").exists() and (outside / "b/p.mrc").read_bytes() == b"precious"


def test_a_directory_gone_means_its_files_are_gone(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    write(project, ["S1/extract/a/p.mrc", "S1/extract/a/q.mrc"])
    with Unlinker(str(project), files.dir_pin(str(project))) as u:
        assert unlink_one(u, "S1/extract/a/p.mrc").deleted == 1
        (project / "S1/extract/a/q.mrc").unlink()
        (project / "S1/extract/a").rmdir()
        assert u.unlink_batch("S1/extract/a", ["q.mrc"]) == Outcome(gone=1)
        assert u.unlink_batch("S1/nothing/here", ["x.mrc", "y.mrc"]) == Outcome(gone=2)


def test_open_directories_stay_bounded_on_wide_trees(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    rels = [f"S1/extract/d{d:03d}/p.mrc" for d in range(unlinker.MAX_OPEN_DIRS * 3)]
    write(project, rels)
    fds_before = set(os.listdir("/proc/self/fd"))
    open_before = len(fds_before)
    most_open = 0
    with Unlinker(str(project), files.dir_pin(str(project))) as u:
        for directory, names in unlinker.by_directory(rels).items():
            assert u.unlink_batch(directory, names).deleted == 1
            most_open = max(most_open, len(os.listdir("/proc/self/fd")) - open_before)
    assert most_open <= unlinker.MAX_OPEN_DIRS + 2  # the root's, and the listing's own
    assert set(os.listdir("/proc/self/fd")) - fds_before == set()  # (another test's feed may close its own)
    assert not any(p.is_file() for p in project.rglob("*"))


def test_paths_are_grouped_by_directory_in_the_order_they_come() -> None:
    paths = ["S1/b/x", "S1/a/y", "S1/b/z", "top.mrc", "S1/b/c/w"]
    assert unlinker.by_directory(paths) == {"S1/b": ["x", "z"], "S1/a": ["y"], "": ["top.mrc"], "S1/b/c": ["w"]}


def test_an_absolute_path_is_not_taken_for_one_at_the_top_of_the_project(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    write(project, ["top.mrc"])
    grouped = unlinker.by_directory(["/top.mrc"])
    assert grouped == {"/": ["top.mrc"]}
    with Unlinker(str(project), files.dir_pin(str(project))) as u:
        outcome = u.unlink_batch("/", grouped["/"])
    assert outcome.deleted == 0 and len(outcome.refused) == 1
    assert (project / "top.mrc").exists()


def test_names_go_in_the_order_the_directory_lists_them_absent_ones_last(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    names = [f"p{i:03d}.mrc" for i in range(50)]
    write(project, [f"S1/extract/{n}" for n in names] + ["S1/extract/other.mrc"])
    (project / "S1/swapped").symlink_to(project / "S1/extract")
    listed = [n for n in os.listdir(project / "S1/extract") if n in names]
    with Unlinker(str(project), files.dir_pin(str(project))) as u:
        assert u.in_listing_order("S1/extract", [*names, "absent.mrc"]) == [*listed, "absent.mrc"]
        assert u.in_listing_order("S1/swapped", names) == names  # refused when unlinked, with its reason
        assert u.in_listing_order("S1/gone", names) == names
        assert u.unlink_batch("S1/swapped", names[:1]).refused
