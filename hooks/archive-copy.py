#!/usr/bin/env python3
"""A livedm state-change hook that archives a category by copying it, then marks it archived.

On `archiving`: copies every file of the category (for raw: the movies) to
$LIVEDM_ARCHIVE_ROOT/<project_uid>/<session_uid>/<datatype>/<absolute path of the file>, writing a
SHA-256 manifest (MANIFEST.sha256, `sha256sum -c` format) while copying; reads every copy back and
compares; only when all match does it mark the category `archived`. Files that are gone (livedm lists
raw movies whose link leads nowhere under "missing"; a file can also vanish while this runs) cannot be
archived: they are listed in MISSING.txt beside the manifest and in the log, and the rest is archived and
marked. When nothing of the category is left to copy, or anything else fails, it exits 1 and the
category stays `archiving`, so the failure shows in the job, the table and the hook log. Other states:
nothing.

Set as the hook: CRYOSPARC_LIVE_DATA_MANAGEMENT_SCRIPT_PATH=/path/to/archive-copy.py, and give
livedmd LIVEDM_ARCHIVE_ROOT in its environment. Standard library only; calls `livedm rtpcli`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

CHUNK_BYTES = 4 * 1024 * 1024


def rtpcli(call: str) -> str:
    done = subprocess.run(["livedm", "rtpcli", call], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"livedm rtpcli {call!r} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def copy_with_digest(source: Path, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    partial = target.with_name(target.name + ".partial")
    with open(source, "rb") as src, open(partial, "wb") as dst:
        while chunk := src.read(CHUNK_BYTES):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    shutil.copystat(source, partial)
    partial.replace(target)
    return digest.hexdigest()


def digest_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def copy_all(paths: list[Path], destination: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """Copy each file below `destination`: ([(sha256, copy)], [files that were gone when their turn came])."""
    manifest: list[tuple[str, Path]] = []
    vanished: list[str] = []
    for index, source in enumerate(paths, 1):
        target = destination / source.relative_to(source.anchor)
        try:
            manifest.append((copy_with_digest(source, target), target))
        except FileNotFoundError:
            if source.exists():  # the destination's side failed: that is no missing file
                raise
            vanished.append(str(source))
        if index % 1000 == 0:
            print(f"copied {index}/{len(paths)}", flush=True)
    return manifest, vanished


def archive(project_uid: str, session_uid: str, datatype: str, archive_root: Path) -> int:
    listing = json.loads(rtpcli(f"get_datatype_file_paths(project_uid={project_uid!r}, "
                                f"session_uid={session_uid!r}, datatype={datatype!r})"))
    paths = [Path(p) for p in listing[datatype]]
    destination = archive_root / project_uid / session_uid / datatype
    print(f"archiving {len(paths)} {datatype} files of {project_uid} {session_uid} to {destination}", flush=True)
    manifest, vanished = copy_all(paths, destination)
    missing = list(listing.get("missing") or []) + vanished
    destination.mkdir(parents=True, exist_ok=True)
    missing_path = destination / "MISSING.txt"
    if missing:
        missing_path.write_text("".join(f"{path}\n" for path in missing))
        print(f"MISSING: {len(missing)} {datatype} file(s) are gone and cannot be archived (listed in {missing_path}):",
              flush=True)
        for path in missing[:20]:
            print(f"  {path}")
        if len(missing) > 20:
            print(f"  ... and {len(missing) - 20} more")
    elif missing_path.exists():
        missing_path.unlink()  # from an earlier run: everything is there now
    if not manifest and missing:
        print(f"FAILED: none of the {len(missing)} {datatype} files of {project_uid} {session_uid} is there (a movie "
              "directory unmounted?); nothing archived, not marking archived")
        return 1
    manifest_path = destination / "MANIFEST.sha256"
    manifest_path.write_text("".join(f"{digest}  {target.relative_to(destination)}\n" for digest, target in manifest))
    bad = [str(target) for digest, target in manifest if digest_of(target) != digest]
    if bad:
        print(f"FAILED: {len(bad)} copies differ from their source, e.g. {bad[0]}; not marking archived")
        return 1
    print(f"verified {len(manifest)} copies against {manifest_path}", flush=True)
    rtpcli(f"change_session_data_management_state(project_uid={project_uid!r}, session_uid={session_uid!r}, "
           f"datatype={datatype!r}, status='archived')")
    gone = f"; {len(missing)} missing file(s) could not be, see {missing_path}" if missing else ""
    print(f"SUCCESS: {datatype} of {project_uid} {session_uid} is archived ({len(manifest)} files){gone}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print("usage: archive-copy.py project_uid session_uid datatype status", file=sys.stderr)
        return 2
    _, project_uid, session_uid, datatype, status = argv
    if status != "archiving":
        print(f"{datatype} of {project_uid} {session_uid} is {status}: nothing to archive")
        return 0
    root = os.environ.get("LIVEDM_ARCHIVE_ROOT")
    if not root or not os.path.isabs(root):
        print("FAILED: set LIVEDM_ARCHIVE_ROOT (an absolute path) in livedmd's environment", file=sys.stderr)
        return 1
    try:
        return archive(project_uid, session_uid, datatype, Path(root))
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
