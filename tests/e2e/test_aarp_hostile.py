"""Hostile input in the lab: forged answers the resolver must not believe, garbage floods the
responder must survive without ever sending more bytes than it got, and silence."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import AA4, AA6, AnycastLab, Node
from lab.services import wait_port
from tests.conftest import require

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("aarp-hostile")]

PY = sys.executable
ROOT = str(Path(__file__).resolve().parents[2])
KEY = "5f" * 32
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AARP_CONF": "/dev/null"}
FORGED_ICMP = "fd00:aa::5"  # on s1's lo, served by the forger, not by a responder
GOOD_ICMP = "fd00:aa::6"  # the forger's control address: it answers properly there

# UDP forgery modes, one port each (4450 + index); the forger binds [AA6]:port on s1.
MODES = ["good", "wrong-nonce", "other-anycast", "query-echo", "query-as-answer", "truncated",
         "oversized", "unsigned", "bad-tag", "tampered", "outside-prefix", "ua-is-aa",
         "ua-wrong-family", "flood-of-junk"]

FORGER = r"""
import os, select, socket, struct, sys
sys.path.insert(0, sys.argv[1])
from aarp import icmp, message as m
AA, UA, KEY = "fd00:aa::1", "fd00:2:1::2", bytes.fromhex(sys.argv[2])
FORGED, GOOD = sys.argv[3], sys.argv[4]
modes = sys.argv[5:]

def udp_replies(mode, q):
    qry = m.decode_query(q)
    n = qry.nonce
    good = lambda **kw: m.encode_answer(n, kw.pop("aa", AA), 60, **({"unicast6": UA} | kw))
    if mode == "good": return [good()]
    if mode == "wrong-nonce": return [m.encode_answer(os.urandom(16), AA, 60, unicast6=UA)]
    if mode == "other-anycast": return [good(aa="fd00:aa::2"), good(aa="10.255.0.1")]
    if mode == "query-echo": return [q]
    if mode == "query-as-answer": return [q[:5] + b"\x02" + q[6:]]
    if mode == "truncated": return [good()[:-1], good()[:40], good()[:23], b""]
    if mode == "oversized": return [good() + m.padding(600 - len(good()))]
    if mode == "unsigned": return [good()]
    if mode == "bad-tag": return [good(key=bytes(32), key_id=5)]
    if mode == "tampered":
        b = bytearray(good(key=KEY, key_id=5)); b[41] ^= 1; return [bytes(b)]
    if mode == "outside-prefix": return [good(unicast6="fd00:66::1")]
    if mode == "ua-is-aa": return [good(unicast6=AA)]
    if mode == "ua-wrong-family": return [good(unicast6=None, unicast4="10.2.1.2")]
    if mode == "flood-of-junk": return [os.urandom(k) for k in (1, 24, 90, 300, 1400)]
    return []

socks = {}
for i, mode in enumerate(modes):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind((AA, 4450 + i))
    socks[s.fileno()] = (s, mode)
raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
print("ready", flush=True)

def icmp_send(dst, src, ident, seq, payload):
    cmsg = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, socket.inet_pton(socket.AF_INET6, src)
             + struct.pack("=I", 0))]
    raw.sendmsg([icmp.build_echo(6, True, ident, seq, payload)], cmsg, 0, (dst, 0))

while True:
    ready, _, _ = select.select([raw, *[s for s, _ in socks.values()]], [], [])
    for r in ready:
        if r is raw:
            data, anc, _, peer = raw.recvmsg(2000, 256)
            dst = next((socket.inet_ntop(socket.AF_INET6, v[:16]) for l, t, v in anc
                        if t == socket.IPV6_PKTINFO), None)
            e = icmp.parse_echo(data)
            if e is None or e.type != 128 or dst not in (FORGED, GOOD):
                continue
            q = m.try_decode(e.payload)
            if not isinstance(q, m.Query):
                continue
            ans = lambda nonce=q.nonce, aa=dst: m.encode_answer(nonce, aa, 60, unicast6=UA)
            if dst == GOOD:
                icmp_send(peer[0], dst, e.ident, e.seq, ans())
                continue
            icmp_send(peer[0], dst, e.ident, e.seq, ans(nonce=os.urandom(16)))
            icmp_send(peer[0], dst, e.ident, e.seq, ans(aa=AA))
            icmp_send(peer[0], dst, e.ident, e.seq, e.payload[:5] + b"\x02" + e.payload[6:])
            icmp_send(peer[0], dst, e.ident, e.seq, ans()[:-2])
            icmp_send(peer[0], dst, e.ident, e.seq + 1, ans())
            icmp_send(peer[0], dst, e.ident ^ 0x5555, e.seq, ans())
            icmp_send(peer[0], UA, e.ident, e.seq, ans())
        else:
            s, mode = socks[r.fileno()]
            q, peer = s.recvfrom(2000)
            try:
                for reply in udp_replies(mode, q):
                    s.sendto(reply, peer)
            except m.MalformedMessage:
                pass
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnycastLab]:
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    require(shutil.which("ip") is not None, "iproute2")
    script = tmp_path_factory.mktemp("forger") / "forger.py"
    script.write_text(FORGER)
    with AnycastLab(servers=2, clients=2, tag="ahostile") as lab:
        s1 = lab.server(1)
        for extra in (FORGED_ICMP, GOOD_ICMP):
            s1.run(["ip", "addr", "add", f"{extra}/128", "dev", "lo"])
        forger = s1.popen([PY, str(script), ROOT, KEY, FORGED_ICMP, GOOD_ICMP, *MODES],
                          env=ENV, text=True)
        assert forger.stdout is not None and forger.stdout.readline().strip() == "ready"
        for s in lab.servers:
            s.popen([PY, "-m", "aarp.cli.responder", "--anycast", AA6, "--anycast", AA4,
                     "--rate", "50", "--burst", "20"], env=ENV)
            wait_port(s, 4445, "udp")
        yield lab


