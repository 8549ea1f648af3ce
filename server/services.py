"""Everything the API methods use, built once per process from the store and the settings."""

from __future__ import annotations

from dataclasses import dataclass

from .audit import Audit
from .auth import Authenticator
from .categories import Categories
from .config import Config
from .reads import SessionReader
from .service import Service
from .store import Store
from .users import Users


@dataclass(frozen=True)
class Services:
    sessions: Service
    reader: SessionReader
    categories: Categories
    users: Users
    audit: Audit

    @classmethod
    def build(cls, store: Store, config: Config, authenticator: Authenticator) -> Services:
        audit = Audit(store)
        sessions = Service(store, config)
        return cls(sessions=sessions, reader=SessionReader(store), categories=Categories(sessions, audit),
                   users=Users(store, audit, changed=authenticator.forget), audit=audit)
