"""`makima daemon …`: run a daemon, create a namespace's daemon token.

    makima daemon run --api-url URL --namespace NS [--name N] [--label k=v]... [--capacity N]
    makima daemon token create --namespace NS [--kubeconfig PATH]

The daemon token comes from `MAKIMA_DAEMON_TOKEN`, never from a flag (flags show in `ps`); the
daemon removes it from its environment and makes itself non-dumpable at start, which hides it
from the agents it runs as the same user. `MAKIMA_DAEMON_TOKEN_FILE` names a file holding it
instead (it wins; a missing or empty file stops the daemon at start) for a daemon run by hand:
a file stays readable to those agents, so the chart passes the token in the environment.

With `--health-dir`, the daemon touches `alive` there every few seconds while its event loop
runs, and `connected` while it holds a welcomed connection to the operator (removed when it
loses it); the chart's exec probes check their age (`HEALTH_PROBE`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated, Any

import typer

from makima.dataplane.daemon import ENV_DAEMON_TOKEN, ENV_DAEMON_TOKEN_FILE, Daemon, DaemonConfig

app = typer.Typer(no_args_is_help=True, help="A long-running executor of makima tasks.")
token_app = typer.Typer(no_args_is_help=True, help="Namespace daemon tokens.")
app.add_typer(token_app, name="token")

DAEMON_TOKEN_SECRET = "makima-daemon-token"
DAEMON_TOKEN_KEY = "token"


def parse_labels(values: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected key=value, got {value!r}", param_hint="--label")
        labels[key.strip()] = val.strip()
    return labels


HEALTH_EVERY_SECONDS = 5.0
# The probe the chart runs (sh and coreutils, no Python start-up): FILE touched within SECONDS.
HEALTH_PROBE = 'test "$(( $(date +%s) - $(stat -c %Y "$0") ))" -lt "$1"'


def take_daemon_token(environ: MutableMapping[str, str]) -> str:
    """The daemon token, from MAKIMA_DAEMON_TOKEN_FILE's file (wins) or MAKIMA_DAEMON_TOKEN; both
    are removed from `environ`. ValueError (naming the setting, never the token) when neither gives one."""
    from makima.control.config import read_secret_file

    path = environ.pop(ENV_DAEMON_TOKEN_FILE, None)
    token = environ.pop(ENV_DAEMON_TOKEN, None)
    if path:
        return read_secret_file(Path(path), ENV_DAEMON_TOKEN_FILE)
    if not token:
        raise ValueError(f"{ENV_DAEMON_TOKEN} is not set (the namespace's daemon token), nor {ENV_DAEMON_TOKEN_FILE}")
    return token


async def write_health(daemon: Daemon, directory: Path, every: float = HEALTH_EVERY_SECONDS) -> None:
    """Touch `alive` every `every` seconds, and `connected` while the daemon is connected (removed
    when it is not), until cancelled. Runs on the daemon's loop: a stuck loop stops touching.
    `directory` exists (made at start)."""
    alive, connected = directory / "alive", directory / "connected"
    try:
        while True:
            alive.touch()
            if daemon.connected.is_set():
                connected.touch()
                await asyncio.sleep(every)
            else:
                connected.unlink(missing_ok=True)
                with contextlib.suppress(TimeoutError):  # connected: say so at once
                    await asyncio.wait_for(daemon.connected.wait(), every)
    finally:
        connected.unlink(missing_ok=True)


def _default_name() -> str:
    host = socket.gethostname().split(".")[0].lower()
    cleaned = "".join(c if c.isalnum() or c == "-" else "-" for c in host).strip("-")
    return cleaned[:63] or "daemon"


@app.command("run")
def run(
    api_url: Annotated[str, typer.Option(envvar="MAKIMA_API_URL", help="The operator API URL.")],
    namespace: Annotated[str, typer.Option(envvar="MAKIMA_NAMESPACE", help="Namespace this daemon serves.")],
    name: Annotated[str | None, typer.Option(help="Daemon name (default: the host name).")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="k=v, repeatable; matched by daemonSelector.")
    ] = None,
    capacity: Annotated[int, typer.Option(min=1, max=256, help="Tasks run at once.")] = 1,
    work_dir: Annotated[Path, typer.Option(help="Where task workspaces are created.")] = Path("makima-work"),
    keep_workspaces: Annotated[bool, typer.Option(help="Keep each task's workspace afterwards.")] = False,
    health_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="MAKIMA_DAEMON_HEALTH_DIR", help="Keep the files `alive` and `connected` fresh here (probes)."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Connect to the operator and run the tasks it sends, reconnecting forever."""
    from makima.dataplane.runner.proctree import harden_runner

    # Best from the environment, not a mounted file: a file stays readable to the agents (same
    # UID); the environment is hidden once the process is non-dumpable (just below).
    try:
        token = take_daemon_token(os.environ)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    # The daemon holds its token and the git credentials pushed with each task, and runs agents
    # as the same user: make its memory and initial environment unreadable to them.
    harden_runner()
    if health_dir is not None:
        try:
            health_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            typer.echo(f"error: --health-dir {health_dir}: {exc.strerror}", err=True)
            raise typer.Exit(2) from None
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = DaemonConfig(
        api_url=api_url,
        namespace=namespace,
        name=name or _default_name(),
        token=token,
        labels=parse_labels(label or []),
        capacity=capacity,
        work_dir=work_dir.absolute(),
        keep_workspaces=keep_workspaces,
    )
    daemon = Daemon(config)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, daemon.stop)
        health = asyncio.create_task(write_health(daemon, health_dir)) if health_dir else None
        try:
            await daemon.run()
        finally:
            if health is not None:
                health.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await health

    asyncio.run(main())


