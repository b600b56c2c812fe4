"""UDP probes for the resolver: a connected socket to [AA]:port, so only datagrams from AA's
port reach us, and an ICMP port-unreachable from AA shows as ECONNREFUSED ("no responder")."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass

from aarp.errors import ProbeUnavailable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class UdpDatagram:
    source: IPAddress
    payload: bytes


@dataclass(frozen=True)
class UdpRefused:
    pass


class UdpProbe:
    method = "udp"

    def __init__(self, anycast: IPAddress, port: int) -> None:
        self.anycast = anycast
        family = socket.AF_INET6 if anycast.version == 6 else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        try:
            self.sock.connect((str(anycast), port))
        except OSError as exc:
            self.sock.close()
            raise ProbeUnavailable(str(anycast), f"cannot reach {anycast} over UDP: "
                                   f"{exc.strerror or exc}") from None

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, seq: int, payload: bytes) -> None:
        for _ in range(2):  # a refusal pending from the last attempt fails one send
            try:
                self.sock.send(payload)
                return
            except ConnectionRefusedError:
                continue
            except OSError:
                return

    def receive(self) -> list[UdpDatagram | UdpRefused]:
        out: list[UdpDatagram | UdpRefused] = []
        for _ in range(64):
            try:
                data, peer = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                out.append(UdpRefused())
                continue
            except OSError:
                break
            with contextlib.suppress(ValueError):
                out.append(UdpDatagram(ipaddress.ip_address(peer[0].split("%")[0]), data))
        return out

    def close(self) -> None:
        self.sock.close()
