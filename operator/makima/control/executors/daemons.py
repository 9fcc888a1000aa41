"""The daemon executor: the operator's side of the daemon WebSocket (`/v1/daemons/connect`).

A `makima daemon` connects with `Authorization: Bearer <namespace daemon token>` and sends
`DaemonHello` first; the hub checks the token for the hello's namespace, registers the
daemon in the store (id stable per namespace/name) and answers `DaemonWelcome`. From then
on the daemon sends `DaemonHeartbeat` (running task ids) every `heartbeat_seconds` and
`SpawnAck` for each `SpawnTask`; the hub sends `SpawnTask` and `CancelTask`.

Close codes the hub uses: 4400 bad first message, 4403 token refused, 4408 no hello in
time, 4409 replaced by a newer connection of the same daemon, 4410 silent for longer
than `lost_after_seconds`, 1001 operator shutting down or no longer the active replica,
1013 try again later (the operator's store did not answer the registration). A standby
replica refuses the upgrade itself with 503 + Retry-After (api/standby.py). The daemon
reconnects with backoff after 1001, 1013 and a 503.

A store that does not answer never costs a daemon its connection once it is registered:
a heartbeat whose write fails is logged and the socket stays open (the next one writes
again, and the store gives outage time back to running tasks).

Liveness: a daemon's heartbeat refreshes the store row and the `heartbeat_at` of the
tasks it reports running (only tasks the hub gave it, or that it listed in a hello and
the store confirms are its and active). A daemon that disconnects is released in the
store, but its tasks are not failed here: the controller expires them when their
heartbeat is older than its lost-after timeout. A daemon that reconnects in time lists
its running tasks in the hello and keeps them; the hub tells it to cancel any it lists
that are no longer active (lost, cancelled, finished) or not its own.

The controller's API: `available(namespace)`, `connected(namespace)`, `get(id)`,
`is_connected(id)`, `spawn(id, spec, token)`, `cancel(id, task_id)`, `drop(id)`, `close()`;
the task API calls `task_finished(id, task_id)` when a daemon task's result is accepted,
so its slot is free at once (not only after the daemon's next heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import WSMsgType, web
from pydantic import TypeAdapter, ValidationError

from makima.control import metrics
from makima.control.store import StoreError, TaskStore, hash_token
from makima.core.protocol import (
    CancelTask,
    DaemonHeartbeat,
    DaemonHello,
    DaemonToOperator,
    DaemonWelcome,
    OperatorToDaemon,
    SpawnAck,
    SpawnTask,
    TaskSpec,
)

log = logging.getLogger(__name__)

CLOSE_BAD_HELLO = 4400
CLOSE_FORBIDDEN = 4403
CLOSE_HELLO_TIMEOUT = 4408
CLOSE_REPLACED = 4409
CLOSE_LOST = 4410
CLOSE_SHUTDOWN = 1001
CLOSE_TRY_AGAIN = 1013  # the operator cannot reach its store right now; the daemon reconnects

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a SpawnTask carries a prompt; a hello or ack is tiny

_INBOUND: TypeAdapter[DaemonHello | DaemonHeartbeat | SpawnAck] = TypeAdapter(DaemonToOperator)
_OUTBOUND: TypeAdapter[DaemonWelcome | SpawnTask | CancelTask] = TypeAdapter(OperatorToDaemon)

VerifyDaemonToken = Callable[[str, str], Awaitable[bool]]


@dataclass
class DaemonSettings:
    """Timings; tests use ~1 s. Defaults match OperatorSettings.daemon_*."""

    heartbeat_seconds: float = 10.0
    lost_after_seconds: float = 30.0
    hello_timeout_seconds: float = 10.0
    spawn_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class DaemonView:
    """A connected daemon as the router sees it (a snapshot; `in_flight` are task ids)."""

    id: str
    namespace: str
    name: str
    labels: dict[str, str]
    capacity: int
    in_flight: frozenset[str]

    @property
    def free(self) -> int:
        return max(self.capacity - len(self.in_flight), 0)


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    id: str
    hello: DaemonHello
    running: set[str] = field(default_factory=set)  # as the daemon last reported, plus accepted spawns
    reserved: set[str] = field(default_factory=set)  # spawns awaiting their ack
    owned: set[str] = field(default_factory=set)  # tasks whose heartbeat this daemon may refresh
    finished: set[str] = field(default_factory=set)  # reported terminal; no longer counted as load
    acks: dict[str, asyncio.Future[SpawnAck]] = field(default_factory=dict)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def view(self) -> DaemonView:
        return DaemonView(
            id=self.id,
            namespace=self.hello.namespace,
            name=self.hello.name,
            labels=dict(self.hello.labels),
            capacity=self.hello.capacity,
            in_flight=frozenset(self.running | self.reserved),
        )

    async def send(self, message: DaemonWelcome | SpawnTask | CancelTask) -> None:
        async with self.send_lock:
            await self.ws.send_str(_OUTBOUND.dump_json(message, by_alias=True).decode())


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DaemonHub:
    """Live daemon connections of this operator process. One per process."""

    def __init__(
        self,
        store: TaskStore,
        settings: DaemonSettings | None = None,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.settings = settings or DaemonSettings()
        self.clock = clock
        self._conns: dict[str, _Connection] = {}
        self._closing = False
        self._background: set[asyncio.Task[bool]] = set()

    # ---- the controller's view ---------------------------------------------------------

    def connected(self, namespace: str | None = None) -> list[DaemonView]:
        """Every connected daemon (of `namespace`), by name."""
        views = [c.view() for c in self._conns.values() if namespace is None or c.hello.namespace == namespace]
        return sorted(views, key=lambda v: (v.namespace, v.name))

    def available(self, namespace: str) -> list[DaemonView]:
        """Connected daemons of `namespace` with free capacity, least loaded first.

        Label matching (`daemonSelector`) is the router's job: it sees `labels`.
        """
        views = [v for v in self.connected(namespace) if v.free > 0]
        return sorted(views, key=lambda v: (len(v.in_flight) / v.capacity, -v.free, v.name))

    def get(self, daemon_id: str) -> DaemonView | None:
        conn = self._conns.get(daemon_id)
        return conn.view() if conn else None

    def is_connected(self, daemon_id: str) -> bool:
        return daemon_id in self._conns

    async def spawn(self, daemon_id: str, spec: TaskSpec, token: str, timeout: float | None = None) -> bool:
        """Send `SpawnTask` and wait for the daemon's `SpawnAck`; True iff it accepted.

        False when the daemon is not connected, is full, refuses, or does not answer in
        time (then a `CancelTask` follows, so a late acceptance cannot run twice).
        """
        conn = self._conns.get(daemon_id)
        task_id = spec.task_id
        if conn is None or conn.ws.closed:
            return False
        if task_id in conn.running:
            return True  # already running there (a retried dispatch)
        if task_id in conn.reserved or len(conn.running | conn.reserved) >= conn.hello.capacity:
            return False
        future: asyncio.Future[SpawnAck] = asyncio.get_running_loop().create_future()
        conn.acks[task_id] = future
        conn.reserved.add(task_id)
        try:
            await conn.send(SpawnTask(spec=spec, token=token))
            ack = await asyncio.wait_for(future, timeout or self.settings.spawn_timeout_seconds)
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            log.warning(
                "daemon %s: spawn of task %s failed: %s",
                daemon_id,
                task_id,
                type(exc).__name__,
                extra={"task": task_id},
            )
            if isinstance(exc, TimeoutError):
                await self.cancel(daemon_id, task_id)
            return False
        finally:
            conn.acks.pop(task_id, None)
            conn.reserved.discard(task_id)
        if ack.accepted:
            conn.running.add(task_id)
            conn.owned.add(task_id)
            return True
        log.info(
            "daemon %s refused task %s: %s",
            daemon_id,
            task_id,
            ack.reason or "no reason given",
            extra={"task": task_id},
        )
        return False

    def task_finished(self, daemon_id: str | None, task_id: str) -> None:
        """A task of this daemon ended (its result was accepted): its slot is free now.

        Without this the slot stays taken until the daemon's next heartbeat, and a
        reconcile triggered by that very result would see the daemon full.
        """
        conn = self._conns.get(daemon_id) if daemon_id else None
        if conn is None:
            return
        conn.running.discard(task_id)
        conn.owned.discard(task_id)
        conn.finished.add(task_id)

    async def cancel(self, daemon_id: str, task_id: str) -> bool:
        """Ask the daemon to stop `task_id` (kill its agent); False if it is not connected."""
        conn = self._conns.get(daemon_id)
        if conn is None or conn.ws.closed:
            return False
        try:
            await conn.send(CancelTask(task_id=task_id))
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def drop(self, daemon_id: str, reason: str = "dropped by the operator") -> bool:
        """Close one daemon's connection (it will reconnect); False if it is not connected."""
        conn = self._conns.get(daemon_id)
        if conn is None:
            return False
        await conn.ws.close(code=CLOSE_SHUTDOWN, message=reason.encode()[:120])
        return True

    async def close(self, reason: str = "operator shutting down") -> None:
        """Close every connection (operator shutdown, or this replica no longer the active one);
        daemons reconnect, through the Service, to the active operator."""
        self._closing = True
        for conn in list(self._conns.values()):
            with contextlib.suppress(Exception):
                await conn.ws.close(code=CLOSE_SHUTDOWN, message=reason.encode()[:120])

    # ---- the socket ----------------------------------------------------------------------

    async def handle(self, request: web.Request, token: str, verify_token: VerifyDaemonToken) -> web.WebSocketResponse:
        """Serve one daemon connection until it closes. `token` is the bearer token of the upgrade."""
        if self._closing:
            raise web.HTTPServiceUnavailable(text="operator shutting down")
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, autoping=True)
        await ws.prepare(request)
        hello = await self._read_hello(ws)
        if hello is None:
            return ws
        if not await verify_token(hello.namespace, token):
            log.warning("daemon %s/%s: daemon token refused", hello.namespace, hello.name)
            await ws.close(code=CLOSE_FORBIDDEN, message=f"daemon token not valid for {hello.namespace}".encode())
            return ws
        try:
            daemon_id = await self.store.register_daemon(
                hello.namespace, hello.name, hello.labels, hello.capacity, hash_token(token), now=self.clock()
            )
        except StoreError as exc:
            log.warning("daemon %s/%s: not registered now (%s); it reconnects", hello.namespace, hello.name, exc)
            await ws.close(code=CLOSE_TRY_AGAIN, message=b"the operator's store is unavailable; try again")
            return ws
        conn = _Connection(ws=ws, id=daemon_id, hello=hello)
        previous = self._conns.get(daemon_id)
        self._conns[daemon_id] = conn
        if previous is not None:
            conn.running |= previous.running
            conn.owned |= previous.owned
            # In the background: a half-open old socket must not delay this one.
            closing = asyncio.create_task(previous.ws.close(code=CLOSE_REPLACED, message=b"replaced"))
            self._background.add(closing)
            closing.add_done_callback(self._background.discard)
        self._gauge()
        log.info("daemon %s/%s connected as %s (capacity %d)", hello.namespace, hello.name, daemon_id, hello.capacity)
        try:
            await conn.send(DaemonWelcome(daemon_id=daemon_id, heartbeat_seconds=self.settings.heartbeat_seconds))
            await self._adopt(conn, hello.running)
            await self._serve(conn)
        finally:
            for future in conn.acks.values():
                if not future.done():
                    future.set_exception(ConnectionError("daemon disconnected"))
            release: asyncio.Task[bool] | None = None
            if self._conns.get(daemon_id) is conn:
                del self._conns[daemon_id]
                log.info("daemon %s/%s (%s) disconnected", hello.namespace, hello.name, daemon_id)
                # aiohttp may cancel this handler when the peer goes away: release regardless.
                release = asyncio.create_task(self._release(daemon_id))
                self._background.add(release)
                release.add_done_callback(self._background.discard)
            self._gauge()
            if release is not None:
                await asyncio.shield(release)
            if not ws.closed:
                await ws.close()
        return ws

    async def _release(self, daemon_id: str) -> bool:
        try:
            await self.store.release_daemon(daemon_id)
        except StoreError as exc:
            log.warning("daemon %s: release failed: %s (it will look stale and be expired)", daemon_id, exc)
            return False
        return True

    async def _read_hello(self, ws: web.WebSocketResponse) -> DaemonHello | None:
        try:
            msg = await ws.receive(timeout=self.settings.hello_timeout_seconds)
        except TimeoutError:
            await ws.close(code=CLOSE_HELLO_TIMEOUT, message=b"no hello in time")
            return None
        if msg.type is not WSMsgType.TEXT:
            await ws.close(code=CLOSE_BAD_HELLO, message=b"expected a hello message")
            return None
        try:
            message = _INBOUND.validate_json(msg.data)
        except ValidationError as exc:
            reason = f"invalid hello: {exc.error_count()} problem(s)"
            await ws.close(code=CLOSE_BAD_HELLO, message=reason.encode())
            return None
        if not isinstance(message, DaemonHello):
            await ws.close(code=CLOSE_BAD_HELLO, message=b"the first message must be a hello")
            return None
        return message

    async def _adopt(self, conn: _Connection, running: list[str]) -> None:
        """A reconnecting daemon keeps the tasks it still runs, if they are still its and active."""
        for task_id in dict.fromkeys(running):
            try:
                task = await self.store.get_task(task_id)
            except StoreError as exc:
                # Cannot check now: keep it (its heartbeats are recorded once the store answers).
                log.warning(
                    "daemon %s: cannot check task %s (%s); keeping it", conn.id, task_id, exc, extra={"task": task_id}
                )
                conn.running.add(task_id)
                conn.owned.add(task_id)
                continue
            keep = (
                task is not None
                and task.state.active
                and task.namespace == conn.hello.namespace
                and task.executor_ref in (None, conn.id)
            )
            if keep:
                conn.running.add(task_id)
                conn.owned.add(task_id)
            else:
                log.info(
                    "daemon %s: task %s is no longer its to run; cancelling it",
                    conn.id,
                    task_id,
                    extra={"task": task_id},
                )
                await conn.send(CancelTask(task_id=task_id))

    async def _serve(self, conn: _Connection) -> None:
        while not conn.ws.closed:
            try:
                msg = await conn.ws.receive(timeout=self.settings.lost_after_seconds)
            except TimeoutError:
                log.warning("daemon %s: silent for %.0fs, closing", conn.id, self.settings.lost_after_seconds)
                await conn.ws.close(code=CLOSE_LOST, message=b"no heartbeat")
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if msg.type is not WSMsgType.TEXT:
                continue
            try:
                message = _INBOUND.validate_json(msg.data)
            except ValidationError as exc:
                log.warning("daemon %s: ignoring an invalid message (%d problem(s))", conn.id, exc.error_count())
                continue
            if isinstance(message, DaemonHeartbeat):
                try:
                    await self._heartbeat(conn, message)
                except StoreError as exc:  # the store's outage is not the daemon's fault: keep the socket
                    log.warning("daemon %s: heartbeat not recorded (%s)", conn.id, exc)
            elif isinstance(message, SpawnAck):
                future = conn.acks.get(message.task_id)
                if future is not None and not future.done():
                    future.set_result(message)
                elif message.accepted:
                    # An ack after its spawn timed out: the hub already sent a cancel.
                    log.info(
                        "daemon %s: late ack for task %s ignored",
                        conn.id,
                        message.task_id,
                        extra={"task": message.task_id},
                    )
            else:  # a second hello
                log.warning("daemon %s: ignoring a repeated hello", conn.id)

    async def _heartbeat(self, conn: _Connection, beat: DaemonHeartbeat) -> None:
        now = self.clock()
        reported = set(beat.running)
        # A beat sent before a result was accepted must not take the freed slot back.
        conn.finished &= reported
        conn.running = reported - conn.finished
        in_flight = len(conn.running | conn.reserved)
        if not await self.store.daemon_heartbeat(conn.id, in_flight, now):
            # Released meanwhile (e.g. marked stale by the controller) while the socket lived: re-register.
            hello = conn.hello
            await self.store.register_daemon(hello.namespace, hello.name, hello.labels, hello.capacity, None, now=now)
            await self.store.daemon_heartbeat(conn.id, in_flight, now)
        for task_id in conn.running & conn.owned:
            await self.store.heartbeat(task_id, now)
        conn.owned &= conn.running | conn.reserved

    def _gauge(self) -> None:
        metrics.DAEMONS_CONNECTED.set(len(self._conns))
