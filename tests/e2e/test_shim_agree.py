"""The C resolver of libaarp.so and the Python resolver give the same answers on the same lab:
in-band answers (IPv6, IPv4), kernel anycast, silence, no responder; before and after a route
move; through the API and through `aarp-resolve --via-shim`."""

from __future__ import annotations

import json
import os
import sys

import pytest

from lab import AA4, AA6, AK6, AnycastLab
from tests.c.support import ANYCAST, BIN, start_responders

pytestmark = pytest.mark.e2e

BOTH = r"""
import json, sys
from aarp import config, resolver, shim
from aarp.errors import NoAnswer, NotResolvable
cfg = config.load()
out = []
for aa in sys.argv[1:]:
    try:
        r = resolver.probe(aa, cfg)
        py = {"status": "pinned", "unicast": r.unicast, "learned": r.learned, "ttl": r.ttl}
    except NotResolvable:
        py = {"status": "negative"}
    except NoAnswer:
        py = {"status": "failed"}
    shim.cache_flush()
    c = shim.resolve(aa)
    cc = {"status": c.status}
    if c.status == "pinned":
        cc.update(unicast=c.address, ttl=c.ttl,
                  learned="source" if c.how == "icmp-source" else "inband")
    out.append({"aa": aa, "python": py, "c": cc})
print(json.dumps(out))
"""

NOWHERE = "fd00:aa::5"  # inside the anycast prefix, answered by nobody


def _both(lab: AnycastLab, *addresses: str) -> list[dict]:
    env = dict(os.environ, AARP_CONF="/dev/null", AARP_ANYCAST=ANYCAST, AARP_TIMEOUT_MS="150")
    env.pop("LD_PRELOAD", None)
    out = lab.client.run([sys.executable, "-c", BOTH, *addresses], env=env, timeout=60)
    return json.loads(out.stdout)


def test_c_and_python_resolvers_agree(lab: AnycastLab) -> None:
    start_responders(lab)
    for server in (1, 2):
        lab.move(server)
        s = lab.server(server)
        results = _both(lab, AA6, AA4, AK6, f"::ffff:{AA4}", NOWHERE)
        want = {AA6: (s.ip6, "inband"), AA4: (s.ip4, "inband"), AK6: (s.ip6, "source"),
                f"::ffff:{AA4}": (s.ip4, "inband")}
        for r in results:
            if r["aa"] == NOWHERE:
                assert r["python"] == r["c"] == {"status": "failed"}, r
                continue
            ua, learned = want[r["aa"]]
            assert r["python"]["status"] == "pinned" and r["python"]["learned"] == learned, r
            # the library answers in the caller's form: mapped in, mapped out
            c_ua = r["c"].get("unicast", "").removeprefix("::ffff:")
            assert (c_ua, r["c"].get("learned")) == (ua, learned), r
            assert r["python"]["ttl"] == r["c"]["ttl"] == 60, r
    for server in lab.servers:
        server.host.stop_all()  # no responders: BGP-style anycast does not resolve
    results = _both(lab, AA6, AA4, AK6)
    assert [(r["python"]["status"], r["c"]["status"]) for r in results] == [
        ("negative", "negative"), ("negative", "negative"), ("pinned", "pinned")], results


def test_aarp_resolve_via_shim(lab: AnycastLab) -> None:
    start_responders(lab)
    env = dict(os.environ, AARP_CONF="/dev/null", AARP_ANYCAST=ANYCAST)
    cli = str(BIN / "aarp-resolve")
    py = json.loads(lab.client.run([cli, "--json", AA6, AK6, AA4], env=env).stdout)
    via = json.loads(lab.client.run([cli, "--json", "--via-shim", AA6, AK6, AA4],
                                    env=env).stdout)
    assert [(d["unicast"], d["learned"]) for d in py] == [
        (d["unicast"], d["learned"]) for d in via] == [
        (lab.server(1).ip6, "inband"), (lab.server(1).ip6, "source"),
        (lab.server(1).ip4, "inband")]
    # what the library does outside its prefixes, and with a broken configuration
    out = lab.client.run([cli, "--via-shim", lab.server(2).ip6], env=env, check=False)
    assert out.returncode == 1 and "outside the configured anycast prefixes" in out.stderr
    out = lab.client.run([cli, "--via-shim", AA6], env=dict(env, AARP_DISABLE="yes"),
                         check=False)
    assert out.returncode == 1 and "disabled" in out.stderr, out.stderr
