"""One log line per request: at info for anything that changes something or fails, at debug for reads that
went well (they are counted in /metrics; a line each cost more than the read itself)."""

from __future__ import annotations

import logging

import pytest

from tests.support.api import Api


def _levels(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    lines = [(logging.getLevelName(r.levelno), r.getMessage()) for r in caplog.records if r.name == "livedm.requests"]
    caplog.clear()
    return lines


async def test_reads_that_went_well_log_at_debug_the_rest_at_info(populated: Api,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="livedm.requests")
    caplog.clear()
    await populated.ok("get_datatype_size", ["P1", "S1", "raw"])
    [(level, line)] = _levels(caplog)
    assert level == "DEBUG" and "user=admin calls=1 methods=get_datatype_size" in line
    await populated.call("get_datatype_size", ["P1", "S1", "movies"])
    [(level, line)] = _levels(caplog)
    assert level == "INFO" and "errors=-32602" in line
    await populated.ok("mark_session_completed", ["P1", "S1"])
    [(level, line)] = _levels(caplog)
    assert level == "INFO" and "methods=mark_session_completed" in line
    await populated.post([{"jsonrpc": "2.0", "method": "whoami", "id": 1},
                          {"jsonrpc": "2.0", "method": "get_session", "params": ["P1", "S1"], "id": 2}])
    [(level, line)] = _levels(caplog)
    assert level == "DEBUG" and "calls=2 methods=get_session,whoami" in line
    await populated.post({"jsonrpc": "2.0", "method": "no_such_method", "id": 1})
    [(level, line)] = _levels(caplog)
    assert level == "INFO" and "errors=-32601" in line


async def test_at_info_a_read_writes_no_line(populated: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="livedm.requests")
    caplog.clear()
    await populated.ok("get_datatype_size", ["P1", "S1", "raw"])
    await populated.ok("whoami")
    assert _levels(caplog) == []
    await populated.call("get_datatype_size", ["P404", "S1", "raw"])
    assert [level for level, _ in _levels(caplog)] == ["INFO"]
