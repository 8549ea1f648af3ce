"""The dispatcher's fast path answers exactly as jsonrpcserver's whole path does: a corpus of requests (well
formed, every method's wrong types, missing and extra params, batches, notifications, bad JSON, wrong versions,
unknown methods, no token, a revoked one) sent to two daemons in-process, one with the fast path and one
without, on identical databases: the same bytes back, the same audit entries and database, the same metrics."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import mongomock
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from livedm.server import rpc
from livedm.server.app import create_app
from livedm.server.appkeys import CONFIG, DISPATCHER, METRICS, SERVICES
from livedm.server.methods import METHODS
from livedm.server.params import matches
from livedm.server.rpc import Dispatcher
from testkit.sessiontree import build_session_tree
from tests.support import mock_mongo
from tests.support.config import make_config

VALID = {"project_uid": "P1", "session_uid": "S1", "datatype": "micrographs", "status": "archiving",
         "title": "t", "project_dir": "/nonexistent", "session_dir": "S7", "paths": ["/nonexistent/x"],
         "name": "mallory", "role": "user", "user": "nobody", "enabled": True, "limit": 10, "job_id": "J404",
         "filepaths_to_delete": None, "user_id": None, "asynchronous": True, "dry_run": True, "kind": None,
         "state": None, "script_location": None, "script_log_path_abs": None, "confirm_digest": None,
         "offset": None, "full": False, "search": "p", "session_status": None, "category_status": None,
         "expand": True, "collapse": None, "page": 1, "page_size": None}
WRONG_CANDIDATES: list[Any] = [12345, "text", 1.5, True, [1], {"k": 1}, None]
METRIC_NAMES = ("livedm_requests_total", "livedm_errors_total", "livedm_request_seconds_count")


def _wrong(hint: Any) -> Any:
    return next((value for value in WRONG_CANDIDATES if not matches(value, hint)), None)


def _call(method: str, params: Any, request_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params, "id": request_id}


def _method_cases() -> list[dict[str, Any]]:
    """Per method: well-formed named and positional calls, each argument of a wrong type, each required
    argument missing, an extra one, one positional too many, and the call context passed by name."""
    cases = []
    for name, method in METHODS.items():
        if name in ("create_user", "issue_token"):  # their replies carry a new random token
            continue
        params = list(method.signature.parameters.values())[1:]
        unknown = [p.name for p in params if p.name not in VALID]
        assert not unknown, f"{name}: give {unknown} a valid value in VALID, so the corpus calls it well-formed too"
        named = {p.name: VALID[p.name] for p in params}
        cases += [_call(name, named), _call(name, list(named.values())), _call(name, {**named, "bogus": 1}),
                  _call(name, [*named.values(), "one too many"]), _call(name, {**named, "ctx": 1})]
        for p in params:
            wrong = _wrong(method.hints.get(p.name, Any))
            if wrong is not None or not matches(None, method.hints.get(p.name, Any)):
                cases.append(_call(name, {**named, p.name: wrong}))
            if p.default is inspect.Parameter.empty:
                cases.append(_call(name, {k: v for k, v in named.items() if k != p.name}))
    return cases


SIZE = _call("get_datatype_size", ["P1", "S1", "micrographs"])
ENVELOPE_CASES: list[Any] = [
    SIZE, {**SIZE, "id": "an id"}, {**SIZE, "id": None}, {**SIZE, "id": 2.5}, {**SIZE, "id": True},
    {**SIZE, "id": "x" * 300}, {**SIZE, "id": 10**300}, {k: v for k, v in SIZE.items() if k != "params"},
    {k: v for k, v in SIZE.items() if k != "id"},  # a notification
    {k: v for k, v in _call("get_datatype_size", [1, 2, 3]).items() if k != "id"},  # a failing notification
    [SIZE, _call("whoami", []), _call("nope", []), {"jsonrpc": "2.0"}], [], [1, 2],
    [{k: v for k, v in SIZE.items() if k != "id"}],  # a batch of only notifications
    [SIZE] * 101,  # over max_batch_calls
    {**SIZE, "jsonrpc": "1.0"}, {k: v for k, v in SIZE.items() if k != "jsonrpc"}, {**SIZE, "jsonrpc": 2.0},
    {**SIZE, "method": 5}, {**SIZE, "method": "no_such_method"}, {**SIZE, "method": "x" * 5000},
    {**SIZE, "params": "P1"}, {**SIZE, "params": 7}, {**SIZE, "extra_member": 1},
    _call("get_datatype_size", ["P1", "\ud800", "raw"]), _call("get_datatype_size", {"project_uid": "P1"}),
    "just a string", 42, None, {},
]
RAW_CASES: list[bytes] = [b"{", b"", b"NaN", b'{"jsonrpc": "2.0", "method": "whoami", "id": 1e400}',
                          b"\xff\xfe not utf-8", b"[" * 100_000 + b"]" * 100_000,
                          b'{"jsonrpc": "2.0", "method": "whoami", "params": [], "id": 1} trailing']


class Daemon:
    """One in-process livedmd (an aiohttp test client) on its own mongomock database."""

    def __init__(self, client: TestClient, mongo: mongomock.MongoClient) -> None:
        self.client, self.mongo = client, mongo
        self.token = client.app[CONFIG].admin_token_path.read_text().strip()
        self.tokens: dict[str, str] = {}

    async def post(self, body: bytes, token: str | None) -> tuple[int, str, bytes]:
        headers = {} if token is None else {"Authorization": f"Bearer {self.tokens.get(token, token)}"}
        async with self.client.post("/api", data=body, headers=headers) as response:
            return response.status, response.headers.get("Content-Type", ""), await response.read()

    async def ok(self, method: str, params: Any) -> Any:
        status, _, body = await self.post(json.dumps(_call(method, params)).encode(), self.token)
        reply = json.loads(body)
        assert status == 200 and "result" in reply, reply
        return reply["result"]

    def database(self) -> dict[str, set[str]]:
        """Every collection but the token hashes, with times and random ids left out; at rest (the walk states
        refreshes write behind their answers written)."""
        assert self.client.app[SERVICES].sessions.walks.wait_written(30)
        db = self.mongo["livedm"]
        return {name: {json.dumps(_comparable(doc), sort_keys=True, default=str) for doc in db[name].find()}
                for name in db.list_collection_names() if name != "tokens"}

    def metrics(self, *, latency: bool = False) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Calls and errors counted; with `latency`, the latency histogram's counts too (slower to collect)."""
        metrics = self.client.app[METRICS]
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for metric in (metrics.call_stats, metrics.errors) for family in metric.collect()
                for s in family.samples if s.name in METRIC_NAMES and (latency or "seconds" not in s.name)}


