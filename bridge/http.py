"""One small HTTP port: /metrics (Prometheus), /healthz (alive), /readyz (links up)."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.metrics import Health, Metrics

__all__ = ["start_http_server"]


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def route(path: str, metrics: Metrics, health: Health) -> bytes:
    """The full HTTP response for a GET of ``path``."""
    path = path.split("?", 1)[0]
    if path == "/metrics":
        return _response("200 OK", generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
    if path == "/healthz":
        return _response("200 OK", b"ok\n")
    if path == "/readyz":
        if health.ready:
            return _response("200 OK", b"ready\n")
        down = [name for name, up in (("mqtt", health.mqtt_connected), ("database", health.db_ok)) if not up]
        return _response("503 Service Unavailable", f"not ready: {', '.join(down)} down\n".encode())
    return _response("404 Not Found", b"try /metrics, /healthz or /readyz\n")


async def start_http_server(host: str, port: int, metrics: Metrics, health: Health) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            parts = request.split(b" ", 2)
            if len(parts) < 3 or parts[0] not in (b"GET", b"HEAD"):
                writer.write(_response("405 Method Not Allowed", b"GET only\n"))
            else:
                writer.write(route(parts[1].decode("latin-1"), metrics, health))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a scraper that hung up or sent garbage: nothing to answer
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
