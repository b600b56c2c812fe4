"""anytun-relay: SATP tunnel endpoint, anycast tunnel server, rtpproxy media relay, cluster sync."""

__version__ = "0.1.0"