def _comparable(value: Any) -> Any:
    """Times, generated ObjectIds, scan generations and walk writers' tokens (random) and change-feed tokens
    (each daemon's own) differ between any two databases."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if not (
            k in ("at", "as_of", "not_before", "lease_until", "changed_s", "feed", "movie_feed", "writer")
            or k.endswith(("_at", "_ts", "gen"))
            or (k == "_id" and not isinstance(v, str)))}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _answer(status: int, content_type: str, body: bytes) -> tuple[int, str, Any]:
    """A reply as JSON (what SPEC.md fixes; not its bytes), times and random ids left out."""
    return status, content_type, _comparable(json.loads(body)) if body else None


def _changes(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, tuple[list[str], list[str]]]:
    """Per collection: the documents a request removed and added."""
    return {name: (sorted(before.get(name, set()) - docs), sorted(docs - before.get(name, set())))
            for name, docs in after.items()}


async def _daemon(aiohttp_client: Any, state_dir: Path, *, fast_path: bool) -> Daemon:
    config = make_config(state_dir, workers="0")  # queued jobs stay as queued: the two databases stay comparable
    mongo = mock_mongo.MongoClient()
    app: web.Application = create_app(config, mongo_client=mongo)
    app[DISPATCHER] = Dispatcher(METHODS, app[METRICS].observe_call, max_batch_calls=config.max_batch_calls,
                                 fast_path=fast_path)
    daemon = Daemon(await aiohttp_client(app), mongo)
    await daemon.ok("create_project", ["p", str(state_dir.parent / "proj")])
    await daemon.ok("create_live_session", ["P1", "s"])
    await daemon.ok("mark_session_completed", ["P1", "S1"])
    for user in ("alice", "revoked"):
        daemon.tokens[user] = (await daemon.ok("create_user", [user]))["token"]
    await daemon.ok("revoke_token", ["revoked"])
    return daemon


@pytest.fixture
async def pair(aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    build_session_tree(tmp_path / "proj", exposures=2)
    library_calls = {"count": 0}
    library_dispatch = rpc.dispatch_request

    async def counted(*args: Any) -> Any:
        library_calls["count"] += 1
        return await library_dispatch(*args)

    monkeypatch.setattr(rpc, "dispatch_request", counted)
    fast = await _daemon(aiohttp_client, tmp_path / "state-fast", fast_path=True)
    plain = await _daemon(aiohttp_client, tmp_path / "state-plain", fast_path=False)
    return {"fast": fast, "plain": plain, "library_calls": library_calls}


async def _same_answer(pair: dict[str, Any], body: bytes, token: str | None) -> tuple[int, bytes]:
    fast, plain = pair["fast"], pair["plain"]
    answers, changes = [], []
    for daemon in (fast, plain):
        before = daemon.database()
        answers.append(await daemon.post(body, token if token in (None, "alice", "revoked", "ldm_wrong")
                                         else daemon.token))
        changes.append(_changes(before, daemon.database()))
    assert [_answer(*a) for a in answers[0:1]] == [_answer(*a) for a in answers[1:2]], (body[:200], answers)
    assert changes[0] == changes[1], body[:200]
    assert fast.metrics() == plain.metrics(), body[:200]
    return answers[0][0], answers[0][2]


async def test_the_fast_path_answers_every_request_as_the_library_does(pair: dict[str, Any]) -> None:
    envelopes = [json.dumps(case).encode() for case in ENVELOPE_CASES] + RAW_CASES
    every_case = [json.dumps(case).encode() for case in _method_cases()] + envelopes
    well_formed = [json.dumps(_call(name, [VALID[p] for p in list(m.signature.parameters)[1:]])).encode()
                   for name, m in METHODS.items()]
    corpus = [(token, body) for token in ("admin", "alice") for body in every_case]
    # a caller who is not signed in never reaches a method: one well-formed call of each is enough
    corpus += [(token, body) for token in ("revoked", "ldm_wrong", None) for body in well_formed + envelopes]
    answered = 0
    for token, body in corpus:
        status, reply = await _same_answer(pair, body, token)
        answered += status == 200 and bool(reply)
    assert answered > 0.9 * len(corpus)  # notifications aside, every request got a JSON-RPC answer
    assert pair["fast"].metrics(latency=True) == pair["plain"].metrics(latency=True)
    audit = [json.loads(entry) for entry in pair["fast"].database()["audit"]]
    assert any(entry["action"] == "state_changed" and entry["status"] == "archiving" for entry in audit)


async def test_well_formed_requests_take_the_fast_path(pair: dict[str, Any]) -> None:
    body = json.dumps(SIZE).encode()
    before = pair["library_calls"]["count"]
    status, reply = await _same_answer(pair, body, "admin")
    assert status == 200 and isinstance(json.loads(reply)["result"], int) and json.loads(reply)["result"] > 0
    assert pair["library_calls"]["count"] == before + 1  # the plain daemon's call only
    await _same_answer(pair, json.dumps({**SIZE, "params": ["P1", "S1"]}).encode(), "admin")
    assert pair["library_calls"]["count"] == before + 3  # params that do not bind: both take the library's path


async def test_a_body_seen_before_is_answered_without_parsing_it_again(pair: dict[str, Any],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    parses = {"count": 0}
    parse = rpc.parse_json

    def counted(body: str) -> Any:
        parses["count"] += 1
        return parse(body)

    monkeypatch.setattr(rpc, "parse_json", counted)
    for body, token in [(json.dumps({**SIZE, "id": "poll"}).encode(), "admin"),
                        (json.dumps(_call("get_datatype_size", ["P1", "S1", "\ud800"])).encode(), "admin"),
                        (json.dumps(_call("whoami", [])).encode(), "alice")]:
        before = parses["count"]
        first = await _same_answer(pair, body, token)
        assert await _same_answer(pair, body, token) == first, body
        assert parses["count"] == before + 3, body  # the plain daemon's two, the fast one's first
    nested = json.dumps(_call("register_files", ["P1", "S1", "metadata", ["S1/a"]])).encode()
    before = parses["count"]
    for _ in range(2):
        await _same_answer(pair, nested, "admin")
    assert parses["count"] == before + 4  # params holding a list are never shared between requests
