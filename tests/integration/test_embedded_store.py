"""The store and the service against a real MongoDB wire-protocol server (nx-27017) over TCP."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pymongo

from livedm.server.embedded import EmbeddedStore, _cmdline
from livedm.server.sessions import Sessions
from livedm.server.store import CHUNK_PATHS, Store, path_pieces, session_key
from testkit.sessiontree import build_session_tree


def test_concurrent_uid_allocation_gives_each_number_once(real_service: Sessions, tmp_path: Path) -> None:
    for i in range(40):
        (tmp_path / f"proj{i}").mkdir()
    with ThreadPoolExecutor(8) as pool:
        uids = list(pool.map(lambda i: real_service.create_project(f"p{i}", str(tmp_path / f"proj{i}"))["uid"],
                             range(40)))
    assert sorted(uids, key=lambda u: int(u[1:])) == [f"P{n}" for n in range(1, 41)]


def test_a_rescan_race_has_one_winner_and_no_stray_chunks(real_service: Sessions, real_store: Store,
                                                          tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    real_service.create_project("p", str(tmp_path / "proj"))
    real_service.create_live_session("P1", "s")
    first = {"micrographs": [f"S1/motioncorrected/a{i}.mrc" for i in range(CHUNK_PATHS + 5)]}
    second = {"micrographs": ["S1/motioncorrected/b.mrc"]}
    with ThreadPoolExecutor(2) as pool:
        won = list(pool.map(lambda paths: real_store.replace_scan(
            "P1", "S1", None, pieces={dt: list(path_pieces(p)) for dt, p in paths.items()}, digest=str(id(paths))),
                            [first, second]))
    assert sorted(won) == [False, True]
    winner = first if won[0] else second
    gen = real_store.get_session("P1", "S1")["scan_gen"]
    assert real_store.read_registry("P1", "S1", gen)["scan"]["micrographs"] == winner["micrographs"]
    chunks = list(real_store.db.registry.find({"key": session_key("P1", "S1")}))
    assert {c["gen"] for c in chunks} == {gen}


def test_a_large_session_round_trips_through_chunked_registry(real_service: Sessions, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "proj", exposures=2)
    bulk = tree.session_path / "motioncorrected" / "bulk"
    bulk.mkdir()
    for i in range(5000):
        (bulk / f"m{i:05d}.mrc").write_bytes(b"x" * (i % 7))
    real_service.create_project("p", str(tree.project_dir))
    real_service.create_live_session("P1", "s")
    total = real_service.update_session_datatype_sizes("P1", "S1")
    assert total == tree.total() + sum(i % 7 for i in range(5000))
    paths = real_service.get_datatype_file_paths("P1", "S1", "micrographs")["micrographs"]
    assert len(paths) == 5000 + len(tree.paths_by_datatype["micrographs"])
    assert real_service.get_session("P1", "S1")["data_management"]["micrographs"]["file_count"] == len(paths)


def test_embedded_store_persists_and_replaces_a_leftover_child(tmp_path: Path) -> None:
    first = EmbeddedStore(tmp_path)
    client = pymongo.MongoClient(first.start())
    client.livedm.projects.insert_one({"_id": "P1", "title": "kept"})
    client.close()
    leftover_pid = first.process.pid
    # a second owner on the same state dir (as after a livedmd that died without its child)
    second = EmbeddedStore(tmp_path)
    client = pymongo.MongoClient(second.start())
    try:
        assert client.livedm.projects.find_one({"_id": "P1"})["title"] == "kept"
        first.process.wait(10)
        assert "nx_27017" not in _cmdline(leftover_pid)
    finally:
        client.close()
        second.stop()
    assert not os.path.exists(second.pid_path)
