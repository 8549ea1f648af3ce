"""The C listing and stat loops agree with os.scandir and os.stat, on the names and files a hostile or careless
user leaves: non-UTF-8 names, dangling links, links to directories, hard links, fifos, a file gone between
listing and stat, and bad arguments."""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest

from livedm.server import _dirstat


@pytest.fixture()
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def sizes_of(raw: bytes) -> list[int]:
    out = array("q")
    out.frombytes(raw)
    return out.tolist()


def keys_of(raw: bytes) -> list[tuple[int, int]]:
    out = array("Q")
    out.frombytes(raw)
    return list(zip(out[0::2], out[1::2], strict=True))


def make_tree(root: Path) -> None:
    (root / "plain.mrc").write_bytes(b"x" * 10)
    (root / "sub").mkdir()
    (root / "hard_a").write_bytes(b"y" * 7)
    os.link(root / "hard_a", root / "hard_b")
    os.symlink(root / "plain.mrc", root / "to_file")
    os.symlink(root / "sub", root / "to_dir")
    os.symlink(root / "nowhere", root / "dangling")
    os.mkfifo(root / "fifo")
    (root / os.fsdecode(b"caf\xe9.mrc")).write_bytes(b"z" * 3)  # Latin-1, not UTF-8


def test_list_dir_matches_scandir(tmp_path: Path, dir_fd: int) -> None:
    make_tree(tmp_path)
    names, ino_bytes, kinds = _dirstat.list_dir(dir_fd)
    inos = array("Q")
    inos.frombytes(ino_bytes)
    got = {name: (ino, chr(kind)) for name, ino, kind in zip(names, inos, kinds, strict=True)}
    expected = {}
    for entry in os.scandir(tmp_path):
        kind = "d" if entry.is_dir(follow_symlinks=False) else "l" if entry.is_symlink() else "f"
        expected[entry.name] = (entry.inode(), kind)
    assert got == expected
    assert os.fsdecode(b"caf\xe9.mrc") in got  # the same surrogate-escaped str os.scandir gives


def test_list_dir_leaves_the_callers_fd_usable(tmp_path: Path, dir_fd: int) -> None:
    make_tree(tmp_path)
    first = _dirstat.list_dir(dir_fd)
    assert _dirstat.list_dir(dir_fd) == first  # read from the start again, not from where the last left off
    assert sorted(os.listdir(dir_fd)) == sorted(first[0])


def test_list_dir_of_an_empty_directory(dir_fd: int) -> None:
    assert _dirstat.list_dir(dir_fd) == ([], b"", b"")


