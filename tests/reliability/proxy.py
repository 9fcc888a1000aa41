"""A TCP proxy of the test suite's own, to cut a path between two parts like a network would.

`CutProxy(target_host, target_port).start()` listens on 127.0.0.1 (an ephemeral port) in a
thread with its own event loop and forwards every connection to the target. Then:

- `cut()`: a partition. Nothing is forwarded either way and nothing is refused or reset:
  bytes in flight wait, new connections are accepted and wait too (as SYNs would be
  retransmitted). The parts see silence, which is what bounded timeouts are for.
- `heal()`: forwarding resumes; connections that survived the cut carry on.
- `reset()`: every open connection is closed at once (a restarted peer, a NAT dropping state).
- `refuse()`: `reset()`, and every new connection is closed at once until `heal()` (the
  peer is down: what a client of a restarting operator sees). `refused` counts them.

Used by tests/reliability only; it listens on loopback and connects only to the target given.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any


class CutProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cuts = 0
        self.refused = 0
        self._refusing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._open: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # ---- control (any thread) -----------------------------------------------------------------

    def start(self) -> CutProxy:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._open = asyncio.Event()
            self._open.set()
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()
            loop.run_forever()
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=serve, name="cut-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def cut(self) -> None:
        assert self._loop is not None and self._open is not None
        self.cuts += 1
        self._loop.call_soon_threadsafe(self._open.clear)

    def heal(self) -> None:
        assert self._loop is not None and self._open is not None
        self._refusing = False
        self._loop.call_soon_threadsafe(self._open.set)

    def refuse(self) -> None:
        self._refusing = True
        self.reset()

    def reset(self) -> None:
        assert self._loop is not None

        def abort_all() -> None:
            for w in list(self._writers):
                w.transport.abort()

        self._loop.call_soon_threadsafe(abort_all)

    @property
    def is_cut(self) -> bool:
        return self._open is not None and not self._open.is_set()

    def __enter__(self) -> CutProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- forwarding (the proxy's loop) ---------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._open is not None
        if self._refusing:
            self.refused += 1
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            await self._open.wait()
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.transport.abort()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._open is not None
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await self._open.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self._open.wait()  # read just before a cut: held until it heals
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()
