"""docs/crd-reference.md is generated from the models: it must match what they generate now."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from makima.cli.main import app
from makima.core.crds import all_crds, reference_markdown

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "crd-reference.md"


def test_committed_reference_matches_the_models() -> None:
    assert REFERENCE.read_text() == reference_markdown(), (
        "docs/crd-reference.md is out of date: run `make crds` (makima crds --reference > docs/crd-reference.md)"
    )


def test_reference_lists_every_spec_and_status_field() -> None:
    text = reference_markdown()

    def paths(node: dict[str, Any], prefix: str) -> list[str]:
        out = []
        for name, sub in node.get("properties", {}).items():
            out.append(f"{prefix}.{name}")
            out += paths(sub, f"{prefix}.{name}")
            items = sub.get("items")
            if sub.get("type") == "array" and isinstance(items, dict):
                out += paths(items, f"{prefix}.{name}[]")
        return out

    for crd in all_crds().values():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert f"## {crd['spec']['names']['kind']}" in text
        for part in ("spec", "status"):
            if part not in schema["properties"]:  # an Agent has no status
                continue
            for path in paths(schema["properties"][part], part):
                assert f"| `{path}` |" in text, path


def test_reference_lists_the_cel_rules_checked_at_admission() -> None:
    text = reference_markdown()
    assert "Checked at admission (CEL rules of Directive):" in text
    assert "spec.agentRef and spec.agent exclude each other" in text
    assert "Checked at admission (CEL rules of Agent):" in text
    assert "- `spec.secretRef`: each environment variable may come from one key only" in text


def test_reference_shows_defaults_bounds_and_enums() -> None:
    text = reference_markdown()
    row = next(line for line in text.splitlines() if line.startswith("| `spec.execution.maxParallelSteps` |"))
    assert "`4`" in row and "1 to 64" in row
    row = next(line for line in text.splitlines() if line.startswith("| `spec.execution.mode` |"))
    assert "`Auto`" in row and "`Daemon`" in row
    row = next(line for line in text.splitlines() if line.startswith("| `spec.execution.stepTimeout` |"))
    assert "ms\\|s" in row  # a pipe inside a table cell is escaped


def test_cli_prints_the_reference() -> None:
    result = CliRunner().invoke(app, ["crds", "--reference"])
    assert result.exit_code == 0, result.output
    assert result.output == reference_markdown()
