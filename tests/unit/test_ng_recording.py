"""Call recording: the pcap files (read back by tcpdump), the recorder following the session
table, and both media engines copying a recording call's packets, both directions."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from relay import fastpath
from relay.rtpproxy import recording
from relay.rtpproxy.fastmedia import FastMediaEngine
from relay.rtpproxy.media import MediaEngine
from relay.rtpproxy.recording import Recordings
from relay.rtpproxy.sessions import Change, Party, Session, SessionTable
from tests.conftest import require
from tests.media_kit import CALLEE, CALLER, Engine, Node, Peer, setup_call


@pytest.fixture(params=["py", "c"])
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "c":
        require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")
        return FastMediaEngine
    return MediaEngine


def tcpdump(path: Path) -> list[str]:
    require(shutil.which("tcpdump") is not None, "tcpdump")
    out = subprocess.run(["tcpdump", "-nn", "-vv", "-r", str(path)], capture_output=True,
                         text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return [line.strip() for line in out.stdout.splitlines()]


def test_pcap_file_of_ipv4_and_ipv6_packets_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(recording.file_header()
                     + recording.record(1.5, recording.datagram(("10.1.1.2", 6000),
                                                                ("10.255.0.1", 30000), b"abc"))
                     + recording.record(2.25, recording.datagram(("fd00::2", 41001),
                                                                 ("fd00::1", 30003),
                                                                 b"\x80" * 172)))
    lines = tcpdump(path)
    text = "\n".join(lines)
    assert "10.1.1.2.6000 > 10.255.0.1.30000: [udp sum ok] UDP, length 3" in text
    assert "fd00::2.41001 > fd00::1.30003: [udp sum ok] UDP, length 172" in text
    assert "bad" not in text


def test_file_names_are_safe() -> None:
    assert recording.file_name("../../etc/passwd", 0) == "_.._etc_passwd-19700101T000000Z.pcap"
    assert recording.file_name("a b@c", 0).startswith("a_b@c-")
    assert recording.file_name("...", 0).startswith("call-")


def _session(call: str, media: int = 1) -> Session:
    return Session(call, media, Party(tag="a", local="10.255.0.1", port=30000),
                   Party(tag="b", local="10.255.0.1", port=30002))


def test_recorder_follows_the_table(tmp_path: Path) -> None:
    table = SessionTable(node="n1")
    rec = Recordings(table, tmp_path, wall=lambda: 0.0)
    s1, s2 = _session("c1", 1), _session("c1", 2)
    table.add(s1, 0.0)
    table.add(s2, 0.0)
    assert rec.path("c1") is None
    s1.recording = True
    table.changed(s1, "record")
    path = rec.path("c1")
    assert path is not None and path.parent == tmp_path
    rec.packet("c1", ("10.1.1.2", 6000), ("10.255.0.1", 30000), b"x", 1.0)
    rec.packet("other", ("10.1.1.2", 6000), ("10.255.0.1", 30000), b"y", 1.0)  # not recording
    table.remove(s1)          # another stream of the call still exists but does not record
    assert rec.path("c1") is None
    assert len(tcpdump(path)) == 2  # one packet: header line + payload line with -vv
    # a recording session learned from a peer node opens a file here too
    remote = _session("c2")
    remote.recording, remote.version, remote.node = True, 3, "n2"
    table.apply_remote(Change("create", remote, "remote"))
    assert rec.path("c2") is not None
    table.clear("shutdown")
    assert rec.path("c2") is None and rec.status()["recordings_total"] == 2


def test_unwritable_directory_is_logged_not_fatal(tmp_path: Path) -> None:
    table = SessionTable(node="n1")
    rec = Recordings(table, tmp_path / "missing")
    s = _session("c1")
    s.recording = True
    table.add(s, 0.0)
    assert rec.path("c1") is None
    rec.packet("c1", ("10.1.1.2", 1), ("10.1.1.3", 2), b"z")


def test_engines_record_both_directions(engine: Engine, tmp_path: Path) -> None:
    async def main() -> None:
        node = Node(engine)
        rec = Recordings(node.table, tmp_path)
        node.engine.recorder = rec.packet
        a, b = Peer(CALLER), Peer(CALLEE)
        try:
            to_b, to_a = setup_call(node, a, b)
            s = node.session()
            a.send(to_a, 3, b"before")  # not recorded: recording starts below
            await b.recv(3)
            s.recording = True
            node.table.changed(s, "record")
            a.send(to_a, 5, b"a2b")
            await b.recv(5)
            b.send(to_b, 4, b"b2a")
            await a.recv(4)
            s.recording = False
            node.table.changed(s, "unrecord")
            a.send(to_a, 2, b"after")
            await b.recv(2)
            if isinstance(node.engine, FastMediaEngine):
                node.engine._drain_records()
            path = sorted(tmp_path.glob("call-*.pcap"))
            assert len(path) == 1
            rec.flush()
            lines = [x for x in tcpdump(path[0]) if " > " in x]
            assert len([x for x in lines if f"{a.addr[0]}.{a.addr[1]} > " in x]) == 5
            assert len([x for x in lines if f"{b.addr[0]}.{b.addr[1]} > " in x]) == 4
            assert all("udp sum ok" in x for x in lines)
            assert any(f"> {to_a[0]}.{to_a[1]}:" in x for x in lines)
        finally:
            a.close()
            b.close()
            rec.close()
            node.close()
    asyncio.run(main())


def test_calls_that_do_not_record_copy_nothing(engine: Engine, tmp_path: Path) -> None:
    async def main() -> None:
        node = Node(engine)
        rec = Recordings(node.table, tmp_path)
        node.engine.recorder = rec.packet
        a, b = Peer(CALLER), Peer(CALLEE)
        try:
            _, to_a = setup_call(node, a, b)
            a.send(to_a, 20)
            await b.recv(20)
            if isinstance(node.engine, FastMediaEngine):
                node.engine._drain_records()
            assert rec.written == 0 and not list(tmp_path.iterdir())
        finally:
            a.close()
            b.close()
            rec.close()
            node.close()
    asyncio.run(main())
