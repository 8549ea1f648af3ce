from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.daemon import Daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "state").start()
    yield d
    if d.process is not None:
        d.stop()
