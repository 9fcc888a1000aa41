"""`makima daemon`: a long-running executor that runs tasks the operator pushes to it.

It connects to the operator's WebSocket (`/v1/daemons/connect`) with its namespace's
daemon token, says hello (name, labels, capacity, tasks it is still running), and then:
- on `SpawnTask`: adds the task to its running set and acks (or refuses when full),
  then runs it exactly like a Job pod does — `run_task` in a fresh workspace under the
  work dir, events and the result posted to the HTTP API with that task's own token;
- sends a `DaemonHeartbeat` with its running task ids every `heartbeat_seconds`, and at
  once when a task ends (so the operator sees the free slot);
- on `CancelTask`: cancels that task's asyncio task (which kills the agent process).

Losing the socket does not stop running tasks: they report over HTTP, not over the
socket. The daemon reconnects forever with makima's one retry policy (`core.retry`:
exponential backoff with full jitter, starting over after each welcome), and lists its
running tasks in the next hello so the operator lets it keep them.

The daemon token never reaches a task: the agent's environment is the daemon's minus
`MAKIMA_DAEMON_TOKEN`, `MAKIMA_DAEMON_TOKEN_FILE` (and any `MAKIMA_TASK_*` of the daemon's
own environment).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from pydantic import TypeAdapter, ValidationError

from makima.core.protocol import (
    CancelTask,
    DaemonHeartbeat,
    DaemonHello,
    DaemonToOperator,
    DaemonWelcome,
    OperatorToDaemon,
    Outcome,
    SpawnAck,
    SpawnTask,
    TaskResult,
    TaskSpec,
)
from makima.core.retry import backoff, nth_wait

log = logging.getLogger(__name__)

ENV_DAEMON_TOKEN = "MAKIMA_DAEMON_TOKEN"
ENV_DAEMON_TOKEN_FILE = "MAKIMA_DAEMON_TOKEN_FILE"  # a file holding the token instead (wins)
# Same as makima.control.api.DAEMON_CONNECT_PATH (a test checks); not imported, so a daemon never loads the server side.
DAEMON_CONNECT_PATH = "/v1/daemons/connect"
_HIDDEN_ENV_PREFIXES = ("MAKIMA_TASK_",)

_INBOUND: TypeAdapter[DaemonWelcome | SpawnTask | CancelTask] = TypeAdapter(OperatorToDaemon)
_OUTBOUND: TypeAdapter[DaemonHello | DaemonHeartbeat | SpawnAck] = TypeAdapter(DaemonToOperator)

# (spec, task token, workspace dir) -> result. The default posts events and the result itself.
TaskRunner = Callable[[TaskSpec, str, Path], Awaitable[None]]


class DaemonRefused(Exception):
    """The operator closed the socket with a refusal (bad token, bad hello)."""


class OperatorUnavailable(Exception):
    """The operator could not take the connection now (restarting, its store away): reconnect."""


# 1001 going away (operator shutting down), 1011 server error, 1012 restarting, 1013 try again later
TRANSIENT_CLOSE_CODES = frozenset({1001, 1011, 1012, 1013})


@dataclass
class DaemonConfig:
    api_url: str
    namespace: str
    name: str
    token: str
    labels: dict[str, str] = field(default_factory=dict)
    capacity: int = 1
    work_dir: Path = Path("makima-work")
    keep_workspaces: bool = False
    backoff_initial: float = 0.5
    backoff_max: float = 10.0  # well inside the operator's lost-after window (30 s by default)
    connect_timeout: float = 10.0

    def __repr__(self) -> str:  # never show the token
        return f"DaemonConfig(api_url={self.api_url!r}, namespace={self.namespace!r}, name={self.name!r})"

    @property
    def ws_url(self) -> str:
        base = self.api_url.rstrip("/")
        if base.startswith("https://"):
            base = "wss://" + base[len("https://") :]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://") :]
        return base + DAEMON_CONNECT_PATH


def task_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The daemon's environment as a task may see it: no daemon token, no stray task vars."""
    env = os.environ if env is None else env
    hidden = {ENV_DAEMON_TOKEN, ENV_DAEMON_TOKEN_FILE}
    return {k: v for k, v in env.items() if k not in hidden and not any(k.startswith(p) for p in _HIDDEN_ENV_PREFIXES)}


