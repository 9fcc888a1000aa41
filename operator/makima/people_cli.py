"""People-facing commands (placeholder until the CLI lands)."""

import typer


def register(app: typer.Typer) -> None:
    """Add `get`, `describe`, `logs`, `retry`, `pause`, `resume` to the top-level app."""
