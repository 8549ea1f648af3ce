"""A realistic cryoSPARC Live session tree on disk, with the exact bytes written per datatype."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from livedm.server.domain import DATATYPES


@dataclass
class SessionTree:
    project_dir: Path
    session_dir: str
    movies_dir: Path  # outside the project: where import_movies/ links point
    bytes_by_datatype: dict[str, int] = field(default_factory=dict)
    paths_by_datatype: dict[str, list[str]] = field(default_factory=dict)  # absolute; raw = movie files

    @property
    def session_path(self) -> Path:
        return self.project_dir / self.session_dir

    def total(self) -> int:
        return sum(self.bytes_by_datatype.values())


def _write(tree: SessionTree, datatype: str, path: Path, nbytes: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(min(nbytes, 64)) * (nbytes // 64) + os.urandom(nbytes % 64))
    tree.bytes_by_datatype[datatype] += nbytes
    tree.paths_by_datatype[datatype].append(str(path))


def build_session_tree(project_dir: Path, session_dir: str = "S1", exposures: int = 4,
                       movies_dir: Path | None = None) -> SessionTree:
    """Per exposure: a movie outside the project linked from import_movies/, two motion-corrected
    micrographs, two thumbnails, extracted particles, a CTF file; per session a pick file and
    exposures.bson. One extra link points at an already linked movie (its bytes count once)."""
    project_dir.mkdir(parents=True, exist_ok=True)
    movies_dir = movies_dir or project_dir.parent / f"movies-{project_dir.name}-{session_dir}"
    tree = SessionTree(project_dir, session_dir, movies_dir,
                       {dt: 0 for dt in DATATYPES}, {dt: [] for dt in DATATYPES})
    root = tree.session_path
    (root / "import_movies").mkdir(parents=True, exist_ok=True)
    movies_dir.mkdir(parents=True, exist_ok=True)
    for i in range(exposures):
        stem = f"FoilHole_{1000 + i}_Data_{i:04d}"
        movie = movies_dir / f"{stem}_fractions.tiff"
        movie.write_bytes(os.urandom(5000 + 37 * i))
        tree.bytes_by_datatype["raw"] += 5000 + 37 * i
        tree.paths_by_datatype["raw"].append(str(movie))
        (root / "import_movies" / movie.name).symlink_to(movie)
        _write(tree, "micrographs", root / "motioncorrected" / f"{stem}_patch_aligned.mrc", 3000 + 11 * i)
        _write(tree, "micrographs", root / "motioncorrected" / f"{stem}_patch_aligned_doseweighted.mrc", 3001 + i)
        _write(tree, "thumbnails", root / "thumbnails" / f"{stem}_thumb_@1x.png", 400 + i)
        _write(tree, "thumbnails", root / "thumbnails" / f"{stem}_thumb_@2x.png", 900 + i)
        _write(tree, "particles", root / "extract" / "blob" / "256" / f"{stem}_particles.mrc", 7000 + 5 * i)
        _write(tree, "metadata", root / "ctfestimated" / f"{stem}_ctf.mrc", 800 + 3 * i)
    if exposures:
        first = movies_dir / f"FoilHole_{1000}_Data_{0:04d}_fractions.tiff"
        (root / "import_movies" / "duplicate_link.tiff").symlink_to(first)
    _write(tree, "metadata", root / "blob_picker" / "picked_particles.cs", 1234)
    _write(tree, "metadata", root / "exposures.bson", 2048)
    return tree
