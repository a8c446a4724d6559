"""The shape the architecture issue asked for, kept: small modules and functions outside migrations and tests."""

from __future__ import annotations

import ast
from pathlib import Path

from .services import ROOT

MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 80
SKIPPED = {".venv", "tests", "var", "node_modules"}


def sources() -> list[Path]:
    return [
        path
        for path in sorted(ROOT.rglob("*.py"))
        if not SKIPPED & set(path.relative_to(ROOT).parts) and "migrations" not in path.parts
    ]


def test_no_module_is_over_800_lines_and_no_function_over_80() -> None:
    too_long = []
    for path in sources():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, "\n".join(too_long)


def test_the_code_names_no_file_outside_the_repository() -> None:
    """Protocol references resolve to docs/protocol.md, which a clone has (../shared does not come with it)."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in sources()
        if "shared/reference" in path.read_text() or "board-protocol.md" in path.read_text()
    ]
    assert not offenders
    assert (ROOT / "docs" / "protocol.md").exists()
