"""The quickstart (placeholder until it lands)."""

import typer


def demo() -> None:
    """Run the example directive end to end on a local sandbox cluster."""
    raise typer.Exit(1)