def daemon_token_secret(namespace: str, token: str, name: str = DAEMON_TOKEN_SECRET) -> dict[str, Any]:
    """The Secret manifest holding a namespace's daemon token (key `token`)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "makima", "app.kubernetes.io/component": "daemon-token"},
        },
        "stringData": {DAEMON_TOKEN_KEY: token},
    }


def apply_daemon_token_secret(
    namespace: str, token: str, *, kubeconfig: str | None = None, name: str = DAEMON_TOKEN_SECRET
) -> str:
    """Create or replace Secret `name` (key `token`) in `namespace`; return "created" or "updated".

    The one Kubernetes call of the daemon CLI, kept self-contained so it can move into `kube.py`
    (its RBAC: secrets create, update in the target namespace — the user's, not the operator's).
    """
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    manifest = daemon_token_secret(namespace, token, name)
    body = client.V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=manifest["metadata"]["labels"]),
        string_data=manifest["stringData"],
    )
    with client.ApiClient(cfg) as api:
        core = client.CoreV1Api(api)
        try:
            core.create_namespaced_secret(namespace, body)
            return "created"
        except ApiException as exc:
            if exc.status != 409:
                raise
        core.replace_namespaced_secret(name, namespace, body)
        return "updated"


@token_app.command("create")
def token_create(
    namespace: Annotated[str, typer.Option(help="Namespace the token is for.")],
    kubeconfig: Annotated[
        str | None,
        typer.Option(help="Also store it as Secret makima-daemon-token (key: token) in the namespace."),
    ] = None,
    secret_name: Annotated[str, typer.Option(help="Secret name.")] = DAEMON_TOKEN_SECRET,
) -> None:
    """Print a new random daemon token (and, given a kubeconfig, store it in the namespace)."""
    from makima.control.store.tokens import new_token

    token = new_token()
    if kubeconfig is not None:
        try:
            what = apply_daemon_token_secret(namespace, token, kubeconfig=kubeconfig, name=secret_name)
        except Exception as exc:
            typer.echo(f"error: could not write Secret {namespace}/{secret_name}: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"Secret {namespace}/{secret_name} {what}", err=True)
    typer.echo(token)
