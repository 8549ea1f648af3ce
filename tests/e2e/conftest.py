from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.daemon import Daemon
from tests.support.daemon_sessions import stop_when_idle


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A livedmd of the test's own, on a new database (its data root is tmp_path)."""
    d = Daemon(tmp_path / "state").start()
    yield d
    if d.process is not None:
        stop_when_idle(d)


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One livedmd for all the tests of a module that need no new database: each makes its own projects in
    its own tmp_path and reads back their uids. Its data root is pytest's base temp dir, which holds every
    test's tmp_path; its state dir lies in a directory of its own."""
    d = Daemon(tmp_path_factory.mktemp("shared") / "state",
               env={"LIVEDM_DATA_ROOTS": str(tmp_path_factory.getbasetemp())}).start()
    yield d
    if d.process is not None:
        stop_when_idle(d)
