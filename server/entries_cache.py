"""What recent walks saw in each directory, decoded, kept in memory by the directory's chunk ids: a running
session is refreshed again and again, and reading its directories' files back from the store (and inflating
them) was most of what a refresh of a changed directory cost. Chunk ids are new with every write and a
chunk's content never changes, so a kept directory cannot be stale. The least recently used go first once
`capacity_entries` files are held. Entries go in packed and come out as copies of their own: no caller can
change what another will be given."""

from __future__ import annotations

import threading
from collections import OrderedDict

from .dirwalk import Entries


class EntriesCache:
    def __init__(self, capacity_entries: int) -> None:
        self.capacity_entries = capacity_entries
        self._dirs: OrderedDict[tuple[str, ...], Entries] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def put(self, chunk_ids: list[str], entries: Entries) -> None:
        """Keeps a packed copy (`entries` stays the caller's)."""
        if len(entries) > self.capacity_entries:
            return
        frozen = entries.frozen()
        key = tuple(chunk_ids)
        with self._lock:
            old = self._dirs.pop(key, None)
            if old is not None:
                self._held -= len(old)
            self._dirs[key] = frozen
            self._held += len(frozen)
            while self._held > self.capacity_entries:
                _, dropped = self._dirs.popitem(last=False)
                self._held -= len(dropped)

    def get(self, chunk_ids: list[str]) -> Entries | None:
        """A copy of the directory's entries, if held."""
        with self._lock:
            held = self._dirs.get(tuple(chunk_ids))
            if held is None:
                return None
            self._dirs.move_to_end(tuple(chunk_ids))
        return held.copy()
