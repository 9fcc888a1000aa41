"""The local stack: PostgreSQL, the sandbox cluster with makima's CRDs, and the operator.

`makima demo` starts all three with `local_stack`. The integration tests
(tests/integration/conftest.py) and the hand-off benchmark (benchmarks/handoff.py) start the
same parts, so every local operator runs the same way:

- `embedded_postgres(data_dir)`: the embedded server, yielding its DSN; stopped at the end
  only if it was not already running;
- `sandbox_cluster(...)`: the sandbox (a test double of the Kubernetes API, from the
  makima-testing package) with the CRDs applied through the API, as a person's client would.
  It runs on an event loop of its own thread, as a real API server would: kopf, when
  stopping, waits for every task created after it started, and in a shared loop those would
  include the sandbox's handlers of kopf's idle keep-alive connections;
- `operator_settings(...)` and `start_operator(...)`: `run_operator` as a task of the running
  loop, returned once kopf watches; `RunningOperator.stop()` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from makima.cli.demo.cluster import connect
from makima.control.config import OperatorSettings
from makima.control.runtime import Operator, run_operator
from makima.control.store.embedded import EmbeddedError, EmbeddedPostgres, embedded_data_dir
from makima.core.crds import all_crds

if TYPE_CHECKING:
    from makima_testing.sandbox import SandboxThread

log = logging.getLogger(__name__)

READER_TOKEN_FILE = "reader-token"
OPERATOR_READY_SECONDS = 60.0
OPERATOR_STOP_SECONDS = 30.0

Stage = Callable[[str], contextlib.AbstractContextManager[None]]


class StackError(RuntimeError):
    """A part of the local stack did not start or stop; the message says which and why."""


def _no_stage(what: str) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def env_var(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


# ---- the parts -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """The embedded PostgreSQL in `data_dir` (reused if running); yields its DSN."""
    server = EmbeddedPostgres(data_dir)
    started_here = not await asyncio.to_thread(server.is_running)
    try:
        dsn = await asyncio.to_thread(server.start)
    except EmbeddedError as exc:
        raise StackError(f"the embedded PostgreSQL did not start: {exc}") from exc
    try:
        yield dsn
    finally:
        if started_here:
            log.info("stopping the embedded PostgreSQL")
            await asyncio.to_thread(server.stop)


@contextlib.contextmanager
def sandbox_cluster(**options: Any) -> Iterator[SandboxThread]:
    """The sandbox on its own thread with makima's CRDs; `options` go to `Sandbox`."""
    try:
        from makima_testing.sandbox import SandboxThread
    except ImportError as exc:
        raise StackError(
            "the sandbox cluster is a test double from the makima-testing package, which is not "
            "installed (pip install -e ./testing from a clone)"
        ) from exc
    sandbox = SandboxThread(**options).start()
    try:
        kube = connect(str(sandbox.kubeconfig))
        try:
            kube.ensure_crds(list(all_crds().values()))
        finally:
            kube.close()
        yield sandbox
    finally:
        log.info("stopping the sandbox")
        sandbox.stop()


def operator_settings(database_url: str, state_dir: Path, **overrides: Any) -> OperatorSettings:
    """Settings for an operator on this machine: its API on a free loopback port, watching every
    namespace, standalone, with the event fast path — whatever MAKIMA_* the environment holds,
    which must not bend a local operator — then `overrides`."""
    port = free_port()
    values: dict[str, Any] = {
        "database_url": database_url,
        "state_dir": state_dir,
        "api_listen": f"127.0.0.1:{port}",
        "api_url": f"http://127.0.0.1:{port}",
        "namespaces": [],
        "lease_name": None,  # one operator, always active
        "poll_only": False,
        **overrides,
    }
    return OperatorSettings(**values)


@dataclass
class RunningOperator:
    """`run_operator` running as a task of this loop, and the parts it built."""

    parts: Operator
    task: asyncio.Task[None]
    stop_flag: asyncio.Event

    @property
    def api_url(self) -> str:
        return self.parts.settings.api_url

    async def stop(self, timeout: float = OPERATOR_STOP_SECONDS) -> None:
        """Set the stop flag and wait for kopf to end; raises what the operator died of, if anything."""
        await _stop(self.task, self.stop_flag, timeout)


