"""The house's rules: import contracts hold (lint-imports), docs/architecture.md states them, rooms stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_architecture_doc_lists_every_contract_floor_in_order() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert contracts(), "pyproject.toml has no import-linter contract"
    for contract in contracts():
        assert f"**{contract['name']}**" in doc, contract["name"]
        if contract["type"] != "layers":
            continue
        floors = [f"1. `{layer}`" for layer in contract["layers"]]
        section = doc.split(f"**{contract['name']}**", 1)[1]
        listed = [line for line in section.splitlines() if line.startswith("1. `")][:len(floors)]
        assert listed == floors, f"docs/architecture.md's floors differ from pyproject's for {contract['name']!r}"


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for path in sorted((ROOT / "leap_core").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES and "long because" not in (ast.get_docstring(node) or ""):
                    too_long.append(f"{name}:{node.lineno} {node.name}: {size} lines")
    assert not too_long, too_long


def test_no_module_imports_another_modules_private_name() -> None:
    crossings = []
    for path in sorted((ROOT / "leap_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("leap_core"):
                crossings += [f"{path.relative_to(ROOT)}: {node.module}.{alias.name}" for alias in node.names
                              if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not crossings, crossings


def _silent_imports(lines: list[str], function: ast.AST) -> list[int]:
    """Lines of imports inside `function` whose block of consecutive imports has no comment on it or above it."""
    silent = []
    for node in ast.walk(function):
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, [])
            if not isinstance(statements, list):  # a lambda's or an if-expression's body is one expression
                continue
            block: list[ast.stmt] = []
            for statement in [*statements, None]:
                if isinstance(statement, (ast.Import, ast.ImportFrom)):
                    block.append(statement)
                    continue
                if block and not any("#" in line for line in lines[max(block[0].lineno - 2, 0):block[-1].end_lineno]):
                    silent += [b.lineno for b in block]
                block = []
    return silent


def test_every_import_inside_a_function_says_why() -> None:
    """Imports sit at module top; one inside a function (a heavy or optional dependency kept off its module's
    import, or a cycle) carries a one-line comment saying which, on it or above its block of imports."""
    silent = []
    for path in sorted((ROOT / "leap_core").rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for function in ast.walk(ast.parse(text)):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                silent += [f"{path.relative_to(ROOT)}:{line}" for line in _silent_imports(lines, function)]
    assert not silent, sorted(set(silent))
