"""The scanned registry's packed pieces: built from a directory's packed names in one pass, they hold the same
paths as when built from str paths, split where a document's limits say, and the digest tells every change
of the paths apart."""

from __future__ import annotations

import os

import pytest

from livedm.server import store
from livedm.server.store import Piece, directory_pieces, path_pieces, scan_digest

NAMES = ["a.mrc", os.fsdecode(b"caf\xe9.mrc"), "b c.mrc", "x" * 200]


def joined(names: list[str]) -> bytes:
    return "\0".join(names).encode("utf-8", "surrogateescape")


def paths_in(pieces: list[Piece]) -> list[str]:
    out: list[str] = []
    for piece in pieces:
        paths = piece.joined().decode("utf-8", "surrogateescape").split("\0")
        assert len(paths) == piece.count
        out += paths
    return out


def test_a_directorys_pieces_are_its_paths() -> None:
    pieces = list(directory_pieces(b"S1/motioncorrected/", joined(NAMES), len(NAMES)))
    assert paths_in(pieces) == [f"S1/motioncorrected/{name}" for name in NAMES]
    assert [piece.prefix for piece in pieces] == [b"S1/motioncorrected/"]  # the names are stored without it
    assert paths_in(pieces) == paths_in(list(path_pieces(f"S1/motioncorrected/{name}" for name in NAMES)))


def test_an_empty_directory_has_no_pieces() -> None:
    assert list(directory_pieces(b"S1/x/", b"", 0)) == []
    assert list(path_pieces([])) == []


@pytest.mark.parametrize(("max_paths", "max_bytes"), [(2, 1 << 20), (1000, 40), (1, 1)])
def test_pieces_split_at_a_documents_limits(monkeypatch: pytest.MonkeyPatch, max_paths: int, max_bytes: int) -> None:
    monkeypatch.setattr(store, "PACKED_CHUNK_PATHS", max_paths)
    monkeypatch.setattr(store, "PACKED_CHUNK_BYTES", max_bytes)
    names = [f"FoilHole_{i:05d}.mrc" for i in range(25)]
    pieces = list(directory_pieces(b"S1/thumbnails/", joined(names), len(names)))
    assert paths_in(pieces) == [f"S1/thumbnails/{name}" for name in names]
    assert all(piece.count <= max_paths for piece in pieces)
    assert all(len(piece.names) <= max_bytes or piece.count == 1 for piece in pieces)  # a path longer than the limit
    # stands alone


def test_the_digest_tells_every_change_of_the_paths_apart() -> None:
    """The same walk gives the same digest; a path gone, renamed, in another directory or another datatype,
    or the same bytes framed otherwise, another (then the registry is written again)."""
    names = [f"n{i}" for i in range(10)]

    def digest(by_datatype: dict[str, list[tuple[bytes, list[str]]]]) -> str:
        return scan_digest({dt: [piece for prefix, group in groups
                                 for piece in directory_pieces(prefix, joined(group), len(group))]
                            for dt, groups in by_datatype.items()})

    same = digest({"micrographs": [(b"S1/m/", names)]})
    assert same == digest({"micrographs": [(b"S1/m/", list(names))]})
    assert len({same,
                digest({"micrographs": [(b"S1/m/", names[:-1])]}),
                digest({"micrographs": [(b"S1/m/", [*names[:-1], "renamed"])]}),
                digest({"micrographs": [(b"S1/other/", names)]}),
                digest({"thumbnails": [(b"S1/m/", names)]}),
                digest({"micrographs": [(b"S1/m/", names[:5]), (b"S1/m/", names[5:])]}),
                digest({"micrographs": [(b"S1/mn0/", names[1:])]}),  # "S1/m/" + "n0" moved into the prefix
                }) == 7