async def _stop(task: asyncio.Task[None], stop_flag: asyncio.Event, timeout: float) -> None:
    stop_flag.set()
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise StackError(f"the operator did not stop within {timeout:g} s (cancelled)")
    if task.cancelled():  # kopf ends its own tasks by cancellation when the stop flag is set
        return
    exc = task.exception()
    if exc is not None:
        raise exc


async def start_operator(
    settings: OperatorSettings,
    kubeconfig: Path,
    *,
    ready_timeout: float = OPERATOR_READY_SECONDS,
    on_built: Callable[[Operator], None] | None = None,
) -> RunningOperator:
    """Start the operator in this loop and return once kopf watches (else raise `StackError`).

    `on_built(parts)` runs before kopf starts (a benchmark wraps a method there)."""
    stop, ready = asyncio.Event(), asyncio.Event()
    built: list[Operator] = []

    def keep(parts: Operator) -> None:
        built.append(parts)
        if on_built is not None:
            on_built(parts)

    task = asyncio.create_task(
        run_operator(settings, kubeconfig=str(kubeconfig), stop_flag=stop, ready_flag=ready, on_built=keep),
        name="makima-operator",
    )
    waiter = asyncio.create_task(ready.wait())
    try:
        done, _ = await asyncio.wait({waiter, task}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            exc = None if task.cancelled() else task.exception()
            raise StackError("the operator stopped during start-up" + (f": {exc}" if exc else "")) from exc
        if waiter not in done:
            raise StackError(f"the operator did not become ready in {ready_timeout:g} s")
    except BaseException:
        waiter.cancel()
        if not task.done():
            with contextlib.suppress(Exception):
                await _stop(task, stop, OPERATOR_STOP_SECONDS)
        raise
    return RunningOperator(built[0], task, stop)


def write_reader_token(state_dir: Path) -> tuple[str, Path]:
    """A fresh reader token for this run's operator, kept mode 0600 in the state dir (for `makima logs`)."""
    token = secrets.token_urlsafe(32)
    path = state_dir / READER_TOKEN_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, path


# ---- the whole stack -------------------------------------------------------------------------


@dataclass
class LocalStack:
    kubeconfig: Path
    sandbox: SandboxThread
    operator: RunningOperator
    reader_token_file: Path  # for `makima logs` and the dashboard (MAKIMA_READER_TOKEN)

    @property
    def api_url(self) -> str:
        return self.operator.api_url


async def _stop_and_log(running: RunningOperator) -> None:
    log.info("stopping the operator")
    try:
        await running.stop()
    except Exception:
        log.exception("the operator did not end cleanly")


@contextlib.asynccontextmanager
async def local_stack(
    state_dir: Path,
    *,
    database_url: str | None = None,
    stage: Stage = _no_stage,
    on_built: Callable[[Operator], None] | None = None,
    sandbox_options: Mapping[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[LocalStack]:
    """PostgreSQL (embedded under `state_dir`, unless `database_url`), the sandbox with the CRDs
    and the operator (`settings` override `operator_settings`); stopped in reverse order.

    KUBECONFIG points at the sandbox while inside. `stage(what)` wraps each start (the demo
    prints one line per stage with its duration)."""
    async with contextlib.AsyncExitStack() as stack:
        dsn = database_url
        if dsn is None:
            data_dir = embedded_data_dir(state_dir)
            with stage(f"PostgreSQL (embedded, {data_dir})"):
                dsn = await stack.enter_async_context(embedded_postgres(data_dir))
        sandbox_dir, kubeconfig = state_dir / "sandbox", state_dir / "kubeconfig"
        shutil.rmtree(sandbox_dir, ignore_errors=True)
        with stage("sandbox cluster (a test double of the Kubernetes API) with the makima CRDs"):
            sandbox = stack.enter_context(
                sandbox_cluster(workdir=sandbox_dir, kubeconfig=kubeconfig, **(sandbox_options or {}))
            )
        reader_token, token_file = write_reader_token(state_dir)
        config = operator_settings(dsn, state_dir, reader_token=reader_token, **settings)
        stack.enter_context(env_var("KUBECONFIG", str(kubeconfig)))
        with stage(f"operator (API on {config.api_listen})"):
            running = await start_operator(config, kubeconfig, on_built=on_built)
        stack.push_async_callback(_stop_and_log, running)
        yield LocalStack(kubeconfig, sandbox, running, token_file)
