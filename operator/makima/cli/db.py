"""`makima db …`: apply migrations, print the DSN, manage the embedded server."""

from __future__ import annotations

import asyncio

import typer

from makima.control.config import OperatorSettings
from makima.control.store import EmbeddedPostgres, TaskStore, resolve_dsn
from makima.control.store.embedded import embedded_data_dir

app = typer.Typer(no_args_is_help=True)

DsnOption = typer.Option(None, "--dsn", envvar="MAKIMA_DATABASE_URL", help="PostgreSQL DSN; unset = embedded.")


def _settings(dsn: str | None) -> OperatorSettings:
    settings = OperatorSettings()
    if dsn:
        settings = settings.model_copy(update={"database_url": dsn})
    return settings


def _embedded(settings: OperatorSettings) -> EmbeddedPostgres:
    return EmbeddedPostgres(getattr(settings, "postgres_dir", None) or embedded_data_dir(settings.state_dir))


@app.command()
def migrate(dsn: str | None = DsnOption) -> None:
    """Apply pending schema migrations (safe to run concurrently)."""

    async def run() -> list[str]:
        store = await TaskStore.connect(resolve_dsn(_settings(dsn)), min_size=1, max_size=1)
        try:
            return await store.migrate()
        finally:
            await store.close()

    applied = asyncio.run(run())
    typer.echo("applied: " + ", ".join(applied) if applied else "schema up to date")


@app.command()
def url(dsn: str | None = DsnOption) -> None:
    """Print the DSN the operator uses (starts the embedded server if no DSN is set)."""
    typer.echo(resolve_dsn(_settings(dsn)))


@app.command()
def start() -> None:
    """Start (or reuse) the embedded server and print its DSN."""
    typer.echo(_embedded(_settings(None)).start())


@app.command()
def stop() -> None:
    """Stop the embedded server, if running."""
    server = _embedded(_settings(None))
    server.stop()
    typer.echo(f"stopped ({server.data_dir})")


@app.command()
def status() -> None:
    """Say whether the embedded server runs, and where."""
    server = _embedded(_settings(None))
    state = f"running on port {server.port}" if server.is_running() else "stopped"
    typer.echo(f"embedded PostgreSQL in {server.data_dir}: {state}")
