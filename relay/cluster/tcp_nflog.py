"""Packets logged by netfilter (nftables `log group N`) read from nfnetlink_log.

A small netlink client of our own (no library): bind one log group of this network namespace,
ask for packet copies, and parse the messages into (prefix, packet) pairs. `parse()` is pure;
`NflogSocket` is the thin IO part. Only the attributes we use are read: the prefix the rule
set, and the packet from its network header on.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_NLBUFSIZ = 3
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
NLM_F_ACK = 4
_NLMSG = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")     # family, version, res_id (big-endian group)


class NflogError(OSError):
    pass


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def config_message(group: int, seq: int, *, cmd: int | None = None,
                   copy_range: int | None = None, timeout: int | None = None,
                   qthresh: int | None = None, bufsize: int | None = None) -> bytes:
    attrs = b""
    if cmd is not None:
        attrs += _attr(NFULA_CFG_CMD, struct.pack("B", cmd))
    if copy_range is not None:
        attrs += _attr(NFULA_CFG_MODE, struct.pack("!IBx", copy_range, NFULNL_COPY_PACKET))
    if bufsize is not None:
        attrs += _attr(NFULA_CFG_NLBUFSIZ, struct.pack("!I", bufsize))
    if timeout is not None:
        attrs += _attr(NFULA_CFG_TIMEOUT, struct.pack("!I", timeout))
    if qthresh is not None:
        attrs += _attr(NFULA_CFG_QTHRESH, struct.pack("!I", qthresh))
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(group)) + attrs
    return _NLMSG.pack(_NLMSG.size + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                       NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def parse(buf: bytes) -> Iterator[tuple[str, bytes] | int]:
    """Messages in one netlink datagram: (prefix, packet) for logged packets, an errno (0 for
    an acknowledgement) for replies to our requests. Malformed parts end the datagram."""
    pos = 0
    while pos + _NLMSG.size <= len(buf):
        length, mtype, _flags, _seq, _pid = _NLMSG.unpack_from(buf, pos)
        if length < _NLMSG.size or pos + length > len(buf):
            return
        body = buf[pos + _NLMSG.size:pos + length]
        pos += (length + 3) & ~3
        if mtype == NLMSG_ERROR and len(body) >= 4:
            yield -struct.unpack_from("=i", body)[0]
            continue
        if mtype != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET or len(body) < _NFGEN.size:
            continue
        prefix, packet = "", None
        apos = _NFGEN.size
        while apos + 4 <= len(body):
            alen, akind = struct.unpack_from("=HH", body, apos)
            if alen < 4 or apos + alen > len(body):
                break
            value = body[apos + 4:apos + alen]
            kind = akind & 0x3FFF
            if kind == NFULA_PAYLOAD:
                packet = bytes(value)
            elif kind == NFULA_PREFIX:
                prefix = value.split(b"\0", 1)[0].decode(errors="replace")
            apos += (alen + 3) & ~3
        if packet is not None:
            yield prefix, packet


class NflogSocket:
    """One bound log group; non-blocking reads of what netfilter logged to it."""

    def __init__(self, group: int, copy_range: int = 0xFFFF) -> None:
        if not 0 <= group <= 0xFFFF:
            raise ValueError(f"log group {group}: 0-65535")
        self.group = group
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.overruns = 0
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.sock.bind((0, 0))
            self._request(cmd=NFULNL_CFG_CMD_BIND)
            # every packet at once (queue threshold 1), copied up to copy_range bytes
            self._request(copy_range=copy_range, qthresh=1, timeout=1, bufsize=1 << 16)
        except OSError as exc:
            self.sock.close()
            if exc.errno == errno.EBUSY:
                raise NflogError(exc.errno, f"log group {group} is used by another program "
                                 "in this network namespace") from None
            raise
        self.sock.setblocking(False)

    def _request(self, **kw) -> None:
        self.sock.send(config_message(self.group, 1, **kw))
        for _ in range(64):     # packets logged meanwhile may come before the answer
            for item in parse(self.sock.recv(1 << 17)):
                if isinstance(item, int):
                    if item:
                        raise OSError(item, "nfnetlink_log: "
                                      f"{errno.errorcode.get(item, item)}")
                    return

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, limit: int = 256) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        for _ in range(limit):
            try:
                buf = self.sock.recv(1 << 17)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:   # the kernel dropped some: count, go on
                    self.overruns += 1
                    continue
                raise
            out.extend(i for i in parse(buf) if not isinstance(i, int))
        return out

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(0.5)
            self._request(cmd=NFULNL_CFG_CMD_UNBIND)
        except OSError:
            pass
        self.sock.close()
