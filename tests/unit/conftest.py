"""The API over HTTP in-process: an aiohttp test server on mongomock, signed in as the first admin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mongomock
import pytest
from aiohttp.test_utils import TestClient

from livedm.server.app import create_app
from livedm.server.config import Config
from tests.conftest import make_config
from tests.support.sessiontree import build_session_tree


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
        db = self.mongo["livedm"]
        return {name: sorted(map(repr, db[name].find())) for name in db.list_collection_names()}


@pytest.fixture
async def api(aiohttp_client: Any, tmp_path: Path) -> Api:
    config: Config = make_config(tmp_path / "state")
    mongo = mongomock.MongoClient()
    client = await aiohttp_client(create_app(config, mongo_client=mongo))
    return Api(client, config.admin_token_path.read_text().strip(), mongo)


@pytest.fixture
async def populated(api: Api, tmp_path: Path) -> Api:
    build_session_tree(tmp_path / "proj", exposures=2)
    await api.ok("create_project", {"title": "p", "project_dir": str(tmp_path / "proj")})
    await api.ok("create_live_session", ["P1", "s"])
    await api.ok("update_session_datatype_sizes", ["P1", "S1"])
    return api


def assert_error(reply: dict[str, Any], code: int, name: str) -> dict[str, Any]:
    error = reply["error"]
    assert (error["code"], error["name"], error["data"]["name"]) == (code, name, name), reply
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    return error


