"""A stand-in for a Kubernetes Service in front of several operator replicas (a test double).

`ReadyService(ports)` listens on 127.0.0.1 (an ephemeral port), in a thread with its own
event loop, and probes each backend's `/readyz` every `probe_seconds`, as kubelet does. A
new connection goes to a backend whose last probe answered 200 (the Service's endpoints
follow readiness); with none ready it is closed at once, as a Service without endpoints
refuses. Connections already open stay with their backend until either side closes them,
as kube-proxy leaves established connections alone.

`pin(port)` routes every new connection to that backend whatever its readiness: the window
in which endpoints have not caught up yet. `pin(None)` goes back to readiness.
`connections[port]` counts the connections each backend was given.

Used by tests/reliability only; it listens on loopback and connects only to the backends given.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from typing import Any

import aiohttp


class ReadyService:
    def __init__(self, ports: list[int], probe_seconds: float = 0.25) -> None:
        self.backends = list(ports)
        self.probe_seconds = probe_seconds
        self.port = 0
        self.ready: set[int] = set()
        self.connections: Counter[int] = Counter()
        self._pinned: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pin(self, port: int | None) -> None:
        self._pinned = port

    def start(self) -> ReadyService:
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = int(server.sockets[0].getsockname()[1])
            prober = loop.create_task(self._probe())
            started.set()
            loop.run_forever()
            prober.cancel()
            server.close()
            for w in list(self._writers):
                w.transport.abort()
            loop.run_until_complete(asyncio.gather(prober, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=serve, name="ready-service", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the service stand-in did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> ReadyService:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _probe(self) -> None:
        timeout = aiohttp.ClientTimeout(total=3)  # the chart's readiness probe timeout
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                ready = set()
                for port in self.backends:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                        async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                            if resp.status == 200:
                                ready.add(port)
                self.ready = ready
                await asyncio.sleep(self.probe_seconds)

    def _choose(self) -> int | None:
        if self._pinned is not None:
            return self._pinned
        ready = sorted(self.ready)
        return ready[0] if ready else None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self._choose()
        if port is None:
            writer.transport.abort()  # no endpoints
            return
        self._writers.add(writer)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return
            self.connections[port] += 1
            self._writers.add(up_writer)
            try:
                await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.transport.abort()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()
