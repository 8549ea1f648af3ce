"""mongomock, with the two gaps livedm's store meets filled in, so production code carries no workaround:
find_one_and_update returning the document after the update when the projection leaves out _id (mongomock
looked it up again by the original filter and missed it), and the renameCollection command a restore's
switch uses (mongomock raises NotImplementedError for every command but ping)."""

from __future__ import annotations

from typing import Any

import mongomock
from mongomock.collection import Collection
from mongomock.database import Database

_find_and_modify = Collection._find_and_modify
_command = Database.command


def _project(doc: dict[str, Any], projection: dict[str, Any]) -> dict[str, Any]:
    if any("." in key for key in projection):
        raise NotImplementedError("dotted projections: the embedded store has none, so neither has this double")
    shown = {key for key, value in projection.items() if value and key != "_id"}
    if shown:
        kept = {key: doc[key] for key in shown if key in doc}
        if projection.get("_id", 1):
            kept["_id"] = doc["_id"]
        return kept
    return {key: value for key, value in doc.items() if projection.get(key, 1)}


def find_and_modify(self: Collection, query: Any, projection: Any = None, *args: Any, **kwargs: Any) -> Any:
    doc = _find_and_modify(self, query, None, *args, **kwargs)  # with _id: the "after" lookup finds it
    if doc is None or not projection:
        return doc
    return _project(doc, projection if isinstance(projection, dict) else dict.fromkeys(projection, 1))


def command(self: Database, command: Any, **kwargs: Any) -> Any:
    if isinstance(command, dict) and "renameCollection" in command:
        source, target = (name.split(".", 1)[1] for name in (command["renameCollection"], command["to"]))
        if command.get("dropTarget"):
            self.drop_collection(target)
        self[source].rename(target)
        return {"ok": 1.0}
    return _command(self, command, **kwargs)


Collection._find_and_modify = find_and_modify
Database.command = command


def MongoClient() -> mongomock.MongoClient:
    return mongomock.MongoClient()
