"""Concurrent state changes on one category, on the real wire-protocol store: no lost update."""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from livedm.server.categories import Categories
from livedm.server.errors import ApiError
from livedm.server.sessions import Sessions


def test_twenty_concurrent_changes_form_one_unbroken_chain(real_service: Sessions, tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    real_service.create_project("p", str(tmp_path / "proj"))
    real_service.create_live_session("P1", "s")
    real_service.change_session_status("P1", "S1", "complete")
    audit = real_service.states.audit
    categories = Categories(real_service, real_service.states)
    targets = [random.Random(i).choice(["archiving", "archived", "active", "deleted"]) for i in range(20)]

    def attempt(i: int) -> str:
        try:
            _dm, changed = categories.change_state(f"user{i}", "P1", "S1", datatype="micrographs", status=targets[i])
        except ApiError as exc:
            assert exc.name == "Conflict", exc
            return "conflict"
        return "changed" if changed else "unchanged"

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(attempt, range(20)))
    entries = audit.query("P1", "S1", 100)
    assert outcomes.count("changed") == len(entries) >= 1
    final = real_service.get_session("P1", "S1")["data_management"]["micrographs"]["status"]
    # The changes must chain active -> ... -> final, each starting where another ended (an Eulerian trail):
    # two winners from the same state (a lost update) would leave that state with one exit too many.
    balance = Counter()
    for entry in entries:
        balance[entry["old_status"]] += 1
        balance[entry["status"]] -= 1
    expected = Counter({"active": 1, final: -1}) if final != "active" else Counter()
    assert +balance == +expected and -balance == -expected, (entries, final)
