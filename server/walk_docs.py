"""What a walk saw, as store documents: one small header per directory (read on every refresh) and its files
in chunks of packed arrays (read only when the directory changed). File names are bytes on Linux: chunks
(only ever inserted) pack them as raw bytes, NUL-separated (no name holds a NUL or a '/'); headers (replaced
in place, where the embedded store keeps no binary) hold them as hex. Chunk fields are compressed (zlib,
fastest level): a million files' chunks are 40 MB packed, 9 MB compressed, and the store's cost follows
the bytes."""

from __future__ import annotations

import os
import uuid
import zlib
from array import array
from collections.abc import Iterator
from typing import Any

from bson.binary import Binary

from .dirwalk import DirState, Entries

ENTRIES_PER_CHUNK = 20_000  # ~1 MB per document with its arrays, far under MongoDB's 16 MB


def compressed(data: bytes) -> bytes:
    return zlib.compress(data, 1)


def _packed(data: bytes) -> Binary:
    return Binary(compressed(data))


NAME_BYTES_MAX = 1024  # per name, its separator included: Linux names hold at most 255 bytes


def inflated(blob: object, limit: int, what: str) -> bytes:
    """A compressed field back, never more than `limit` bytes inflated (a damaged or forged document must not
    make a reader inflate gigabytes). ValueError: not binary, not zlib, cut short, or more than `limit`."""
    if not isinstance(blob, bytes):  # bson's Binary is bytes; anything else is no field this module wrote
        raise ValueError(f"{what} that is not binary ({type(blob).__name__})")
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(blob, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"{what} that does not decompress ({exc})") from None
    if len(data) > limit:
        raise ValueError(f"{what} that inflates beyond the {limit} bytes its count allows")
    if not inflater.eof:
        raise ValueError(f"{what} that is cut short")
    return data


def _unpacked(blob: object, limit: int) -> bytes:
    return inflated(blob, limit, "a walk chunk")


def pack_paths(paths: list[str]) -> list[str]:
    """Paths or names as hex of their bytes."""
    return [os.fsencode(path).hex() for path in paths]


def unpack_paths(values: list[str] | None) -> list[str]:
    return [os.fsdecode(bytes.fromhex(value)) for value in values or ()]


def header_doc(key: str, state: DirState, *, chunk_ids: list[str], gen: str) -> dict[str, Any]:
    return {"_id": header_id(key, state.rel), "key": key, "kind": "dir", "rel": os.fsencode(state.rel).hex(),
            "datatype": state.datatype, "ino": state.ino, "mtime_ns": state.mtime_ns, "ctime_ns": state.ctime_ns,
            "subdirs": pack_paths(state.subdirs), "files": state.files, "present": state.present,
            "plain_bytes": state.plain_bytes, "keyed_bytes": state.keyed_bytes, "keyed": state.keyed,
            "chunks": chunk_ids, "gen": gen, "feed": state.feed}


def header_id(key: str, rel: str) -> str:
    return f"{key}|{uuid.uuid5(uuid.NAMESPACE_URL, os.fsencode(rel).hex()).hex}"


def state_from_header(doc: dict[str, Any]) -> DirState:
    """ValueError, TypeError or KeyError: not a header as header_doc writes it."""
    if not isinstance(doc["subdirs"], list) or not isinstance(doc["chunks"], list):
        raise ValueError("a walk header whose subdirs or chunks are not lists")
    feed = doc.get("feed", "")  # headers of an older livedm have none
    if not isinstance(feed, str):
        raise ValueError("a walk header whose change-feed token is not a string")
    return DirState(rel=os.fsdecode(bytes.fromhex(doc["rel"])), datatype=doc["datatype"], ino=int(doc["ino"]),
                    mtime_ns=int(doc["mtime_ns"]), ctime_ns=int(doc["ctime_ns"]),
                    subdirs=unpack_paths(doc["subdirs"]), files=int(doc["files"]), present=int(doc["present"]),
                    plain_bytes=int(doc["plain_bytes"]), keyed_bytes=int(doc["keyed_bytes"]), keyed=bool(doc["keyed"]),
                    feed=feed)


def chunk_docs(key: str, entries: Entries, start: int = 0, *,
               packed_names: list[bytes] | None = None) -> Iterator[dict[str, Any]]:
    """`entries` from index `start` on, in chunks; each document has its own id (headers list them).
    `packed_names`: each chunk's names compressed already (`compressed` of entries.name_blobs(start,
    ENTRIES_PER_CHUNK)), if the caller has them."""
    if packed_names is None:
        packed_names = [compressed(names) for names in entries.name_blobs(start, ENTRIES_PER_CHUNK)]
    for first, names in zip(range(start, len(entries), ENTRIES_PER_CHUNK), packed_names, strict=True):
        last = min(first + ENTRIES_PER_CHUNK, len(entries))
        doc: dict[str, Any] = {"_id": uuid.uuid4().hex, "key": key, "kind": "chunk", "count": last - first,
                               "names": Binary(names),
                               "inos": _packed(entries.inos[first:last].tobytes()),
                               "sizes": _packed(entries.sizes[first:last].tobytes()), "keys": None}
        if entries.keys is not None:
            doc["keys"] = _packed(entries.keys[2 * first:2 * last].tobytes())
        yield doc


def packed_bytes(chunk: dict[str, Any]) -> int:
    """What a chunk document holds, in bytes, about (its arrays and names as stored)."""
    return sum(len(chunk[field] or b"") for field in ("names", "inos", "sizes", "keys"))


def entries_from_chunks(docs: list[dict[str, Any]]) -> Entries:
    """The chunks of one directory, in the header's order, back into one Entries (names left packed).
    ValueError: a chunk that is damaged, forged, or disagrees with itself."""
    blobs: list[bytes] = []
    count = 0
    inos, sizes = array("Q"), array("q")
    keys: array | None = None
    for doc in docs:
        names = doc.get("count")
        if type(names) is not int or names < 0:
            raise ValueError("a walk chunk without a count")
        blob = _unpacked(doc.get("names"), names * NAME_BYTES_MAX)
        if (blob.count(b"\0") + 1 if blob else 0) != names:
            raise ValueError("a walk chunk whose names disagree with its count")
        chunk_inos, chunk_sizes = array("Q"), array("q")
        chunk_inos.frombytes(_unpacked(doc.get("inos"), 8 * names))
        chunk_sizes.frombytes(_unpacked(doc.get("sizes"), 8 * names))
        if len(chunk_inos) != names or len(chunk_sizes) != names:
            raise ValueError("a walk chunk whose arrays disagree")
        chunk_keys = None
        if doc.get("keys") is not None:
            chunk_keys = array("Q")
            chunk_keys.frombytes(_unpacked(doc["keys"], 16 * names))
            if len(chunk_keys) != 2 * names:
                raise ValueError("a walk chunk whose keys disagree")
        if chunk_keys is not None and keys is None:
            keys = array("Q", bytes(16 * count))
        elif chunk_keys is None and keys is not None:
            chunk_keys = array("Q", bytes(16 * names))
        if names:
            blobs.append(blob)
        count += names
        inos += chunk_inos
        sizes += chunk_sizes
        if keys is not None and chunk_keys is not None:
            keys += chunk_keys
    return Entries(None, inos, sizes, keys, packed_names=b"\0".join(blobs), packed_count=count)
