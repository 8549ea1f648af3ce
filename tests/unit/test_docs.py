"""The README documents what the code offers (datasette's habit: a test fails when docs lag)."""

import re
from pathlib import Path

from livedm.server.methods import METHODS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_api_method_is_in_the_readme_api_table() -> None:
    api_section = README[README.index("## The API"):README.index("## Configuration")]
    documented = set(re.findall(r"`([a-z_.]+)[(`]", api_section))
    missing = sorted(set(METHODS) - documented)
    assert not missing, f"document these methods in README's API table: {missing}"


def test_readme_gives_the_two_commands_that_ci_runs() -> None:
    assert "make run" in README and "make test" in README
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "make test" in ci
