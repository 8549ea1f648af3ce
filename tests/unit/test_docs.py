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
    root = Path(__file__).resolve().parents[2]
    block = README[README.index("## The two commands"):].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    ci_commands = [line.strip() for line in (root / ".ci" / "run").read_text().splitlines()
                   if line.strip() and not line.lstrip().startswith(("#", "set ", "cd ", "export "))]
    assert ci_commands == ["make test"], "CI must run exactly the README's test command"
    makefile = (root / "Makefile").read_text()
    recipes = {name: body for name, body in re.findall(r"^(run|test):[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)}
    assert "livedmd" in recipes["run"] and "pytest" in recipes["test"]


def test_the_readme_lists_every_audit_action() -> None:
    from livedm.server.audit import ACTIONS

    start = README.index("<!-- audit-actions:start -->") + len("<!-- audit-actions:start -->")
    listed = re.findall(r"^- `([a-z_]+)`: (.*)$", README[start:README.index("<!-- audit-actions:end -->")], re.M)
    assert listed == list(ACTIONS.items())
    recorded = set(re.findall(r"\.record\([^,]+, \"([a-z_]+)\"", "".join(
        p.read_text() for p in (Path(__file__).resolve().parents[2] / "server").glob("*.py"))))
    assert recorded <= set(ACTIONS), f"recorded but not in audit.ACTIONS: {recorded - set(ACTIONS)}"