def resolve(node: Node, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return node.run([PY, "-m", "aarp.cli.resolve", "--timeout", "200", "--retries", "0", *args],
                    check=False, timeout=30, env={**ENV, **(env or {})})


def test_the_forger_harness_can_be_believed(lab: AnycastLab) -> None:
    """Control: the forger's honest modes are believed, so the refusals below mean something."""
    proc = resolve(lab.client, "--method", "udp", "--port", "4450", AA6)
    assert proc.returncode == 0 and proc.stdout.split()[0] == "fd00:2:1::2", proc.stderr
    proc = resolve(lab.client, "--method", "icmp", GOOD_ICMP)
    assert proc.returncode == 0 and proc.stdout.split()[0] == "fd00:2:1::2", proc.stderr


@pytest.mark.parametrize("mode, extra, needle", [
    ("wrong-nonce", [], "does not echo our nonce"),
    ("other-anycast", [], "is for fd00:aa::2, not fd00:aa::1"),
    ("query-echo", [], "is a query, not an answer"),
    ("query-as-answer", [], "missing-unicast"),
    ("truncated", [], "tlv-truncated"),
    ("oversized", [], "oversized"),
    ("unsigned", ["--key", KEY, "--key-id", "5"], "needs a signed answer"),
    ("bad-tag", ["--key", KEY, "--key-id", "5"], "tag is not valid"),
    ("tampered", ["--key", KEY, "--key-id", "5"], "tag is not valid"),
    ("outside-prefix", ["--policy", "prefix"], "outside the allowed prefixes"),
    ("ua-is-aa", [], "UA is the anycast address itself"),
    ("ua-wrong-family", [], "no IPv6 unicast address"),
    ("flood-of-junk", [], "malformed"),
])
def test_forged_udp_answers_are_not_believed(lab: AnycastLab, tmp_path: Path, mode: str,
                                             extra: list[str], needle: str) -> None:
    conf = tmp_path / "aarp.conf"
    conf.write_text("allow = fd00:aa::/64 fd00:2::/32\n")
    port = str(4450 + MODES.index(mode))
    proc = resolve(lab.client, "--method", "udp", "--port", port, *extra, AA6,
                   env={"AARP_CONF": str(conf)})
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    assert "no answer within 200 ms" in proc.stderr and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_forged_icmp_answers_are_not_believed(lab: AnycastLab) -> None:
    """Echo replies with a wrong nonce, for another anycast address, a query disguised as an
    answer, truncated, with a wrong sequence or identifier, or an answer from another source:
    none is believed; the kernel's plain reply then says "does not resolve"."""
    proc = resolve(lab.client, "--json", "--method", "icmp", FORGED_ICMP)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)[0]
    assert not doc["resolved"] and doc.get("unicast") is None
    assert doc["error"].startswith(f"{FORGED_ICMP} answered the echo itself")
    ignored = "\n".join(doc["ignored"])
    for needle in ("does not echo our nonce", f"is for {AA6}, not {FORGED_ICMP}",
                   "(missing-unicast)", "(tlv-truncated)",
                   "echo reply from fd00:2:1::2 with a changed payload"):
        assert needle in ignored, ignored
    # Replies with another sequence number or identifier belong to other probes: dropped
    # before they are even judged, so they are not listed.
    assert len(doc["ignored"]) == 5


