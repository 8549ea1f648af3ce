"""Users, their API tokens and their "live data management" permission (admins only), audited."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from .audit import Audit
from .auth import new_token, token_hash
from .domain import HOOK_USER, INTERNAL_ACTORS, now_iso
from .errors import conflict, forbidden, invalid_params, not_found
from .store import Store

log = logging.getLogger(__name__)

ROLES = ("admin", "user")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,63}")  # fullmatch: "$" would let "x.y\n" in


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise invalid_params(f"role {role!r} is not one of {', '.join(ROLES)}")


def public_user(user: dict[str, Any]) -> dict[str, Any]:
    return {"name": user["name"], "role": user["role"],
            "live_data_management": bool(user.get("live_data_management")), "created_at": user.get("created_at")}


class Users:
    def __init__(self, store: Store, audit: Audit, changed: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.audit = audit
        self.changed = changed  # forget cached sign-ins: a revoked token must stop working here at once

    def _user(self, name: str) -> dict[str, Any]:
        """A person's account: livedm's own (the hook's) is never changed, removed or given a token."""
        if name in INTERNAL_ACTORS:
            raise forbidden(f"{name!r} is livedm's own account, not a person's: hook runs get short-lived tokens of "
                            "it scoped to one category, and it always keeps what they need; it cannot be changed, "
                            "removed or given a token")
        user = self.store.get_user(name)
        if user is None:
            raise not_found(f"user {name!r} does not exist; `livedm user list` shows the users")
        return user

    def create_user(self, actor: str, name: str, role: str) -> dict[str, Any]:
        if not _USER_NAME.fullmatch(name):
            raise invalid_params(f"user name {name!r}: lower-case letters, digits, '_', '.', '-' (max 64), "
                                 "starting with a letter or '_'")
        _check_role(role)
        if name in INTERNAL_ACTORS:
            raise conflict(f"the name {name!r} is livedm's own (the audit log names {INTERNAL_ACTORS[name]} so); "
                           "choose another")
        user = {"name": name, "role": role, "live_data_management": False, "created_at": now_iso()}
        if not self.store.insert_user(user):
            raise conflict(f"user {name!r} exists already; `livedm user token {name}` gives it a new token")
        token = new_token()
        self.store.insert_token(token_hash(token), name, now_iso())
        self.audit.record(actor, "user_created", user=name, role=role)
        return {**public_user(user), "token": token}

    def list_users(self) -> list[dict[str, Any]]:
        """The people: livedm's own hook account is left out."""
        return [public_user(u) for u in self.store.list_users() if u["name"] != HOOK_USER]

    def issue_token(self, actor: str, name: str) -> dict[str, str]:
        self._user(name)
        token = new_token()
        self.store.insert_token(token_hash(token), name, now_iso())
        self.audit.record(actor, "token_issued", user=name)
        return {"user": name, "token": token}

    def revoke_token(self, actor: str, name: str) -> dict[str, Any]:
        user = self._user(name)
        self._keep_an_admin(user, f"revoking the tokens of {name!r}")
        revoked = self.store.delete_tokens(name)
        self.changed()
        self.audit.record(actor, "tokens_revoked", user=name, count=revoked)
        return {"user": name, "revoked": revoked}

    def remove_user(self, actor: str, name: str) -> dict[str, Any]:
        """The user and all of their tokens go; the audit log keeps their name wherever it stands."""
        user = self._user(name)
        if name == actor:
            raise conflict(f"you cannot remove yourself ({name!r}); another admin can (`livedm user remove {name}`)")
        self._keep_an_admin(user, f"removing {name!r}")
        revoked = self.store.delete_tokens(name)
        removed = self.store.delete_user(name)
        self.changed()
        if removed:
            self.audit.record(actor, "user_removed", user=name, role=user["role"], tokens_revoked=revoked)
        return {"user": name, "removed": removed, "tokens_revoked": revoked}

    def set_role(self, actor: str, name: str, role: str) -> dict[str, Any]:
        _check_role(role)
        user = self._user(name)
        if user["role"] != role:
            if user["role"] == "admin":
                self._keep_an_admin(user, f"making {name!r} a {role}")
            self.store.update_user(name, {"role": role})
            self.changed()
            self.audit.record(actor, "role_changed", user=name, old_role=user["role"], role=role)
        return public_user(self._user(name))

    def _keep_an_admin(self, user: dict[str, Any], change: str) -> None:
        """Refuse a change that would leave no admin who can sign in."""
        if user.get("role") == "admin" and self._admins_with_tokens() <= {user["name"]}:
            raise conflict(f"{change} would leave no admin who can sign in; issue another admin a token first "
                           "(`livedm user add NAME --admin`, or `livedm user role NAME admin` and `livedm user token "
                           "NAME`); on the server, `livedmd --reset-admin-token` makes a new token for 'admin'")

    def _admins_with_tokens(self) -> set[str]:
        """Admins holding a token that signs in as them: unexpired and not scoped to a hook run."""
        admins = {u["name"] for u in self.store.list_users() if u.get("role") == "admin"}
        return self.store.users_with_live_tokens(admins, time.time())

    def set_permission(self, actor: str, name: str, enabled: bool) -> dict[str, Any]:
        user = self._user(name)
        if bool(user.get("live_data_management")) != enabled:
            self.store.update_user(name, {"live_data_management": enabled})
            self.changed()
            self.audit.record(actor, "permission_changed", user=name, live_data_management=enabled)
        return public_user(self._user(name))
