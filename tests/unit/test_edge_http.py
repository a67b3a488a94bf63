"""The HTTP layer answers every error in JSON (issue 12, finding 3): an unexpected exception
in a route is a JSON 500 with a log line, and a request aiohttp cannot parse is a JSON 400."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from hpod.daemon.http import _errors, make_runner


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """An app with hpod's error middleware, served by hpod's runner; a route that raises."""

    async def boom(request: web.Request) -> web.Response:
        raise KeyError("a bug, not an input")

    app = web.Application(middlewares=[_errors])
    app.router.add_get("/boom", boom)
    runner = make_runner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"127.0.0.1:{port}"
    await runner.cleanup()


async def test_an_unexpected_exception_is_a_json_500(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A route that raises answers 500 JSON (code `internal`) and logs the traceback."""
    async with aiohttp.ClientSession() as session, session.get(f"http://{server}/boom") as resp:
        assert resp.status == 500
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["ok"] is False and body["error"]["code"] == "internal"
    assert "a bug" not in body["error"]["message"]  # no internals in the reply
    assert "http.internal_error" in capsys.readouterr().out


async def test_a_request_aiohttp_cannot_parse_is_json(server: str) -> None:
    """A bad method and an over-long header line never reach a route: still JSON errors."""
    host, port = server.split(":")
    for raw, code in [
        (b"GARBAGE / HTTP/1.1\r\n\r\n", "invalid"),
        (b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", "too_large"),
    ]:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        await writer.drain()
        response = await reader.read()
        writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0], head
        assert b"application/json" in head, head
        assert json.loads(body)["error"]["code"] == code
