from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest

from livedm.server.config import Config
from livedm.server.embedded import EmbeddedStore
from livedm.server.sessions import Sessions
from livedm.server.store import Store
from tests.support import mock_mongo
from tests.support.config import make_config, service_on


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path / "state")


@pytest.fixture
def mock_store() -> Store:
    store = Store(mock_mongo.MongoClient(), "livedm")
    store.ensure_indexes()
    return store


@pytest.fixture
def mock_service(mock_store: Store, config: Config) -> Iterator[Sessions]:
    service = service_on(mock_store, config)
    yield service
    service.walks.close()  # its change feed's inotify instance: a user has 128


@pytest.fixture(scope="session")
def embedded_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real wire-protocol server (nx-27017) for the whole run; tests use their own databases."""
    store = EmbeddedStore(tmp_path_factory.mktemp("embedded-state"))
    yield store.start()
    store.stop()


@pytest.fixture
def real_store(embedded_uri: str) -> Iterator[Store]:
    client: pymongo.MongoClient = pymongo.MongoClient(embedded_uri)
    store = Store(client, "t_" + uuid.uuid4().hex[:12])
    store.ensure_indexes()
    yield store
    client.close()


@pytest.fixture
def real_service(real_store: Store, config: Config) -> Iterator[Sessions]:
    service = service_on(real_store, config)
    yield service
    service.walks.close()
