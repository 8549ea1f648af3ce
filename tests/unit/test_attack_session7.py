"""Attacks on the packed registry's `prefix` (server/store.py): backup -> restore round trips of odd paths, and
forged prefixes, counts and types that must be refused or never widen a deletion."""

from __future__ import annotations

import contextlib
import os
import tracemalloc
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bson.binary import Binary

from livedm.server import store as store_module
from livedm.server.app import create_app
from livedm.server.store import DamagedRegistry, Piece, _doc_paths, _packed_docs, _repacked, _unpacked
from livedm.server.unlinker import by_directory
from testkit.sessiontree import build_session_tree
from tests.support.config import make_config

SURROGATE = b"S1/extract/\xff\xfe.mrc".decode("utf-8", "surrogateescape")


def _backup_restore(doc: dict[str, Any]) -> dict[str, Any]:
    return _repacked(_unpacked(doc))


@pytest.mark.parametrize("paths", [
    ["S1/extract/a.mrc", "S1/extract/b.mrc"],
    [SURROGATE, "S1/extract/plain.mrc"],
    ["S1/extract/a.mrc", "S1/other/b.mrc"],  # two directories: whole paths
    ["grids/2/extract/a.mrc"],
    ["S1/extract//a.mrc", "S1/extract//b.mrc"],
    ["S1/extract/ spaced\tname\n.mrc", "S1/extract/\\back"],
    ["S1/a", "S1/b", "S1/c"],
    ["top.mrc", "other.mrc"],  # no directory at all
    [],
])
def test_a_restored_document_holds_the_paths_its_backup_held(paths: list[str]) -> None:
    encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
    written = {"key": "P1/S1", "source": "scan", "datatype": "particles", "count": len(paths), "gen": "g",
               "packed": Binary(zlib.compress(b"\0".join(encoded), 1))}
    assert _doc_paths(written) == paths
    restored = _backup_restore(written)
    assert _doc_paths(restored) == paths
    assert _doc_paths(_backup_restore(restored)) == paths, "a second round trip"


@pytest.mark.parametrize("prefix", [b"S1/extract/", b"grids/2/extract/sub/", b"S1/\xff\xfe/"])
def test_a_walks_prefixed_document_round_trips(prefix: bytes) -> None:
    names = [b"a.mrc", b"b\xff.mrc", b"c"]
    [doc] = _packed_docs("P1/S1", {"particles": [Piece(prefix, b"\0".join(names), len(names))]}, gen="g")
    want = [(prefix + n).decode("utf-8", "surrogateescape") for n in names]
    assert _doc_paths(doc) == want
    restored = _backup_restore(doc)
    assert bytes(restored["prefix"]) == prefix
    assert _doc_paths(restored) == want


def test_a_backed_up_path_that_is_its_directory_alone_restores_readable() -> None:
    """A backup (forged, or of a registry written before prefixes) holding one path that ends in '/': packed as
    a prefix and an empty name it would read back as no path at all (the registry 'damaged', deletions
    refused), so such a document keeps its whole paths."""
    doc = {"key": "P1/S1", "source": "scan", "datatype": "particles", "gen": "g", "paths": ["S1/extract/"]}
    restored = _repacked(doc)
    assert _doc_paths(restored) == ["S1/extract/"]
    both = _repacked({**doc, "paths": ["S1/extract/a.mrc", "S1/extract/"]})
    assert _doc_paths(both) == ["S1/extract/a.mrc", "S1/extract/"]


@pytest.mark.parametrize("count", [2**31, 2**62, -1, True, 1.0, "3", None])
def test_a_forged_count_is_refused_without_allocating_it(count: object) -> None:
    doc = {"_id": 1, "key": "P1/S1", "source": "scan", "datatype": "particles", "count": count,
           "prefix": Binary(b"S1/extract/"), "packed": Binary(zlib.compress(b"a\0b", 1))}
    with pytest.raises(DamagedRegistry):
        _doc_paths(doc)


@pytest.mark.parametrize("prefix", [None, 5, [b"S1/"], {"$binary": "UzEv"}, b"", bytearray(b"S1/extract/"),
                                    memoryview(b"S1/extract/")])
