"""The operations HTTP listener against real sockets: routes, HEAD, and bad requests get a
clear 4xx and never take the listener down."""

from __future__ import annotations

import asyncio

import pytest

from aarp.ops.http import ListenError, OpsHttpServer, Reply, parse_listen


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return out


def test_routes_and_bad_requests() -> None:
    async def main() -> None:
        http = OpsHttpServer("127.0.0.1", 0)

        async def ok() -> Reply:
            return Reply.json(200, {"healthy": True})

        async def broken() -> Reply:
            raise RuntimeError("boom")

        http.route("/health", ok)
        http.route("/broken", broken)
        await http.start()
        try:
            p = http.port
            got = await _raw(p, b"GET /health?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b'{"healthy": true}\n')
            head = await _raw(p, b"HEAD /health HTTP/1.0\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
            cases = [(b"POST /health HTTP/1.1\r\n\r\n", b"405"),
                     (b"GET /nope HTTP/1.1\r\n\r\n", b"404"),
                     (b"garbage\r\n\r\n", b"400"),
                     (b"GET / SPDY/3\r\n\r\n", b"400"),
                     (b"GET /health HTTP/1.1\r\n" + b"X: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
                     (b"GET /broken HTTP/1.1\r\n\r\n", b"500"),
                     (b"GET /hea", b"400")]
            for request, code in cases:
                reader, writer = await asyncio.open_connection("127.0.0.1", p)
                writer.write(request)
                if not request.endswith(b"\r\n\r\n"):
                    writer.write_eof()
                out = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                assert out.split(b" ")[1] == code, (request[:40], out[:80])
            # still serving after all that
            assert (await _raw(p, b"GET /health HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert http.status()["errors"] == len(cases)
        finally:
            await http.stop()

    asyncio.run(main())


def test_port_in_use_is_one_line() -> None:
    async def main() -> None:
        a = OpsHttpServer("127.0.0.1", 0)
        await a.start()
        try:
            b = OpsHttpServer("127.0.0.1", a.port)
            with pytest.raises(ListenError, match="cannot listen on HTTP"):
                await b.start()
        finally:
            await a.stop()

    asyncio.run(main())


@pytest.mark.parametrize(("text", "want"), [("127.0.0.1:9180", ("127.0.0.1", 9180)),
                                            ("[::1]:80", ("::1", 80)), (":9180", ("::", 9180))])
def test_parse_listen(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["9180", "host:80", "1.2.3.4:0", "1.2.3.4:99999", "[::1]:x"])
def test_parse_listen_errors(text: str) -> None:
    with pytest.raises(ListenError):
        parse_listen(text)
