"""The API over HTTP in-process: an aiohttp test server on mongomock, signed in as the first admin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from livedm.server.app import create_app
from livedm.server.config import Config
from testkit.sessiontree import build_session_tree
from tests.support import mock_mongo
from tests.support.api import Api
from tests.support.config import make_config


@pytest.fixture
async def api(aiohttp_client: Any, tmp_path: Path) -> Api:
    config: Config = make_config(tmp_path / "state")
    mongo = mock_mongo.MongoClient()
    client = await aiohttp_client(create_app(config, mongo_client=mongo))
    return Api(client, config.admin_token_path.read_text().strip(), mongo)


@pytest.fixture
async def populated(api: Api, tmp_path: Path) -> Api:
    build_session_tree(tmp_path / "proj", exposures=2)
    await api.ok("create_project", {"title": "p", "project_dir": str(tmp_path / "proj")})
    await api.ok("create_live_session", ["P1", "s"])
    await api.ok("update_session_datatype_sizes", ["P1", "S1"])
    return api
