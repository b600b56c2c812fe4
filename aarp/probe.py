"""One resolution of an anycast address as a pure state machine (spec/aarp.md, "How a client
resolves AA"): it makes the queries, judges every reply the IO layer hands it, and says when to
stop waiting. Times are passed in; nothing here touches a socket or a clock.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from aarp import message
from aarp.config import Config
from aarp.policy import Verdict, judge_inband, judge_source

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Source answers (kernel anycast) carry no ttl; they are kept this long (then ttl bounds).
SOURCE_TTL = 60


@dataclass(frozen=True)
class Found:
    unicast: IPAddress
    learned: str  # "source" (reply from UA) or "inband" (answer from AA)
    method: str  # "icmp" or "udp"
    ttl: int
    rtt: float
    verdict: Verdict
    key_id: int | None = None


@dataclass
class _Attempt:
    seq: int
    nonce: bytes
    query: bytes
    sent: float


@dataclass
class ProbeSession:
    anycast: IPAddress
    config: Config
    query_size: int = message.QUERY_LEN
    attempts: list[_Attempt] = field(default_factory=list)
    negative: str | None = None  # "AA answered but does not resolve": why we think so
    negative_at: float | None = None
    refused: list[str] = field(default_factory=list)  # replies we saw and did not believe
    found: Found | None = None

    def new_attempt(self, now: float, nonce: bytes | None = None) -> tuple[int, bytes]:
        """(sequence number, query bytes) of the next attempt; every copy uses the same nonce."""
        seq = len(self.attempts) + 1
        nonce = nonce or message.new_nonce()
        query = message.encode_query(nonce, size=self.query_size)
        self.attempts.append(_Attempt(seq, nonce, query, now))
        return seq, query

    @property
    def nonces(self) -> frozenset[bytes]:
        return frozenset(a.nonce for a in self.attempts)

    def deadline(self, attempt_deadline: float) -> float:
        """When to stop waiting: the attempt's end, or the grace period after a plain reply."""
        if self.negative_at is not None:
            return min(attempt_deadline, self.negative_at + self.config.grace_ms / 1000)
        return attempt_deadline

    def _refuse(self, what: str) -> None:
        if what not in self.refused:
            self.refused.append(what)

    def _accept(self, found: Found) -> Found:
        self.found = found
        return found

    def _attempt_by_seq(self, seq: int) -> _Attempt | None:
        return next((a for a in self.attempts if a.seq == seq), None)

    def on_icmp_reply(self, source: IPAddress, seq: int, payload: bytes,
                      now: float) -> Found | None:
        """An echo reply whose identifier already matched ours (checked by the IO layer)."""
        if self.found:
            return None
        attempt = self._attempt_by_seq(seq)
        if attempt is None:
            return None  # another prober's reply
        if payload == attempt.query:
            if source == self.anycast:
                self._note_negative(f"{self.anycast} answered the echo itself: no AARP "
                                    "responder there, and not kernel anycast", now)
                return None
            verdict = judge_source(self.anycast, source, self.config)
            if not verdict.accepted:
                self._refuse(f"source answer {source}: {verdict.reason}")
                return None
            return self._accept(Found(source, "source", "icmp",
                                      self.config.clamp_ttl(SOURCE_TTL), now - attempt.sent,
                                      verdict))
        if source != self.anycast:
            self._refuse(f"echo reply from {source} with a changed payload")
            return None
        return self._inband(source, payload, now, "icmp", attempt)

    def on_udp(self, source: IPAddress, payload: bytes, now: float) -> Found | None:
        if self.found:
            return None
        if source != self.anycast:
            self._refuse(f"UDP datagram from {source}, not from {self.anycast}")
            return None
        return self._inband(source, payload, now, "udp", None)

    def on_udp_refused(self, now: float) -> None:
        self._note_negative(f"{self.anycast} refused UDP port {self.config.port}: no AARP "
                            "responder there", now)

    def _note_negative(self, reason: str, now: float) -> None:
        if self.negative_at is None:
            self.negative, self.negative_at = reason, now

    def _inband(self, source: IPAddress, payload: bytes, now: float, method: str,
                attempt: _Attempt | None) -> Found | None:
        try:
            msg = message.decode(payload)
        except message.MalformedMessage as exc:
            self._refuse(f"malformed {method} reply from {source} ({exc.code})")
            return None
        if not isinstance(msg, message.Answer):
            self._refuse(f"{method} reply from {source} is a query, not an answer")
            return None
        by_nonce = next((a for a in self.attempts if a.nonce == msg.nonce), None)
        if attempt is not None and by_nonce is not None and by_nonce is not attempt:
            self._refuse(f"{method} answer from {source}: nonce of another sequence number")
            return None
        verdict = judge_inband(self.anycast, msg, self.nonces, self.config)
        if not verdict.accepted or by_nonce is None:
            self._refuse(f"{method} answer from {source}: {verdict.reason}")
            return None
        unicast = msg.unicast_for(self.anycast.version)
        assert unicast is not None  # judged above
        return self._accept(Found(unicast, "inband", method, self.config.clamp_ttl(msg.ttl),
                                  now - by_nonce.sent, verdict, msg.key_id))

    def negative_reason(self) -> str:
        """Why AA counts as "answers but does not resolve" (with what we refused, if any)."""
        return self._with_refused(self.negative or "no acceptable answer")

    def failure_reason(self) -> str:
        waited = self.config.timeout_ms * max(1, len(self.attempts))
        return self._with_refused(f"no answer within {waited} ms ({len(self.attempts)} "
                                  "probe(s))")

    def _with_refused(self, reason: str) -> str:
        if self.refused:
            reason += "; ignored: " + "; ".join(self.refused[:3])
            if len(self.refused) > 3:
                reason += f" (+{len(self.refused) - 3} more)"
        return reason
