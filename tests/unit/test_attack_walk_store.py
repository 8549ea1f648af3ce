"""Attacks on the packed scanned registry (server/store.py: `_packed_chunks`, `_doc_paths`, `_unpacked`) through
the API: registry documents tampered with in the store (garbage, a wrong count, paths that lead out of the
session, a zlib bomb) must never widen a deletion, and must fail clearly, not silently."""

from __future__ import annotations

import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
from bson.binary import Binary

from livedm.server import backup
from livedm.server.store import Store
from testkit.sessiontree import build_session_tree
from tests.support.api import Api


def _pack(paths: list[str]) -> Binary:
    return Binary(zlib.compress("\0".join(paths).encode("utf-8", "surrogateescape"), 1))


async def _completed(api: Api, tmp_path: Path) -> Path:
    tree = build_session_tree(tmp_path / "proj", exposures=2)
    await api.ok("create_project", {"title": "p", "project_dir": str(tree.project_dir)})
    await api.ok("create_live_session", ["P1", "s"])
    await api.ok("mark_session_completed", ["P1", "S1"])
    return tree.project_dir


def _particles_doc(api: Api) -> dict[str, Any]:
    doc = api.mongo["livedm"].registry.find_one({"source": "scan", "datatype": "particles"})
    assert doc is not None and "packed" in doc
    return doc


async def test_registry_paths_that_lead_out_of_the_session_are_never_deleted(api: Api, tmp_path: Path) -> None:
    """A packed registry document rewritten to hold paths below the session dir in name that lead out ('..',
    an empty part) or into another session: deleting the whole category takes the session's own files and
    none of those (SPEC §5). Paths not even below the session dir refuse the deletion whole (below)."""
    project = await _completed(api, tmp_path)
    victims = {"outside": tmp_path / "victim.txt", "other": project / "S2" / "extract" / "v.mrc",
               "absolute": tmp_path / "abs_victim.txt"}
    for victim in victims.values():
        victim.parent.mkdir(parents=True, exist_ok=True)
        victim.write_bytes(b"precious")
    doc = _particles_doc(api)
    prefix = bytes(doc.get("prefix", b"")).decode()
    paths = [prefix + name for name in zlib.decompress(doc["packed"]).decode().split("\0")]
    hostile = [*paths, "S1/../victim.txt", "S1/extract/../../S2/extract/v.mrc",
               "S1/" + str(victims["absolute"]).lstrip("/"), "S1/extract/..", "S1//../S2/extract/v.mrc"]
    api.mongo["livedm"].registry.update_one({"_id": doc["_id"]},
                                            {"$set": {"packed": _pack(hostile), "count": len(hostile)},
                                             "$unset": {"prefix": ""}})
    reply = await api.call("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1",
                                                    "datatype": "particles", "asynchronous": False})
    assert all(v.read_bytes() == b"precious" for v in victims.values()), reply
    assert not any((project / p).exists() for p in paths), "the session's own files went"


async def test_a_damaged_registry_document_is_repaired_by_the_full_refresh_its_error_names(
        api: Api, tmp_path: Path) -> None:
    """Its error says a full refresh writes it again: it must. A full refresh whose paths are unchanged
    skips the rewrite (scan_digest equal), which would leave the damage in place for good."""
    await _completed(api, tmp_path)
    doc = _particles_doc(api)
    api.mongo["livedm"].registry.update_one({"_id": doc["_id"]}, {"$set": {"packed": Binary(b"not zlib at all")}})
    broken = await api.call("get_datatype_file_paths", {"project_uid": "P1", "session_uid": "S1",
                                                       "datatype": "particles"})
    assert "error" in broken, broken
    await api.ok("update_session_datatype_sizes", {"project_uid": "P1", "session_uid": "S1", "full": True})
    listed = await api.call("get_datatype_file_paths", {"project_uid": "P1", "session_uid": "S1",
                                                       "datatype": "particles"})
    assert "error" not in listed, listed


async def test_a_damaged_registry_document_fails_a_deletion_with_an_error_that_says_what_to_do(
        api: Api, tmp_path: Path) -> None:
    """The caller (not only the daemon's log) must learn that the registry is damaged and what repairs it."""
    await _completed(api, tmp_path)
    doc = _particles_doc(api)
    api.mongo["livedm"].registry.update_one({"_id": doc["_id"]}, {"$set": {"packed": Binary(b"not zlib at all")}})
    reply = await api.call("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1",
                                                    "datatype": "particles", "asynchronous": False})
    assert "error" in reply and "refresh P1 S1 --full" in reply["error"]["message"], reply


async def test_a_registry_count_that_lies_is_refused_not_trusted(api: Api, tmp_path: Path) -> None:
    await _completed(api, tmp_path)
    doc = _particles_doc(api)
    api.mongo["livedm"].registry.update_one({"_id": doc["_id"]}, {"$set": {"count": doc["count"] + 1}})
    listed = await api.call("get_datatype_file_paths", {"project_uid": "P1", "session_uid": "S1",
                                                       "datatype": "particles"})
    assert "error" in listed and "not" in listed["error"]["message"], listed


