"""Sub-commands of this area (placeholder until the area lands)."""

import typer

app = typer.Typer(no_args_is_help=True)
