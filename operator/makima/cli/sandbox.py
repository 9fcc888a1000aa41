"""`makima sandbox up|down|env`: the sandbox cluster (a test double) from the shell."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import platformdirs
import typer

app = typer.Typer(no_args_is_help=True, help="Local Kubernetes API stand-in (a test double).")

STATE_DIR = platformdirs.user_state_path("makima") / "sandbox"


def _paths(state_dir: Path) -> tuple[Path, Path]:
    return state_dir / "kubeconfig", state_dir / "sandbox.pid"


def _export_line(kubeconfig: Path) -> str:
    return f"export KUBECONFIG={kubeconfig}"


async def _serve(host: str, port: int, kubeconfig: Path, pidfile: Path | None) -> None:
    from makima_testing.sandbox.server import Sandbox

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Sandbox(host=host, port=port, kubeconfig=kubeconfig) as sandbox:
        if pidfile is not None:
            await asyncio.to_thread(pidfile.write_text, str(os.getpid()))
        typer.echo(f"makima sandbox (a test double, not Kubernetes) serving {sandbox.url}", err=True)
        typer.echo(_export_line(kubeconfig))
        sys.stdout.flush()
        await stop.wait()


@app.command()
def up(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(0, help="Port to listen on (0: a free one)."),
    background: bool = typer.Option(False, "--background", "-b", help="Detach; stop with `makima sandbox down`."),
    state_dir: Path = typer.Option(STATE_DIR, help="Where the kubeconfig and the pid file go."),
) -> None:
    """Start the sandbox cluster, write a kubeconfig, print the `export KUBECONFIG=...` line."""
    state_dir.mkdir(parents=True, exist_ok=True)
    kubeconfig, pidfile = _paths(state_dir)
    if background:
        if pidfile.exists() and _alive(int(pidfile.read_text() or 0)):
            typer.echo(f"already running (pid {pidfile.read_text()}); `makima sandbox down` first", err=True)
            raise typer.Exit(1)
        kubeconfig.unlink(missing_ok=True)
        log = (state_dir / "sandbox.log").open("ab")
        cmd = [
            sys.executable,
            "-c",
            "from makima.cli.main import main; main()",
            "sandbox",
            "up",
            "--host",
            host,
            "--port",
            str(port),
            "--state-dir",
            str(state_dir),
        ]
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and kubeconfig.exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                typer.echo(f"the sandbox did not start; see {state_dir / 'sandbox.log'}", err=True)
                raise typer.Exit(1)
            time.sleep(0.05)
        typer.echo(_export_line(kubeconfig))
        return
    kubeconfig.unlink(missing_ok=True)
    try:
        asyncio.run(_serve(host, port, kubeconfig, pidfile))
    finally:
        pidfile.unlink(missing_ok=True)


@app.command()
def down(state_dir: Path = typer.Option(STATE_DIR, help="Where `up --background` put its pid file.")) -> None:
    """Stop a sandbox started with `up --background`."""
    _, pidfile = _paths(state_dir)
    if not pidfile.exists():
        typer.echo("no sandbox is running", err=True)
        raise typer.Exit(0)
    pid = int(pidfile.read_text() or 0)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    pidfile.unlink(missing_ok=True)
    typer.echo(f"stopped the sandbox (pid {pid})")


@app.command()
def env(state_dir: Path = typer.Option(STATE_DIR, help="Where `up` wrote the kubeconfig.")) -> None:
    """Print the `export KUBECONFIG=...` line of the running sandbox."""
    typer.echo(_export_line(_paths(state_dir)[0]))


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
