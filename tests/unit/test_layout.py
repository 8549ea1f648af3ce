"""Who may import whom among tests/, bench/ and testkit/, read from the source with `ast`:

- a module under tests/ imports from tests/ only tests.support (never a test module, a conftest, or a
  test package), and nothing of bench/;
- bench/ imports nothing from tests/: what it shares with the tests lives in testkit/;
- testkit/ imports from neither tests/ nor bench/.

Fixtures stay in conftest.py files; the helpers they use live in tests/support and testkit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TREES = ("tests", "bench", "testkit")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(root: Path, dotted: str) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) for every module the file imports: import statements anywhere in it (relative ones
    resolved, `from package import module` counted as the module), importlib.import_module("...") and
    __import__("...") with a literal name, and the names in a pytest_plugins list."""
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            submodules = [f"{target}.{a.name}" for a in node.names if is_module(root, f"{target}.{a.name}")]
            found += [(node.lineno, m) for m in submodules or [target]]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and \
                isinstance(node.args[0].value, str) and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module") or
                (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))):
            found.append((node.lineno, node.args[0].value))
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytest_plugins"
                                                  for t in node.targets):
            found += [(node.lineno, c.value) for c in ast.walk(node.value)
                      if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    return found


def refusal(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`; None when it may."""
    top, inner = importer.split(".")[0], imported.split(".")
    if top == "tests":
        if inner[0] == "bench":
            return "tests import nothing of bench/ (shared code goes to testkit/)"
        if inner[0] == "tests" and inner[1:2] != ["support"]:
            return "tests import from tests/ only tests.support, never a test module or a conftest"
    elif top == "bench" and inner[0] == "tests":
        return "bench imports nothing from tests/ (shared code goes to testkit/)"
    elif top == "testkit" and inner[0] in ("tests", "bench"):
        return "testkit imports from neither tests/ nor bench/"
    return None


def layout_violations(root: Path) -> list[str]:
    violations = []
    for tree in TREES:
        for path in sorted((root / tree).rglob("*.py")):
            if any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            importer = module_name(path, root)
            for line, imported in imports_of(path, root):
                why = refusal(importer, imported)
                if why:
                    violations.append(f"{path.relative_to(root)}:{line} imports {imported}: {why}")
    return violations


def test_tests_bench_and_testkit_import_only_what_they_may() -> None:
    violations = layout_violations(ROOT)
    assert not violations, "\n".join(violations)


# --- the check itself: it finds each way of breaking the layout, and passes what is allowed -------
# (the package names in these sources are filled in when written, so that a grep of the tree for the
# imports they show finds only real ones)

BAD = {
    "a test module from another": ("tests/e2e/test_a.py", "from {tests}.e2e.test_b import helper\n"),
    "the top conftest": ("tests/unit/test_a.py", "from {tests}.conftest import make_config\n"),
    "a conftest as a module": ("tests/unit/test_a.py", "from {tests}.unit import conftest\n"),
    "a relative import of a test module": ("tests/unit/test_a.py", "from ..e2e.test_b import helper\n"),
    "a sibling, relatively": ("tests/e2e/test_a.py", "from .test_b import helper\n"),
    "an import inside a function": ("tests/e2e/test_a.py", "def f():\n    import {tests}.e2e.test_b\n"),
    "support from a conftest": ("tests/support/site.py", "from {tests}.browser.conftest import Site\n"),
    "a test package": ("tests/e2e/test_a.py", "import {tests}.unit\n"),
    "a test importing bench": ("tests/e2e/test_a.py", "from {bench}.load import run_load\n"),
    "a test importing bench as a package": ("tests/e2e/test_a.py", "from {bench} import load\n"),
    "bench importing tests": ("bench/x.py", "from {tests}.support.waiting import wait_until\n"),
    "bench importing tests, plainly": ("bench/x.py", "import {tests}.support.waiting\n"),
    "testkit importing tests": ("testkit/x.py", "from {tests}.support.api import Api\n"),
    "testkit importing bench": ("testkit/x.py", "import {bench}\n"),
    "import_module": ("tests/e2e/test_a.py", "import importlib\nimportlib.import_module('{tests}.e2e.test_b')\n"),
    "pytest_plugins": ("tests/e2e/conftest.py", "pytest_plugins = ['{tests}.e2e.test_b']\n"),
}
GOOD = {
    "tests/e2e/test_a.py": "from testkit.daemon import Daemon\nfrom {tests}.support.waiting import wait_until\n"
                           "from {tests} import support\nfrom ..support import waiting\nimport livedm.server\n",
    "tests/e2e/conftest.py": "from {tests}.support.waiting import wait_until\n",
    "tests/support/site.py": "from {tests}.support.waiting import wait_until\nfrom testkit.daemon import Daemon\n",
    "bench/x.py": "from {bench} import load\nfrom testkit.load import run_load\nfrom . import load as again\n",
    "testkit/x.py": "from testkit.daemon import Daemon\nfrom livedm.server.store import Store\n",
}
SKELETON = ["tests/__init__.py", "tests/conftest.py", "tests/unit/__init__.py", "tests/unit/conftest.py",
            "tests/e2e/__init__.py", "tests/e2e/test_b.py", "tests/browser/__init__.py", "tests/browser/conftest.py",
            "tests/support/__init__.py", "tests/support/waiting.py", "bench/__init__.py", "bench/load.py",
            "testkit/__init__.py", "testkit/daemon.py", "testkit/load.py"]


def fake_repo(root: Path, files: dict[str, str]) -> Path:
    for name in SKELETON:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    for name, text in files.items():
        (root / name).write_text(text.format(tests="tests", bench="bench"))
    return root


@pytest.mark.parametrize("case", BAD)
def test_the_layout_check_finds(tmp_path: Path, case: str) -> None:
    name, text = BAD[case]
    violations = layout_violations(fake_repo(tmp_path, {**GOOD, name: text}))
    assert len(violations) == 1 and violations[0].startswith(f"{name}:"), violations


def test_the_layout_check_passes_what_is_allowed(tmp_path: Path) -> None:
    assert layout_violations(fake_repo(tmp_path, GOOD)) == []
