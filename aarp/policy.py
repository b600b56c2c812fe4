"""Which answers a client believes (pure): the verification policy of docs/config.md.

* `any`: every well-formed answer for our probe (a signed one must still carry a valid tag
  when we hold the key);
* `prefix`: UA must lie in the unicast prefixes of the `allow` line covering AA;
* `key`: only in-band answers with key-id and a valid tag; source-only answers are refused.
Whatever the policy, UA must be a usable unicast address of AA's family and not AA itself.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aarp.config import Config, as_address
from aarp.message import Answer

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str  # why refused, or how it was verified
    verification: str = "none"  # "tag", "prefix" or "none" (believed without proof)

    @property
    def verified(self) -> bool:
        return self.accepted and self.verification != "none"


def _refuse(reason: str) -> Verdict:
    return Verdict(False, reason)


def usable_unicast(anycast: IPAddress, unicast: IPAddress) -> str | None:
    """Why `unicast` cannot stand for `anycast`, or None when it can."""
    if unicast.version != anycast.version:
        return f"UA {unicast} is not of the family of {anycast}"
    if unicast == anycast:
        return "UA is the anycast address itself"
    if (unicast.is_unspecified or unicast.is_multicast or unicast.is_loopback
            or unicast.is_link_local or (unicast.version == 4 and unicast == ipaddress.IPv4Address(
                "255.255.255.255"))):
        return f"UA {unicast} is not a usable unicast address"
    return None


def _prefix_ok(anycast: IPAddress, unicast: IPAddress, config: Config) -> Verdict | None:
    """None if the prefix policy is satisfied, else the refusal."""
    allowed = config.allowed_unicast(anycast)
    if allowed is None:
        return _refuse(f"no 'allow' line covers {anycast}")
    ua = as_address(unicast)
    if not any(p.version == ua.version and ua in p for p in allowed):
        return _refuse(f"UA {unicast} is outside the allowed prefixes "
                       f"{', '.join(str(p) for p in allowed)}")
    return None


def judge_source(anycast: IPAddress, source: IPAddress, config: Config) -> Verdict:
    """A plain echo reply to AA that came from another address (kernel anycast)."""
    bad = usable_unicast(anycast, source)
    if bad:
        return _refuse(bad)
    if config.policy == "key":
        return _refuse("policy 'key' refuses answers without a tag (source answer)")
    if config.policy == "prefix":
        refused = _prefix_ok(anycast, source, config)
        return refused or Verdict(True, "UA inside the allowed prefixes", "prefix")
    return Verdict(True, "believed (policy any)")


def judge_inband(anycast: IPAddress, answer: Answer, nonces: frozenset[bytes] | set[bytes],
                 config: Config) -> Verdict:
    """An in-band answer that arrived from AA."""
    if answer.nonce not in nonces:
        return _refuse("answer does not echo our nonce")
    if as_address(answer.anycast) != anycast:
        return _refuse(f"answer is for {answer.anycast}, not {anycast}")
    unicast = answer.unicast_for(anycast.version)
    if unicast is None:
        return _refuse(f"answer has no IPv{anycast.version} unicast address")
    bad = usable_unicast(anycast, unicast)
    if bad:
        return _refuse(bad)
    signed_ok = False
    if answer.tag is not None and config.key is not None:
        if answer.key_id != config.key_id:
            return _refuse(f"answer signed with key-id {answer.key_id}, ours is {config.key_id}")
        if not answer.tag_valid(config.key):
            return _refuse("answer's tag is not valid for our key")
        signed_ok = True
    if config.policy == "key" and not signed_ok:
        return _refuse("policy 'key' needs a signed answer")
    if config.policy == "prefix":
        refused = _prefix_ok(anycast, unicast, config)
        if refused:
            return refused
        if not signed_ok:
            return Verdict(True, "UA inside the allowed prefixes", "prefix")
    if signed_ok:
        return Verdict(True, f"valid tag (key-id {answer.key_id})", "tag")
    return Verdict(True, "believed (policy any)")