def test_a_forged_prefix_of_another_type_is_refused_or_harmless(prefix: object) -> None:
    """None, a number, a list, a dict: refused. b"" (no prefix): the names are the whole paths."""
    doc = {"_id": 1, "key": "P1/S1", "source": "scan", "datatype": "particles", "count": 2,
           "prefix": prefix, "packed": Binary(zlib.compress(b"S1/a\0S1/b", 1))}
    if prefix == b"":
        assert _doc_paths(doc) == ["S1/a", "S1/b"]
        return
    if isinstance(prefix, bytearray | memoryview):
        try:
            paths = _doc_paths(doc)
        except DamagedRegistry:
            return
        assert paths == ["S1/extract/S1/a", "S1/extract/S1/b"]
        return
    with pytest.raises(DamagedRegistry):
        _doc_paths(doc)


def test_a_prefix_at_its_limit_reads_and_one_over_is_refused() -> None:
    limit = store_module.PREFIX_BYTES_MAX
    ok = b"S1/" + b"d" * (limit - 4) + b"/"
    assert len(ok) == limit
    doc = {"_id": 1, "key": "P1/S1", "source": "scan", "datatype": "particles", "count": 1,
           "prefix": Binary(ok), "packed": Binary(zlib.compress(b"a", 1))}
    assert _doc_paths(doc) == [(ok + b"a").decode()]
    doc["prefix"] = Binary(b"S1/" + b"d" * (limit - 3) + b"/")
    with pytest.raises(DamagedRegistry):
        _doc_paths(doc)


def test_a_prefix_times_many_names_is_bounded() -> None:
    """The prefix is repeated once per name when the paths are built: 4 KiB times the most names a document
    may hold inflates to about PACKED_BYTES_MAX * 4096 / 2 bytes. A forged document of 200,000 one-byte names
    under a 4 KiB prefix must not build 800 MB of paths."""
    names = b"\0".join(b"%x" % (i % 16) for i in range(200_000))
    prefix = b"S1/" + b"d" * (store_module.PREFIX_BYTES_MAX - 4) + b"/"
    doc = {"_id": 1, "key": "P1/S1", "source": "scan", "datatype": "particles", "count": 200_000,
           "prefix": Binary(prefix), "packed": Binary(zlib.compress(names, 9))}
    tracemalloc.start()
    try:
        with contextlib.suppress(DamagedRegistry):
            _doc_paths(doc)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000_000, f"{peak / 1e6:.0f} MB to read one forged registry document"


def test_an_absolute_path_is_grouped_apart_from_the_project_top() -> None:
    grouped = by_directory(["/passwd", "top.mrc", "/etc/shadow"])
    assert grouped == {"/": ["passwd"], "": ["top.mrc"], "/etc": ["shadow"]}


def test_a_deep_directory_of_many_files_is_written_in_documents_that_read_back() -> None:
    """Whatever bound the reader puts on a document's whole paths, the writer's pieces stay within it: 5,000
    files under a directory path of 4 KiB are 20 MB of paths."""
    prefix = b"S1/" + b"d" * (store_module.PREFIX_BYTES_MAX - 4) + b"/"
    names = [b"%04d" % i for i in range(5_000)]
    pieces = list(store_module.directory_pieces(prefix, b"\0".join(names), len(names)))
    read: list[str] = []
    for doc in _packed_docs("P1/S1", {"particles": pieces}, gen="g"):
        read += _doc_paths(doc)
    assert read == [(prefix + n).decode() for n in names]


# --- through the API (mongomock): forged prefixes at a deletion, the restart repair on a shared store ---------

async def _completed(api: Any, tmp_path: Path) -> Path:
    tree = build_session_tree(tmp_path / "proj", exposures=2)
    await api.ok("create_project", {"title": "p", "project_dir": str(tree.project_dir)})
    await api.ok("create_live_session", ["P1", "s"])
    await api.ok("create_live_session", ["P1", "s2"])
    await api.ok("mark_session_completed", ["P1", "S1"])
    return tree.project_dir


def _forge(api: Any, prefix: bytes, names: list[str]) -> None:
    doc = api.mongo["livedm"].registry.find_one({"key": "P1/S1", "source": "scan", "datatype": "particles"})
    assert doc is not None and "prefix" in doc
    api.mongo["livedm"].registry.update_one({"_id": doc["_id"]}, {"$set": {
        "prefix": Binary(prefix), "count": len(names),
        "packed": Binary(zlib.compress("\0".join(names).encode(), 1))}})