def test_list_dir_refuses_what_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            _dirstat.list_dir(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        _dirstat.list_dir(987654)  # not an open descriptor


def test_stat_names_matches_os_stat(tmp_path: Path, dir_fd: int) -> None:
    make_tree(tmp_path)
    names = ["plain.mrc", "hard_a", "hard_b", "to_file", "fifo", os.fsdecode(b"caf\xe9.mrc")]
    sizes, keys, targets = _dirstat.stat_names(dir_fd, names, bytes(len(names)), False)
    assert sizes_of(sizes) == [os.stat(n, dir_fd=dir_fd, follow_symlinks=False).st_size for n in names]
    hard = os.stat(tmp_path / "hard_a")
    assert keys_of(keys) == [(0, 0), (hard.st_dev, hard.st_ino), (hard.st_dev, hard.st_ino), (0, 0), (0, 0), (0, 0)]
    assert targets == []  # nothing followed


def test_followed_links_count_only_regular_targets(tmp_path: Path, dir_fd: int) -> None:
    make_tree(tmp_path)
    names = ["to_file", "to_dir", "dangling", "plain.mrc"]
    sizes, keys, targets = _dirstat.stat_names(dir_fd, names, b"\1\1\1\1", True)
    target = os.stat(tmp_path / "plain.mrc")
    assert sizes_of(sizes) == [10, -1, -1, -1]  # a directory, nothing, and a non-link followed measure nothing
    assert keys_of(keys) == [(target.st_dev, target.st_ino), (0, 0), (0, 0), (0, 0)]
    assert targets == [str(tmp_path / "plain.mrc"), str(tmp_path / "sub"), str(tmp_path / "nowhere"), None]


def test_a_file_gone_before_its_stat_measures_nothing(tmp_path: Path, dir_fd: int) -> None:
    (tmp_path / "a").write_bytes(b"abc")
    names, _, _ = _dirstat.list_dir(dir_fd)
    (tmp_path / "a").unlink()
    sizes, keys, _ = _dirstat.stat_names(dir_fd, names, b"\0", True)
    assert sizes_of(sizes) == [-1]
    assert keys_of(keys) == [(0, 0)]


def test_names_cannot_climb_out_by_themselves(tmp_path: Path) -> None:
    """stat_names takes names as given (the walk only passes what list_dir gave); a path is resolved from
    the directory like fstatat would, so the walk must never pass one: shown here so that stays deliberate."""
    (tmp_path / "inner").mkdir()
    (tmp_path / "outside").write_bytes(b"12345")
    fd = os.open(tmp_path / "inner", os.O_RDONLY | os.O_DIRECTORY)
    try:
        sizes, _, _ = _dirstat.stat_names(fd, ["../outside"], b"\0", False)
    finally:
        os.close(fd)
    assert sizes_of(sizes) == [5]


@pytest.mark.parametrize(("names", "follow", "error"), [
    (["a", "b"], b"\0", ValueError),  # one follow byte per name
    (["a", 1], b"\0\0", TypeError),
    (["a\0b"], b"\0", ValueError),
    (("a",), b"\0", TypeError),  # a list, not any sequence
])
def test_stat_names_refuses_bad_arguments(dir_fd: int, names: object, follow: bytes,
                                         error: type[Exception]) -> None:
    with pytest.raises(error):
        _dirstat.stat_names(dir_fd, names, follow, False)  # type: ignore[arg-type]


def test_a_large_directory_crosses_whole(tmp_path: Path, dir_fd: int) -> None:
    for i in range(5000):
        (tmp_path / f"particles_{i:05d}_{'x' * 40}.mrc").write_bytes(b"p" * (i % 7))
    names, _, kinds = _dirstat.list_dir(dir_fd)
    assert sorted(names) == sorted(os.listdir(tmp_path))
    assert kinds == b"f" * 5000
    sizes, _, _ = _dirstat.stat_names(dir_fd, names, bytes(len(names)), False)
    assert sum(sizes_of(sizes)) == sum(i % 7 for i in range(5000))


def known_of(root: Path, names: list[str]) -> tuple[bytes, bytes]:
    inos = array("Q", [os.lstat(root / name).st_ino for name in names])
    return "\0".join(names).encode("utf-8", "surrogateescape"), inos.tobytes()


def test_diff_dir_sees_what_changed(tmp_path: Path, dir_fd: int) -> None:
    odd = os.fsdecode(b"caf\xe9.mrc")
    for name in ("kept.mrc", "replaced.mrc", "gone.mrc", odd):
        (tmp_path / name).write_bytes(b"x")
    os.symlink("kept.mrc", tmp_path / "link.mrc")
    known_names, known_inos = known_of(tmp_path, ["kept.mrc", "replaced.mrc", "gone.mrc", odd, "link.mrc"])
    (tmp_path / "gone.mrc").unlink()
    (tmp_path / "replaced.tmp").write_bytes(b"new")
    os.replace(tmp_path / "replaced.tmp", tmp_path / "replaced.mrc")  # the same name, another inode
    (tmp_path / "new.mrc").write_bytes(b"y")
    (tmp_path / "sub").mkdir()
    subdirs, present, fresh, fresh_inos, fresh_kinds = _dirstat.diff_dir(dir_fd, known_names, known_inos)
    assert subdirs == ["sub"]
    assert present == b"f\0\0fl"  # kept, replaced, gone, the Latin-1 one, the link
    inos = array("Q")
    inos.frombytes(fresh_inos)
    assert dict(zip(fresh, zip(inos, fresh_kinds, strict=True), strict=True)) == {
        "replaced.mrc": (os.lstat(tmp_path / "replaced.mrc").st_ino, ord("f")),
        "new.mrc": (os.lstat(tmp_path / "new.mrc").st_ino, ord("f"))}


def test_diff_dir_with_nothing_known_is_a_listing(tmp_path: Path, dir_fd: int) -> None:
    make_tree(tmp_path)
    subdirs, present, fresh, fresh_inos, fresh_kinds = _dirstat.diff_dir(dir_fd, b"", b"")
    names, inos, kinds = _dirstat.list_dir(dir_fd)
    assert present == b""
    assert subdirs == [n for n, k in zip(names, kinds, strict=True) if k == ord("d")]
    files = [(n, i, k) for n, i, k in zip(names, array("Q", inos), kinds, strict=True) if k != ord("d")]
    assert sorted(zip(fresh, array("Q", fresh_inos), fresh_kinds, strict=True)) == sorted(files)


def test_diff_dir_refuses_known_lists_that_disagree(dir_fd: int) -> None:
    with pytest.raises(ValueError, match="disagree"):
        _dirstat.diff_dir(dir_fd, b"a\0b", array("Q", [1]).tobytes())
    with pytest.raises(ValueError, match="whole"):
        _dirstat.diff_dir(dir_fd, b"a", b"123")


def test_diff_dir_with_a_tampered_known_list_only_marks_one(tmp_path: Path, dir_fd: int) -> None:
    """A known list naming a file twice (a damaged walk chunk) marks one of them present: the other counts as
    gone, and the caller rewrites what it saved."""
    (tmp_path / "a").write_bytes(b"")
    ino = os.lstat(tmp_path / "a").st_ino
    _, present, fresh, _, _ = _dirstat.diff_dir(dir_fd, b"a\0a", array("Q", [ino, ino]).tobytes())
    assert sorted(present) == [0, ord("f")]
    assert fresh == []


def _probe(fd: int, known: list[str], names: list[str]) -> list[tuple[int, int, int]]:
    known_inos = array("Q", (os.stat(name, dir_fd=fd, follow_symlinks=False).st_ino for name in known))
    index_bytes, ino_bytes, kinds = _dirstat.probe_names(fd, "\0".join(known).encode("utf-8", "surrogateescape"),
                                                          known_inos.tobytes(), names)
    indexes, inos = array("q"), array("Q")
    indexes.frombytes(index_bytes)
    inos.frombytes(ino_bytes)
    return list(zip(indexes, inos, kinds, strict=True))


def test_probe_names_finds_each_name_among_the_known_and_says_what_is_there_now(tmp_path: Path, dir_fd: int) -> None:
    make_tree(tmp_path)
    odd = os.fsdecode(b"caf\xe9.mrc")  # not UTF-8: crosses as a surrogate escape, as os.listdir gives it
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.mrc"), "wb"):
        pass
    known = ["plain.mrc", "hard_a", odd]
    found = _probe(dir_fd, known, ["hard_a", "sub", "gone.mrc", odd, "hard_b"])
    st = {name: os.stat(name, dir_fd=dir_fd, follow_symlinks=False) for name in ("hard_a", "sub", "hard_b", odd)}
    assert found == [(1, st["hard_a"].st_ino, ord("f")), (-1, st["sub"].st_ino, ord("d")), (-1, 0, 0),
                     (2, st[odd].st_ino, ord("f")), (-1, st["hard_b"].st_ino, ord("f"))]


def test_probe_names_tells_a_link_from_its_target_and_a_dangling_link_from_nothing(tmp_path: Path,
                                                                                   dir_fd: int) -> None:
    (tmp_path / "target").write_bytes(b"t")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    found = _probe(dir_fd, [], ["link", "dangling"])
    assert [kind for _, _, kind in found] == [ord("l"), ord("l")]
    assert found[0][1] == os.lstat(tmp_path / "link").st_ino != os.stat(tmp_path / "target").st_ino


@pytest.mark.parametrize(("names", "error"), [
    (["a/b"], ValueError), ([""], ValueError), (["a\0b"], ValueError), ([b"raw"], TypeError), ([1], TypeError),
    ([".."], ValueError), (["."], ValueError), (["ok", "../x"], ValueError),
])
def test_probe_names_refuses_what_is_no_entry_of_a_directory(dir_fd: int, names: list[object],
                                                             error: type[Exception]) -> None:
    with pytest.raises(error):
        _dirstat.probe_names(dir_fd, b"", b"", names)  # type: ignore[arg-type]


def test_probe_names_refuses_known_lists_that_disagree(dir_fd: int) -> None:
    with pytest.raises(ValueError, match="disagree"):
        _dirstat.probe_names(dir_fd, b"a\0b", array("Q", [1]).tobytes(), ["a"])
    with pytest.raises(ValueError, match="whole uint64s"):
        _dirstat.probe_names(dir_fd, b"a", b"\0\0\0", ["a"])


def test_fs_magic_names_the_file_system(dir_fd: int) -> None:
    magic = _dirstat.fs_magic(dir_fd)
    assert isinstance(magic, int) and magic > 0
    shm = os.open("/dev/shm", os.O_RDONLY | os.O_DIRECTORY) if os.path.isdir("/dev/shm") else None
    if shm is not None:
        try:
            assert _dirstat.fs_magic(shm) == 0x01021994  # tmpfs
        finally:
            os.close(shm)
    with pytest.raises(OSError):
        _dirstat.fs_magic(-1)


def _tally_in_python(sizes: list[int], keys: list[tuple[int, int]] | None) -> tuple[int, int, int, int]:
    missing = sizes.count(-1)
    if keys is None:
        return missing, sum(s for s in sizes if s >= 0), 0, 0
    by_key = {k: s for k, s in zip(keys, sizes, strict=True) if s >= 0 and k != (0, 0)}
    plain = sum(s for k, s in zip(keys, sizes, strict=True) if s >= 0 and k == (0, 0))
    return missing, plain, sum(by_key.values()), len(by_key)


@pytest.mark.parametrize("seed", range(5))
def test_tally_counts_each_dev_inode_once_as_python_would(seed: int) -> None:
    import random
    rng = random.Random(seed)
    count = rng.choice([0, 1, 7, 5000])
    sizes = [rng.choice([-1, 0, rng.randrange(1 << 40)]) for _ in range(count)]
    keys = [rng.choice([(0, 0), (rng.randrange(3), rng.randrange(50)), (1 << 63, (1 << 64) - 1)])
            for _ in range(count)]
    packed_keys = array("Q", [part for key in keys for part in key])
    assert _dirstat.tally(array("q", sizes), packed_keys) == _tally_in_python(sizes, keys)
    assert _dirstat.tally(array("q", sizes).tobytes(), None) == _tally_in_python(sizes, None)


def test_tally_refuses_arrays_that_disagree() -> None:
    with pytest.raises(ValueError):
        _dirstat.tally(b"\0" * 7, None)
    with pytest.raises(ValueError):
        _dirstat.tally(array("q", [1, 2]), array("Q", [0, 0]))