def api_runner(api_url: str, env: Mapping[str, str] | None = None) -> TaskRunner:
    """The same path as a Job pod: run_task with an API reporter, then post the result."""

    async def run(spec: TaskSpec, token: str, workdir: Path) -> None:
        from makima.dataplane.client import ApiError, TaskClient
        from makima.dataplane.runner.report import ApiReporter
        from makima.dataplane.runner.run import run_task

        async with TaskClient(api_url, spec.task_id, token) as client:
            client.cover(spec)  # reports are retried for as long as this attempt could still be valid
            try:
                async with ApiReporter(client) as reporter:
                    result = await run_task(
                        spec, reporter, workdir, api_url=api_url, task_token=token, env=task_env(env)
                    )
            except asyncio.CancelledError:
                raise  # cancelled by the operator: it already knows; nothing to report
            except Exception as exc:
                log.exception("task %s: runner error", spec.task_id)
                result = TaskResult(outcome=Outcome.FAILED, message=f"daemon runner error: {type(exc).__name__}")
            try:
                await client.post_result(result)
            except ApiError as exc:
                log.warning("task %s: result not accepted: %s", spec.task_id, exc)

    return run


def reconnect_delay(tries: int, initial: float, maximum: float) -> float:
    """The wait before the next connection after `tries` connections in a row (counted from the
    last welcome): makima's one retry policy (`core.retry`), exponential with full jitter."""
    return nth_wait(backoff(initial, maximum), tries)


