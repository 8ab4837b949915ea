"""A TCP proxy for outage and latency tests: point a client (e.g. the bridge's
database DSN) at the proxy, then cut and restore the link while the client keeps
running, or give every byte a one-way delay (a database in another zone: no
netem on these machines).

``cut()`` stops listening (new connections are refused) and aborts every open
connection in both directions, which is what a client sees when the server dies
or the network drops; ``restore()`` listens again on the same port::

    async with TcpProxy("127.0.0.1", 5432) as proxy:
        env = {"FLEET_BRIDGE_DB_DSN": through_proxy(pg_dsn, proxy)}
        ...
        await proxy.cut()       # database "down"
        ...
        await proxy.restore()   # database back

It runs on the test's event loop: while it must forward, the test waits with
``await`` (``asyncio.sleep``, ``asyncio.to_thread``), never with blocking calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy", "through_proxy"]

CHUNK = 65536


class TcpProxy:
    """Forwards connections accepted on ``host:port`` (a free port by default) to the target."""

    def __init__(
        self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0, delay_s: float = 0.0
    ) -> None:
        """``delay_s``: each direction delivers what it reads this much later (a
        latency, not a bandwidth limit: reading goes on meanwhile)."""
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._links: dict[asyncio.Task[None], list[asyncio.StreamWriter]] = {}

    async def start(self) -> None:
        """Listen (again); the first start fixes the port, later ones reuse it."""
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and abort the open ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writers in self._links.values():
            for writer in writers:
                writer.transport.abort()  # an outage does not say goodbye
        await asyncio.gather(*self._links, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    restore = start

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.cut()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        writers = self._links[task] = [client_writer]
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            writers.append(upstream_writer)
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(_pump(client_reader, upstream_writer, self.delay_s))
                pumps.create_task(_pump(upstream_reader, client_writer, self.delay_s))
        except* OSError:
            pass  # the target refused, a side hung up or cut() aborted the link
        finally:
            del self._links[task]
            for writer in writers:
                writer.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy one direction until EOF, then half-close the other side; with a delay,
    each chunk is written ``delay_s`` after it was read, in order."""
    if not delay_s:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    else:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await chunks.get()
                if not data:
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()

        delivering = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(CHUNK):
                chunks.put_nowait((loop.time() + delay_s, data))
            chunks.put_nowait((loop.time() + delay_s, b""))
            await delivering
        finally:
            delivering.cancel()
    with contextlib.suppress(OSError, RuntimeError):  # uvloop: RuntimeError on a closed transport
        writer.write_eof()


def through_proxy(dsn: str, proxy: TcpProxy) -> str:
    """``dsn`` (a URL such as ``postgresql://user@host:5432/db``) with host and port
    replaced by the proxy's."""
    parts = urlsplit(dsn)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{proxy.host}:{proxy.port}" if credentials else f"{proxy.host}:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))
