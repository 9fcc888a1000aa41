"""`makima dashboard`: serve the web view until Ctrl-C."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from makima.cli.people import Kubeconfig, Namespace, fail

HELP = """Serve a web view of the directives: the list, each directive's step DAG live, step attempts
and logs, and pause/resume/retry.

It listens on 127.0.0.1:8765 by default and talks to Kubernetes with your kubeconfig, so your RBAC
decides what it shows and what it may change (watch on directives and steps is needed for the live
view). Step logs come from the operator API (--api-url) with the operator's reader token, given in
MAKIMA_READER_TOKEN or --reader-token-file; it stays in this process and never reaches the page.
Every asset is shipped in the package: no network access beyond the two APIs.
"""


def dashboard(
    host: Annotated[
        str, typer.Option(help="Address to listen on (keep it loopback: actions use your credentials).")
    ] = ("127.0.0.1"),
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).", min=0, max=65535)] = 8765,
    api_url: Annotated[
        str | None, typer.Option("--api-url", envvar="MAKIMA_API_URL", help="Operator API base URL, for step logs.")
    ] = None,
    reader_token_file: Annotated[
        Path | None,
        typer.Option(help="File holding the operator's reader token (else MAKIMA_READER_TOKEN).", dir_okay=False),
    ] = None,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
) -> None:
    import asyncio

    from makima.cli.dashboard.server import LOOPBACK, DashboardSettings, start
    from makima.control.kube import UserKube, context_namespace

    token = os.environ.get("MAKIMA_READER_TOKEN") or None
    if reader_token_file is not None:
        try:
            token = reader_token_file.read_text().strip() or None
        except OSError as exc:
            fail(f"cannot read the reader token file {reader_token_file}: {exc.strerror}")
    try:
        kube = UserKube.from_kubeconfig(kubeconfig)
    except Exception as exc:  # the client raises several kinds; all mean "no usable config"
        fail(f"cannot load a kubeconfig ({exc}); pass --kubeconfig or set KUBECONFIG")
    settings = DashboardSettings(
        namespace=namespace or context_namespace(kubeconfig),
        host=host,
        port=port,
        api_url=api_url if token else None,
        reader_token=token if api_url else None,
    )

    async def serve() -> None:
        runner, url = await start(kube, settings)
        typer.echo(f"makima dashboard on {url}  (Kubernetes API {kube.host}, namespace {settings.namespace})")
        if host not in LOOPBACK:
            typer.echo(f"warning: listening on {host}: whoever reaches it acts with your Kubernetes credentials")
        if settings.reader_token is None:
            typer.echo("step logs are off: pass --api-url and MAKIMA_READER_TOKEN (or --reader-token-file)")
        typer.echo("Ctrl-C stops it.")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass
    finally:
        kube.close()


def register(app: typer.Typer) -> None:
    """Add `makima dashboard` to the top-level app."""
    text = "\n\n".join(" ".join(p.split()) for p in HELP.strip().split("\n\n"))
    app.command("dashboard", help=text)(dashboard)
