"""Imports in server/ run one way: a module imports only modules in layers below its own (README,
"Layout of the repository"). The table is the README's, so the docs and the check cannot drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "server"
README = ROOT / "README.md"


def readme_layers() -> list[list[str]]:
    """The layers, lowest first: the README's list between the layers markers, one layer per line."""
    text = README.read_text()
    block = text[text.index("<!-- layers:start -->"):text.index("<!-- layers:end -->")]
    return [re.findall(r"`(\w+)`", line) for line in block.splitlines() if line.startswith("- ")]


def server_modules() -> list[str]:
    """Python modules, and C ones by their type stubs (.pyi)."""
    return sorted({p.stem for pattern in ("*.py", "*.pyi") for p in SERVER.glob(pattern) if p.stem != "__init__"})


def imported_modules(path: Path) -> set[str]:
    """The server modules a module imports (`from . import x`, `from .x import y`, `livedm.server.x`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 and not module:
                found.update(alias.name for alias in node.names if alias.name in server_modules())
            elif node.level == 1:
                found.add(module.split(".")[0])
            elif module.startswith("livedm.server."):
                found.add(module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("livedm.server."))
    return found


def layer_violations(layers: list[list[str]], imports: dict[str, set[str]]) -> list[str]:
    level = {module: n for n, layer in enumerate(layers) for module in layer}
    return [f"{module} (layer {level[module]}) imports {other} (layer {level[other]})"
            for module, others in sorted(imports.items()) for other in sorted(others)
            if other in level and level[other] >= level[module]]


def test_every_server_module_has_a_layer() -> None:
    layers = readme_layers()
    listed = [module for layer in layers for module in layer]
    assert sorted(listed) == server_modules(), "each module of server/ appears once in the README's layers"


def test_imports_run_one_way() -> None:
    imports = {p.stem: imported_modules(p) for p in SERVER.glob("*.py") if p.stem != "__init__"}
    assert layer_violations(readme_layers(), imports) == []


def test_the_check_finds_an_upward_or_sideways_import() -> None:
    layers = [["errors"], ["store", "files"], ["sessions"]]
    assert layer_violations(layers, {"store": {"sessions"}}) == ["store (layer 1) imports sessions (layer 2)"]
    assert layer_violations(layers, {"store": {"files"}}) == ["store (layer 1) imports files (layer 1)"]
    assert layer_violations(layers, {"sessions": {"store", "errors"}}) == []


def test_imports_are_read_in_every_form(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from . import store\nfrom .files import walk\nfrom livedm.server.jobs import Queue\n"
                      "import livedm.server.audit\ndef f():\n    from .hooks import Hooks\n")
    assert imported_modules(module) == {"store", "files", "jobs", "audit", "hooks"}
