"""The pure core stays readable: no function in makima.core longer than 80 lines, the
complexity bound (ruff C901 <= 10, operator/makima/core/ruff.toml) stays switched on, and
the step graph (core/dag.py) needs nothing but the standard library."""

from __future__ import annotations

import ast
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "operator" / "makima" / "core"
MAX_LINES = 80


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in `source` longer than `limit` lines,
    counted from its `def` to its last line (docstring and comments included)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                out.append((node.name, lines))
    return out


def test_no_function_in_the_core_is_longer_than_80_lines() -> None:
    found = {
        f"{path.relative_to(CORE)}:{name}": lines
        for path in sorted(CORE.rglob("*.py"))
        for name, lines in long_functions(path.read_text())
    }
    assert found == {}, f"split these functions (at most {MAX_LINES} lines each): {found}"


def test_the_check_catches_a_long_function_and_a_long_method() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    source = f"def long():\n{body}\n\n\nclass C:\n    def method(self):\n{textwrap.indent(body, '    ')}\n"
    assert long_functions(source) == [("long", MAX_LINES + 1), ("method", MAX_LINES + 1)]
    assert long_functions("def short():\n    return 1\n") == []


def test_the_core_complexity_bound_extends_the_project_rules() -> None:
    config = tomllib.loads((CORE / "ruff.toml").read_text())
    assert (CORE / config["extend"]).resolve() == ROOT / "pyproject.toml"
    assert "C901" in config["lint"]["extend-select"]
    assert config["lint"]["mccabe"]["max-complexity"] <= 10


def test_the_step_graph_imports_only_the_standard_library() -> None:
    tree = ast.parse((CORE / "dag.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {name.split(".")[0] for name in imported} <= sys.stdlib_module_names
