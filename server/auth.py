"""API tokens: made, stored only as SHA-256 hashes, and checked on every call.

Tokens are 256 random bits, so a plain SHA-256 is the right hash (no salt or stretching needed:
there is nothing to guess). A checked token is trusted for `auth_cache_s` before asking again.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from .audit import Audit
from .domain import now_iso
from .errors import unauthenticated
from .store import Store

log = logging.getLogger(__name__)

TOKEN_PREFIX = "ldm_"
ADMIN_USER = "admin"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_from_headers(headers: Any) -> str | None:
    """The token from `Authorization: Bearer …` or cryoSPARC's `License-ID: …`."""
    authorization = headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    license_id = headers.get("License-ID", "").strip()
    return license_id or None


class Authenticator:
    def __init__(self, store: Store, cache_s: float) -> None:
        self.store = store
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        # a new value at every forget: a lookup that began before one does not fill the cache after it
        self._forgets = itertools.count(1)
        self._forgotten = 0

    def cached_user(self, token: str | None) -> dict[str, Any] | None:
        """The user of a recently checked token, without asking the database (None: ask user_for)."""
        if not token:
            return None
        cached = self._cache.get(token_hash(token))
        if cached and time.monotonic() - cached[0] < self.cache_s:
            return cached[1]
        return None

    def user_for(self, token: str | None) -> dict[str, Any]:
        """The user a token belongs to; blocking (may ask the database). Raises unauthenticated."""
        if not token:
            raise unauthenticated("no API token: send 'Authorization: Bearer <token>' or 'License-ID: <token>' "
                                  "(the livedm client reads LIVEDM_TOKEN, LIVEDM_TOKEN_FILE, or admin.token in "
                                  "the state dir LIVEDM_STATE_DIR names)")
        cached = self.cached_user(token)
        if cached is not None:
            return cached
        digest = token_hash(token)
        now, forgotten = time.monotonic(), self._forgotten
        user = self.store.user_for_token(digest, time.time())
        if user is None:
            self._cache.pop(digest, None)
            raise unauthenticated("the API token is not valid (revoked or mistyped); ask an admin for a new one")
        if len(self._cache) > 10_000:
            self._cache.clear()
        if self._forgotten == forgotten:
            self._cache[digest] = (now, user)
        return user

    def forget(self) -> None:
        """Users or tokens changed in this process: every cached sign-in is checked again."""
        self._forgotten = next(self._forgets)
        self._cache.clear()

    def forget_token(self, digest: str) -> None:
        """A token this process revoked stops working here at once (elsewhere within cache_s)."""
        self._forgotten = next(self._forgets)
        self._cache.pop(digest, None)


def write_secret(path: Path, text: str) -> None:
    """Write a token file (mode 0600) so that it is never read half-written and never written through a
    symlink: a new file beside it (O_EXCL | O_NOFOLLOW), synced, then renamed over the old name (a rename
    replaces a symlink itself, never its target)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, text.encode())
        os.fsync(fd)
        os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def ensure_admin(store: Store, token_path: Path) -> str | None:
    """On first start: create the admin user and write its token (mode 0600). The token, or None."""
    if store.get_user(ADMIN_USER) is not None:
        return None
    created = store.insert_user({"name": ADMIN_USER, "role": "admin", "live_data_management": True,
                                 "created_at": now_iso()})
    if not created:  # another livedmd on the same database was first
        return None
    token = new_token()
    store.insert_token(token_hash(token), ADMIN_USER, now_iso())
    write_secret(token_path, token + "\n")
    log.info("created the admin user; its API token is in %s", token_path)
    return token


def reset_admin_token(store: Store, token_path: Path, actor: str) -> int:
    """`livedmd --reset-admin-token`: the `admin` user (made again if gone) is an admin with the live data
    management permission and one new token, written to token_path; its older tokens are revoked (a lost or
    leaked token is why one resets). The number of tokens revoked."""
    if not store.insert_user({"name": ADMIN_USER, "role": "admin", "live_data_management": True,
                              "created_at": now_iso()}):
        store.update_user(ADMIN_USER, {"role": "admin", "live_data_management": True})
    revoked = store.delete_tokens(ADMIN_USER)
    token = new_token()
    store.insert_token(token_hash(token), ADMIN_USER, now_iso())
    write_secret(token_path, token + "\n")
    Audit(store).record(actor, "admin_token_reset", user=ADMIN_USER, revoked=revoked)
    log.info("a new token for %r is in %s; %d older token(s) revoked", ADMIN_USER, token_path, revoked)
    return revoked
