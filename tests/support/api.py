"""The API over HTTP in-process (an aiohttp test client), and the check of a JSON-RPC error's shape."""

from __future__ import annotations

import json
from typing import Any

import mongomock
from aiohttp.test_utils import TestClient

from livedm.server.appkeys import SERVICES


class Api:
    def __init__(self, client: TestClient, token: str, mongo: mongomock.MongoClient) -> None:
        self.client, self.token, self.mongo = client, token, mongo

    async def post(self, body: Any, token: str | None = "default", raw: bool = False) -> Any:
        headers = {} if token is None else {"Authorization": f"Bearer {self.token if token == 'default' else token}"}
        data = body if raw else json.dumps(body)
        response = await self.client.post("/api", data=data, headers=headers)
        assert response.status == 200, await response.text()
        return await response.json()

    async def call(self, method: str, params: Any = None, **kw: Any) -> dict[str, Any]:
        return await self.post({"jsonrpc": "2.0", "method": method, "params": params or {}, "id": 7}, **kw)

    async def ok(self, method: str, params: Any = None) -> Any:
        reply = await self.call(method, params)
        assert "error" not in reply, reply
        return reply["result"]

    def snapshot(self) -> dict[str, list]:
        """The store at rest: after the walk states that refreshes leave to the writer's thread are written."""
        assert self.client.server.app[SERVICES].sessions.walks.wait_written(30), "a walk state still being written"
        db = self.mongo["livedm"]
        return {name: sorted(map(repr, db[name].find())) for name in db.list_collection_names()}


def assert_error(reply: dict[str, Any], code: int, name: str) -> dict[str, Any]:
    error = reply["error"]
    assert (error["code"], error["name"], error["data"]["name"]) == (code, name, name), reply
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    return error
