"""Walk chunks this process saved or loaded lately, kept in memory by id: a running session is refreshed
again and again, and reading its directories' files back from the store is most of what a refresh of a
changed directory costs. A chunk's id is new with every write and its content never changes, so a kept
chunk cannot be stale; the least recently used go first once `capacity_entries` files are held."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class ChunkCache:
    def __init__(self, capacity_entries: int) -> None:
        self.capacity_entries = capacity_entries
        self._chunks: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def put(self, docs: list[dict[str, Any]]) -> None:
        with self._lock:
            for doc in docs:
                entries = int(doc.get("count", 0))
                if entries > self.capacity_entries or doc["_id"] in self._chunks:
                    continue
                self._chunks[doc["_id"]] = (doc, entries)
                self._held += entries
            while self._held > self.capacity_entries:
                _, (_, entries) = self._chunks.popitem(last=False)
                self._held -= entries

    def get(self, chunk_ids: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """({id: chunk} of those held, [ids not held])."""
        found: dict[str, dict[str, Any]] = {}
        missing: list[str] = []
        with self._lock:
            for chunk_id in chunk_ids:
                held = self._chunks.get(chunk_id)
                if held is None:
                    missing.append(chunk_id)
                else:
                    self._chunks.move_to_end(chunk_id)
                    found[chunk_id] = held[0]
        return found, missing
