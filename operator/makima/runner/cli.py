"""Task-side commands (placeholder until the runner lands)."""

import typer

task_app = typer.Typer(no_args_is_help=True)
agent_app = typer.Typer(no_args_is_help=True)
directive_app = typer.Typer(no_args_is_help=True)
