"""The responder's counters as Prometheus families (aarp-responder's /metrics, and the
responder embedded in an anytun-relay node)."""

from __future__ import annotations

from collections.abc import Mapping

from aarp.ops.exposition import Metrics

REFUSALS = "ignored_"


def responder_metrics(m: Metrics, status: Mapping, labels: Mapping[str, str] | None = None,
                      prefix: str = "aarp_responder_") -> None:
    """Answers, refusals per reason, rate-limited queries, bytes (status() of
    aarp.responder_service.ResponderService)."""
    base = dict(labels or {})
    c = status.get("counters", {})
    m.gauge(f"{prefix}up", "1 while the responder's sockets are open",
            [(base, 1 if status.get("running") else 0)])
    m.counter(f"{prefix}queries_total", "AARP queries received", [(base, c.get("received", 0))])
    m.counter(f"{prefix}answers_total", "AARP answers sent", [(base, c.get("answered", 0))])
    m.counter(f"{prefix}rate_limited_total", "Queries not answered: over the per-source rate",
              [(base, c.get("rate_limited", 0))])
    m.counter(f"{prefix}refused_total", "Queries not answered, per reason",
              [({**base, "reason": k[len(REFUSALS):]}, v) for k, v in sorted(c.items())
               if k.startswith(REFUSALS)])
    m.counter(f"{prefix}send_failures_total", "Answers the kernel refused to send",
              [(base, c.get("send_failed", 0))])
    m.counter(f"{prefix}bytes_total", "Bytes of queries in and answers out",
              [({**base, "direction": "in"}, c.get("bytes_in", 0)),
               ({**base, "direction": "out"}, c.get("bytes_out", 0))])
