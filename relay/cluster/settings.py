"""The cluster's settings, built once by relay.cluster.cli (secrets already read, so a missing
file is a start-up error, not a surprise at the first connection)."""

from __future__ import annotations

from dataclasses import dataclass

from relay.cluster.handover_io import HandoverOptions
from relay.cluster.secrets import ClusterKey
from relay.cluster.tcp_forward_io import AnycastTcpOptions


@dataclass(frozen=True)
class RedisSettings:
    url: str
    prefix: str = "anytun"
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass(frozen=True)
class ClusterSettings:
    node: str | None = None                  # None: HOSTNAME-SENDERID
    redis: RedisSettings | None = None       # None: the memory backend (this node alone)
    cluster_key: ClusterKey | None = None
    anytun_listen: tuple[int, str | None] | None = None   # -S port, -I address
    anytun_peers: tuple[tuple[str, int], ...] = ()        # -M
    handover: HandoverOptions | None = None
    health_needs_sync: bool = False          # unhealthy while the backend is unreachable
    anycast_tcp: AnycastTcpOptions | None = None
