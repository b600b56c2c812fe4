"""The cluster's defaults that its command line states in --help: apart from the modules that
use them, so that building the parser loads none of the cluster."""

from __future__ import annotations

SYNC_PORT = 2323                      # anytun's sync protocol (-S, -M)

HANDOVER_PORTS = (10240, 32767)       # below Linux's ephemeral ports (32768-60999)
HANDOVER_BLOCK = 1024
HANDOVER_VNI = 0x616E01
HANDOVER_UDP_PORT = 4789
HANDOVER_TABLE = 24942                # routing table and rule preference of the hop routes

ANYCAST_TCP_VNI = 0x617463
ANYCAST_TCP_UDP_PORT = 4789
ANYCAST_TCP_TIMEOUT = 1.0             # seconds without a beat before a node counts as dead