@pytest.mark.parametrize("where", ["other_session", "outside"])
async def test_a_prefix_through_a_symlinked_directory_deletes_nothing_it_leads_to(
        api: Any, tmp_path: Path, where: str) -> None:
    """S1/extract/evil -> another session's directory (or out of the project): the prefix is inside S1 by its
    text, so the deletion is not refused whole; the unlinker must refuse the path, never follow the link."""
    project = await _completed(api, tmp_path)
    target = project / "S2" / "extract" if where == "other_session" else tmp_path / "outside"
    target.mkdir(parents=True, exist_ok=True)
    (target / "v.mrc").write_bytes(b"precious")
    extract = project / "S1" / "extract"
    extract.mkdir(parents=True, exist_ok=True)
    (extract / "evil").symlink_to(target)
    _forge(api, b"S1/extract/evil/", ["v.mrc"])
    reply = await api.call("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1",
                                                    "datatype": "particles", "asynchronous": False})
    assert (target / "v.mrc").read_bytes() == b"precious"
    assert reply.get("result", {}).get("result", {}).get("refused_paths") == ["S1/extract/evil/v.mrc"], reply


@pytest.mark.parametrize("prefix", [b"S2/extract/", b"S10/extract/", b"S/extract/", b"/S1/extract/"])
async def test_a_prefix_naming_another_session_refuses_the_deletion_whole(
        api: Any, tmp_path: Path, prefix: bytes) -> None:
    project = await _completed(api, tmp_path)
    target = project / prefix.decode().lstrip("/") / "v.mrc"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"precious")
    own = sorted(p for p in (project / "S1").rglob("*") if p.is_file())
    _forge(api, prefix, ["v.mrc"])
    reply = await api.call("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1",
                                                    "datatype": "particles", "asynchronous": False})
    assert "error" in reply and "refresh P1 S1 --full" in reply["error"]["message"], reply
    assert target.read_bytes() == b"precious"
    assert all(p.exists() for p in own)


async def test_a_category_calculating_on_a_shared_store_is_left_to_the_measure_at_start(
        api: Any, aiohttp_client: Any, tmp_path: Path) -> None:
    """Another livedmd (same MongoDB) is measuring: a livedmd starting on that store must not put the
    category back (only the embedded store, this process's alone, is repaired at once)."""
    await _completed(api, tmp_path)
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    api.mongo["livedm"].sessions.update_one({"_id": "P1/S1"}, {"$set": {
        "data_management.particles.status": "calculating", "data_management.particles.prev_status": "active",
        "data_management.particles.status_changed_at": now}})
    await aiohttp_client(create_app(make_config(tmp_path / "state2"), mongo_client=api.mongo))
    session = api.mongo["livedm"].sessions.find_one({"_id": "P1/S1"})
    assert session["data_management"]["particles"]["status"] == "calculating"


async def test_a_backup_and_restore_of_a_walked_registry_gives_back_the_same_paths(api: Any, tmp_path: Path) -> None:
    """A walk's prefixed documents (a file name that is not UTF-8, a directory of one file, a deep one) through
    /admin/backup and /admin/restore: the same paths, the same documents' prefixes, and deletion still works."""
    project = await _completed(api, tmp_path)
    extract = project / "S1" / "extract"
    extract.mkdir(parents=True, exist_ok=True)
    (extract / os.fsdecode(b"bad\xff\xfe.mrc")).write_bytes(b"x")
    deep = extract / "a" / "b" / ("c" * 200)
    deep.mkdir(parents=True)
    (deep / "one.mrc").write_bytes(b"y")
    await api.ok("update_session_datatype_sizes", {"project_uid": "P1", "session_uid": "S1", "full": True})
    params = {"project_uid": "P1", "session_uid": "S1", "datatype": "particles"}
    before = await api.ok("get_datatype_file_paths", params)
    db = api.mongo["livedm"]
    prefixes = sorted(bytes(d.get("prefix", b"")) for d in db.registry.find({"source": "scan"}))
    assert any(p.endswith(b"c" * 200 + b"/") for p in prefixes), prefixes
    headers = {"Authorization": f"Bearer {api.token}"}
    made = await api.client.get("/admin/backup", headers=headers)
    assert made.status == 200
    restored = await api.client.post("/admin/restore?confirm=yes", data=await made.read(), headers=headers)
    assert restored.status == 200, await restored.text()
    assert await api.ok("get_datatype_file_paths", params) == before
    assert sorted(bytes(d.get("prefix", b"")) for d in db.registry.find({"source": "scan"})) == prefixes
    reply = await api.call("delete_live_datatype", {**params, "asynchronous": False})
    assert "error" not in reply, reply
    assert not (deep / "one.mrc").exists() and not (extract / os.fsdecode(b"bad\xff\xfe.mrc")).exists()
