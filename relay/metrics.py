"""A node's status (what `anytun-relay status --json` shows) as Prometheus families, for
GET /metrics. Read from the status of each service, so the two never disagree:

    tunnel     packets, bytes and drops per client (mux) and reason; data-plane drops;
               streams the stream transports refused, evicted or timed out
    control    status socket connections evicted or refused
    rtpproxy   sessions, port pairs in use and of the range, commands, packets
    cluster    records, backend state, resyncs, sync lag, failovers; handover hand-offs
    aarp       the embedded responder's answers and refusals
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aarp.metrics import responder_metrics
from aarp.ops.exposition import Metrics
from relay import __version__

NS = "anytun_relay"


def _tunnel(m: Metrics, st: Mapping[str, Any]) -> None:
    dev = (st.get("device") or {}).get("name") or ""
    conns = st.get("connections", [])
    base = {"device": dev}
    m.gauge("tunnel_connections", "Connections (clients) configured or learned",
            [(base, len(conns))])
    m.gauge("tunnel_client_registered", "1 when the client's address is known",
            [({**base, "mux": c["mux"]}, 1 if c.get("remote") else 0) for c in conns])
    m.counter("tunnel_packets_total", "Packets per client and direction",
              [({**base, "mux": c["mux"], "direction": d}, c.get(f"{d}_packets", 0))
               for c in conns for d in ("rx", "tx")])
    m.counter("tunnel_bytes_total", "Bytes per client and direction",
              [({**base, "mux": c["mux"], "direction": d}, c.get(f"{d}_bytes", 0))
               for c in conns for d in ("rx", "tx")])
    m.counter("tunnel_drops_total", "Packets of a client dropped, per reason",
              [({**base, "mux": c["mux"], "reason": r}, n)
               for c in conns for r, n in sorted(c.get("drops", {}).items())])
    dp = st.get("dataplane", {})
    m.counter("tunnel_dataplane_packets_total", "Packets through the data plane",
              [({**base, "what": k}, dp.get(k, 0)) for k in ("rx", "tx", "relayed")])
    m.counter("tunnel_dataplane_drops_total", "Packets dropped before a client was known, "
              "per reason", [({**base, "reason": r}, n)
                             for r, n in sorted(dp.get("drops", {}).items())])
    m.gauge("tunnel_routes", "Routes in the route table", [(base, len(st.get("routes", [])))])
    for t in st.get("transports", []):
        labels = {**base, "transport": t.get("kind", "?")}
        m.counter("transport_datagrams_total", "Datagrams per transport and direction",
                  [({**labels, "direction": "rx"}, t.get("received", 0)),
                   ({**labels, "direction": "tx"}, t.get("sent", 0))])
        m.counter("transport_send_errors_total", "Datagrams the kernel refused to send",
                  [(labels, t.get("send_errors", 0))])
        if "max_streams" in t:  # stream transports: what their bounds turned away or closed
            m.gauge("transport_max_streams", "Streams the transport holds at most",
                    [(labels, t["max_streams"])])
            m.counter("transport_streams_ended_total", "Streams refused, evicted (unproven, "
                      "to make room) or timed out", [({**labels, "reason": r}, t.get(r, 0))
                                                     for r in ("refused", "evicted",
                                                               "timed_out")])


def _relay(m: Metrics, st: Mapping[str, Any]) -> None:
    m.gauge("rtp_sessions", "Relay sessions (media streams) open", [({}, st.get("sessions", 0))])
    m.counter("rtp_sessions_created_total", "Relay sessions created",
              [({}, st.get("sessions_created", 0))])
    m.gauge("rtp_port_pairs_in_use", "Relay port pairs in use",
            [({}, st.get("port_pairs_in_use", 0))])
    m.gauge("rtp_port_pairs", "Relay port pairs of the range", [({}, st.get("port_pairs", 0))])
    m.counter("rtp_commands_total", "rtpproxy commands received", [({}, st.get("commands", 0))])
    m.counter("rtp_command_errors_total", "rtpproxy commands answered with an error",
              [({}, st.get("command_errors", 0))])
    m.counter("rtp_packets_total", "Media packets received, relayed and dropped",
              [({"what": k}, st.get(k, 0)) for k in ("received", "relayed", "dropped")])
    m.counter("rtp_control_connections_ended_total", "Unix control connections evicted by a "
              "newer one or silent too long", [({"reason": r}, st.get(f"control_{r}", 0))
                                               for r in ("evicted", "timed_out")])


def _control(m: Metrics, st: Mapping[str, Any]) -> None:
    m.counter("control_connections_ended_total", "Status socket connections evicted by a "
              "newer one, or refused (line too long, nothing in time)",
              [({"reason": r}, st.get(r, 0)) for r in ("evicted", "refused")])


def _cluster(m: Metrics, st: Mapping[str, Any]) -> None:
    b = st.get("backend", {})
    labels = {"node": st.get("node", ""), "backend": b.get("backend", "")}
    m.gauge("cluster_records", "Records in this node's copy of the shared state",
            [(labels, st.get("records", 0))])
    m.gauge("cluster_backend_connected", "1 while the backend (Redis) is reachable",
            [(labels, 1 if b.get("connected") else 0)])
    m.counter("cluster_records_applied_total", "Records of other nodes applied here",
              [(labels, st.get("applied", 0))])
    for key, text in (("resyncs", "Full resynchronisations with the backend"),
                      ("written", "Records written to the backend"),
                      ("received", "Records received from the backend"),
                      ("rejected", "Records the backend refused or that did not validate")):
        if key in b:
            m.counter(f"cluster_{key}_total", text, [(labels, b[key])])
    lag = st.get("sync_lag_ms")
    if lag is not None:
        m.gauge("cluster_sync_lag_seconds", "Age of the last record of another node when it "
                "arrived (replication delay plus clock skew)", [(labels, lag / 1000)])
    m.gauge("cluster_sync_lag_max_seconds", "Largest sync lag seen",
            [(labels, st.get("sync_lag_max_ms", 0) / 1000)])
    f = st.get("failovers", {})
    m.counter("cluster_failovers_total", "Clients that moved to this node from another (in) "
              "or away from it (out)", [({**labels, "direction": d}, f.get(d, 0))
                                        for d in ("in", "out")])
    m.gauge("cluster_learned_connections", "Connections learned from the cluster",
            [(labels, len(st.get("learned_connections", [])))])


def _handover(m: Metrics, st: Mapping[str, Any]) -> None:
    m.gauge("handover_members", "Other nodes flows are handed to", [({}, len(st.get("peers", [])))])
    m.gauge("handover_problems", "Problems with other members", [({}, len(st.get("problems", [])))])
    for key in ("handed_out", "handed_in"):
        v = st.get(key)
        if v:
            m.counter(f"handover_{key}_packets_total", f"Packets {key.replace('_', ' ')}",
                      [({}, v.get("packets", 0))])
            m.counter(f"handover_{key}_bytes_total", f"Bytes {key.replace('_', ' ')}",
                      [({}, v.get("bytes", 0))])


def render(status: Mapping[str, Any]) -> bytes:
    m = Metrics(NS)
    m.gauge("info", "The running anytun-relay", [({"version": __version__}, 1)])
    for name, st in status.items():
        if not isinstance(st, dict):
            continue
        if "connections" in st and "dataplane" in st:
            _tunnel(m, st)
        elif name == "rtpproxy":
            _relay(m, st)
        elif name == "cluster":
            _cluster(m, st)
        elif name == "handover":
            _handover(m, st)
        elif name == "control":
            _control(m, st)
        elif "counters" in st and "anycast" in st:
            responder_metrics(m, st, prefix="aarp_")
    return m.render()
