"""get_overview's parameters over HTTP, as a hostile caller sends them: each wrong one is -32602 before
anything is read, and nothing changes; the ones in range are served, a page size above the cap as the cap."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support.api import Api, assert_error


@pytest.mark.parametrize("params, argument", [
    ({"page": 0, "page_size": 10}, "page"),
    ({"page": -3, "page_size": 10}, "page"),
    ({"page_size": 0}, "page_size"),
    ({"page_size": -50}, "page_size"),
    ({"page": 2}, "page"),  # a page needs a page_size
    ({"page": "2", "page_size": 10}, "page"),
    ({"page": 1.5, "page_size": 10}, "page"),
    ({"page": True, "page_size": 10}, "page"),
    ({"page_size": 1e300}, "page_size"),
    ({"search": 12345}, "search"),
    ({"search": ["P1"]}, "search"),
    ({"search": {"$regex": ".*"}}, "search"),
    ({"search": "x" * 10_000}, "search"),
    ({"session_status": "bogus"}, "session_status"),
    ({"session_status": ["running", "archived"]}, "session_status"),
    ({"session_status": [1]}, "session_status"),
    ({"category_status": "running"}, "category_status"),
    ({"expand": "yes"}, "expand"),
    ({"expand": [1, 2]}, "expand"),
    ({"collapse": "P1"}, "collapse"),
])
async def test_a_wrong_parameter_is_refused_and_changes_nothing(populated: Api, params: dict[str, Any],
                                                                argument: str) -> None:
    before = populated.snapshot()
    started = time.perf_counter()
    error = assert_error(await populated.call("get_overview", params), -32602, "InvalidParams")
    assert time.perf_counter() - started < 2.0
    assert argument in error["message"] and error["data"].get("argument", argument) == argument
    assert populated.snapshot() == before


async def test_parameters_are_by_name_only(populated: Api) -> None:
    assert_error(await populated.call("get_overview", ["P1"]), -32602, "InvalidParams")
    assert_error(await populated.call("get_overview", {"bogus": 1}), -32602, "InvalidParams")


async def test_a_huge_page_size_is_served_as_the_cap(populated: Api) -> None:
    answer = await populated.ok("get_overview", {"page_size": 10**15, "page": 10**15})
    assert answer["page_size"] == 500 and answer["projects"] == [] and answer["rows"] == 2


async def test_the_old_call_still_gives_every_project_with_every_session(populated: Api) -> None:
    answer = await populated.ok("get_overview")
    assert [p["uid"] for p in answer["projects"]] == ["P1"]
    assert [s["uid"] for s in answer["projects"][0]["sessions"]] == ["S1"]
    assert answer["projects"][0]["session_count"] == 1 and answer["rows"] == 2 and "as_of" in answer
    listed = await populated.ok("list_projects")
    assert listed == [{k: v for k, v in p.items() if k not in ("sessions", "matched_sessions", "expanded",
                                                                "continued")} for p in answer["projects"]]


async def test_a_search_with_every_kind_of_character_is_served(populated: Api) -> None:
    for text in ("", "   ", "S1", "(.*)", "\\", "'; db.dropDatabase(); '", "☃ ünïcödé", "\u0000", "x" * 200):
        answer = await populated.ok("get_overview", {"search": text, "page_size": 50})
        assert answer["rows"] in (0, 2), text
