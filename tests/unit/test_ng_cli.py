"""The ng options of anytun-relay (--listen-ng, --recording-dir) and the ng control socket of
a running service: retransmissions answered from the cache, both protocols on one table."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from relay.cli import build_parser
from relay.rtpproxy import bencode, cli
from relay.rtpproxy.server import ControlSpec, RtpproxyService
from relay.runtime.errors import ConfigError


def services(*argv: str) -> list:
    config = cli.settings_from_args(build_parser().parse_args(list(argv)))
    return [] if config is None else [RtpproxyService(config)]


def test_listen_ng_spellings(tmp_path: Path) -> None:
    (svc,) = services("--listen-ng", "127.0.0.1:2223", "--listen-ng", "[::1]:2223",
                      "--listen-ng", "2224", "--listen-ng", "localhost:2225",
                      "--rtp-address", "10.255.0.1", "--recording-dir", str(tmp_path))
    assert svc.config.ng_controls == [ControlSpec("udp", "127.0.0.1", 2223),
                                      ControlSpec("udp6", "::1", 2223),
                                      ControlSpec("udp", "0.0.0.0", 2224),
                                      ControlSpec("udp", "127.0.0.1", 2225)]
    assert svc.config.controls == [] and svc.config.recording_dir == str(tmp_path)
    (both,) = services("--listen-ng", "127.0.0.1:2223", "--rtpproxy", "udp:127.0.0.1:22222",
                       "--rtp-address", "10.255.0.1")
    assert len(both.config.controls) == 1 and len(both.config.ng_controls) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["--listen-ng", "127.0.0.1"], "expected [ADDR:]PORT"),
    (["--listen-ng", "127.0.0.1:99999"], "bad port"),
    (["--listen-ng", "no.such.host.invalid:2223"], "cannot resolve"),
    (["--listen-ng", "127.0.0.1:2223", "--listen-ng", "127.0.0.1:2223"], "given twice"),
    (["--listen-ng", "127.0.0.1:2223", "--rtpproxy", "udp:127.0.0.1:2223"], "given twice"),
    (["--listen-ng", "2223"], "needs --rtp-address"),
    (["--recording-dir", "/tmp"], "belongs to relay mode"),
    (["--listen-ng", "2223", "--rtp-address", "10.255.0.1", "--recording-dir",
      "/nonexistent/dir"], "no such directory"),
])
def test_mistakes(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        services(*argv)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ng_and_rtpproxy_served_together(tmp_path: Path) -> None:
    ng_port, rp_port = _free_port(), _free_port()
    (svc,) = services("--listen-ng", f"127.0.0.1:{ng_port}", "--rtpproxy",
                      f"udp:127.0.0.1:{rp_port}", "--rtp-address", "127.0.0.1",
                      "--rtp-ports", "41000-41099", "--recording-dir", str(tmp_path))
    sdp = ("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
           "m=audio 6000 RTP/AVP 0\r\n")

    async def main() -> None:
        await svc.start()
        loop = asyncio.get_running_loop()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.setblocking(False)

                async def ask(data: bytes, port: int = ng_port) -> bytes:
                    await loop.sock_sendto(c, data, ("127.0.0.1", port))
                    return await asyncio.wait_for(loop.sock_recv(c, 65535), 3)

                offer = b"k1 " + bencode.encode({"command": "offer", "call-id": "call1",
                                                 "from-tag": "ft", "sdp": sdp,
                                                 "record-call": "yes"})
                first = await ask(offer)
                assert first.startswith(b"k1 d") and b"m=audio 4100" in first
                assert await ask(offer) == first   # a retransmission: answered, not rerun
                assert svc.ng is not None and svc.ng.counts["offer"] == 1
                # the rtpproxy protocol sees the same call
                q = await ask(b"q1 Q call1 ft;1", rp_port)
                assert q.startswith(b"q1 ") and not q.startswith(b"q1 E")
                bad = await ask(b"k2 d7:command")
                assert b"error" in bad and b"Could not decode" in bad
                assert svc.status()["ng_errors"] == 1 and svc.status()["recordings_open"] == 1
        finally:
            await svc.stop()
        assert list(tmp_path.glob("call1-*.pcap"))
    asyncio.run(main())
