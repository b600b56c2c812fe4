"""Re-create a TCP connection in this node's kernel with TCP_REPAIR, and close one silently.

Linux lets a process with CAP_NET_ADMIN build an established socket without a handshake:
in repair mode the sequence numbers, options, timestamp clock and windows are set directly
and connect() just moves the socket to ESTABLISHED. Leaving repair mode sends one window
probe, so the client answers at once. Python's socket module lacks the constants (linux/tcp.h).

Also here: re-injecting the held segments of the client into the local stack (a raw socket
sends them to the anycast address, which loops back), and closing a socket without a FIN or
RST (a socket in repair mode closes silently) when another node carries its connection on.
"""

from __future__ import annotations

import contextlib
import socket
import struct

from relay.cluster.tcp_owner import Plan, tcp_checksum

TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_TIMESTAMP = 24
TCP_REPAIR_WINDOW = 29
TCP_RECV_QUEUE = 1
TCP_SEND_QUEUE = 2
TCPOPT_MSS = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERM = 4
TCPOPT_TIMESTAMP = 8
REPAIR_ON, REPAIR_OFF = 1, 0


class TakeoverError(OSError):
    pass


def repair(plan: Plan, *, mark: int = 0) -> socket.socket:
    """An established socket for `plan.flow`, bound to the anycast address (even while a
    listener holds the port: repair mode forces the reuse)."""
    f = plan.flow
    af = socket.AF_INET6 if f.family == 6 else socket.AF_INET
    sock = socket.socket(af, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_TCP, TCP_REPAIR, REPAIR_ON)
        if mark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.bind((f.service, f.sport))
        sock.setsockopt(socket.SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        sock.setsockopt(socket.SOL_TCP, TCP_QUEUE_SEQ, _u32(plan.snd_nxt))
        sock.setsockopt(socket.SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        sock.setsockopt(socket.SOL_TCP, TCP_QUEUE_SEQ, _u32(plan.rcv_nxt))
        sock.setsockopt(socket.SOL_TCP, TCP_REPAIR_QUEUE, 0)
        sock.connect((f.client, f.cport))
        opts = [(TCPOPT_MSS, plan.mss)]
        if plan.wscale:
            opts.append((TCPOPT_WINDOW, plan.snd_wscale | plan.rcv_wscale << 16))
        if plan.sack:
            opts.append((TCPOPT_SACK_PERM, 0))
        if plan.ts:
            opts.append((TCPOPT_TIMESTAMP, 0))
        sock.setsockopt(socket.SOL_TCP, TCP_REPAIR_OPTIONS,
                        b"".join(struct.pack("=II", c, v) for c, v in opts))
        if plan.ts:
            # the lowest bit of the value asks for a microsecond clock (Linux 6.7+); the
            # connection's clock runs in milliseconds, as Linux's does by default
            sock.setsockopt(socket.SOL_TCP, TCP_TIMESTAMP, _u32(plan.tsval & ~1))
        # snd_wl1 = the client's seq: its next window update is taken
        sock.setsockopt(socket.SOL_TCP, TCP_REPAIR_WINDOW, struct.pack(
            "=IIIII", plan.rcv_nxt, plan.snd_wnd, max(plan.snd_wnd, 1), plan.rcv_wnd,
            plan.rcv_nxt))
    except OSError as exc:
        sock.close()
        raise TakeoverError(exc.errno, f"TCP_REPAIR of {f.key}: {exc.strerror}") from None
    return sock


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def release(sock: socket.socket) -> None:
    """Leave repair mode: the socket is live (and sends its window probe). Leaving repair
    mode also clears the socket's address reuse: set it again, or this socket (or its orphan,
    should the process die) would keep a restarted listener from binding the port."""
    sock.setsockopt(socket.SOL_TCP, TCP_REPAIR, REPAIR_OFF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)


def close_silently(sock: socket.socket) -> None:
    """Close without telling the client (another node carries the connection on)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_TCP, TCP_REPAIR, REPAIR_ON)
    sock.close()


class Reinjector:
    """Hands held segments back to the local stack: raw IP sockets send them (with the client
    as source) to the anycast address, which the kernel routes through loopback. The same
    sockets send probes to clients (packets with the anycast address as source)."""

    def __init__(self) -> None:
        self._socks: dict[int, socket.socket] = {}

    def send(self, packet: bytes) -> bool:
        family = packet[0] >> 4
        try:
            sock = self._socks.get(family)
            if sock is None:
                if family == 4:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
                else:
                    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
                    sock.setsockopt(socket.IPPROTO_IPV6, 36, 1)   # IPV6_HDRINCL
                sock.setblocking(False)
                self._socks[family] = sock
            pkt = tcp_checksum(packet)
            af = socket.AF_INET if family == 4 else socket.AF_INET6
            dst = socket.inet_ntop(af, pkt[16:20] if family == 4 else pkt[24:40])
            sock.sendto(pkt, (dst, 0))
        except (OSError, IndexError, ValueError):
            return False
        return True

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()