class Daemon:
    """One daemon process. `await Daemon(config).run()` until `stop()`."""

    def __init__(self, config: DaemonConfig, runner: TaskRunner | None = None) -> None:
        self.config = config
        self.runner = runner or api_runner(config.api_url)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.daemon_id: str | None = None
        self.connected = asyncio.Event()
        self.connections = 0  # successful welcomes, for tests and logs
        self.attempts = 0  # connection attempts, refused or not
        self._stopping = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._closer: asyncio.Future[bool] | None = None

    @property
    def running(self) -> list[str]:
        return sorted(self.tasks)

    def stop(self) -> None:
        self._stopping.set()
        if self._ws is not None and not self._ws.closed:
            self._closer = asyncio.ensure_future(self._ws.close())

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff, forever (until `stop()`); then cancel running tasks."""
        tries = 0  # connections since the last welcome
        async with aiohttp.ClientSession() as session:
            try:
                while not self._stopping.is_set():
                    self.attempts += 1
                    try:
                        if await self._connect_once(session):
                            tries = 0
                    except DaemonRefused as exc:
                        log.error("operator refused this daemon: %s", exc)
                    except OperatorUnavailable as exc:
                        log.warning("the operator cannot take this daemon now: %s", exc)
                    except aiohttp.WSServerHandshakeError as exc:
                        log.warning("the operator at %s answered %s: %s", self.config.ws_url, exc.status, exc.message)
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        reason = str(exc) or type(exc).__name__
                        log.warning("cannot reach the operator at %s: %s", self.config.ws_url, reason)
                    except Exception:  # a bug or a garbled answer must not end a daemon meant to run forever
                        log.exception("connection to the operator failed unexpectedly")
                    if self._stopping.is_set():
                        break
                    tries += 1
                    delay = reconnect_delay(tries, self.config.backoff_initial, self.config.backoff_max)
                    log.info("reconnecting in %.1fs", delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
            finally:
                await self._cancel_all()

    async def _connect_once(self, session: aiohttp.ClientSession) -> bool:
        """One connection: hello, welcome, serve until closed. True if it got a welcome."""
        headers = {"Authorization": f"Bearer {self.config.token}"}
        timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0)
        async with session.ws_connect(
            self.config.ws_url,
            headers=headers,
            timeout=timeout,
            heartbeat=None,
            max_msg_size=8 * 1024 * 1024,
        ) as ws:
            self._ws = ws
            try:
                hello = DaemonHello(
                    name=self.config.name,
                    namespace=self.config.namespace,
                    labels=self.config.labels,
                    capacity=self.config.capacity,
                    running=self.running,
                )
                await self._send(hello)
                welcome = await self._welcome(ws)
                self.daemon_id = welcome.daemon_id
                self.connections += 1
                self.connected.set()
                log.info("connected to the operator as %s (%s/%s)", welcome.daemon_id, hello.namespace, hello.name)
                beats = asyncio.create_task(self._heartbeats(welcome.heartbeat_seconds))
                try:
                    await self._serve(ws)
                finally:
                    beats.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await beats
                return True
            finally:
                self.connected.clear()
                self._ws = None

    async def _welcome(self, ws: aiohttp.ClientWebSocketResponse) -> DaemonWelcome:
        msg = await ws.receive(timeout=self.config.connect_timeout)
        if msg.type is aiohttp.WSMsgType.TEXT:
            message = _INBOUND.validate_json(msg.data)
            if isinstance(message, DaemonWelcome):
                return message
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            code = ws.close_code if ws.close_code is not None else msg.data
            reason = msg.extra or code or "closed"
            if code in TRANSIENT_CLOSE_CODES:
                raise OperatorUnavailable(f"{reason} (close code {code})")
            raise DaemonRefused(f"{reason} (close code {code})")
        if msg.type is aiohttp.WSMsgType.ERROR:  # the connection broke (a restart, a cut): not a refusal
            raise OperatorUnavailable(f"the connection broke before the welcome: {ws.exception() or 'no detail'}")
        raise DaemonRefused(f"expected a welcome, got {msg.type.name}")

    async def _send(self, message: DaemonHello | DaemonHeartbeat | SpawnAck) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionResetError("not connected")
        async with self._send_lock:
            await ws.send_str(_OUTBOUND.dump_json(message, by_alias=True).decode())

    async def _heartbeats(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self._send(DaemonHeartbeat(running=self.running))
            except (ConnectionError, RuntimeError) as exc:
                log.warning("heartbeat not sent: %s", exc)
                return

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                if msg.type is aiohttp.WSMsgType.ERROR:
                    log.warning("socket error: %s", ws.exception())
                    return
                continue
            try:
                message = _INBOUND.validate_json(msg.data)
            except ValidationError as exc:
                log.warning("ignoring an invalid message from the operator (%d problem(s))", exc.error_count())
                continue
            if isinstance(message, SpawnTask):
                await self._spawn(message)
            elif isinstance(message, CancelTask):
                self._cancel(message.task_id)
        log.info("operator closed the socket (code %s)", ws.close_code)

    async def _spawn(self, message: SpawnTask) -> None:
        task_id = message.spec.task_id
        if task_id in self.tasks:
            await self._send(SpawnAck(task_id=task_id, accepted=True, reason="already running"))
            return
        if len(self.tasks) >= self.config.capacity:
            await self._send(SpawnAck(task_id=task_id, accepted=False, reason=f"at capacity ({self.config.capacity})"))
            return
        # Running before the ack goes out, so any later heartbeat lists it.
        self.tasks[task_id] = asyncio.create_task(self._run_task(message.spec, message.token), name=f"task-{task_id}")
        await self._send(SpawnAck(task_id=task_id, accepted=True))

    async def _run_task(self, spec: TaskSpec, token: str) -> None:
        workdir = self.config.work_dir / spec.task_id
        log.info("task %s (%s, attempt %d): started in %s", spec.task_id, spec.kind.value, spec.attempt, workdir)
        try:
            await self.runner(spec, token, workdir)
            log.info("task %s: finished", spec.task_id)
        except asyncio.CancelledError:
            log.info("task %s: cancelled", spec.task_id)
        except Exception:
            log.exception("task %s: runner failed", spec.task_id)
        finally:
            self.tasks.pop(spec.task_id, None)  # the slot is free at once (the operator may already reuse it)
            if not self.config.keep_workspaces:
                await asyncio.to_thread(shutil.rmtree, workdir, True)
            await self._beat_now()  # the slot is free: say so now, not at the next periodic beat

    async def _beat_now(self) -> None:
        if self._ws is None or self._ws.closed:
            return
        try:
            await self._send(DaemonHeartbeat(running=self.running))
        except (ConnectionError, RuntimeError) as exc:
            log.debug("heartbeat not sent: %s", exc)

    def _cancel(self, task_id: str) -> None:
        task = self.tasks.get(task_id)
        if task is None:
            return
        log.info("task %s: cancel requested by the operator", task_id)
        task.cancel()

    async def _cancel_all(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
