"""Relay mode's settings, as the command line reads them (relay.rtpproxy.cli) and the service
takes them (relay.rtpproxy.server); apart so that reading options loads no media engine."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ControlSpec:
    """Where the control protocol listens: kind "udp" / "udp6" (host, port) or "unix" (path)."""

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"{self.kind}:[{self.host}]:{self.port}" if ":" in self.host else \
            f"{self.kind}:{self.host}:{self.port}"


@dataclass
class RelayConfig:
    controls: list[ControlSpec]
    addresses: list[str]                   # first: internal (I), second: external (E)
    port_range: tuple[int, int] = (35000, 64998)
    timeout: float = 60.0
    latch: str = "ip"
    node: str = field(default_factory=socket.gethostname)
    socket_mode: int = 0o660
    socket_group: str | None = None
    ng_controls: list[ControlSpec] = field(default_factory=list)   # --listen-ng (udp, udp6)
    recording_dir: str | None = None
