"""The embedded store's handler (server/store_server.py): an insert never formats its documents' bytes for a
debug line nobody reads (nx-27017 builds it with an f-string whatever the log level)."""

from __future__ import annotations

from pathlib import Path

from bson.binary import Binary

from livedm.server.store_server import Handler


class CountedBinary(Binary):
    formatted = 0

    def __repr__(self) -> str:
        CountedBinary.formatted += 1
        return super().__repr__()


def test_an_insert_stores_its_documents_without_formatting_their_bytes(tmp_path: Path) -> None:
    handler = Handler(data_dir=str(tmp_path))
    blob = CountedBinary(b"\x00" * 100_000)
    body = {"insert": "walks", "$db": "t", "ordered": False}
    _, reply = handler.handle_insert({"request_id": 1, "sections": [
        ("body", body), ("payload", {"documents": [{"_id": "c1", "names": blob}]})]})
    assert reply.get("ok") == 1 and reply.get("n") == 1, reply
    assert CountedBinary.formatted == 0
    stored = handler.get_database("t")["walks"].find_one({"_id": "c1"})
    assert stored is not None and bytes(stored["names"]) == bytes(blob)