GARBAGE = r"""
import json, os, random, socket, sys, time
sys.path.insert(0, sys.argv[1])
from aarp import message as m
aa, port = sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in aa else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.connect((aa, port))
s.setblocking(False)
rnd = random.Random(7)
sizes, sent_bytes, sent, got, worst = {}, 0, 0, [], 0.0
t0 = time.monotonic()
for i in range(3000):
    kind = i % 5
    if kind == 0:
        data = os.urandom(rnd.randrange(0, 1500))
    elif kind == 1:
        size = rnd.choice([24, 26, 40, 60, 65, 66, 67, 80, 96, 200, 512])
        nonce = os.urandom(16)
        data = m.encode_query(nonce, size=size)
        sizes[nonce] = size
    elif kind == 2:
        data = m.encode_answer(os.urandom(16), aa, 1, unicast6="fd00::1")
    elif kind == 3:
        data = m.encode_query(os.urandom(16))[: rnd.randrange(0, 95)]
    else:
        data = b"AARP" + os.urandom(rnd.randrange(0, 600))
    try:
        s.send(data)
        sent += 1
        sent_bytes += len(data)
    except OSError:
        pass
    if i % 100 == 0:
        time.sleep(0.002)
deadline = time.monotonic() + 1.0
while time.monotonic() < deadline:
    try:
        got.append(s.recv(65535))
    except BlockingIOError:
        time.sleep(0.01)
    except OSError:
        pass
elapsed = time.monotonic() - t0
bad = 0
for reply in got:
    a = m.try_decode(reply)
    if not isinstance(a, m.Answer) or a.nonce not in sizes or len(reply) > sizes[a.nonce]:
        bad += 1
print(json.dumps({"sent": sent, "sent_bytes": sent_bytes, "replies": len(got),
                  "reply_bytes": sum(map(len, got)), "bad": bad, "elapsed": elapsed,
                  "valid_queries": len(sizes)}))
"""


def test_responder_survives_a_garbage_flood_and_never_amplifies(lab: AnycastLab,
                                                                tmp_path: Path) -> None:
    script = tmp_path / "garbage.py"
    script.write_text(GARBAGE)
    s2 = lab.server(2)
    lab.move(2)
    proc = s2.popen([PY, "-m", "aarp.cli.responder", "--anycast", AA6, "--anycast", AA4,
                     "--no-icmp", "--port", "4460", "--rate", "50", "--burst", "20",
                     "--status"], env=ENV, text=True)
    try:
        wait_port(s2, 4460, "udp")
        flooder = lab.clients[1]
        for aa in (AA6, AA4):
            out = flooder.run([PY, str(script), ROOT, aa, "4460"], timeout=60, env=ENV)
            r = json.loads(out.stdout)
            assert r["bad"] == 0, r  # every reply is an answer to one of our queries, no longer
            assert r["reply_bytes"] < r["sent_bytes"]
            # The rate limit held: burst + rate * elapsed (+1 for rounding), far below the
            # number of answerable queries that were sent.
            assert 0 < r["replies"] <= 20 + 50 * r["elapsed"] + 1, r
            assert r["replies"] < r["valid_queries"] / 2
        # Another client still gets answers at once: the flood did not take it down.
        res = resolve(lab.client, "--method", "udp", "--port", "4460", AA6, AA4)
        assert res.returncode == 0, res.stderr
        assert [ln.split()[0] for ln in res.stdout.splitlines()] == [s2.ip6, s2.ip4]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err, err
    counters = json.loads(out)["counters"]
    assert counters["bytes_out"] < counters["bytes_in"]
    assert counters["rate_limited"] > 0 and counters["ignored_malformed"] > 0
    assert counters["ignored_too_short"] > 0 and counters["ignored_answer"] > 0


def test_responder_survives_an_icmp_garbage_flood(lab: AnycastLab) -> None:
    """Raw echo requests with garbage, short and oversized payloads to the responder's ICMP side;
    afterwards it still answers (the test client is another source, so not rate-limited)."""
    lab.move(1)
    flood = r"""
import os, socket, sys
sys.path.insert(0, sys.argv[1])
from aarp import icmp, message as m
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
for i in range(2000):
    payload = [os.urandom(i % 700), m.encode_query(os.urandom(16), size=24 + 2 * (i % 30)),
               m.encode_query(os.urandom(16))[:50]][i % 3]
    try:
        s.sendto(icmp.build_echo(6, False, i, i, payload), (sys.argv[2], 0))
    except OSError:
        pass
"""
    lab.clients[1].run([PY, "-c", flood, ROOT, AA6], timeout=60, env=ENV)
    res = resolve(lab.client, "--method", "icmp", AA6)
    assert res.returncode == 0 and res.stdout.split()[0] == lab.server(1).ip6, res.stderr


def test_no_answer_at_all_is_bounded_and_explained(lab: AnycastLab) -> None:
    # fd00:aa::99 is routed to s1, which has no such address: silence (or an unreachable).
    proc = lab.client.run([PY, "-m", "aarp.cli.resolve", "--timeout", "150", "--retries", "2",
                           "fd00:aa::99"], check=False, timeout=20, env=ENV)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == ("aarp-resolve: fd00:aa::99: no answer within 450 ms "
                                   "(3 probe(s))")
    # With a firewall dropping everything towards the client, the same holds for AA itself.
    fw = lab.clients[1]
    fw.run(["nft", "-f", "-"], input="table inet blackhole {\n chain input {\n"
                                     "  type filter hook input priority 0; policy drop;\n }\n}\n")
    try:
        proc = fw.run([PY, "-m", "aarp.cli.resolve", "--json", "--timeout", "100", AA6, AA4],
                      check=False, timeout=20, env=ENV)
    finally:
        fw.run(["nft", "delete", "table", "inet", "blackhole"], check=False)
    assert proc.returncode == 1
    docs = json.loads(proc.stdout)
    assert [d["resolved"] for d in docs] == [False, False]
    assert all(d["error"] == "no answer within 200 ms (2 probe(s))" for d in docs)