async def test_a_backup_of_a_store_with_a_damaged_registry_document_never_ends_whole(api: Api, tmp_path: Path) -> None:
    """No end line: the client refuses the file (a backup cut short), instead of a silently short backup."""
    await _completed(api, tmp_path)
    doc = _particles_doc(api)
    api.mongo["livedm"].registry.update_one({"_id": doc["_id"]}, {"$set": {"packed": Binary(b"garbage")}})
    lines: list[bytes] = []
    with pytest.raises(ValueError, match="damaged"):
        for line in backup.backup_lines(Store(api.mongo, "livedm")):
            lines.append(line)
    assert not any(backup.END_KEY.encode() in line for line in lines)


async def test_a_zlib_bomb_in_the_registry_does_not_blow_memory(api: Api, tmp_path: Path) -> None:
    """A packed document 200 KB compressed, 200 MB decompressed, its count saying 3 paths: reading the
    registry must stop at what `count` paths can hold, not inflate it whole."""
    await _completed(api, tmp_path)
    doc = _particles_doc(api)
    bomb = zlib.compressobj(9)
    packed = bomb.compress(b"a" * 200_000_000) + bomb.flush()
    assert len(packed) < 1_000_000
    api.mongo["livedm"].registry.update_one({"_id": doc["_id"]}, {"$set": {"packed": Binary(packed), "count": 3}})
    store = Store(api.mongo, "livedm")
    session = api.mongo["livedm"].sessions.find_one({})
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            store.read_registry("P1", "S1", session["scan_gen"], datatypes=("particles",))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50_000_000, f"{peak / 1e6:.0f} MB to read a 3-path document"


@pytest.mark.parametrize("prefix", [b"../", b"S1/../../", b"/", b"S1/extract/../../S2/extract/"])
async def test_a_registry_prefix_that_leads_out_of_the_session_deletes_nothing_outside(
        api: Api, tmp_path: Path, prefix: bytes) -> None:
    """A full walk's registry documents hold each directory once (`prefix`) and its names: a prefix
    rewritten to climb out must not take a file outside the session, whatever the names under it."""
    project = await _completed(api, tmp_path)
    victim = (project / prefix.decode().lstrip("/") / "victim.txt").resolve()
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"precious")
    absolute = tmp_path / "abs_victim.txt"
    absolute.write_bytes(b"precious")
    doc = _particles_doc(api)
    names = ["victim.txt", str(absolute).lstrip("/")]
    api.mongo["livedm"].registry.update_one({"_id": doc["_id"]}, {"$set": {
        "prefix": Binary(prefix), "packed": _pack(names), "count": len(names)}})
    await api.call("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1", "datatype": "particles",
                                            "asynchronous": False})
    assert victim.read_bytes() == b"precious" and absolute.read_bytes() == b"precious"


@pytest.mark.parametrize("prefix", [b"S1/ex\0tract/", b"S1/extract", "S1/extract/", b"S1/" * 2000])
async def test_a_registry_prefix_that_is_no_directory_is_refused_with_what_to_do(
        api: Api, tmp_path: Path, prefix: object) -> None:
    """A NUL in it, no trailing slash, text instead of bytes, longer than a path: the document is damaged,
    and the error says which refresh writes it again (never a path read some other way)."""
    await _completed(api, tmp_path)
    doc = _particles_doc(api)
    assert bytes(doc["prefix"]).startswith(b"S1/"), "a walk writes each directory once"
    api.mongo["livedm"].registry.update_one({"_id": doc["_id"]}, {"$set": {"prefix": prefix}})
    listed = await api.call("get_datatype_file_paths", {"project_uid": "P1", "session_uid": "S1",
                                                       "datatype": "particles"})
    assert "error" in listed and "refresh P1 S1 --full" in listed["error"]["message"], listed


async def test_a_scanned_path_outside_the_session_dir_fails_the_deletion_whole(api: Api, tmp_path: Path) -> None:
    """Another session's file, a file at the top of the project: plain paths, but no walk of S1 registers
    them. The deletion is refused as a whole, saying what repairs it, and nothing goes."""
    project = await _completed(api, tmp_path)
    victims = [project / "S2" / "extract" / "v.mrc", project / "top.mrc", tmp_path / "outside.mrc",
               tmp_path / "abs.mrc"]
    for victim in victims:
        victim.parent.mkdir(parents=True, exist_ok=True)
        victim.write_bytes(b"precious")
    doc = _particles_doc(api)
    prefix = bytes(doc["prefix"]).decode()
    paths = [prefix + name for name in zlib.decompress(doc["packed"]).decode().split("\0")]
    hostile = [*paths, "S2/extract/v.mrc", "top.mrc", "/top.mrc", "../outside.mrc", str(tmp_path / "abs.mrc")]
    api.mongo["livedm"].registry.update_one({"_id": doc["_id"]},
                                            {"$set": {"packed": _pack(hostile), "count": len(hostile)},
                                             "$unset": {"prefix": ""}})
    reply = await api.call("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1",
                                                    "datatype": "particles", "asynchronous": False})
    assert "error" in reply and "refresh P1 S1 --full" in reply["error"]["message"], reply
    assert all(victim.read_bytes() == b"precious" for victim in victims)
    assert all((project / p).exists() for p in paths), "nothing of the session went either"
